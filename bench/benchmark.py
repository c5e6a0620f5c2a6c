"""Throughput of LiMBeR's heavy steps, with the real architectures and random weights, each the
project's own code path measured as it was and as it is, side by side in one run.

1. Training the linear map through frozen GPT-J (transformers' GPTJForCausalLM; 6B at ``--size
   paper``): ``pipeline.training.train_linear_map`` itself on a Zarr store of 144 x 3072 CLIP
   RN50x16 grid features, with micro-batch accumulation. Old: recompute on, GPT-J's unfused
   ``gelu_new``, logits at every position, synchronous buffer reads. New: the defaults. Key
   ``train_step_speedup`` = old step time / new step time; tokens/s, MFU, peak GPU memory.
2. Feature extraction (``bench/extraction.py``): key ``extraction_vs_forward``, the whole
   extraction path's images/s over the pure forward's, and ``cpu_ms_per_image``; encoder MFU.
3. Few-shot VQA (``bench/vqa_answers.py``): key ``vqa_speedup``, 4-shot answers/s with prefix reuse
   and early stopping over full prompts decoded to ``max_new_tokens``, with identical answers.

No weights are needed: the timing of a dense model does not depend on its weight values.

    python bench/benchmark.py [--device cuda|cpu] [--size paper|small] [--batch N] [--json out.json]

``--size small`` (the default on CPU) shrinks GPT-J to 2 layers of width 256 so the script runs in
minutes on a laptop; its absolute numbers check the code path and are not comparable to a GPU.
"""

import argparse
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from transformers import GPTJConfig, GPTJForCausalLM

from pipeline.config import TrainConfig
from pipeline.encoders import backbone_spec
from pipeline.language_models import fuse_activations
from pipeline.linear_map import LinearMap
from pipeline.training import train_linear_map
from storage import FeatureArray

BACKBONE = "clip_rn50x16"
EOS = 50256  # GPT-J's (GPT-2's) <|endoftext|>

# GPT-J-6B as released (EleutherAI/gpt-j-6B config.json); "small" keeps the class and the vocabulary.
LM_SIZES = {
    "paper": dict(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400, n_positions=2048),
    "small": dict(n_embd=256, n_layer=2, n_head=4, rotary_dim=16, vocab_size=50400, n_positions=2048),
}
DEFAULTS = {  # batch / micro: LM training batch and micro-batch; warmup / iters: timed repetitions
    "paper": dict(batch=32, micro=16, warmup=2, iters=5),
    "small": dict(batch=4, micro=2, warmup=1, iters=3),
}
# Peak dense bf16 tensor-core FLOP/s from NVIDIA's datasheets, matched in order against
# torch.cuda.get_device_name(): the H100's three forms differ ("NVIDIA H100 80GB HBM3" is the SXM
# board, "NVIDIA H100 PCIe", "NVIDIA H100 NVL"), so an unknown H100 name gets no MFU, not a guess.
PEAK_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100 80GB HBM3", 989e12),
    ("H100 SXM", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
]


def peak_bf16_flops(device: str, name: str | None = None) -> float | None:
    """The device's peak from ``PEAK_BF16`` (None on CPU and for devices not in the table)."""
    if not device.startswith("cuda"):
        return None
    name = name or torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def sibling(name: str):
    """A module of this folder (``bench/`` is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def lm_param_counts(c: GPTJConfig) -> dict[str, int]:
    """GPT-J's parameters by part, from its config (tests check the sum against the built model)."""
    d, inner, vocab = c.n_embd, c.n_inner or 4 * c.n_embd, c.vocab_size
    layer = 4 * d * d + (d * inner + inner) + (inner * d + d) + 2 * d  # q,k,v,out (no bias); fc_in; fc_out; ln_1
    return {"embedding": vocab * d, "layers": c.n_layer * layer, "final_norm": 2 * d, "lm_head": d * vocab + vocab}


def train_flops_per_token(
    c: GPTJConfig, seq_len: int, map_params: int, image_tokens: int, predicted_tokens: int
) -> float:
    """Model FLOPs per token of one training step where only the input linear map learns.

    flops/token = 4*P + 4*P_head*n/T + 12*L*T*d + 4*P_map*k/T
      P      LM parameters that do a matmul at every position: the blocks and the final norm (the
             input embedding is a lookup). Forward costs 2*P; the backward needs activation
             gradients only (2*P), since frozen weights get no gradient.
      P_head the LM head, run only at the n positions that predict a caption token or the first EOS
             (pipeline.training.caption_loss): the image positions and the padding are not credited.
      12LTd  attention scores and weighted sum: 4*T*d forward per layer, 8*T*d backward (both
             operands are activations), counted without the causal halving, as in PaLM (app. B).
      P_map  the linear map, applied to the k image tokens: 2*P_map forward + 2*P_map for its weight
             gradient (its input, the cached features, needs none), spread over the T tokens.
    Gradient-checkpointing recompute is not counted: MFU counts model FLOPs, not hardware FLOPs.
    """
    counts = lm_param_counts(c)
    p = counts["layers"] + counts["final_norm"]
    return (
        4 * p
        + 4 * counts["lm_head"] * predicted_tokens / seq_len
        + 12 * c.n_layer * seq_len * c.n_embd
        + 4 * map_params * image_tokens / seq_len
    )


class FixedCaptions:
    """Stands in for GPT-J's tokenizer (no tokenizer files here): each caption is ``n`` fixed random
    ids, so pipeline.training.caption_tokens / caption_labels build the batch training would."""

    eos_token_id = EOS

    def __init__(self, n: int, seed: int = 0):
        self.ids = np.random.default_rng(seed).integers(0, EOS, n).tolist()

    def __call__(self, text: str, add_special_tokens: bool = False):
        return SimpleNamespace(input_ids=self.ids)


def build_lm(size: str, device: str) -> GPTJForCausalLM:
    """GPT-J frozen as pipeline.language_models.load_language_model loads it (bf16 on CUDA, no
    gradients), before its activations are fused; float32 on CPU, where the old and new steps must
    give the same weights to 1e-4 (bfloat16 rounds their differently ordered sums differently). The
    weights are allocated straight on the device: 6B float32 parameters would not fit in host memory."""
    config = GPTJConfig(**LM_SIZES[size], bos_token_id=EOS, eos_token_id=EOS)
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        lm = GPTJForCausalLM._from_config(config, dtype=dtype)
    return lm.eval().requires_grad_(False)


def feature_store(folder: str, rows: int, chunk_rows: int) -> FeatureArray:
    """A Zarr store of random CLIP RN50x16 grid features (float16, as cached) for ``rows`` images."""
    spec = backbone_spec(BACKBONE)
    store = FeatureArray.open(
        f"{folder}/features.zarr", [str(i) for i in range(rows)], spec.layout.positions, spec.feature_dim, chunk_rows
    )
    rng = np.random.default_rng(0)
    for chunk in range(store.num_chunks()):
        n = len(range(rows)[store.chunk_slice(chunk)])
        store.write_chunk(chunk, rng.standard_normal((n, spec.layout.positions, spec.feature_dim)), {})
    return store


def timed_training(
    lm, store, folder: str, *, batch: int, micro: int, caption_len: int, steps: int, warmup: int, device: str, **speed
) -> dict:
    """``pipeline.training.train_linear_map`` itself on the Zarr store (buffer reads, micro-batch
    accumulation, AdamW), timed per step from its ``on_step`` calls: the median after ``warmup``."""
    spec = backbone_spec(BACKBONE)
    torch.manual_seed(0)
    linear_map = LinearMap(spec.feature_dim, lm.config.n_embd, spec.layout)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stamps = [time.perf_counter()]
    result = train_linear_map(
        linear_map,
        lm,
        FixedCaptions(caption_len - 1),  # caption_tokens appends the EOS
        store.features,
        ["a caption"] * len(store.ids),
        np.arange(len(store.ids)),
        TrainConfig(
            steps=steps,
            batch_size=batch,
            micro_batch_size=micro,
            lr=8e-4,
            warmup_steps=1,
            max_caption_tokens=caption_len,
            buffer_chunks=1,
            checkpoint_every=steps,
        ),
        seed=0,
        checkpoint_dir=f"{folder}/{len(os.listdir(folder))}",
        device=device,
        on_step=lambda step, loss: stamps.append(time.perf_counter()),  # .item() has synchronised CUDA
        **speed,
    )
    return {
        "step_s": statistics.median(np.diff(stamps)[warmup:]),
        "recompute": result.recompute,
        "activation_bytes_per_token": result.activation_bytes_per_token,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "losses": result.losses,
        "weights": linear_map.proj.weight.detach().float().cpu(),
    }


def bench_training(size: str, device: str, batch: int, micro: int, caption_len: int, warmup: int, iters: int) -> dict:
    """The training step as it was (recompute on, GPT-J's unfused ``gelu_new``, logits at every
    position, synchronous buffer reads) and as it is, side by side on the same LM and data."""
    lm = build_lm(size, device)
    cuda = device.startswith("cuda")
    resident = torch.cuda.memory_allocated() if cuda else None  # LM weights
    steps = warmup + iters
    with tempfile.TemporaryDirectory() as folder:
        # One chunk per batch, one chunk per buffer: every step reads a new buffer from Zarr.
        store = feature_store(folder, batch * steps, chunk_rows=batch)
        kwargs = dict(batch=batch, micro=micro, caption_len=caption_len, steps=steps, warmup=warmup, device=device)
        old = timed_training(lm, store, folder, recompute=True, all_logits=True, prefetch=False, **kwargs)
        fuse_activations(lm)
        new = timed_training(lm, store, folder, **kwargs)
    spec = backbone_spec(BACKBONE)
    image_tokens = spec.layout.num_tokens
    seq_len = image_tokens + caption_len
    map_params = (spec.feature_dim + 1) * lm.config.n_embd
    flops = train_flops_per_token(lm.config, seq_len, map_params, image_tokens, caption_len)
    tokens_per_s = batch * seq_len / new["step_s"]
    peak = peak_bf16_flops(device)
    counts = lm_param_counts(lm.config)
    return {
        "lm_config": LM_SIZES[size],
        "lm_params": sum(counts.values()),
        "lm_param_counts": counts,
        "attn_implementation": lm.config._attn_implementation,
        "dtype": str(next(lm.parameters()).dtype),
        "batch": batch,
        "micro_batch": micro,
        "image_tokens": image_tokens,
        "caption_tokens": caption_len,
        "seq_len": seq_len,
        "linear_map_params": map_params,
        "old_step_s": old["step_s"],
        "step_s": new["step_s"],
        "train_step_speedup": old["step_s"] / new["step_s"],
        "recompute": new["recompute"],
        "activation_bytes_per_token": new["activation_bytes_per_token"],
        # Same weights either way: the speedups change how a step runs, not what it computes.
        "max_weight_difference": float((old["weights"] - new["weights"]).abs().max()),
        "final_loss": new["losses"][-1],
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops,
        "flops_formula": "4*P + 4*P_head*n/T + 12*L*T*d + 4*P_map*k/T (P: LM blocks and final norm)",
        "peak_bf16_flops": peak,
        "mfu": flops * tokens_per_s / peak if peak else None,
        "old_mfu": flops * batch * seq_len / old["step_s"] / peak if peak else None,
        "resident_bytes": resident,
        "old_peak_bytes": old["peak_bytes"],
        "peak_bytes": new["peak_bytes"],
    }


def training_rows(t: dict, device: str) -> list[tuple[str, str]]:
    gib = lambda b: f"{b / 2**30:.1f} GiB" if b is not None else "n/a"  # noqa: E731
    mfu = lambda m: f"{100 * m:.1f}%" if m is not None else "n/a"  # noqa: E731
    per_token = t["activation_bytes_per_token"]
    return [
        ("LM params", f"{t['lm_params'] / 1e9:.3f} B, {t['dtype']}, attention {t['attn_implementation']}"),
        (
            "train batch x tokens",
            f"{t['batch']} (micro-batches of {t['micro_batch']}) x "
            f"({t['image_tokens']} image + {t['caption_tokens']} caption)",
        ),
        ("train step, old", f"{1000 * t['old_step_s']:.1f} ms (recompute, gelu_new, all logits, sync reads)"),
        ("train step, new", f"{1000 * t['step_s']:.1f} ms (recompute {'on' if t['recompute'] else 'off'})"),
        (
            "train_step_speedup",
            f"{t['train_step_speedup']:.2f}x (same weights: max |diff| {t['max_weight_difference']:.1e})",
        ),
        (
            "activation memory",
            f"{per_token / 2**20:.2f} MiB per token (measured, decides recompute)"
            if per_token is not None
            else "not measured on CPU (no recompute on CPU)",
        ),
        ("train tokens/s", f"{t['tokens_per_s']:,.0f}"),
        ("FLOPs/token", f"{t['flops_per_token']:.4g} = {t['flops_formula']}"),
        ("train MFU", f"{mfu(t['mfu'])} (old {mfu(t['old_mfu'])})" + (" (CPU)" if device == "cpu" else "")),
        (
            "GPU memory",
            f"peak {gib(t['peak_bytes'])}, old {gib(t['old_peak_bytes'])}, weights {gib(t['resident_bytes'])}",
        ),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(LM_SIZES), help="default: paper on CUDA, small on CPU")
    parser.add_argument("--batch", type=int, help="LM training batch (default 32 paper, 4 small)")
    parser.add_argument("--micro", type=int, help="LM micro-batch (default 16 paper, 2 small)")
    parser.add_argument("--caption", type=int, default=32, help="caption tokens, EOS included")
    parser.add_argument("--iters", type=int, help="timed iterations (median reported)")
    parser.add_argument("--quick", action="store_true", help="tiny extraction and VQA sizes: checks the code path")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    size = args.size or ("paper" if args.device.startswith("cuda") else "small")
    d = DEFAULTS[size]
    iters = args.iters or d["iters"]
    cuda = args.device.startswith("cuda")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(args.device) if cuda else f"{cpu_name()}, {torch.get_num_threads()} threads"
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": args.device,
        "size": size,
        "iters": iters,
        "warmup": d["warmup"],
        "device_name": name,
        "torch": torch.__version__,
        "training": bench_training(
            size, args.device, args.batch or d["batch"], args.micro or d["micro"], args.caption, d["warmup"], iters
        ),
    }
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()  # the LM is gone; give the encoder a clean slate
    extraction, vqa = sibling("extraction"), sibling("vqa_answers")
    sizes = extraction.QUICK_SIZES if args.quick else extraction.SIZES
    result["extraction"] = extraction.run(args.device, iters, peak_bf16_flops(args.device), sizes)
    result["vqa"] = vqa.run(args.device, iters, images=1 if args.quick else vqa.IMAGES)
    t = result["training"]
    assert math.isfinite(t["tokens_per_s"]) and math.isfinite(t["final_loss"])
    label = (
        "PAPER size (GPT-J-6B architecture)"
        if size == "paper"
        else "SMALL size (2-layer GPT-J, width 256): checks the code path, NOT comparable to a GPU"
    )
    rows = [("device", f"{name} ({args.device})"), ("size", label)]
    rows += (
        training_rows(t, args.device) + extraction.report_rows(result["extraction"]) + vqa.report_rows(result["vqa"])
    )
    print("\n".join(f"{k:22s} {v}" for k, v in rows))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
