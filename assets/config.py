"""All settings, in one place: typed Dagster config whose defaults come from a named profile.

``default`` is the embedded demo (easy-vqa, EfficientNet-Lite0, SmolLM2-135M, 2 CPU cores);
``paper`` is LiMBeR's recipe (NOTES section 1). The profile is picked by the environment variable
``LIMBER_PROFILE`` when the Definitions load; any single value can still be changed per run in the
Dagster launchpad (or ``run_config`` in Python).
"""

import os

import dagster as dg
from pydantic import Field

# The embedded demo: easy-vqa, EfficientNet-Lite0 (and its random twin), SmolLM2-135M, 2 CPU cores.
DEFAULT: dict[str, dict] = {
    "models": {"backbones": ["efficientnet_lite0", "efficientnet_lite0_random"], "language_model": "smollm2-135m"},
    # Dataset parts are "dataset.split[.shard]" keys; "train" names a prefix: every shard under it.
    "datasets": {
        "train": "easy_vqa.train", "validation": "easy_vqa.val", "captioning": ["easy_vqa.val", "easy_vqa.test"],
        "vqa": "easy_vqa.test", "vqa_support": "easy_vqa.train", "val_size": 500, "seed": 0,
    },
    "extraction": {"batch_size": 16, "chunk_rows": 256},
    "training": {
        "steps": 120, "batch_size": 16, "micro_batch_size": 0, "lr": 2e-3, "warmup_steps": 30, "weight_decay": 0.0,
        "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "dropout": 0.1, "max_caption_tokens": 16,
        "buffer_chunks": 64, "seed": 0, "checkpoint_every": 50, "sample_captions": 8, "log_every": 50,
    },
    # A 135M LM continues "A picture of" with its own prior and mostly ignores the image tokens
    # (see the linear_map asset's validation captions, which show both prompts), so the embedded
    # demo captions from the image tokens alone, as it was trained.
    "captioning": {"prompt": "", "max_new_tokens": 8, "batch_size": 50},
    "vqa": {"questions": 150, "seed": 0, "batch_size": 25, "max_new_tokens": 4, "support_images": 0},
}  # fmt: skip

# LiMBeR's backbones, GPT-J, data and recipe (NOTES section 1), as differences from the default.
PAPER_CHANGES: dict[str, dict] = {
    "models": {
        "backbones": ["clip_rn50x16", "nfrn50", "nfrn50_random", "beit_large", "beit_large_ft"],
        "language_model": "gpt-j-6b",
    },
    "datasets": {
        "train": "cc3m.train", "validation": "cc3m.val", "captioning": ["coco.karpathy_test", "nocaps.val"],
        "vqa": "vqav2.val", "vqa_support": "vqav2.train", "val_size": 0,
    },
    "extraction": {"batch_size": 64, "chunk_rows": 1024},
    # 15,000 steps at an effective batch of about 2048 (16 A100s in the paper; here 128 micro-batches of 16).
    "training": {
        "steps": 15000, "batch_size": 2048, "micro_batch_size": 16, "lr": 8e-4, "warmup_steps": 100,
        "max_caption_tokens": 64, "buffer_chunks": 16, "checkpoint_every": 500,
    },
    "captioning": {"prompt": "A picture of", "max_new_tokens": 30, "batch_size": 64},
    # All VQAv2 val questions; solved examples from a pool of 1,024 VQAv2 train images (CLIP
    # features: about 0.9 GB in memory).
    "vqa": {"questions": 0, "batch_size": 32, "max_new_tokens": 10, "support_images": 1024},
}  # fmt: skip


def _with_changes(base: dict[str, dict], changes: dict[str, dict]) -> dict[str, dict]:
    return {section: {**values, **changes.get(section, {})} for section, values in base.items()}


PROFILES: dict[str, dict[str, dict]] = {"default": DEFAULT, "paper": _with_changes(DEFAULT, PAPER_CHANGES)}
# Nightly re-evaluation (03:00 in the schedule's timezone); LIMBER_EVAL_CRON overrides it.
EVALUATION_CRON = os.environ.get("LIMBER_EVAL_CRON", "0 3 * * *")

PROFILE_ENV = "LIMBER_PROFILE"


def active_profile_name() -> str:
    name = os.environ.get(PROFILE_ENV, "default")
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not a profile; choose one of {sorted(PROFILES)}")
    return name


PROFILE = PROFILES[active_profile_name()]


class DatasetConfig(dg.Config):
    val_size: int = Field(PROFILE["datasets"]["val_size"], description="easy-vqa: images carved from train for choices")
    seed: int = Field(PROFILE["datasets"]["seed"], description="easy-vqa: seed of the validation carve-out")
    max_images: int = Field(0, description="keep only the first N images of each split (0: all); for smoke runs")


class ExtractionConfig(dg.Config):
    batch_size: int = Field(PROFILE["extraction"]["batch_size"], description="images per encoder forward pass")
    chunk_rows: int = Field(PROFILE["extraction"]["chunk_rows"], description="rows per Zarr chunk, the unit of resume")


class TrainingConfig(dg.Config):
    steps: int = PROFILE["training"]["steps"]
    batch_size: int = PROFILE["training"]["batch_size"]
    micro_batch_size: int = Field(
        PROFILE["training"]["micro_batch_size"],
        description="examples per forward pass; gradients accumulate to batch_size (0: all)",
    )
    lr: float = Field(PROFILE["training"]["lr"], description="peak AdamW learning rate")
    warmup_steps: int = PROFILE["training"]["warmup_steps"]
    weight_decay: float = PROFILE["training"]["weight_decay"]
    beta1: float = PROFILE["training"]["beta1"]
    beta2: float = PROFILE["training"]["beta2"]
    grad_clip: float = PROFILE["training"]["grad_clip"]
    dropout: float = Field(PROFILE["training"]["dropout"], description="on the projected image embeddings")
    max_caption_tokens: int = PROFILE["training"]["max_caption_tokens"]
    buffer_chunks: int = Field(PROFILE["training"]["buffer_chunks"], description="feature chunks shuffled together")
    seed: int = PROFILE["training"]["seed"]
    checkpoint_every: int = PROFILE["training"]["checkpoint_every"]
    sample_captions: int = Field(PROFILE["training"]["sample_captions"], description="validation captions in metadata")
    log_every: int = Field(PROFILE["training"]["log_every"], description="steps between loss lines in the log")


class CaptioningConfig(dg.Config):
    prompt: str = Field(PROFILE["captioning"]["prompt"], description="text after the image tokens")
    max_new_tokens: int = PROFILE["captioning"]["max_new_tokens"]
    batch_size: int = PROFILE["captioning"]["batch_size"]


class VqaConfig(dg.Config):
    questions: int = Field(PROFILE["vqa"]["questions"], description="fixed random subset of eval questions (0: all)")
    seed: int = Field(PROFILE["vqa"]["seed"], description="seed of the subset and of the solved examples")
    batch_size: int = PROFILE["vqa"]["batch_size"]
    max_new_tokens: int = PROFILE["vqa"]["max_new_tokens"]
    support_images: int = Field(
        PROFILE["vqa"]["support_images"],
        description="solved examples come from a seeded run of this many support images (0: all)",
    )


class CaptionMetricsConfig(dg.Config):
    clip_weights: str = Field(
        "", description="local file of open_clip ViT-B-32-quickgelu OpenAI weights (else HF cache)"
    )
