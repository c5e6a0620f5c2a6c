"""The typed Dagster config of each asset; defaults come from the active profile (``pipeline.settings``).

``LIMBER_PROFILE`` picks the profile when the Definitions load; any single value can still be
changed per run in the Dagster launchpad (or ``run_config`` in Python).
"""

import dataclasses
from typing import TypeVar

import dagster as dg
import pydantic
from pydantic import Field

from pipeline import config as stages
from pipeline import settings
from pipeline.config import TrainConfig, TrainReportConfig, defaults

PROFILE = settings.active_profile()
T = TypeVar("T")


def dagster_config(name: str, base: type[dg.Config], *declarations: tuple[type, str], doc: str = "") -> type[dg.Config]:
    """A Dagster config class with the fields of ``declarations`` (``(dataclass, profile section)``
    pairs from ``pipeline.config``): their types and descriptions, defaulting to the active
    profile's values, so the launchpad shows each setting as declared once."""
    model_fields = {
        declared.name: (
            declared.type,
            Field(
                PROFILE[section].get(declared.name, defaults(declaration)[declared.name]),
                description=declared.metadata.get("description") or None,
            ),
        )
        for declaration, section in declarations
        for declared in dataclasses.fields(declaration)
    }
    return pydantic.create_model(
        name, __base__=base, __module__=__name__, __doc__=doc or declarations[0][0].__doc__, **model_fields
    )


class _Declared(dg.Config):
    """A Dagster config built from ``pipeline.config`` declarations, which gives the core its
    dataclass back."""

    def declared(self, declaration: type[T]) -> T:
        """The core's config: these fields' ``declaration`` part (a ``pipeline.config`` dataclass)."""
        return declaration(**self.model_dump(include={f.name for f in dataclasses.fields(declaration)}))


class _Training(_Declared):
    """How a map trains (``pipeline.config.TrainConfig``) and how its asset reports
    (``pipeline.config.TrainReportConfig``)."""

    def train_config(self) -> TrainConfig:
        """The core's config: these fields' ``TrainConfig`` part."""
        return self.declared(TrainConfig)

    def weight_settings(self, seed: int) -> dict:
        """The settings one seed's trained weights depend on."""
        how = {*(f.name for f in dataclasses.fields(TrainReportConfig)), *TrainConfig.NOT_IN_KEY}
        return {**self.model_dump(exclude=how), "seed": seed}

    def seed_list(self) -> list[int]:
        """The seeds, each once; at least one."""
        if not self.seeds:
            raise ValueError("training.seeds is empty: give at least one seed, e.g. [0]")
        return list(dict.fromkeys(self.seeds))


TrainingConfig = dagster_config(
    "TrainingConfig", _Training, (TrainConfig, "training"), (TrainReportConfig, "training_report")
)


AdaptersConfig = dagster_config(
    "AdaptersConfig",
    TrainingConfig,
    (stages.AdapterConfig, "adapters"),
    doc="The tuned baseline trains on the same data, steps and batch as the linear map (the same fields and "
    "defaults), plus the adapters' bottleneck and its own seeds.",
)


class _Vqa(_Declared):
    """Few-shot VQA (``pipeline.config.VqaConfig``)."""

    def runs(self, seeds: list, shots: int) -> list[tuple]:
        """The (training seed, trial seed) runs of a shot count: as many as the larger of the two
        lists, the k-th pairing the k-th training seed with the k-th trial seed (each list cycled),
        so every run is a fresh draw of both the map's training and the solved examples. A crossed
        design (every seed x every trial) would cost their product for the same two sources of
        spread. At 0 shots nothing is drawn: one run per training seed, its trial seed None."""
        if not self.trial_seeds:
            raise ValueError("vqa.trial_seeds is empty: give at least one seed, e.g. [0]")
        trials = list(dict.fromkeys(self.trial_seeds))
        if not shots:
            return [(seed, None) for seed in seeds]
        count = max(len(seeds), len(trials))
        return [(seeds[k % len(seeds)], trials[k % len(trials)]) for k in range(count)]

    def answer_settings(self, trial_seed: int) -> dict:
        """The settings one trial's answers depend on."""
        return {**self.model_dump(exclude={"trial_seeds"}), "trial_seed": trial_seed}


class _Intervals(_Declared):
    """How the 95% intervals of a metric asset are drawn (part of its key: they are stored)."""

    def interval_settings(self) -> dict:
        return {"resamples": self.bootstrap_resamples, "seed": self.bootstrap_seed}


DatasetConfig = dagster_config("DatasetConfig", _Declared, (stages.ManifestConfig, "datasets"))
ExtractionConfig = dagster_config("ExtractionConfig", _Declared, (stages.ExtractionConfig, "extraction"))
CaptioningConfig = dagster_config("CaptioningConfig", _Declared, (stages.CaptioningConfig, "captioning"))
VqaConfig = dagster_config("VqaConfig", _Vqa, (stages.VqaConfig, "vqa"))
IntervalConfig = dagster_config("IntervalConfig", _Intervals, (stages.IntervalConfig, "intervals"))
ReadoutConfig = dagster_config(
    "ReadoutConfig", _Intervals, (stages.ReadoutConfig, "readout"), (stages.IntervalConfig, "intervals")
)
GalleryConfig = dagster_config("GalleryConfig", _Declared, (stages.GalleryConfig, "gallery"))


CaptionMetricsConfig = dagster_config(
    "CaptionMetricsConfig",
    _Intervals,
    (stages.IntervalConfig, "intervals"),
    (stages.CaptionScoringConfig, "caption_scoring"),
)
