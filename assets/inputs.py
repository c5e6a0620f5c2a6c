"""What an asset partition reads, found through the storage layout, each with the key it was
stored under; and the result it stores under the key of what it read.

An asset asks ``Inputs`` for everything it reads; ``key(**settings)`` is then the hash of the keys
of everything read plus the asset's own settings. It is the one place a result's key is computed,
so a key cannot leave out something read: a changed manifest, encoder weights, feature set, map or
LM changes the key of exactly the results that read it, and those are recomputed.
"""

import json
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from assets.config import PROFILE
from assets.partitions import BLIND, system_backbone
from assets.resources import Runtime
from pipeline.adapters import load_map
from pipeline.linear_map import LinearMap
from pipeline.metrics.clip_score import CLIP_VIT_B32
from storage import FeatureArray, config_hash
from storage.layout import read_table, run_name, stored_key, stored_runs


class MissingInput(FileNotFoundError):
    """An upstream result is not stored yet."""


@dataclass
class Inputs:
    runtime: Runtime
    read: dict[str, str] = field(default_factory=dict)  # what was read -> the key it was stored under

    def _record(self, name: str, key: str | None) -> None:
        if key is None:
            raise MissingInput(
                f"{name} is not materialized yet (nothing under {self.runtime.storage_root}): materialize it first"
            )
        self.read[name] = key

    def key(self, **settings) -> str:
        return config_hash({"read": self.read, "settings": settings})

    def manifest(self, part: str, read: bool = True) -> pd.DataFrame | None:
        """A part's manifest; with ``read=False`` only its key is recorded (the table is not loaded)."""
        path = self.runtime.layout.manifest(part)
        self._record(f"manifests[{part}]", stored_key(path))
        return read_table(path) if read else None

    def features(self, backbone: str, part: str) -> FeatureArray:
        """A backbone's finished features of one part."""
        path = self.runtime.layout.image_features(backbone, part)
        store = FeatureArray.read(str(path)) if path.exists() else None
        self._record(f"image_features[{backbone}|{part}]", store.key if store and store.is_complete() else None)
        return store

    def system_features(self, system: str, part: str) -> FeatureArray | None:
        """The features a system shows the LM (its backbone's); the blind system shows none."""
        return None if system == BLIND else self.features(system_backbone(system), part)

    def language_model(self) -> dict:
        """The prepared LM's description; load it with ``runtime.load_lm()``."""
        description = self.runtime.prepared_lm()
        self._record(
            f"language_model[{self.runtime.language_model}]", description.get("fingerprint") if description else None
        )
        self.read["precision"] = str(self.runtime.compute_dtype())  # what the LM computes in
        return description

    def linear_maps(self, system: str) -> dict[int | None, "StoredMap | None"]:
        """A system's trained maps by training seed (loaded on ``load()``; with its adapters for a
        tuned baseline): the seeds its last ``linear_map`` (or ``adapters``) materialization
        trained; ``{None: None}`` for the blind system. Nothing is recorded: each seed's result
        reads its own map (``with_map``)."""
        if system == BLIND:
            return {None: None}
        layout, lm = self.runtime.layout, self.runtime.language_model
        index = layout.map_index(system, lm)
        if not index.exists():
            self._record(f"linear_map[{system}]", None)
        seeds = json.loads(index.read_text())["seeds"]
        return {seed: StoredMap(self.runtime, layout.trained_map(system, lm, seed)) for seed in sorted(map(int, seeds))}

    def runs(self, index, asset: str) -> list[str]:
        """The runs an asset's last materialization stored, from its index file (``{"runs": {run: key}}``)."""
        runs = stored_runs(index)
        if runs is None:
            self._record(asset, None)
        return runs

    def with_map(self, system: str, seed: int | None, stored: "StoredMap | None") -> "Inputs":
        """A copy of these inputs that also read one seed's map (none for the blind system)."""
        copy = Inputs(self.runtime, dict(self.read))
        if stored is not None:
            copy._record(f"linear_map[{system}|{run_name(seed)}]", stored.key())
        return copy

    def linear_map(self, system: str) -> "StoredMap | None":
        """The map of a system's first training seed (what the readout shows); None for blind."""
        seed, stored = next(iter(self.linear_maps(system).items()))
        self.read.update(self.with_map(system, seed, stored).read)
        return stored

    def table(self, partition: str, path, read: bool = True) -> pd.DataFrame | None:
        """A stored result table of an upstream asset partition (``"captions[blind|coco.val]"``),
        named by its partition, not its path, so a moved storage root keeps its keys; with
        ``read=False`` only its key is recorded."""
        self._record(partition, stored_key(path))
        return read_table(path) if read else None

    def clip_weights(self, weights: str) -> str:
        """The CLIP-S weights file given, else CLIP's own resolver; returns the path (or "")."""
        from pipeline.weights import content_hash

        self.read["clip_weights"] = f"file:{content_hash(weights)}" if weights else CLIP_VIT_B32.fingerprint()
        return weights


@dataclass
class StoredMap:
    runtime: Runtime
    directory: object

    def key(self) -> str | None:
        return LinearMap.stored_key(self.directory)  # read in place: no checkpoint is fetched

    def load(self) -> LinearMap:
        return load_map(self.runtime.mirror(self.directory).pull())


def stored_result(path, key: str, reused: bool, **metadata) -> dg.MaterializeResult:
    """A keyed result's materialization: its path, its key (also its Dagster data version, so the
    UI's Unsynced follows the keys) and whether it was reused."""
    return dg.MaterializeResult(
        data_version=dg.DataVersion(key),
        metadata={"path": dg.MetadataValue.path(str(path)), "key": key, "reused": reused, **metadata},
    )


def preview(table: pd.DataFrame) -> dg.MetadataValue:
    """The first rows of a table, as markdown for the asset's page."""
    return dg.MetadataValue.md(table.head(PROFILE["reporting"]["preview_rows"]).astype(str).to_markdown(index=False))
