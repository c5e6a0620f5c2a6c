"""What an evaluation asset needs to run one *system*: a trained backbone, or the blind baseline."""

from dataclasses import dataclass

import dagster as dg
from upath import UPath

from assets.datasets import manifests
from assets.image_features import image_features
from assets.language_model import language_model
from assets.linear_map import linear_map
from assets.partitions import BLIND
from assets.records import upstream_path
from assets.resources import Limber
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


@dataclass
class System:
    name: str
    linear_map_dir: UPath | None  # None for the blind baseline

    @property
    def linear_map_hash(self) -> str:
        """Identifies the trained map (its settings hash); "blind" for the baseline."""
        return BLIND if self.linear_map_dir is None else self.linear_map_dir.name

    @classmethod
    def resolve(cls, context: dg.AssetExecutionContext, name: str) -> "System":
        if name == BLIND:
            return cls(name, None)
        return cls(name, upstream_path(context, "linear_map", name))

    def linear_map(self, limber: Limber) -> LinearMap | None:
        return None if self.linear_map_dir is None else LinearMap.load(limber.mirror(self.linear_map_dir).pull())

    def features(self, limber: Limber, part: str) -> FeatureArray:
        return FeatureArray.read(str(limber.layout.image_features(self.name, part)))
