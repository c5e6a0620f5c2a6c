"""What an evaluation asset needs to run one *system*: a trained backbone, or the blind baseline."""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import torch

from assets.datasets import manifests
from assets.image_features import image_features
from assets.language_model import language_model
from assets.linear_map import linear_map
from assets.partitions import BLIND, DATASET
from assets.resources import Limber
from pipeline.decoding import image_tokens
from pipeline.language_models import load_language_model
from pipeline.linear_map import LinearMap
from storage import FeatureArray

# What an evaluation asset reads. Dagster has no mapping from (system x ...) partitions to backbone
# partitions that leaves "blind" without upstream, so these deps are coarse; each result is stored
# under the hash of exactly what it read, so only what changed is recomputed.
SYSTEM_INPUTS = [
    dg.AssetDep(linear_map, partition_mapping=dg.AllPartitionMapping()),
    dg.AssetDep(image_features, partition_mapping=dg.AllPartitionMapping()),
    dg.AssetDep(manifests, partition_mapping=dg.AllPartitionMapping()),
    language_model,
]


def latest_materialization(instance: dg.DagsterInstance, asset, partition_key: str):
    """The latest materialization record of one asset partition, or None."""
    key = asset.key if hasattr(asset, "key") else dg.AssetKey(asset)
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[str(partition_key)]), limit=1, ascending=False
    ).records
    return records[0] if records else None


def upstream_path(context: dg.AssetExecutionContext, asset, partition_key: str | None = None) -> Path:
    """The ``path`` recorded by the latest materialization of an upstream asset partition."""
    partition_key = partition_key if partition_key is not None else context.partition_key
    record = latest_materialization(context.instance, asset, partition_key)
    if record is None:
        raise FileNotFoundError(f"{asset if isinstance(asset, str) else asset.key.to_user_string()}[{partition_key}] "
                                "is not materialized yet: materialize it first")
    return Path(record.asset_materialization.metadata["path"].value)


@dataclass
class System:
    name: str
    linear_map_dir: Path | None  # None for the blind baseline

    @property
    def linear_map_hash(self) -> str:
        """Identifies the trained map (its settings hash); "blind" for the baseline."""
        return BLIND if self.linear_map_dir is None else self.linear_map_dir.name

    @classmethod
    def resolve(cls, context: dg.AssetExecutionContext, name: str) -> "System":
        if name == BLIND:
            return cls(name, None)
        return cls(name, upstream_path(context, "linear_map", name))

    def linear_map(self) -> LinearMap | None:
        return None if self.linear_map_dir is None else LinearMap.load(self.linear_map_dir)

    def features(self, limber: Limber, split: str) -> FeatureArray:
        return FeatureArray.read(str(limber.layout.image_features(self.name, DATASET, split)))

    def image_tokens(self, limber: Limber, split: str, rows, device: str) -> dict[int, torch.Tensor] | None:
        """Projected image tokens of the given manifest rows of a split (None for blind)."""
        mapping = self.linear_map()
        if mapping is None:
            return None
        rows = np.unique(np.asarray(rows))
        features = self.features(limber, split).features.oindex[rows]
        tokens = image_tokens(mapping, torch.from_numpy(np.asarray(features)), device)
        return dict(zip(rows.tolist(), tokens))


def load_lm(limber: Limber):
    return load_language_model(limber.layout.language_model(limber.language_model), limber.torch_device())
