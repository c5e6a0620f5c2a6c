"""Partitions of the asset graph, and the mappings that say which upstream partitions each reads.

A dataset *part* is a partition key "dataset.split" or "dataset.split.shard" ("easy_vqa.test",
"cc3m.train.00042"). Parts are dynamic partitions: they are registered when their files appear in
the raw-data folder (the ``new_data`` sensor, or ``register_dataset_parts``), so a new CC3M shard
adds one partition and triggers only its own work.

An evaluation partition belongs to a *system*: a backbone with its trained map, or ``blind``, the
LM shown no image. The ``system`` dimension maps exactly onto the ``backbone`` dimension (blind onto
nothing). Dagster's built-in mappings cannot map a dynamic dimension onto a static one or a
single-dimension asset onto one value of a two-dimension one, so the evaluation assets depend on
every part's features, every evaluation manifest and every linear map; what each partition really
reads is in its result's key (``assets/inputs.py``), so nothing is reused stale.
"""

import dagster as dg

from assets.config import PROFILE
from pipeline.datasets import list_parts
from pipeline.vqa import SHOTS
from storage.layout import dataset_part, in_prefix

ROLES = PROFILE["datasets"]  # which part plays which role in the method
TRAIN, VALIDATION = ROLES["train"], ROLES["validation"]
VQA_EVAL, VQA_SUPPORT = ROLES["vqa"], ROLES["vqa_support"]
CAPTIONING = ROLES["captioning"]
PROFILE_PARTS = [TRAIN, VALIDATION, VQA_EVAL, VQA_SUPPORT, *CAPTIONING]
BACKBONES = PROFILE["models"]["backbones"]
BLIND = "blind"  # the baseline that sees no image: same prompts, image tokens left out

backbone_partitions = dg.StaticPartitionsDefinition(BACKBONES)
part_partitions = dg.DynamicPartitionsDefinition(name="dataset_parts")
feature_partitions = dg.MultiPartitionsDefinition({"backbone": backbone_partitions, "part": part_partitions})

system_partitions = dg.StaticPartitionsDefinition([*BACKBONES, BLIND])
captioning_part_partitions = dg.StaticPartitionsDefinition(CAPTIONING)
caption_partitions = dg.MultiPartitionsDefinition({"system": system_partitions, "part": captioning_part_partitions})
shot_partitions = dg.StaticPartitionsDefinition([str(n) for n in SHOTS])
vqa_partitions = dg.MultiPartitionsDefinition({"shots": shot_partitions, "system": system_partitions})

# image_features[backbone, *] -> an evaluation partition of the same system; blind reads none.
SYSTEM_FEATURES = dg.MultiPartitionMapping(
    {
        "backbone": dg.DimensionPartitionMapping("system", dg.StaticPartitionMapping({b: b for b in BACKBONES})),
    }
)


def evaluation_manifests(parts: list[str]) -> dg.PartitionMapping:
    """The manifests an evaluation asset reads: only these parts, never a training shard."""
    return dg.SpecificPartitionsPartitionMapping(sorted(set(parts)))


def discover_parts(data_root: str) -> list[str]:
    """Every part of the profile's datasets present under the raw-data root, as partition keys."""
    found = []
    for dataset in sorted({dataset_part(entry)[0] for entry in PROFILE_PARTS}):
        found += [f"{dataset}.{part}" for part in list_parts(dataset, data_root)]
    return sorted(k for k in found if any(in_prefix(k, entry) for entry in PROFILE_PARTS))


def register_dataset_parts(instance: dg.DagsterInstance, data_root: str) -> list[str]:
    """Adds the parts found on disk to the dynamic partitions; returns the new ones."""
    known = set(instance.get_dynamic_partitions(part_partitions.name))
    new = [k for k in discover_parts(data_root) if k not in known]
    if new:
        instance.add_dynamic_partitions(part_partitions.name, new)
    return new


def registered_parts(instance: dg.DagsterInstance, prefix: str) -> list[str]:
    """The registered parts under a profile entry ("cc3m.train" -> every train shard), sorted."""
    return sorted(k for k in instance.get_dynamic_partitions(part_partitions.name) if in_prefix(k, prefix))
