"""Where every artifact lives under the storage root. The only module that builds storage paths."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


def config_hash(config: dict) -> str:
    """Short stable hash of a JSON-able config: names the directory of a result it determines."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class StorageLayout:
    root: Path

    def manifest(self, dataset: str, split: str) -> Path:
        return self.root / "manifests" / dataset / f"{split}.parquet"

    def image_features(self, backbone: str, dataset: str, split: str) -> Path:
        return self.root / "features" / dataset / split / f"{backbone}.zarr"

    def language_model(self, name: str) -> Path:
        return self.root / "language_models" / _safe(name)

    def linear_map(self, backbone: str, language_model: str, settings_hash: str) -> Path:
        return self.root / "linear_maps" / _safe(language_model) / backbone / settings_hash

    def evaluation(self, task: str, system: str, language_model: str, inputs_hash: str, partition: str) -> Path:
        """Captions / answers / scores of one system, keyed by the hash of everything they depend on."""
        return self.root / task / _safe(language_model) / system / inputs_hash / f"{partition}.parquet"

    def metrics_table(self) -> Path:
        """The tidy metric table analysts read with pandas."""
        return self.root / "metrics" / "metrics.parquet"

    def comparison_table(self) -> Path:
        return self.root / "metrics" / "comparison.parquet"


def _safe(name: str) -> str:
    return name.replace("/", "--")
