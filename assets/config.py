"""The typed Dagster config of each asset; defaults come from the active profile (``pipeline.settings``).

``LIMBER_PROFILE`` picks the profile when the Definitions load; any single value can still be
changed per run in the Dagster launchpad (or ``run_config`` in Python).
"""

import dagster as dg
from pydantic import Field

from pipeline import settings

PROFILE = settings.active_profile()


class DatasetConfig(dg.Config):
    val_size: int = Field(PROFILE["datasets"]["val_size"], description="easy-vqa: images carved from train for choices")
    seed: int = Field(PROFILE["datasets"]["seed"], description="easy-vqa: seed of the validation carve-out")
    max_images: int = Field(0, description="keep only the first N images of each split (0: all); for smoke runs")


class ExtractionConfig(dg.Config):
    batch_size: int = Field(PROFILE["extraction"]["batch_size"], description="images per encoder forward pass")
    chunk_rows: int = Field(PROFILE["extraction"]["chunk_rows"], description="rows per Zarr chunk, the unit of resume")
    workers: int = Field(
        PROFILE["extraction"]["workers"], description="DataLoader processes decoding images (0: the main process)"
    )


_TRAIN, _REPORT = PROFILE["training"], PROFILE["training_report"]


class TrainingConfig(dg.Config):
    steps: int = _TRAIN["steps"]
    batch_size: int = _TRAIN["batch_size"]
    micro_batch_size: int = Field(
        _TRAIN["micro_batch_size"], description="examples per forward pass; gradients accumulate to batch_size (0: all)"
    )
    lr: float = Field(_TRAIN["lr"], description="peak AdamW learning rate")
    warmup_steps: int = _TRAIN["warmup_steps"]
    weight_decay: float = _TRAIN["weight_decay"]
    beta1: float = _TRAIN["beta1"]
    beta2: float = _TRAIN["beta2"]
    grad_clip: float = _TRAIN["grad_clip"]
    dropout: float = Field(_TRAIN["dropout"], description="on the projected image embeddings")
    max_caption_tokens: int = _TRAIN["max_caption_tokens"]
    buffer_chunks: int = Field(_TRAIN["buffer_chunks"], description="feature chunks shuffled together")
    seeds: list[int] = Field(
        _TRAIN["seeds"], description="one map per seed (initial weights, dropout, batch order), each stored apart"
    )
    checkpoint_every: int = _TRAIN["checkpoint_every"]
    # How the map is trained, not what: the same batches and weights under any count (up to float
    # rounding), so these are not part of the map's key and a checkpoint resumes under another count.
    processes: int = Field(
        _TRAIN["processes"],
        description="data-parallel processes, one per GPU (0: every GPU of the machine or pod; on a CPU, 1)",
    )
    collective_timeout_s: int = Field(
        _TRAIN["collective_timeout_s"], description="seconds a process waits on the others before the step fails"
    )
    # Reporting only: these do not change the weights, so they are not part of the map's key.
    log_every: int = Field(_REPORT["log_every"], description="steps between loss lines in the log")
    final_loss_window: int = Field(_REPORT["final_loss_window"], description="steps averaged for final_loss")
    sample_captions: int = Field(_REPORT["sample_captions"], description="validation captions in metadata")
    sample_caption_tokens: int = Field(_REPORT["sample_caption_tokens"], description="their length in tokens")
    sample_prompt: str = Field(_REPORT["sample_prompt"], description="prompt of the validation captions")

    def weight_settings(self, seed: int) -> dict:
        """The settings one seed's trained weights depend on."""
        how = {*settings.DEFAULT["training_report"], "seeds", "processes", "collective_timeout_s"}
        return {**self.model_dump(exclude=how), "seed": seed}

    def seed_list(self) -> list[int]:
        """The seeds, each once; at least one."""
        if not self.seeds:
            raise ValueError("training.seeds is empty: give at least one seed, e.g. [0]")
        return list(dict.fromkeys(self.seeds))


class AdaptersConfig(TrainingConfig):
    """The tuned baseline trains on the same data, steps and batch as the linear map (the same
    fields and defaults), plus the adapters' bottleneck."""

    reduction: int = Field(PROFILE["adapters"]["reduction"], description="adapter bottleneck: d -> d / reduction")
    seeds: list[int] = Field(PROFILE["adapters"]["seeds"], description="one tuned baseline per seed")


class CaptioningConfig(dg.Config):
    prompt: str = Field(PROFILE["captioning"]["prompt"], description="text after the image tokens")
    max_new_tokens: int = PROFILE["captioning"]["max_new_tokens"]
    batch_size: int = PROFILE["captioning"]["batch_size"]


class VqaConfig(dg.Config):
    questions: int = Field(
        PROFILE["vqa"]["questions"],
        description="all questions of seeded random eval images, until this many are taken (0: all)",
    )
    seed: int = Field(PROFILE["vqa"]["seed"], description="seed of the images asked about")
    trial_seeds: list[int] = Field(
        PROFILE["vqa"]["trial_seeds"],
        description="few-shot trials, each its own draw of solved examples, paired in turn with the training "
        "seeds (runs: the larger of the two counts; 0-shot: none)",
    )
    batch_size: int = PROFILE["vqa"]["batch_size"]
    max_new_tokens: int = PROFILE["vqa"]["max_new_tokens"]
    support_images: int = Field(
        PROFILE["vqa"]["support_images"],
        description="solved examples come from a seeded run of this many support images (0: all)",
    )
    closed_vocabulary: int = Field(
        PROFILE["vqa"]["closed_vocabulary"],
        description="also answer among the support split's this many most frequent answers, ranked by the "
        "LM's likelihood (easy-vqa has 13; VQAv2's standard list 3,129); 0: open-ended answers only",
    )

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


class IntervalConfig(dg.Config):
    """How the 95% intervals of a metric asset are drawn (part of its key: they are stored)."""

    bootstrap_resamples: int = Field(PROFILE["intervals"]["resamples"], description="bootstrap resamples (0: none)")
    bootstrap_seed: int = Field(PROFILE["intervals"]["seed"], description="seed of the resampled images and runs")

    def interval_settings(self) -> dict:
        return {"resamples": self.bootstrap_resamples, "seed": self.bootstrap_seed}


class ReadoutConfig(IntervalConfig):
    images: int = Field(PROFILE["readout"]["images"], description="seeded sample of readable images read out")
    nearest: int = Field(PROFILE["readout"]["nearest"], description="vocabulary tokens kept per image token")
    batch_size: int = PROFILE["readout"]["batch_size"]
    seed: int = Field(PROFILE["readout"]["seed"], description="seed of the image sample")


class GalleryConfig(dg.Config):
    images: int = Field(PROFILE["gallery"]["images"], description="captioned images shown")
    questions: int = Field(PROFILE["gallery"]["questions"], description="VQA questions shown")
    seed: int = Field(PROFILE["gallery"]["seed"], description="seed of both samples")


class CaptionMetricsConfig(IntervalConfig):
    clip_weights: str = Field(
        "", description="local file of open_clip ViT-B-32-quickgelu OpenAI weights (else HF cache)"
    )
