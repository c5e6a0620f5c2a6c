"""Partitions of the asset graph, and the mappings that say which upstream partitions each reads.

A dataset *part* is a partition key "dataset.split" or "dataset.split.shard" ("easy_vqa.test",
"cc3m.train.00042"). Parts are dynamic partitions: they are registered when their files appear in
the raw-data folder (the ``new_data`` sensor, or ``register_dataset_parts``), so a new CC3M shard
adds one partition and triggers only its own work.

An evaluation partition belongs to a *system*: a backbone with its trained map, a backbone with the
tuned baseline's map and adapters (``{backbone}+adapters``, for the profile's ``models.adapters``),
or ``blind``, the LM shown no image. The ``system`` dimension maps exactly onto the ``backbone``
dimension (blind onto nothing). Dagster's built-in mappings cannot map a dynamic dimension onto a
static one or a single-dimension asset onto one value of a two-dimension one, so the evaluation
assets depend on every part's features, every evaluation manifest and every linear map (and
``adapters``, one partition per adapted backbone, on every backbone's features); what each
partition really reads is in its result's key (``assets/inputs.py``), so nothing is reused stale.
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
SHOWN = ROLES["shown"]  # the images the readout and the gallery show
if SHOWN not in CAPTIONING:
    raise ValueError(f"datasets.shown = {SHOWN!r} must be one of the captioning parts {CAPTIONING}")
PROFILE_PARTS = [TRAIN, VALIDATION, VQA_EVAL, VQA_SUPPORT, *CAPTIONING]
BACKBONES = PROFILE["models"]["backbones"]
ADAPTED = PROFILE["models"]["adapters"]  # backbones that also get the tuned (MAGMA-style) baseline
if not set(ADAPTED) <= set(BACKBONES):
    raise ValueError(f"models.adapters {ADAPTED} must be among models.backbones {BACKBONES}")
BLIND = "blind"  # the baseline that sees no image: same prompts, image tokens left out
ADAPTERS_SUFFIX = "+adapters"


def adapted_system(backbone: str) -> str:
    """The tuned baseline's system on a backbone: ``efficientnet_lite0+adapters``."""
    return backbone + ADAPTERS_SUFFIX


def system_backbone(system: str) -> str | None:
    """The backbone whose features a system shows the LM; None for blind."""
    return None if system == BLIND else system.removesuffix(ADAPTERS_SUFFIX)


backbone_partitions = dg.StaticPartitionsDefinition(BACKBONES)
adapter_partitions = dg.StaticPartitionsDefinition(ADAPTED)
part_partitions = dg.DynamicPartitionsDefinition(name="dataset_parts")
feature_partitions = dg.MultiPartitionsDefinition({"backbone": backbone_partitions, "part": part_partitions})

SYSTEMS = [*BACKBONES, *map(adapted_system, ADAPTED), BLIND]
system_partitions = dg.StaticPartitionsDefinition(SYSTEMS)
image_system_partitions = dg.StaticPartitionsDefinition([s for s in SYSTEMS if s != BLIND])  # with image tokens
captioning_part_partitions = dg.StaticPartitionsDefinition(CAPTIONING)
caption_partitions = dg.MultiPartitionsDefinition({"system": system_partitions, "part": captioning_part_partitions})
shot_partitions = dg.StaticPartitionsDefinition([str(n) for n in SHOTS])
vqa_partitions = dg.MultiPartitionsDefinition({"shots": shot_partitions, "system": system_partitions})

# image_features[backbone, *] -> the evaluation partitions of the systems on that backbone; blind reads none.
SYSTEM_FEATURES = dg.MultiPartitionMapping(
    {
        "backbone": dg.DimensionPartitionMapping(
            "system", dg.StaticPartitionMapping({b: {s for s in SYSTEMS if system_backbone(s) == b} for b in BACKBONES})
        ),
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
