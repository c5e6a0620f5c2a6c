"""Throughput of LiMBeR's two heavy steps, with the real architectures and random weights.

1. A linear-map training step through frozen GPT-J-6B (transformers' GPTJForCausalLM at real size,
   bf16 on CUDA, gradient checkpointing on): 144 CLIP RN50x16 grid features (d=3072) through the
   project's LinearMap, then a caption, exactly the forward/backward/AdamW step of
   pipeline.training.train_linear_map. Reports step time, tokens/s, MFU and peak GPU memory.
2. CLIP RN50x16 feature extraction (pipeline.encoders, 384 px): the model forward alone on
   preprocessed tensors, and the whole pipeline.image_features.encode_images path on JPEG files.

No weights are needed: the timing of a dense model does not depend on its weight values.

    python bench/benchmark.py [--device cuda|cpu] [--size paper|small] [--batch N] [--json out.json]

``--size small`` (the default on CPU) shrinks GPT-J to 2 layers of width 256 so the script runs in
seconds on a laptop; its numbers check the code path and are not comparable to a GPU.
"""

import argparse
import datetime
import gc
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from transformers import GPTJConfig, GPTJForCausalLM

from pipeline.encoders import backbone_spec, create_backbone
from pipeline.image_features import encode_images
from pipeline.linear_map import LinearMap
from pipeline.training import caption_labels, caption_loss, caption_tokens

BACKBONE = "clip_rn50x16"
EOS = 50256  # GPT-J's (GPT-2's) <|endoftext|>

# GPT-J-6B as released (EleutherAI/gpt-j-6B config.json); "small" keeps the class and the vocabulary.
LM_SIZES = {
    "paper": dict(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400, n_positions=2048),
    "small": dict(n_embd=256, n_layer=2, n_head=4, rotary_dim=16, vocab_size=50400, n_positions=2048),
}
DEFAULTS = {  # batch: LM training batch; images: encoder batch; warmup/iters: timed repetitions
    "paper": dict(batch=16, images=64, warmup=2, iters=5),
    "small": dict(batch=2, images=2, warmup=1, iters=3),
}
# Peak dense bf16 tensor-core FLOP/s from NVIDIA's datasheets, matched in order against
# torch.cuda.get_device_name() (so "H100 PCIe" is found before the SXM "H100").
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]


def peak_bf16_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def lm_param_counts(c: GPTJConfig) -> dict[str, int]:
    """GPT-J's parameters by part, from its config (tests check the sum against the built model)."""
    d, inner, vocab = c.n_embd, c.n_inner or 4 * c.n_embd, c.vocab_size
    layer = 4 * d * d + (d * inner + inner) + (inner * d + d) + 2 * d  # q,k,v,out (no bias); fc_in; fc_out; ln_1
    return {"embedding": vocab * d, "layers": c.n_layer * layer, "final_norm": 2 * d, "lm_head": d * vocab + vocab}


def train_flops_per_token(c: GPTJConfig, seq_len: int, map_params: int, image_tokens: int) -> float:
    """Model FLOPs per token of one training step where only the input linear map learns.

    flops/token = 4*P + 12*L*T*d + 4*P_map*k/T
      P      LM parameters that do a matmul per token: all but the input embedding (a lookup),
             lm_head included (logits are computed at every position). Forward costs 2*P; the
             backward needs activation gradients only (2*P), since frozen weights get no gradient.
      12LTd  attention scores and weighted sum: 4*T*d forward per layer, 8*T*d backward (both
             operands are activations), counted without the causal halving, as in PaLM (app. B).
      P_map  the linear map, applied to the k image tokens: 2*P_map forward + 2*P_map for its weight
             gradient (its input, the cached features, needs none), spread over the T tokens.
    Gradient-checkpointing recompute is not counted: MFU counts model FLOPs, not hardware FLOPs.
    """
    counts = lm_param_counts(c)
    p = counts["layers"] + counts["final_norm"] + counts["lm_head"]
    return 4 * p + 12 * c.n_layer * seq_len * c.n_embd + 4 * map_params * image_tokens / seq_len


class FixedCaptions:
    """Stands in for GPT-J's tokenizer (no tokenizer files here): each caption is ``n`` fixed random
    ids, so pipeline.training.caption_tokens / caption_labels build the batch training would."""

    eos_token_id = EOS

    def __init__(self, n: int, seed: int = 0):
        self.ids = np.random.default_rng(seed).integers(0, EOS, n).tolist()

    def __call__(self, text: str, add_special_tokens: bool = False):
        return SimpleNamespace(input_ids=self.ids)


def build_lm(size: str, device: str, checkpointing: bool) -> GPTJForCausalLM:
    """GPT-J frozen as pipeline.language_models.load_language_model does (bf16 on CUDA, float32 on
    CPU, no gradients). The weights are allocated straight on the device: 6B float32 parameters
    would not fit in host memory. HF only checkpoints modules in training mode, so with
    checkpointing the LM is put in train(), as pipeline.training.train_linear_map does (GPT-J's
    dropouts are all 0, so nothing else changes)."""
    config = GPTJConfig(**LM_SIZES[size], bos_token_id=EOS, eos_token_id=EOS)
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        lm = GPTJForCausalLM._from_config(config, dtype=dtype)
    lm.eval().requires_grad_(False)
    if checkpointing:
        lm.gradient_checkpointing_enable()
        lm.train()
    return lm


def make_step(lm, batch: int, caption_len: int, device: str):
    """One training step of pipeline.training.train_linear_map (same ops, same order) as a closure."""
    spec = backbone_spec(BACKBONE)
    linear_map = LinearMap(spec.feature_dim, lm.config.n_embd, spec.layout).to(device).train()
    optimizer = torch.optim.AdamW(linear_map.parameters(), lr=8e-4, betas=(0.9, 0.95), weight_decay=0.0)
    tokenizer = FixedCaptions(caption_len - 1)  # caption_tokens appends the EOS
    ids = caption_tokens(tokenizer, ["a caption"] * batch, caption_len)
    labels = caption_labels(ids, spec.layout.num_tokens, tokenizer.eos_token_id)
    features = (
        np.random.default_rng(0).standard_normal((batch, spec.layout.positions, spec.feature_dim)).astype(np.float16)
    )  # as cached (float16)

    def step() -> float:
        loss = caption_loss(linear_map, lm, features, ids, labels, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(linear_map.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    return step, linear_map, labels.shape[1]


def median_seconds(fn, warmup: int, iters: int, device: str) -> float:
    """Median wall time of ``fn`` after ``warmup`` untimed calls, synchronising CUDA around each."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_training(
    size: str, device: str, batch: int, caption_len: int, warmup: int, iters: int, checkpointing: bool
) -> dict:
    lm = build_lm(size, device, checkpointing)
    step, linear_map, seq_len = make_step(lm, batch, caption_len, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated() if cuda else None  # LM weights + map + inputs
    seconds = median_seconds(step, warmup, iters, device)
    map_params = sum(p.numel() for p in linear_map.parameters())
    image_tokens = linear_map.layout.num_tokens
    flops = train_flops_per_token(lm.config, seq_len, map_params, image_tokens)
    tokens_per_s = batch * seq_len / seconds
    peak = peak_bf16_flops(device)
    counts = lm_param_counts(lm.config)
    return {
        "lm_config": LM_SIZES[size],
        "lm_params": sum(counts.values()),
        "lm_param_counts": counts,
        "attn_implementation": lm.config._attn_implementation,
        "dtype": str(next(lm.parameters()).dtype),
        "gradient_checkpointing": checkpointing,
        "batch": batch,
        "image_tokens": image_tokens,
        "caption_tokens": seq_len - image_tokens,
        "seq_len": seq_len,
        "linear_map_params": map_params,
        "step_s": seconds,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops,
        "flops_formula": "4*P + 12*L*T*d + 4*P_map*k/T (P: LM params except input embedding)",
        "peak_bf16_flops": peak,
        "mfu": flops * tokens_per_s / peak if peak else None,
        "resident_bytes": resident,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "final_loss": step(),
    }


def bench_features(device: str, batch: int, warmup: int, iters: int) -> dict:
    backbone = create_backbone(BACKBONE, device, pretrained=False)
    size = backbone.spec.image_size
    pixels = torch.randn(batch, 3, size, size, device=device)

    @torch.inference_mode()
    def forward():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            return backbone.model(pixels).float().cpu()  # encode_images also copies the features back

    forward_s = median_seconds(forward, warmup, iters, device)
    with tempfile.TemporaryDirectory() as folder:  # photo-sized JPEGs, decoded + preprocessed per call
        rng = np.random.default_rng(0)
        paths = []
        for i in range(batch):
            path = f"{folder}/{i}.jpg"
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
            paths.append(path)
        # No warm-up: the model is warm from the forward timing above and the files are in the page cache.
        end_to_end_s = median_seconds(lambda: encode_images(backbone, paths, device, batch), 0, iters, device)
    return {
        "backbone": BACKBONE,
        "params": sum(p.numel() for p in backbone.model.parameters()),
        "image_size": size,
        "batch": batch,
        "forward_s": forward_s,
        "forward_images_per_s": batch / forward_s,
        "encode_images_s": end_to_end_s,
        "encode_images_per_s": batch / end_to_end_s,
        "jpeg_size": "640x480",
    }


def report(result: dict) -> str:
    t, f = result["training"], result["features"]
    gib = lambda b: f"{b / 2**30:.1f} GiB" if b is not None else "n/a"  # noqa: E731
    mfu = (
        f"{100 * t['mfu']:.1f}%"
        if t["mfu"] is not None
        else "n/a (" + ("CPU" if result["device"] == "cpu" else "device not in the peak-FLOPs table") + ")"
    )
    label = (
        "PAPER size (GPT-J-6B architecture)"
        if result["size"] == "paper"
        else "SMALL size (2-layer GPT-J, width 256): checks the code path, NOT comparable to a GPU"
    )
    rows = [
        ("device", f"{result['device_name']} ({result['device']})"),
        ("size", label),
        (
            "LM params",
            f"{t['lm_params'] / 1e9:.3f} B, {t['dtype']}, attention {t['attn_implementation']}, "
            f"checkpointing {'on' if t['gradient_checkpointing'] else 'off'}",
        ),
        ("train batch x tokens", f"{t['batch']} x ({t['image_tokens']} image + {t['caption_tokens']} caption)"),
        ("train step", f"{1000 * t['step_s']:.1f} ms (median of {result['iters']})"),
        ("train tokens/s", f"{t['tokens_per_s']:,.0f}"),
        ("FLOPs/token", f"{t['flops_per_token']:.4g} = {t['flops_formula']}"),
        ("MFU", mfu),
        ("GPU memory", f"peak {gib(t['peak_bytes'])} (resident before the step {gib(t['resident_bytes'])})"),
        (
            f"{f['backbone']} forward",
            f"{f['forward_images_per_s']:,.1f} images/s at batch {f['batch']}, "
            f"{f['image_size']} px ({f['params'] / 1e6:.0f} M params)",
        ),
        ("encode_images (JPEG)", f"{f['encode_images_per_s']:,.1f} images/s (decode + preprocess + forward)"),
    ]
    return "\n".join(f"{k:22s} {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(LM_SIZES), help="default: paper on CUDA, small on CPU")
    parser.add_argument("--batch", type=int, help="LM training batch (default 16 paper, 2 small)")
    parser.add_argument("--images", type=int, help="encoder batch (default 64 paper, 2 small)")
    parser.add_argument("--caption", type=int, default=32, help="caption tokens, EOS included")
    parser.add_argument("--iters", type=int, help="timed iterations (median reported)")
    parser.add_argument("--no-checkpointing", action="store_true", help="default: on")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    size = args.size or ("paper" if args.device.startswith("cuda") else "small")
    d = DEFAULTS[size]
    iters = args.iters or d["iters"]
    torch.manual_seed(0)
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": args.device,
        "size": size,
        "iters": iters,
        "warmup": d["warmup"],
        "device_name": torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"{cpu_name()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "training": bench_training(
            size,
            args.device,
            args.batch or d["batch"],
            args.caption,
            d["warmup"],
            iters,
            checkpointing=not args.no_checkpointing,
        ),
    }
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()  # the LM is gone; give the encoder a clean slate
    result["features"] = bench_features(args.device, args.images or d["images"], d["warmup"], iters)
    assert all(math.isfinite(v) for v in (result["training"]["tokens_per_s"], result["features"]["forward_s"]))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
