"""Where every artifact lives under the storage root. The only module that builds storage paths,
parses dataset-part keys, and reads or writes the key a stored result carries.

The root is a local folder or an fsspec URL (``s3://bucket/prefix``); paths are ``UPath`` objects,
so the same code writes Parquet, Zarr and JSON to either. Credentials and endpoints come from the
usual places (``AWS_*`` variables, ``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server).
Model checkpoints, which torch and safetensors write to local files, go through ``LocalMirror``.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from upath import UPath


def config_hash(config) -> str:
    """Short stable hash of a JSON-able value: the key of a result computed from it."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def storage_path(location: str | os.PathLike) -> UPath:
    """A storage location as a path: URLs stay URLs, local paths become absolute."""
    path = UPath(location)
    return UPath(Path(location).absolute()) if is_local(path) else path


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


def dataset_part(part_key: str) -> tuple[str, str]:
    """A dataset part's partition key, parsed: 'cc3m.train.00042' -> ('cc3m', 'train.00042')."""
    dataset, part = part_key.split(".", 1)
    return dataset, part


def in_prefix(part_key: str, prefix: str) -> bool:
    """Whether a part belongs to a profile entry: the part itself, or one of its shards."""
    return part_key == prefix or part_key.startswith(prefix + ".")


def run_name(seed: int | None, trial: int | None = None) -> str:
    """One run of a system, in paths and tables: its training seed and few-shot trial
    (``seed-0.trial-1``); ``seed-0`` with no trial (captions, 0-shot VQA); ``trial-1`` or ``once``
    for the blind system, which has no trained map."""
    parts = [f"{label}-{value}" for label, value in (("seed", seed), ("trial", trial)) if value is not None]
    return ".".join(parts) or "once"


@dataclass(frozen=True)
class StorageLayout:
    """Every stored artifact has one fixed path per asset partition and carries the key of what it
    was computed from (``stored_key``); a result whose key differs from its inputs' is recomputed."""

    root: UPath

    @classmethod
    def at(cls, location: str | os.PathLike) -> "StorageLayout":
        return cls(storage_path(location))

    def manifest(self, part_key: str) -> UPath:
        dataset, part = dataset_part(part_key)
        return self.root / "manifests" / dataset / f"{part}.parquet"

    def skipped_records(self, part_key: str) -> UPath:
        """Records a dataset reader skipped (file, record, reason), next to the manifest."""
        dataset, part = dataset_part(part_key)
        return self.root / "manifests" / dataset / f"{part}.skipped.parquet"

    def image_features(self, backbone: str, part_key: str) -> UPath:
        dataset, part = dataset_part(part_key)
        return self.root / "features" / dataset / part / f"{_safe(backbone)}.zarr"

    def language_model(self, name: str) -> UPath:
        return self.root / "language_models" / _safe(name)

    def linear_map(self, system: str, language_model: str) -> UPath:
        """A system's maps: one folder per training seed (``trained_map``), and ``seeds.json``
        (``map_index``) naming the seeds its last materialization trained."""
        return self.root / "linear_maps" / _safe(language_model) / _safe(system)

    def trained_map(self, system: str, language_model: str, seed: int) -> UPath:
        """A folder: one seed's weights, their config (with the key), the loss curve, and the checkpoints."""
        return self.linear_map(system, language_model) / run_name(seed)

    def map_index(self, system: str, language_model: str) -> UPath:
        return self.linear_map(system, language_model) / "seeds.json"

    @staticmethod
    def loss_curve(map_folder):
        """The loss curve inside a linear map's folder (or its local working copy)."""
        return map_folder / "loss.png"

    @staticmethod
    def checkpoints(map_folder, key: str):
        """One training's checkpoints inside a linear map's folder: one folder per key, so a run
        never resumes another key's training."""
        return map_folder / "checkpoints" / key

    def captions(self, system: str, language_model: str, part_key: str, run: str) -> UPath:
        """One run's captions (``run_name``: a training seed's map, or the blind system's one run)."""
        dataset, part = dataset_part(part_key)
        return self.root / "captions" / _safe(language_model) / _safe(system) / dataset / part / f"{run}.parquet"

    def coco_results(self, system: str, language_model: str, part_key: str, run: str) -> UPath:
        """The same captions in the COCO results format, for any external scorer."""
        return self.captions(system, language_model, part_key, run).with_suffix(".coco.json")

    def caption_metrics_table(self, system: str, language_model: str, part_key: str) -> UPath:
        dataset, part = dataset_part(part_key)
        return self.root / "caption_metrics" / _safe(language_model) / _safe(system) / dataset / f"{part}.parquet"

    def caption_scores(self, system: str, language_model: str, part_key: str) -> UPath:
        """Per-image scores of every run beside the metrics, for paired differences between systems."""
        return self.caption_metrics_table(system, language_model, part_key).with_suffix(".per_image.parquet")

    def caption_runs(self, system: str, language_model: str, part_key: str) -> UPath:
        """Each run's value of each metric, beside the metrics (their mean)."""
        return self.caption_metrics_table(system, language_model, part_key).with_suffix(".runs.parquet")

    def vqa_answers(self, system: str, language_model: str, shots: int, run: str) -> UPath:
        """One run's answers (``run_name``: a training seed's map and a few-shot trial)."""
        return self.root / "vqa_answers" / _safe(language_model) / _safe(system) / f"{shots}-shot" / f"{run}.parquet"

    def vqa_answer_runs(self, system: str, language_model: str, shots: int) -> UPath:
        """The runs the last ``vqa_answers`` materialization stored, with their keys."""
        return self.vqa_answers(system, language_model, shots, "runs").with_suffix(".json")

    def vqa_metrics_table(self, system: str, language_model: str, shots: int) -> UPath:
        return self.root / "vqa_metrics" / _safe(language_model) / _safe(system) / f"{shots}-shot.parquet"

    def vqa_scores(self, system: str, language_model: str, shots: int) -> UPath:
        """Per-question accuracy of every run beside the metrics, for paired differences between systems."""
        return self.vqa_metrics_table(system, language_model, shots).with_suffix(".per_question.parquet")

    def vqa_runs(self, system: str, language_model: str, shots: int) -> UPath:
        """Each run's value of each metric, beside the metrics (their mean)."""
        return self.vqa_metrics_table(system, language_model, shots).with_suffix(".runs.parquet")

    def metric_tables(self, task: str, system: str, language_model: str, part_key: str, shots: int) -> tuple:
        """A metric asset partition's tables: the metrics, the per-item scores and the per-run
        values; of ``caption_metrics`` (``part_key``) or ``vqa_metrics`` (``shots``)."""
        if task == "captioning":
            paths = (self.caption_metrics_table, self.caption_scores, self.caption_runs)
            return tuple(path(system, language_model, part_key) for path in paths)
        paths = (self.vqa_metrics_table, self.vqa_scores, self.vqa_runs)
        return tuple(path(system, language_model, shots) for path in paths)

    def prompt_readout(self, system: str, language_model: str) -> UPath:
        """The shares of images whose prompt reads out their own words, with intervals."""
        return self.root / "image_prompt_readout" / _safe(language_model) / _safe(system) / "lexical.parquet"

    def prompt_nearest_tokens(self, system: str, language_model: str) -> UPath:
        """Each sampled image token's nearest LM vocabulary tokens, beside the shares."""
        return self.prompt_readout(system, language_model).with_name("nearest_tokens.parquet")

    def gallery_table(self, language_model: str) -> UPath:
        """The gallery's samples and every system's outputs on them."""
        return self.root / "gallery" / _safe(language_model) / "gallery.parquet"

    def gallery(self, language_model: str, task: str) -> UPath:
        """The gallery PNG of one task ("captioning", "vqa")."""
        return self.gallery_table(language_model).with_name(f"{task}.png")

    def metrics_table(self) -> UPath:
        """The tidy metric table analysts read with pandas."""
        return self.root / "metrics" / "metrics.parquet"

    def differences_table(self) -> UPath:
        """Paired differences of each system against the baselines, with their intervals."""
        return self.root / "metrics" / "differences.parquet"

    def comparison_table(self) -> UPath:
        return self.root / "metrics" / "comparison.parquet"

    def metric_runs_table(self) -> UPath:
        """Every run's value of every metric (the points behind each mean)."""
        return self.root / "metrics" / "runs.parquet"

    def rankings_table(self) -> UPath:
        """The systems in order per task, metric and shot count, with their ties."""
        return self.root / "metrics" / "rankings.parquet"

    def metrics_chart(self) -> UPath:
        return self.root / "metrics" / "metrics.png"


class LocalMirror:
    """A local working copy of a storage folder, for libraries that only write local files.

    For a local root it is the folder itself. For an object store it is a folder under the cache
    directory: ``pull`` fetches what the store holds (so a rerun on another machine resumes from the
    stored checkpoint), ``push`` uploads what was written.
    """

    def __init__(self, remote: UPath, cache_dir: str | os.PathLike):
        self.remote = remote
        self._synced: dict[str, int] = {}  # relative path -> local mtime when last pulled or pushed
        if is_local(remote):
            self.local = Path(remote.path)
        else:
            self.local = Path(cache_dir).expanduser() / "mirror" / hashlib.sha256(str(remote).encode()).hexdigest()[:16]

    def pull(self) -> Path:
        """Fetches the stored files this copy lacks (or holds at another size); returns the local folder."""
        self.local.mkdir(parents=True, exist_ok=True)
        if not is_local(self.remote):
            for relative, size in self._remote_sizes().items():
                if relative.startswith("/") or ".." in PurePosixPath(relative).parts:
                    # The bucket is not trusted: a key must not write outside this working copy.
                    raise ValueError(
                        f"{self.remote}: stored key {relative!r} leaves its folder; refusing to write "
                        f"it outside {self.local}. Delete that object from the store."
                    )
                local_file = self.local / relative
                if not local_file.exists() or local_file.stat().st_size != size:
                    local_file.parent.mkdir(parents=True, exist_ok=True)
                    self.remote.fs.get(self.remote.path.rstrip("/") + "/" + relative, str(local_file))
                self._synced[relative] = local_file.stat().st_mtime_ns
        return self.local

    def push(self) -> None:
        """Uploads the local files written since they were last pulled or pushed (a rewritten
        checkpoint keeps its size, so sizes cannot tell)."""
        if is_local(self.remote):
            return
        for local_file in sorted(p for p in self.local.rglob("*") if p.is_file()):
            relative, mtime = local_file.relative_to(self.local).as_posix(), local_file.stat().st_mtime_ns
            if self._synced.get(relative) != mtime:
                self.remote.fs.put_file(str(local_file), self.remote.path.rstrip("/") + "/" + relative)
                self._synced[relative] = mtime
        self.remote.fs.invalidate_cache()

    def _remote_sizes(self) -> dict[str, int]:
        prefix = self.remote.path.rstrip("/") + "/"
        self.remote.fs.invalidate_cache(prefix)
        return {path[len(prefix) :]: info["size"] for path, info in self.remote.fs.find(prefix, detail=True).items()}


def _safe(name: str) -> str:
    """A model or system name as one path component. Names of letters, digits and ``._+-`` stay as
    they are; others (``org/model``, ``timm:vit_base_patch16_224?pool=4``) are spelled with ``--``
    for ``/`` and ``_`` for the rest, and end in a hash of the name, so no two names share a folder."""
    if re.fullmatch(r"[\w.+-]+", name, flags=re.ASCII) and name not in (".", ".."):
        return name
    spelled = re.sub(r"[^\w.+-]+", "_", name.replace("/", "--"), flags=re.ASCII).strip("_.")
    return f"{spelled}-{config_hash(name)[:8]}"


KEY_FIELD = b"limber.key"  # Parquet file metadata: the key of what the table was computed from


def read_table(path: UPath):
    """A Parquet table from local or object storage (through fsspec, so its S3 settings apply)."""
    import pandas as pd

    return pd.read_parquet(path.path, filesystem=path.fs)


def write_table(table, path: UPath, key: str = "") -> None:
    """Writes a table with its key in the file's metadata, so a reader knows what it was computed from."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    arrow = pa.Table.from_pandas(table)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), KEY_FIELD: key.encode()})
    with path.open("wb") as file:
        pq.write_table(arrow, file)


def write_bytes(path: UPath, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def stored_key(path: UPath) -> str | None:
    """The key a stored table was written with; None when there is no whole table there (a write
    killed midway leaves an unreadable file: it is recomputed, not trusted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    try:
        with path.open("rb") as file:
            metadata = pq.read_schema(file).metadata or {}
    except pa.ArrowInvalid:
        return None
    return metadata.get(KEY_FIELD, b"").decode()


def write_index(path: UPath, document: dict) -> None:
    """Writes a small JSON index (the runs or seeds a result holds, with their keys) unless the same
    is stored: an unchanged rerun writes no file."""
    data = json.dumps(document, sort_keys=True).encode()
    if not (path.exists() and path.read_bytes() == data):
        write_bytes(path, data)


def stored_runs(index: UPath) -> list[str] | None:
    """The runs an index file (``{"runs": {run: key}}``) lists, sorted; None when there is none."""
    return sorted(json.loads(index.read_text())["runs"]) if index.exists() else None


def table_key(table) -> str:
    """The key of a table's content (for a manifest: what everything downstream was computed from)."""
    import pandas as pd

    return config_hash(json.loads(pd.DataFrame(table).to_json(orient="split", index=False)))
