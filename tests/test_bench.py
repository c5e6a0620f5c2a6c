"""bench/: the small size runs end to end on CPU, its FLOPs formula counts the real model's
parameters, and what it times is the project's own training step, old and new giving one result."""

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
vqa_bench = bench.sibling("vqa_answers")


def test_small_benchmark_runs_on_cpu_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "benchmark.py"),
            "--device",
            "cpu",
            "--iters",
            "1",
            "--quick",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "SMALL size" in run.stdout
    for key in ("train_step_speedup", "extraction_vs_forward", "cpu_ms_per_image", "vqa_speedup"):
        assert key in run.stdout
    result = json.loads(out.read_text())
    assert {"date", "device", "device_name", "torch", "size", "iters", "training", "extraction", "vqa"} <= result.keys()
    assert result["size"] == "small" and result["device"] == "cpu"
    train = result["training"]
    for value in (train["tokens_per_s"], train["step_s"], train["train_step_speedup"], train["final_loss"]):
        assert math.isfinite(value) and value > 0
    assert (train["batch"], train["image_tokens"], train["caption_tokens"]) == (4, 144, 32)
    assert train["tokens_per_s"] == pytest.approx(4 * 176 / train["step_s"])
    assert train["mfu"] is None and train["peak_bytes"] is None


def test_training_benchmark_times_train_linear_map_old_and_new_with_the_same_weights():
    t = bench.bench_training("small", "cpu", batch=4, micro=2, caption_len=8, warmup=1, iters=2)
    assert (t["batch"], t["micro_batch"], t["image_tokens"], t["caption_tokens"]) == (4, 2, 144, 8)
    assert t["step_s"] > 0 and t["old_step_s"] > 0
    assert t["train_step_speedup"] == pytest.approx(t["old_step_s"] / t["step_s"])
    assert t["max_weight_difference"] < 1e-4 and math.isfinite(t["final_loss"])
    assert t["recompute"] is False and t["activation_bytes_per_token"] is None  # CPU: never recomputes
    assert t["tokens_per_s"] == pytest.approx(4 * 152 / t["step_s"])


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
    head = 4096 * 50400 + 50400
    # 4 x (the blocks and final norm: all but the input embedding and the head) + the head at the 32
    # positions that predict a caption token + attention + the map over 144 of 176 tokens.
    expected = (
        4 * (6_050_882_784 - 50400 * 4096 - head)
        + 4 * head * 32 / 176
        + 12 * 28 * 176 * 4096
        + 4 * map_params * 144 / 176
    )
    assert bench.train_flops_per_token(paper, 176, map_params, 144, 32) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(2.299e10, rel=1e-3)


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA H100 something new", None),
        ("NVIDIA L4", None),
    ],
)
def test_peak_flops_tell_the_h100_forms_apart(name, peak):
    assert bench.peak_bf16_flops("cuda", name) == peak
    assert bench.peak_bf16_flops("cpu", name) is None


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


def test_extraction_benchmark_runs_on_cpu_and_writes_json(tmp_path):
    out = tmp_path / "extraction.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "extraction.py"), "--device", "cpu", "--quick", "--iters", "2"]
        + ["--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "extraction_vs_forward efficientnet_lite0" in run.stdout and "n/a" in run.stdout
    result = json.loads(out.read_text())
    for key in ("extraction_vs_forward", "cpu_ms_per_image", "forward_ms_per_image"):
        assert set(result[key]) == {"efficientnet_lite0"} and result[key]["efficientnet_lite0"] > 0
    assert result["mfu"] == {"efficientnet_lite0": None}
    lite0 = result["backbones"]["efficientnet_lite0"]
    assert lite0["flops_per_image"] > 1e8
    # every worker count is timed in the same run; the headline is the profile's own
    assert set(lite0["extraction_vs_forward_by_workers"]) == {"0", "1"}
    assert lite0["extraction_vs_forward"] == lite0["extraction_vs_forward_by_workers"][str(lite0["workers"])]
    repetitions = lite0["extraction_vs_forward_repetitions"][str(lite0["workers"])]
    assert len(repetitions) == 2 and 0 < min(repetitions)
    assert lite0["extraction_vs_forward"] == sum(repetitions) / 2  # the median of the repetitions' ratios


def test_the_extraction_benchmark_times_the_workers_of_the_profile_made_for_the_device():
    from pipeline.settings import PROFILES

    extraction = bench.sibling("extraction")
    assert extraction.profile_workers("cpu") == PROFILES["default"]["extraction"]["workers"] == 0
    assert extraction.profile_workers("cuda:0") == PROFILES["paper"]["extraction"]["workers"] == 8


def test_the_vqa_benchmark_runs_and_answers_as_the_old_path(prepared_lm):
    result = vqa_bench.run("cpu", iters=1, lm_dir=prepared_lm, images=1)
    assert result["identical_answers"] and result["questions"] == 11  # easy-vqa test image 0
    assert result["vqa_speedup"] == pytest.approx(result["answers_per_s"] / result["old_answers_per_s"])
    assert 1 <= result["tokens_per_row"] <= result["old_tokens_per_row"] == result["max_new_tokens"]
    assert [name for name, _ in vqa_bench.report_rows(result)] == ["vqa_speedup", "VQA tokens/row"]


def test_paper_scale_at_n_gpus_adds_one_ring_all_reduce_per_step_to_a_step_split_n_ways():
    scale = bench.sibling("paper_scale")
    args = scale.parser().parse_args([])
    params = scale.trained_params("nfrn50")
    assert params["map"] == (2048 + 1) * 4096  # Linear(2048, 4096) on the pooled feature
    # and the tuned baseline's: a LayerNorm and 28 adapters 4096 -> 1024 -> 4096
    assert params["adapters"] - params["map"] == 2 * 4096 + 28 * (4096 * 1024 + 1024 + 1024 * 4096 + 4096)
    grad = params["map"] * 4  # float32
    assert scale.allreduce_s(grad, 1, args) == 0
    assert scale.allreduce_s(grad, 8, args) == pytest.approx(50e-6 + 2 * 7 / 8 * grad / 450e9)
    # two nodes: the ring within each node over NVLink, then between the nodes over their network
    assert scale.allreduce_s(grad, 16, args) == pytest.approx(50e-6 + 2 * 7 / 8 * grad / 450e9 + grad / 400e9)
    training = {"stage": "linear_map", "gpu_h": 80.0, "host_h": None, "longest_step": None, "trained_params": 1e9}
    assert scale.stage_h(training, 1, args) == 80.0
    allreduce_h = 15000 * scale.allreduce_s(4e9, 8, args) / 3600
    assert scale.stage_h(training, 8, args) == pytest.approx(80.0 / 8 + allreduce_h)
    # independent steps: the stage over the GPUs, but never less than its longest step
    vqa = {"stage": "vqa_answers", "gpu_h": 4.0, "host_h": None, "longest_step": 0.4}
    assert [scale.stage_h(vqa, n, args) for n in (1, 2, 8)] == pytest.approx([4.0, 2.0, 1.6])
    extraction = {"stage": "image_features", "gpu_h": 0.5, "host_h": 16.0, "longest_step": 0.01}  # host-bound
    assert scale.stage_h(extraction, 8, args) == pytest.approx(16.0 / 8 / 8)  # 8 workers per GPU
    rows = [training, vqa, extraction, {**vqa, "gpu_h": 1.0}]
    assert scale.comparison_h(rows, 1, args) == pytest.approx(80 + 4 + 2 + 1)
    assert scale.comparison_h(rows, 8, args) == pytest.approx(80 / 8 + allreduce_h + 1.6 + 0.25)


def test_data_parallel_benchmark_times_one_and_two_cpu_processes_on_the_same_work_per_rank(tmp_path):
    out = tmp_path / "data_parallel.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "data_parallel.py"), "--device", "cpu", "--size", "small"]
        + ["--steps", "2", "--warmup", "1", "--repeats", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "| weak | 2 |" in run.stdout and "overhead_ratio" in run.stdout
    result = json.loads(out.read_text())
    assert result["backend"] == "gloo" and result["processes"] == [1, 2] and result["strong"] is None
    one, two = result["weak"]
    assert (one["processes"], one["global_batch"], two["processes"], two["global_batch"]) == (1, 4, 2, 8)
    assert one["rank_batch"] == two["rank_batch"] == 4  # weak scaling: the same work per rank
    assert one["threads_per_rank"] == two["threads_per_rank"]  # on the same threads per rank
    assert [(r["kind"], r["processes"], len(r["steps_s"])) for r in result["runs"]] == [("weak", 1, 2), ("weak", 2, 2)]
    for row in (one, two):
        assert row["step_s"] > 0 and math.isfinite(row["final_loss"])
    assert result["overhead_ratio"] == pytest.approx(two["step_s"] / one["step_s"]) and result["overhead_ratio"] > 0
