"""The paper profile, run whole: five backbones at their real architectures (random weights loaded
through LIMBER_WEIGHTS_<NAME>), a GPT-J of tiny width from a local directory, and CC3M / COCO
Karpathy / NoCaps / VQAv2 in their published formats; every asset and partition materialized by
the loop `limber demo` runs. Takes about 6 minutes on 2 cores (docs/paper.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from tests.dataset_fixtures import write_cc3m_training_shards, write_coco, write_nocaps, write_vqav2
from tests.paper_run import write_random_weights

REPO = Path(__file__).resolve().parents[1]
BACKBONES = ["clip_rn50x16", "nfrn50", "nfrn50_random", "beit_large", "beit_large_ft"]
TUNED = "clip_rn50x16+adapters"  # the MAGMA-style baseline, on MAGMA's encoder
SYSTEMS = [*BACKBONES, TUNED, "blind"]


def _run_paper_profile(command: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "LIMBER_PROFILE": "paper", "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, prepared_lm):
    root = tmp_path_factory.mktemp("paper")
    data = root / "datasets"
    parts = write_cc3m_training_shards(data, train_shards=3, val_shards=1, samples=6)
    write_coco(data), write_nocaps(data), write_vqav2(data)
    weights = write_random_weights(root / "weights", AutoTokenizer.from_pretrained(prepared_lm / "checkpoint"))
    summary = root / "summary.json"
    done = _run_paper_profile(
        [sys.executable, "-m", "tests.paper_run", str(summary)],
        {"LIMBER_DATA": str(data), "LIMBER_STORAGE": str(root / "storage"), **weights},
        timeout=2400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(summary.read_text()), root / "storage", parts


def test_every_asset_and_partition_is_materialized(paper_run):
    summary, _, parts = paper_run
    assert summary["preflight"] == []
    for asset, partitions in summary["partitions"].items():
        assert partitions["materialized"] == partitions["expected"], asset
    features = summary["partitions"]["image_features"]["expected"]
    assert len(features) == 5 * 8 and {key.split("|")[0] for key in features} == set(BACKBONES)
    assert set(parts) <= {p for p in summary["partitions"]["manifests"]["expected"]}
    assert len(summary["partitions"]["vqa_answers"]["expected"]) == 7 * 4
    assert summary["partitions"]["adapters"]["materialized"] == ["clip_rn50x16"]
    assert summary["partitions"]["image_prompt_readout"]["materialized"] == sorted([*BACKBONES, TUNED])


def test_every_check_passes(paper_run):
    summary, _, _ = paper_run
    checks = {(step["label"], name): passed for step in summary["steps"] for name, passed in step["checks"].items()}
    assert {name for _, name in checks} >= {
        "manifest_valid",
        "features_valid",
        "loss_decreased",
        "captions_non_empty",
        "metrics_in_range",
        "accuracy_in_range",
        "table_complete",
    }
    assert all(checks.values()), [key for key, passed in checks.items() if not passed]


def test_features_have_the_paper_shapes(paper_run):
    summary, _, _ = paper_run
    shapes = {
        step["label"].split("|")[0].split("[")[1]: step["metadata"]["shape"]
        for step in summary["steps"]
        if step["asset"] == "image_features" and "cc3m.val" in step["label"]
    }
    assert shapes == {
        "clip_rn50x16": "(6, 144, 3072)",
        "nfrn50": "(6, 1, 2048)",
        "nfrn50_random": "(6, 1, 2048)",
        "beit_large": "(6, 196, 1024)",
        "beit_large_ft": "(6, 196, 1024)",
    }


def test_training_spans_shards_and_shuffle_buffers(paper_run):
    summary, _, _ = paper_run
    maps = {step["label"]: step["metadata"] for step in summary["steps"] if step["asset"] == "linear_map"}
    assert len(maps) == 5
    for label, metadata in maps.items():
        assert metadata["train_parts"] == 3 and metadata["shuffle_buffers"] > 1 and metadata["steps"] == 16, label
    (tuned,) = [step["metadata"] for step in summary["steps"] if step["asset"] == "adapters"]
    assert tuned["train_parts"] == 3 and tuned["steps"] == 16
    # CLIP's 3072 -> GPT-J width 64 per grid token, a LayerNorm, and 2 adapters 64 -> 16 -> 64.
    assert tuned["trained_parameters"] == maps["linear_map[clip_rn50x16]"]["trained_parameters"] + 2 * 64 + 2 * (
        64 * 16 + 16 + 16 * 64 + 64
    )


def test_readout_and_gallery_run_on_the_paper_shapes(paper_run):
    summary, storage, _ = paper_run
    tokens = pd.read_parquet(storage / "image_prompt_readout" / "gpt-j-6b" / TUNED / "nearest_tokens.parquet")
    assert sorted(tokens["position"].unique()) == list(range(144))  # one row per CLIP grid token
    (gallery,) = [step["metadata"] for step in summary["steps"] if step["asset"] == "caption_gallery"]
    assert (
        "data:image/png;base64" in gallery["captioning_gallery"] and "data:image/png;base64" in gallery["vqa_gallery"]
    )
    table = pd.read_parquet(storage / "gallery" / "gpt-j-6b" / "gallery.parquet")
    assert set(table["system"]) == {*SYSTEMS, "reference"}


def test_the_metric_table_has_every_system_and_metric(paper_run):
    _, storage, _ = paper_run
    tidy = pd.read_parquet(storage / "metrics" / "metrics.parquet")
    caption_metrics = ["CIDEr-D", "BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CLIP-S", "RefCLIP-S"]
    for system in SYSTEMS:
        rows = tidy[tidy["system"] == system]
        coco = set(rows[(rows["dataset"] == "coco") & (rows["split"] == "karpathy_test")]["metric"])
        nocaps = set(rows[(rows["dataset"] == "nocaps") & (rows["split"] == "val")]["metric"])
        assert set(caption_metrics) <= coco, system
        assert set(caption_metrics) <= nocaps, system
        for domain in ("in-domain", "near-domain", "out-domain"):
            assert f"CIDEr-D ({domain})" in nocaps, (system, domain)
        vqa = rows[(rows["task"] == "vqa") & (rows["metric"] == "VQA accuracy")]
        assert sorted(vqa["shots"]) == [0, 1, 2, 4], system
        assert {"VQA accuracy (yes/no)", "VQA accuracy (number)", "VQA accuracy (other)"} <= set(rows["metric"])
    numbers = tidy[~tidy["metric"].isin(["CLIP-S", "RefCLIP-S"])]
    assert numbers["value"].notna().all()
    clip = tidy[tidy["metric"].isin(["CLIP-S", "RefCLIP-S"])]
    assert len(clip) == len(SYSTEMS) * 2 * 2
    assert clip["value"].isna().all() and clip["note"].str.contains("CLIP ViT-B/32 weights").all()


def test_paper_demo_without_weights_or_data_says_what_is_missing(tmp_path):
    done = _run_paper_profile(
        [sys.executable, "-m", "assets.cli", "demo"],
        {
            "LIMBER_DATA": str(tmp_path / "empty"),
            "LIMBER_STORAGE": str(tmp_path / "storage"),
            "DAGSTER_HOME": str(tmp_path),
            "HF_HOME": str(tmp_path / "hf"),
        },
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    for name in ("clip_rn50x16", "nfrn50", "beit_large", "beit_large_ft", "gpt-j-6b"):
        assert f"{name}: " in done.stderr and f"LIMBER_WEIGHTS_{name.upper().replace('-', '_')}" in done.stderr
    assert "nfrn50_random" not in done.stderr  # random init needs nothing
    for part in ("cc3m.train", "cc3m.val", "coco.karpathy_test", "nocaps.val", "vqav2.val", "vqav2.train"):
        assert f"dataset part {part}: no files" in done.stderr
    assert "dataset_coco.json" in done.stderr and "img2dataset" in done.stderr
    assert not (tmp_path / "storage").exists()  # nothing was started
