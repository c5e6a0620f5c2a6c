"""Every setting in one place: the named profiles and the ``LIMBER_*`` environment variables.

``default`` is the embedded demo (easy-vqa, EfficientNet-Lite0 and Lite1, SmolLM2-135M, 2 CPU
cores); ``paper`` is LiMBeR's recipe (Merullo et al., ICLR 2023, and its released code), written
as its differences from the default, as nanoGPT's config files are. The Dagster config classes
(``assets/config.py``) take their defaults from the active profile, so any single value can still
be changed per run in the launchpad.

No other module reads a ``LIMBER_*`` variable: they are read here, when asked for, so a test or a
run that sets one sees it.
"""

import os
import re

from pipeline.config import (
    AdapterConfig,
    CaptioningConfig,
    CaptionScoringConfig,
    ExtractionConfig,
    GalleryConfig,
    IntervalConfig,
    ManifestConfig,
    ReadoutConfig,
    TrainConfig,
    TrainReportConfig,
    VqaConfig,
    defaults,
)

DEFAULT: dict[str, dict] = {
    # adapters: the backbones that also get the tuned baseline (map + LayerNorm + adapters, MAGMA's recipe).
    "models": {
        "backbones": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite0_random"],
        "adapters": ["efficientnet_lite0"],
        "language_model": "smollm2-135m",
    },
    # Dataset parts are "dataset.split[.shard]" keys; "train" names a prefix: every shard under it.
    "datasets": {
        # Captioning scores the test split only: the val split's captions cost a minute of the
        # demo's 15 with three seeds per map, and nothing is chosen on them.
        "train": "easy_vqa.train", "validation": "easy_vqa.val", "captioning": ["easy_vqa.test"],
        "vqa": "easy_vqa.test", "vqa_support": "easy_vqa.train",
        "shown": "easy_vqa.test",  # a captioning part: the images the readout and the gallery show
        **defaults(ManifestConfig),  # how a part's manifest is read
    },
    "extraction": defaults(ExtractionConfig),
    # LiMBeR's map and its training loop: declared, with the demo's values, in pipeline/config.py.
    "training": defaults(TrainConfig),
    # The tuned baseline's adapters and its own training seeds.
    "adapters": defaults(AdapterConfig),
    "training_report": defaults(TrainReportConfig),
    "captioning": defaults(CaptioningConfig),
    "caption_scoring": defaults(CaptionScoringConfig),
    "vqa": defaults(VqaConfig),
    "readout": defaults(ReadoutConfig),
    "gallery": defaults(GalleryConfig),
    # GPUs a step's Kubernetes pod asks for: training (linear_map, adapters) trains one map on this
    # many GPUs of one node; every other GPU step (extraction, captions, VQA, readout) takes one, so
    # those fan out across nodes. On one machine the local executor hands out its own GPUs instead.
    "gpus": {"training": 1},
    "intervals": defaults(IntervalConfig),
    # Rows of a table shown in an asset's metadata, and skip reasons listed there.
    "reporting": {"preview_rows": 10, "listed_skips": 100},
}  # fmt: skip

PAPER_CHANGES: dict[str, dict] = {
    "models": {
        "backbones": ["clip_rn50x16", "nfrn50", "nfrn50_random", "beit_large", "beit_large_ft"],
        "adapters": ["clip_rn50x16"],  # MAGMA's own encoder
        "language_model": "gpt-j-6b",
    },
    "datasets": {
        "train": "cc3m.train", "validation": "cc3m.val", "captioning": ["coco.karpathy_test", "nocaps.val"],
        "vqa": "vqav2.val", "vqa_support": "vqav2.train", "val_size": 0, "shown": "coco.karpathy_test",
    },
    # 8 worker processes decode CC3M's JPEGs for one GPU (not measured here: no GPU machine).
    "extraction": {"batch_size": 64, "chunk_rows": 1024, "workers": 8},
    # 15,000 steps at an effective batch of about 2048 (16 A100s in the paper; here 128 micro-batches of 16).
    # One seed: training is the expensive part here (add seeds with `training: {seeds: [0, 1, 2]}`).
    "training": {
        "steps": 15000, "batch_size": 2048, "micro_batch_size": 16, "lr": 8e-4, "warmup_steps": 100,
        "max_caption_tokens": 64, "buffer_chunks": 16, "checkpoint_every": 500, "seeds": [0],
        "processes": 0,  # one per GPU of the node (or of the Kubernetes pod: "gpus" below)
    },
    # LiMBeR trained on 16 A100s; one 8-GPU node per training pod here (multi-node: docs/scale.md).
    "gpus": {"training": 8},
    "training_report": {"log_every": 100},
    "captioning": {"prompt": "A picture of", "max_new_tokens": 30, "batch_size": 64},
    # All VQAv2 val questions; solved examples from a pool of 1,024 VQAv2 train images (CLIP
    # features: about 0.9 GB in memory).
    # Closed-vocabulary answers off: with the 3,129-answer list, each answer of more than one token
    # that can still rank first is scored on its own copy of the question's KV cache (up to
    # thousands of copies per question; how many the bound leaves at GPT-J is not measured),
    # against 10 decoding steps for the open-ended answer.
    "vqa": {
        "questions": 0, "trial_seeds": [0, 1, 2], "batch_size": 32, "max_new_tokens": 10, "support_images": 1024,
        "closed_vocabulary": 0,
    },
}  # fmt: skip


def _with_changes(base: dict[str, dict], changes: dict[str, dict]) -> dict[str, dict]:
    return {section: {**values, **changes.get(section, {})} for section, values in base.items()}


PROFILES: dict[str, dict[str, dict]] = {"default": DEFAULT, "paper": _with_changes(DEFAULT, PAPER_CHANGES)}

# The environment variables, with their defaults.
PROFILE_ENV = "LIMBER_PROFILE"  # which profile the Definitions load
STORAGE_ENV, STORAGE_DEFAULT = "LIMBER_STORAGE", "data"  # root of every stored artifact (folder or URL)
DATA_ENV, DATA_DEFAULT = "LIMBER_DATA", "datasets"  # raw datasets
CACHE_ENV, CACHE_DEFAULT = "LIMBER_CACHE", "~/.cache/limber"  # local copies of object-store checkpoints
EVAL_CRON_ENV, EVAL_CRON_DEFAULT = "LIMBER_EVAL_CRON", "0 3 * * *"  # nightly re-evaluation
EXECUTOR_ENV, EXECUTOR_DEFAULT = "LIMBER_EXECUTOR", "multiprocess"  # or "k8s"
MAX_CONCURRENT_ENV = "LIMBER_MAX_CONCURRENT"  # steps at once per run (unset: the executor's own default)
GPUS_ENV = "LIMBER_GPUS"  # GPUs the local executor hands out (unset: the CUDA devices torch sees)
# "float32" or "bfloat16" reproduces another machine's numerics; "auto": measured on this one
PRECISION_ENV, PRECISION_DEFAULT = "LIMBER_PRECISION", "auto"
SWEEP_ENV, SWEEP_DEFAULT = "LIMBER_SWEEP", "sweep.yaml"  # extra backbones to compare: `backbones: [name, ...]`
WEIGHTS_ENV_PREFIX = "LIMBER_WEIGHTS_"  # + the model's name: a local copy of its weights
REQUIRE_BROWSER_ENV = "LIMBER_REQUIRE_BROWSER"  # "1" in CI: the UI test fails, not skips, without Chromium


def _get(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def profile_name() -> str:
    name = _get(PROFILE_ENV, "default")
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not a profile; choose one of {sorted(PROFILES)}")
    return name


def active_profile() -> dict[str, dict]:
    return PROFILES[profile_name()]


def storage_root() -> str:
    return _get(STORAGE_ENV, STORAGE_DEFAULT)


def data_root() -> str:
    return _get(DATA_ENV, DATA_DEFAULT)


def cache_dir() -> str:
    return _get(CACHE_ENV, CACHE_DEFAULT)


def evaluation_cron() -> str:
    return _get(EVAL_CRON_ENV, EVAL_CRON_DEFAULT)


def executor_name() -> str:
    return _get(EXECUTOR_ENV, EXECUTOR_DEFAULT)


def max_concurrent() -> int | None:
    value = _get(MAX_CONCURRENT_ENV)
    return int(value) if value else None


def gpus() -> int | None:
    value = _get(GPUS_ENV)
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"{GPUS_ENV}={value!r} is not a GPU count: give a whole number such as 8, or unset it")
    return int(value)


def precision() -> str:
    return _get(PRECISION_ENV, PRECISION_DEFAULT)


def sweep_file() -> str:
    return _get(SWEEP_ENV, SWEEP_DEFAULT)


def browser_required() -> bool:
    return _get(REQUIRE_BROWSER_ENV) == "1"


def weights_env(model_name: str) -> str:
    """``gpt-j-6b`` -> ``LIMBER_WEIGHTS_GPT_J_6B``: every character but a letter or digit becomes ``_``."""
    return WEIGHTS_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", model_name.upper())


def weights_path(model_name: str) -> str | None:
    """The local path of a model's weights named by its ``LIMBER_WEIGHTS_<NAME>``, if set."""
    return _get(weights_env(model_name))
