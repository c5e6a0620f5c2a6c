"""bench/benchmark.py: the small size runs end to end on CPU, its FLOPs formula counts the real
model's parameters, and the step it times is the training step (checkpointed, map-only gradients)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPTJConfig, GPTJForCausalLM

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmark", ROOT / "bench" / "benchmark.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_small_benchmark_runs_on_cpu_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "benchmark.py"), "--device", "cpu", "--iters", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "SMALL size" in run.stdout and "n/a (CPU)" in run.stdout
    result = json.loads(out.read_text())
    assert {"date", "device", "device_name", "torch", "size", "iters", "training", "features"} <= result.keys()
    assert result["size"] == "small" and result["device"] == "cpu"
    train, features = result["training"], result["features"]
    for value in (
        train["tokens_per_s"],
        train["step_s"],
        features["forward_images_per_s"],
        features["encode_images_per_s"],
        train["final_loss"],
    ):
        assert math.isfinite(value) and value > 0
    assert (train["batch"], train["image_tokens"], train["caption_tokens"]) == (2, 144, 32)
    assert train["tokens_per_s"] == pytest.approx(2 * 176 / train["step_s"])
    assert train["mfu"] is None and train["peak_bytes"] is None
    assert features["image_size"] == 384 and features["batch"] == 2


def test_param_count_matches_the_built_models():
    small = GPTJConfig(**bench.LM_SIZES["small"])
    assert sum(bench.lm_param_counts(small).values()) == sum(p.numel() for p in GPTJForCausalLM(small).parameters())
    paper = GPTJConfig(**bench.LM_SIZES["paper"])
    with torch.device("meta"):  # the real 6B architecture, no memory
        built = sum(p.numel() for p in GPTJForCausalLM(paper).parameters())
    assert sum(bench.lm_param_counts(paper).values()) == built == 6_050_882_784


def test_flops_per_token_for_gpt_j_6b():
    paper = GPTJConfig(**bench.LM_SIZES["paper"])
    map_params = 3072 * 4096 + 4096  # Linear(3072, 4096)
    # 4 x (all parameters but the 50400 x 4096 input embedding) + attention + the map over 144 of 176 tokens.
    expected = 4 * (6_050_882_784 - 50400 * 4096) + 12 * 28 * 176 * 4096 + 4 * map_params * 144 / 176
    assert bench.train_flops_per_token(paper, 176, map_params, 144) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(2.366e10, rel=1e-3)


@pytest.mark.parametrize("checkpointing, passes", [(True, 2), (False, 1)])
def test_timed_step_trains_only_the_map_and_really_checkpoints(checkpointing, passes):
    lm = bench.build_lm("small", "cpu", checkpointing)
    step, linear_map, seq_len = bench.make_step(lm, batch=2, caption_len=8, device="cpu")
    calls = []
    # HF keeps a block's own hooks outside the checkpoint, and the recompute stops once it has the
    # tensors backward needs: count the start of each block's first submodule.
    for block in lm.transformer.h:
        block.attn.register_forward_pre_hook(lambda *_: calls.append(1))
    assert math.isfinite(step()) and seq_len == 144 + 8
    assert len(calls) == passes * lm.config.n_layer  # checkpointing reruns each block in backward
    assert linear_map.proj.weight.grad is not None
    assert all(not p.requires_grad for p in lm.parameters())


def test_peak_flops_table():
    assert bench.peak_bf16_flops("cpu") is None


def test_scale_simulation_prints_growth_ratios(tmp_path):
    out = tmp_path / "sim.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "scale_simulation.py"),
            "--rows",
            "2000",
            "6000",
            "--shard-rows",
            "1000",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "growth (rows x3)" in run.stdout
    for step in ("training_set", "batch_plan", "register_parts", "sensor_tick"):
        assert f"| {step} |" in run.stdout
    small, large = json.loads(out.read_text())
    assert (small["shards"], large["shards"]) == (2, 6)
    assert large["trainable_rows"] == 6000 - 6000 // 50  # one row in 50 is unreadable


def test_paper_scale_derives_each_stage_from_measured_costs(tmp_path):
    out = tmp_path / "scale.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paper_scale.py"), "--backbones", "nfrn50", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    measured = result["measured"]["nfrn50"]
    assert measured["flops_per_image"] > 1e10 and measured["host_s_per_image"] > 0
    stages = {row["stage"].split(" ")[0]: row for row in result["stages"]}
    assert set(stages) == {"image_features", "linear_map", "captions", "vqa_answers"}
    # Raw float16 NFRN50 features of all of CC3M: 3,318,333 x 2048 x 2 bytes.
    assert stages["image_features"]["written_gb"] == pytest.approx(3_318_333 * 4096 / 1e9)
    assert stages["image_features"]["gpu_h"] == pytest.approx(
        3_318_333 * measured["flops_per_image"] / (0.4 * 989e12) / 3600
    )
    assert "| nfrn50 | linear_map" in run.stdout
