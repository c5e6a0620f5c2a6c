"""Each stage's settings, declared once: a typed dataclass per stage whose defaults are the embedded
demo's. ``pipeline.settings`` builds the profiles from these defaults (the paper profile lists its
differences), the core functions take the dataclass, and ``assets/config.py`` builds the Dagster
config classes (the launchpad's fields, types, defaults and descriptions) from the same fields. A
new setting is one field here, plus its use.
"""

from dataclasses import MISSING, dataclass, field, fields


def setting(default, description: str = ""):
    """A field with its default and the description the launchpad shows."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"description": description})
    return field(default=default, metadata={"description": description})


def defaults(declaration) -> dict:
    """{name: default} of a stage's declaration: its part of the default profile."""
    return {
        f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        for f in fields(declaration)
    }


@dataclass(frozen=True)
class TrainConfig:
    """How one linear map is trained: AdamW with linear warm-up and decay, gradient clipping,
    micro-batches accumulated to the batch, shuffle buffers of cached feature chunks."""

    # batch_size 8: three seeds per map fit the demo's 15 minutes with the same 120 updates as one
    # seed at batch 16 (docs/results.md: the demo's time and results).
    steps: int = setting(120, "optimizer steps")
    batch_size: int = setting(8, "examples per optimizer step")
    micro_batch_size: int = setting(0, "examples per forward pass; gradients accumulate to batch_size (0: all)")
    lr: float = setting(2e-3, "peak AdamW learning rate")
    warmup_steps: int = setting(30, "steps of linear warm-up, then linear decay to zero")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    grad_clip: float = setting(1.0, "gradient norm clipped to this")
    dropout: float = setting(0.1, "on the projected image embeddings")
    max_caption_tokens: int = setting(16, "caption tokens trained on, EOS included")
    buffer_chunks: int = setting(64, "feature chunks shuffled together")
    # One map per seed (its initial weights, dropout and batch order): the spread of training enters
    # every metric's interval and the ranking (docs/uncertainty.md).
    seeds: list[int] = setting([0, 1, 2], "one map per seed (initial weights, dropout, batch order), each stored apart")
    checkpoint_every: int = setting(50, "steps between checkpoints (a rerun resumes from the last)")
    # How a map is trained, not what: the same batches and weights under any count (up to float
    # rounding), so neither is part of the map's key, and a checkpoint resumes under another count.
    processes: int = setting(
        1, "data-parallel processes, one per GPU (0: every GPU of the machine or pod; on a CPU, 1)"
    )
    collective_timeout_s: int = setting(600, "seconds a process waits on the others before the step fails")

    # Settings that do not change the trained weights: not in a map's key.
    NOT_IN_KEY = ("seeds", "processes", "collective_timeout_s")

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)


@dataclass(frozen=True)
class AdapterConfig:
    """The tuned baseline (MAGMA's recipe): a bottleneck adapter after each feed-forward block of
    the frozen LM, trained with the map on ``TrainConfig``'s data, steps and batch."""

    reduction: int = setting(4, "adapter bottleneck: d -> d / reduction (MAGMA: 4)")
    seeds: list[int] = setting([0], "one tuned baseline per seed")


@dataclass(frozen=True)
class TrainReportConfig:
    """How the training assets report: loss lines, the final-loss window, and validation captions
    decoded from the paper's prompt and from none. None of these change the trained weights."""

    log_every: int = setting(50, "steps between loss lines in the log")
    final_loss_window: int = setting(20, "steps averaged for final_loss")
    sample_captions: int = setting(8, "validation captions in metadata")
    sample_caption_tokens: int = setting(12, "their length in tokens")
    sample_prompt: str = setting("A picture of", "prompt of the validation captions")


@dataclass(frozen=True)
class ManifestConfig:
    """How a dataset part's manifest is read: the settings a reader takes (its ``OPTIONS``), and a
    cap on the images for smoke runs."""

    val_size: int = setting(500, "easy-vqa: images carved from train for choices")
    seed: int = setting(0, "easy-vqa: seed of the validation carve-out")
    max_images: int = setting(0, "keep only the first N images of each split (0: all); for smoke runs")


@dataclass(frozen=True)
class ExtractionConfig:
    """How image features are computed and stored."""

    batch_size: int = setting(16, "images per encoder forward pass")
    chunk_rows: int = setting(256, "rows per Zarr chunk, the unit of resume")
    # On a CPU the forward's threads fill every core, so a decoding worker cannot hide the decoding
    # and only adds its start and its transfers: 0 workers there (bench/extraction.py, BENCHMARKS.md).
    workers: int = setting(0, "DataLoader processes decoding images (0: the main process)")


@dataclass(frozen=True)
class CaptioningConfig:
    """Greedy captions from the image tokens and a prompt."""

    # A 135M LM continues "A picture of" with its own prior and mostly ignores the image tokens (the
    # linear_map asset's validation captions show both prompts), so the demo captions from the image
    # tokens alone, as it was trained; the paper profile uses LiMBeR's prompt.
    prompt: str = setting("", "text after the image tokens")
    max_new_tokens: int = setting(8, "tokens decoded per caption")
    batch_size: int = setting(50, "images captioned per LM call")


@dataclass(frozen=True)
class CaptionScoringConfig:
    """Where CLIP-S finds its weights; the other caption metrics take no settings."""

    clip_weights: str = setting("", "local file of open_clip ViT-B-32-quickgelu OpenAI weights (else HF cache)")


@dataclass(frozen=True)
class VqaConfig:
    """Few-shot VQA: which questions, how many trials of solved examples, how answers are decoded."""

    # About 300 questions (whole images until 300 are taken): one map's accuracy moves more between
    # training seeds and few-shot draws than the image sample's interval is wide, so the demo's
    # time goes to runs rather than questions (docs/uncertainty.md).
    questions: int = setting(300, "all questions of seeded random eval images, until this many are taken (0: all)")
    seed: int = setting(0, "seed of the images asked about")
    trial_seeds: list[int] = setting(
        [0, 1],
        "few-shot trials, each its own draw of solved examples, paired in turn with the training seeds "
        "(runs: the larger of the two counts; 0-shot: none)",
    )
    batch_size: int = setting(200, "questions per LM call (their images' prefixes are prefilled together)")
    max_new_tokens: int = setting(4, "tokens decoded per open-ended answer")
    support_images: int = setting(0, "solved examples come from a seeded run of this many support images (0: all)")
    closed_vocabulary: int = setting(
        13,
        "also answer among the support split's this many most frequent answers, ranked by the LM's likelihood "
        "(easy-vqa has 13; VQAv2's standard list 3,129); 0: open-ended answers only",
    )


@dataclass(frozen=True)
class ReadoutConfig:
    """The nearest vocabulary tokens of each image token, for a seeded sample of images."""

    images: int = setting(200, "seeded sample of readable images read out")
    nearest: int = setting(5, "vocabulary tokens kept per image token")
    batch_size: int = setting(50, "images per forward pass")
    seed: int = setting(0, "seed of the image sample")


@dataclass(frozen=True)
class GalleryConfig:
    """A seeded sample of images (every system's caption) and of VQA questions."""

    images: int = setting(6, "captioned images shown")
    questions: int = setting(6, "VQA questions shown")
    seed: int = setting(0, "seed of both samples")


@dataclass(frozen=True)
class IntervalConfig:
    """Seeded bootstrap 95% intervals of every metric, over its images or questions (and runs)."""

    bootstrap_resamples: int = setting(1000, "bootstrap resamples (0: none)")
    bootstrap_seed: int = setting(0, "seed of the resampled images and runs")
