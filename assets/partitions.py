"""Partitions of the asset graph, and the mappings that say which upstream partitions each reads.

A dataset *part* is a partition key "dataset.split" or "dataset.split.shard" ("easy_vqa.test",
"cc3m.train.00042"). Parts are dynamic partitions: they are registered when their files appear in
the raw-data folder (the ``new_data`` sensor, or ``register_dataset_parts``), so a new CC3M shard
adds one partition and triggers only its own work.

Backbones are dynamic partitions too, named as ``pipeline.encoders`` names encoders (an alias,
``timm:...``, ``open_clip:...``, ``hf:...``): the profile's ``models.backbones``, the names in the
sweep file (``LIMBER_SWEEP``, watched by the ``backbone_sweep`` sensor) and any a user adds in the
UI. A new name adds one backbone partition and the systems on it; only its own work then runs.
Removing a name leaves its stored results in place.

An evaluation partition belongs to a *system*: a backbone with its trained map, a backbone with the
tuned baseline's map and adapters (``{backbone}+adapters``, for the profile's ``models.adapters``),
or ``blind``, the LM shown no image. The ``system`` dimension maps onto the ``backbone`` dimension
by name. Dagster's built-in mappings cannot map a system onto another name (a tuned baseline onto
its backbone), a dynamic dimension onto a static one, or a single-dimension asset onto one value of
a two-dimension one, so the evaluation assets depend on every part's features, every evaluation
manifest and every linear map (and ``adapters``, one partition per adapted backbone, on every
backbone's features); what each partition really reads is in its result's key
(``assets/inputs.py``), so nothing is reused stale.
"""

import dagster as dg

from assets.config import PROFILE
from pipeline import settings
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


# A new backbone's work (its map, evaluations, readout) runs once, when its partitions appear and
# their inputs are stored; a stored partition is refreshed by the nightly schedules, not by this.
ON_MISSING = dg.AutomationCondition.on_missing()


def adapted_system(backbone: str) -> str:
    """The tuned baseline's system on a backbone: ``efficientnet_lite0+adapters``."""
    return backbone + ADAPTERS_SUFFIX


def system_backbone(system: str) -> str | None:
    """The backbone whose features a system shows the LM; None for blind."""
    return None if system == BLIND else system.removesuffix(ADAPTERS_SUFFIX)


backbone_partitions = dg.DynamicPartitionsDefinition(name="backbones")
adapter_partitions = dg.StaticPartitionsDefinition(ADAPTED)
part_partitions = dg.DynamicPartitionsDefinition(name="dataset_parts")
feature_partitions = dg.MultiPartitionsDefinition({"backbone": backbone_partitions, "part": part_partitions})

PROFILE_SYSTEMS = [*BACKBONES, *map(adapted_system, ADAPTED), BLIND]  # the profile's; more may be registered
system_partitions = dg.DynamicPartitionsDefinition(name="systems")
image_system_partitions = dg.DynamicPartitionsDefinition(name="image_systems")  # the systems with image tokens
captioning_part_partitions = dg.StaticPartitionsDefinition(CAPTIONING)
caption_partitions = dg.MultiPartitionsDefinition({"system": system_partitions, "part": captioning_part_partitions})
shot_partitions = dg.StaticPartitionsDefinition([str(n) for n in SHOTS])
vqa_partitions = dg.MultiPartitionsDefinition({"shots": shot_partitions, "system": system_partitions})

# image_features[backbone, *] -> the evaluation partitions of the system of the same name; blind reads none.
SYSTEM_FEATURES = dg.MultiPartitionMapping(
    {"backbone": dg.DimensionPartitionMapping("system", dg.IdentityPartitionMapping())}
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


def sweep_backbones(path: str) -> list[str]:
    """The backbone names of a sweep file (``backbones: [name, ...]``); none when there is no file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as file:
            document = yaml.safe_load(file)
    except FileNotFoundError:
        return []
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a YAML sweep file ({' '.join(str(error).split())})") from None
    document = {} if document is None else document  # an empty file
    names = document.get("backbones", []) if isinstance(document, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: expected 'backbones:' with a list of encoder names, e.g. [timm:convnext_tiny.in12k]")
    return names


def register_backbones(instance: dg.DagsterInstance, names: list[str]) -> list[str]:
    """Adds backbones, and the systems on them, to the dynamic partitions; returns the new backbones.
    Names must resolve (``pipeline.encoders.backbone_spec``): check them first."""
    adapted = [adapted_system(b) for b in ADAPTED if b in names]
    wanted = {
        backbone_partitions.name: list(names),
        system_partitions.name: [*names, *adapted, BLIND],
        image_system_partitions.name: [*names, *adapted],
    }
    new_backbones = []
    for partitions_name, keys in wanted.items():
        known = set(instance.get_dynamic_partitions(partitions_name))
        new = list(dict.fromkeys(k for k in keys if k not in known))
        if new:
            instance.add_dynamic_partitions(partitions_name, new)
        if partitions_name == backbone_partitions.name:
            new_backbones = new
    return new_backbones


def registered(instance: dg.DagsterInstance, partitions_def: dg.DynamicPartitionsDefinition) -> list[str]:
    return list(instance.get_dynamic_partitions(partitions_def.name))


def wanted_backbones(instance: dg.DagsterInstance) -> list[str]:
    """The profile's backbones, the sweep file's and those registered by hand (the UI), in that order."""
    names = [*BACKBONES, *sweep_backbones(settings.sweep_file()), *registered(instance, backbone_partitions)]
    return list(dict.fromkeys(names))


def resolvable(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The names that resolve to an encoder, and why each other one does not."""
    from pipeline.encoders import BackboneNameError, backbone_spec

    good, bad = [], {}
    for name in names:
        try:
            backbone_spec(name)
            good.append(name)
        except BackboneNameError as error:
            bad[name] = error.detail
    return good, bad


def registered_parts(instance: dg.DagsterInstance, prefix: str) -> list[str]:
    """The registered parts under a profile entry ("cc3m.train" -> every train shard), sorted."""
    return sorted(k for k in instance.get_dynamic_partitions(part_partitions.name) if in_prefix(k, prefix))
