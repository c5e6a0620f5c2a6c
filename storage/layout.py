"""Where every artifact lives under the storage root. The only module that builds storage paths.

The root is a local folder or an fsspec URL (``s3://bucket/prefix``); paths are ``UPath`` objects,
so the same code writes Parquet, Zarr and JSON to either. Credentials and endpoints come from the
usual places (``AWS_*`` variables, ``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server).
Model checkpoints, which torch and safetensors write to local files, go through ``LocalMirror``.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from upath import UPath


def config_hash(config) -> str:
    """Short stable hash of a JSON-able config: names the directory of a result it determines."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def storage_path(location: str | os.PathLike) -> UPath:
    """A storage location as a path: URLs stay URLs, local paths become absolute."""
    path = UPath(location)
    return UPath(Path(location).absolute()) if is_local(path) else path


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


@dataclass(frozen=True)
class StorageLayout:
    root: UPath

    @classmethod
    def at(cls, location: str | os.PathLike) -> "StorageLayout":
        return cls(storage_path(location))

    def manifest(self, part_key: str) -> UPath:
        dataset, part = part_key.split(".", 1)
        return self.root / "manifests" / dataset / f"{part}.parquet"

    def skipped_records(self, part_key: str) -> UPath:
        """Records a dataset reader skipped (file, record, reason), next to the manifest."""
        return self.manifest(part_key).with_suffix(".skipped.parquet")

    def image_features(self, backbone: str, part_key: str) -> UPath:
        dataset, part = part_key.split(".", 1)
        return self.root / "features" / dataset / part / f"{backbone}.zarr"

    def language_model(self, name: str) -> UPath:
        return self.root / "language_models" / _safe(name)

    def linear_map(self, backbone: str, language_model: str, settings_hash: str) -> UPath:
        return self.root / "linear_maps" / _safe(language_model) / backbone / settings_hash

    def evaluation(self, task: str, system: str, language_model: str, inputs_hash: str, partition: str) -> UPath:
        """Captions / answers / scores of one system, keyed by the hash of everything they depend on."""
        return self.root / task / _safe(language_model) / system / inputs_hash / f"{partition}.parquet"

    def metrics_table(self) -> UPath:
        """The tidy metric table analysts read with pandas."""
        return self.root / "metrics" / "metrics.parquet"

    def comparison_table(self) -> UPath:
        return self.root / "metrics" / "comparison.parquet"


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
                    raise ValueError(f"{self.remote}: stored key {relative!r} leaves its folder; refusing to write "
                                     f"it outside {self.local}. Delete that object from the store.")
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
        return {path[len(prefix):]: info["size"] for path, info in self.remote.fs.find(prefix, detail=True).items()}


def _safe(name: str) -> str:
    return name.replace("/", "--")


def read_table(path: UPath):
    """A Parquet table from local or object storage (through fsspec, so its S3 settings apply)."""
    import pandas as pd

    return pd.read_parquet(path.path, filesystem=path.fs)


def write_table(table, path: UPath) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path.path, filesystem=path.fs)
