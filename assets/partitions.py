"""Partitions of the asset graph: backbone, dataset split, and their product."""

import dagster as dg

from assets.config import PROFILE
from pipeline.vqa import SHOTS

DATASET = PROFILE["dataset"]["name"]

backbone_partitions = dg.StaticPartitionsDefinition(PROFILE["models"]["backbones"])
split_partitions = dg.StaticPartitionsDefinition([f"{DATASET}.{s}" for s in PROFILE["dataset"]["splits"]])
feature_partitions = dg.MultiPartitionsDefinition({"backbone": backbone_partitions, "split": split_partitions})


BLIND = "blind"  # the baseline that sees no image: same prompts, image tokens left out
system_partitions = dg.StaticPartitionsDefinition([*PROFILE["models"]["backbones"], BLIND])
eval_split_partitions = dg.StaticPartitionsDefinition(
    [f"{DATASET}.{s}" for s in PROFILE["dataset"]["splits"] if s != "train"]
)
caption_partitions = dg.MultiPartitionsDefinition({"system": system_partitions, "split": eval_split_partitions})
shot_partitions = dg.StaticPartitionsDefinition([str(n) for n in SHOTS])
vqa_partitions = dg.MultiPartitionsDefinition({"shots": shot_partitions, "system": system_partitions})


def dataset_split(split_key: str) -> tuple[str, str]:
    """'easy_vqa.train' -> ('easy_vqa', 'train')."""
    dataset, split = split_key.split(".", 1)
    return dataset, split


def split_key(split: str) -> str:
    return f"{DATASET}.{split}"
