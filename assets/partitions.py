"""Partitions of the asset graph: backbone, dataset part, and their products.

A dataset *part* is a partition key "dataset.split" or "dataset.split.shard" ("easy_vqa.test",
"cc3m.train.00042"). Parts are dynamic partitions: they are registered when their files appear in
the raw-data folder (the ``new_data`` sensor, or ``register_dataset_parts``), so a new CC3M shard
adds one partition and triggers only its own work.
"""

import dagster as dg

from assets.config import PROFILE
from pipeline.datasets import list_parts
from pipeline.vqa import SHOTS

DATASETS = PROFILE["datasets"]
TRAIN, VALIDATION = DATASETS["train"], DATASETS["validation"]
VQA_EVAL, VQA_SUPPORT = DATASETS["vqa"], DATASETS["vqa_support"]
PROFILE_PARTS = [TRAIN, VALIDATION, VQA_EVAL, VQA_SUPPORT, *DATASETS["captioning"]]

backbone_partitions = dg.StaticPartitionsDefinition(PROFILE["models"]["backbones"])
part_partitions = dg.DynamicPartitionsDefinition(name="dataset_parts")
feature_partitions = dg.MultiPartitionsDefinition({"backbone": backbone_partitions, "split": part_partitions})

BLIND = "blind"  # the baseline that sees no image: same prompts, image tokens left out
system_partitions = dg.StaticPartitionsDefinition([*PROFILE["models"]["backbones"], BLIND])
eval_split_partitions = dg.StaticPartitionsDefinition(DATASETS["captioning"])
caption_partitions = dg.MultiPartitionsDefinition({"system": system_partitions, "split": eval_split_partitions})
shot_partitions = dg.StaticPartitionsDefinition([str(n) for n in SHOTS])
vqa_partitions = dg.MultiPartitionsDefinition({"shots": shot_partitions, "system": system_partitions})


def dataset_part(part_key: str) -> tuple[str, str]:
    """'cc3m.train.00042' -> ('cc3m', 'train.00042')."""
    dataset, part = part_key.split(".", 1)
    return dataset, part


def in_prefix(part_key: str, prefix: str) -> bool:
    """Whether a part belongs to a profile entry: the part itself, or one of its shards."""
    return part_key == prefix or part_key.startswith(prefix + ".")


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
