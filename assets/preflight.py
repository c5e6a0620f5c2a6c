"""What the active profile and the sweep file need before a whole-graph run: backbone names that
resolve, weights and dataset files, checked without loading a model, so ``limber demo`` says
everything missing at once instead of failing midway through the graph."""

from assets.config import PROFILE
from assets.partitions import PROFILE_PARTS, discover_parts, sweep_backbones
from assets.resources import Runtime
from pipeline import settings
from pipeline.datasets import how_to_get
from pipeline.encoders import BackboneNameError, backbone_spec
from pipeline.language_models import language_model_spec
from storage.layout import dataset_part, in_prefix


def preflight(runtime: Runtime) -> list[str]:
    """One line per missing piece, naming it and where it goes; empty when the profile can run."""
    problems = []
    for name in dict.fromkeys([*PROFILE["models"]["backbones"], *sweep_backbones(settings.sweep_file())]):
        try:
            missing = backbone_spec(name).missing_weights()
        except BackboneNameError as error:  # unknown, malformed, remote code, no such layer, no config here
            problems.append(f"backbone {name}: {error.detail}")
            continue
        if missing:
            problems.append(f"backbone {name}: {missing}")
    if missing := language_model_spec(runtime.language_model).missing_weights():
        problems.append(f"language model {runtime.language_model}: {missing}")
    present = discover_parts(runtime.data_root)
    for entry in sorted(set(PROFILE_PARTS)):
        if not any(in_prefix(part, entry) for part in present):
            dataset, part = dataset_part(entry)
            problems.append(
                f"dataset part {entry}: no files under {runtime.data_root}/{dataset}. "
                f"{how_to_get(dataset, part.split('.')[0])}"
            )
    return problems
