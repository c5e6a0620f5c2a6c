"""Each stage's settings are declared once (pipeline/config.py): the profiles, the core's config
and the Dagster launchpad are all built from that declaration."""

import dataclasses

import dagster as dg
import pytest

from assets import config as dagster_configs
from assets.config import TrainingConfig, _Training, dagster_config
from pipeline import config as stages
from pipeline.config import TrainConfig, TrainReportConfig, setting
from pipeline.settings import PROFILES


def launchpad_fields(config_class) -> dict:
    @dg.asset
    def trained(config: config_class) -> None: ...

    return trained.op.config_schema.config_type.fields


def test_a_setting_added_to_the_declaration_reaches_the_launchpad():
    @dataclasses.dataclass(frozen=True)
    class WithLabelSmoothing(TrainConfig):
        label_smoothing: float = setting(0.1, "cross-entropy label smoothing")

    config_class = dagster_config("WithLabelSmoothing", _Training, (WithLabelSmoothing, "training"))
    added = launchpad_fields(config_class)["label_smoothing"]
    assert added.description == "cross-entropy label smoothing" and added.default_value == 0.1
    assert "label_smoothing" not in launchpad_fields(TrainingConfig)  # a copy: the real one is unchanged


def test_the_launchpad_shows_every_declared_setting_with_the_profiles_default():
    fields = launchpad_fields(TrainingConfig)
    for declaration, section in ((TrainConfig, "training"), (TrainReportConfig, "training_report")):
        for declared in dataclasses.fields(declaration):
            assert fields[declared.name].description == declared.metadata["description"]
            assert fields[declared.name].default_value == PROFILES["default"][section][declared.name]


# Each profile section and the stage it configures (``datasets`` also names the parts' roles).
SECTIONS = {
    "training": stages.TrainConfig,
    "training_report": stages.TrainReportConfig,
    "adapters": stages.AdapterConfig,
    "extraction": stages.ExtractionConfig,
    "captioning": stages.CaptioningConfig,
    "caption_scoring": stages.CaptionScoringConfig,
    "vqa": stages.VqaConfig,
    "readout": stages.ReadoutConfig,
    "gallery": stages.GalleryConfig,
    "intervals": stages.IntervalConfig,
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_is_a_valid_config_of_each_declared_stage(profile):
    values = PROFILES[profile]
    for section, declaration in SECTIONS.items():
        assert declaration(**values[section])  # a misspelled setting would raise here
    manifest_fields = {f.name for f in dataclasses.fields(stages.ManifestConfig)}
    assert stages.ManifestConfig(**{k: v for k, v in values["datasets"].items() if k in manifest_fields})


def test_every_launchpad_setting_is_a_declared_one():
    """No Dagster config restates a setting: each field, with its description, is a field of a
    ``pipeline.config`` declaration."""
    declarations = [c for c in vars(stages).values() if dataclasses.is_dataclass(c)]
    declared = {(f.name, f.metadata.get("description")) for d in declarations for f in dataclasses.fields(d)}
    configs = [c for c in vars(dagster_configs).values() if isinstance(c, type) and issubclass(c, dg.Config)]
    assert len(configs) > 8
    for config_class in configs:
        for name, field in config_class.model_fields.items():
            assert (name, field.description) in declared, f"{config_class.__name__}.{name}"


def test_the_core_config_is_the_dagster_configs_training_part():
    config = TrainingConfig(lr=5e-3, log_every=7)
    assert config.train_config() == dataclasses.replace(TrainConfig(**PROFILES["default"]["training"]), lr=5e-3)
    assert "log_every" not in config.weight_settings(0) and config.weight_settings(0)["lr"] == 5e-3
