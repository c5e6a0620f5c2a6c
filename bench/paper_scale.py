"""The paper profile on one 80 GB GPU, per stage: time, memory and bytes, derived from measured per-item costs.

    python bench/paper_scale.py [--mfu 0.4] [--gpu-flops 989e12] [--hbm 3.35e12] [--json out.json]

Measured here, on the real architectures with random weights (timing a dense model does not
depend on its weight values): each paper backbone's forward FLOPs per image (torch's
FlopCounterMode) and its largest activation (forward hooks); the host work per image of
``pipeline.image_features`` (decode a 640x480 JPEG and the backbone's resize and crop to uint8, in
DataLoader workers; the zstd write of its float16 features, on the writer thread; normalising is
GPU work). GPT-J's FLOPs come
from its parameter count (``bench/benchmark.py``'s formula, checked against the built model by tests/test_bench.py).

Derived, not measured (no GPU was available to the sessions that built this): GPU time assumes
``--mfu`` of the GPU's peak bf16 FLOP/s (default: H100 80 GB SXM, 989e12) for prefill and training,
and reading GPT-J's weights once per decoded token at ``--hbm`` bytes/s for decoding. Host time is
CPU time on one core; extraction spreads it over the profile's DataLoader workers and a writer
thread, overlapping the GPU. Memory is tensor-size arithmetic;
stored bytes are raw float16 (zstd stores 29-59% of that, bench/storage_bytes.py).
"""

import argparse
import importlib.util
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPTJConfig

from pipeline.datasets import load_image
from pipeline.encoders import create_backbone
from pipeline.image_features import WRITES_IN_FLIGHT
from pipeline.settings import PROFILES
from storage import FeatureArray

_spec = importlib.util.spec_from_file_location("benchmark", Path(__file__).with_name("benchmark.py"))
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

PAPER = PROFILES["paper"]
GPTJ = GPTJConfig(**benchmark.LM_SIZES["paper"])
# Dataset sizes (images; VQAv2 questions), from the datasets' releases.
CC3M_TRAIN, COCO_KARPATHY_TEST, NOCAPS_VAL = 3_318_333, 5_000, 4_500
VQAV2_VAL_QUESTIONS, VQAV2_VAL_IMAGES = 214_354, 40_504
CAPTION_TOKENS = 32  # padded caption length per micro-batch (CC3M captions average about 12 words)
VQA_TOKENS = 12  # " Q: {question} A: {answer}" span, about 12 tokens
GB = 1e9


def measure_backbone(name: str, photo: Path) -> dict:
    backbone = create_backbone(name, pretrained=False)
    spec = backbone.spec
    pixels = backbone.normalise(backbone.preprocessing.pixels(load_image(str(photo))[0]).unsqueeze(0))
    largest = [0]
    hooks = [
        m.register_forward_hook(lambda m, i, out: largest.__setitem__(0, max(largest[0], out.numel())))
        for m in backbone.model.modules()
        if not list(m.children())
    ]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backbone.model(pixels)
    for hook in hooks:
        hook.remove()
    host = []
    for _ in range(22):
        started = time.perf_counter()
        image, _ = load_image(str(photo))
        backbone.preprocessing.pixels(image)
        host.append(time.perf_counter() - started)
    # Writing features: the zstd compression of FeatureArray.write_chunk, per row.
    rows = 32
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureArray.open(
            tmp + "/f.zarr", [str(i) for i in range(rows)], spec.layout.positions, spec.feature_dim, rows
        )
        values = np.random.default_rng(0).standard_normal((rows, spec.layout.positions, spec.feature_dim))
        values = values.astype(np.float16)  # as extraction hands them over (cast on the GPU)
        started = time.perf_counter()
        store.write_chunk(0, values, {})
        write_s = (time.perf_counter() - started) / rows
    return {
        "flops_per_image": counter.get_total_flops(),
        "largest_activation_values": largest[0],
        "host_s_per_image": statistics.median(host[2:]) + write_s,  # the first two calls warm caches
        "write_s_per_image": write_s,
        "params": sum(p.numel() for p in backbone.model.parameters()),
        "row_bytes": spec.layout.positions * spec.feature_dim * 2,
        "tokens": spec.layout.num_tokens,
        # LinearMap: Linear(feature_dim, lm_dim * tokens_per_position), with bias
        "map_params": (spec.feature_dim + 1) * GPTJ.n_embd * spec.layout.tokens_per_position,
    }


def derive(b: dict, args) -> list[dict]:
    """The four GPU stages for one backbone: time (h), host / GPU peak memory (GB), bytes read / written (GB)."""
    flops_s = args.mfu * args.gpu_flops
    counts = benchmark.lm_param_counts(GPTJ)
    lm_weights = sum(counts.values()) * 2  # bf16
    lm_flops_per_token = 2 * (counts["layers"] + counts["lm_head"])  # forward
    kv_per_token = 2 * GPTJ.n_layer * GPTJ.n_embd * 2  # keys and values, bf16
    ex, tr, cap, vqa = PAPER["extraction"], PAPER["training"], PAPER["captioning"], PAPER["vqa"]
    chunk = ex["chunk_rows"] * b["row_bytes"]
    k = b["tokens"]

    extraction_gpu = CC3M_TRAIN * b["flops_per_image"] / flops_s
    extraction = {
        "stage": "image_features (CC3M train)",
        "items": CC3M_TRAIN,
        "gpu_h": extraction_gpu / 3600,
        "host_h": CC3M_TRAIN * b["host_s_per_image"] / 3600,
        # the chunk being filled and those queued for the writer, float16
        "host_peak_gb": (1 + WRITES_IN_FLIGHT) * chunk / GB,
        "gpu_peak_gb": (b["params"] * 4 + ex["batch_size"] * b["largest_activation_values"] * 2 * 3) / GB,
        "read_gb": CC3M_TRAIN * args.jpeg_kb * 1e3 / GB,
        "written_gb": CC3M_TRAIN * b["row_bytes"] / GB,
    }
    seq = k + CAPTION_TOKENS
    samples = tr["steps"] * tr["batch_size"]
    train_flops = samples * seq * benchmark.train_flops_per_token(GPTJ, seq, b["map_params"], k, CAPTION_TOKENS)
    micro = tr["micro_batch_size"]
    # No recompute (the activations fit): about 14 d-sized bf16 tensors kept per layer and token
    # (norm, q, k, v, attention output, residual, 4d fc_in and 4d GELU); logits only at the caption.
    activations = (
        GPTJ.n_layer * micro * seq * GPTJ.n_embd * 2 * 14
        + micro * CAPTION_TOKENS * GPTJ.vocab_size * (2 + 4 + 4)  # logits bf16, float32 copy and its gradient
    )
    training = {
        "stage": "linear_map (15k steps x 2048)",
        "items": samples,
        "gpu_h": train_flops / flops_s / 3600,
        "host_h": None,
        # the shuffle buffer, and the batch stacked out of it
        "host_peak_gb": (tr["buffer_chunks"] * chunk + tr["batch_size"] * b["row_bytes"]) / GB,
        "gpu_peak_gb": (lm_weights + activations + b["map_params"] * 16) / GB,
        "read_gb": samples * b["row_bytes"] / GB,
        "written_gb": b["map_params"] * 4 / GB,
    }
    images = COCO_KARPATHY_TEST + NOCAPS_VAL
    prompt = k + 4  # image tokens + "A picture of"
    new = cap["max_new_tokens"]
    decode_s = (images / cap["batch_size"]) * new * lm_weights / args.hbm
    captions = {
        "stage": "captions (COCO test + NoCaps val)",
        "items": images,
        "gpu_h": (images * (prompt + new) * lm_flops_per_token / flops_s + decode_s) / 3600,
        "host_h": None,
        "host_peak_gb": (chunk + cap["batch_size"] * b["row_bytes"]) / GB,
        "gpu_peak_gb": (lm_weights + cap["batch_size"] * (prompt + new) * kv_per_token) / GB,
        "read_gb": images * b["row_bytes"] / GB,
        "written_gb": images * 200 / GB,
    }
    shots = (0, 1, 2, 4)
    tokens = sum((n + 1) * (k + VQA_TOKENS) for n in shots)
    decode_s = len(shots) * (VQAV2_VAL_QUESTIONS / vqa["batch_size"]) * vqa["max_new_tokens"] * lm_weights / args.hbm
    answers = {
        "stage": "vqa_answers (VQAv2 val, 0/1/2/4 shots)",
        "items": VQAV2_VAL_QUESTIONS * len(shots),
        "gpu_h": (VQAV2_VAL_QUESTIONS * tokens * lm_flops_per_token / flops_s + decode_s) / 3600,
        "host_h": None,
        # one eval chunk, the support pool, and a batch's images with their solved examples
        "host_peak_gb": (chunk + vqa["support_images"] * b["row_bytes"] + vqa["batch_size"] * 5 * b["row_bytes"]) / GB,
        "gpu_peak_gb": (lm_weights + vqa["batch_size"] * (5 * (k + VQA_TOKENS) + vqa["max_new_tokens"]) * kv_per_token)
        / GB,
        "read_gb": (VQAV2_VAL_IMAGES + vqa["support_images"]) * b["row_bytes"] * len(shots) / GB,
        "written_gb": VQAV2_VAL_QUESTIONS * len(shots) * 100 / GB,
    }
    return [extraction, training, captions, answers]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation")
    parser.add_argument("--gpu-flops", type=float, default=989e12, help="peak dense bf16 FLOP/s (H100 80 GB SXM)")
    parser.add_argument("--hbm", type=float, default=3.35e12, help="GPU memory bandwidth, bytes/s (H100 SXM)")
    parser.add_argument("--jpeg-kb", type=float, default=25.0, help="mean JPEG size in the CC3M shards, kB")
    parser.add_argument("--backbones", nargs="+", default=PAPER["models"]["backbones"])
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    photo = Path("/tmp") / "limber-paper-scale.jpg"
    import skimage.data

    buffer = io.BytesIO()  # a real photograph at a web image's size
    Image.fromarray(skimage.data.astronaut()).resize((640, 480)).save(buffer, "JPEG", quality=90)
    photo.write_bytes(buffer.getvalue())
    measured, rows = {}, []
    for name in args.backbones:
        measured[name] = measure_backbone(name, photo)
        rows += [{"backbone": name, **row} for row in derive(measured[name], args)]
    print(f"Measured per image (CPU, {torch.get_num_threads()} threads):")
    for name, m in measured.items():
        print(
            f"  {name:15s} {m['flops_per_image'] / 1e9:8.1f} GFLOPs/image  host {m['host_s_per_image'] * 1e3:6.1f} "
            f"ms/image (writing {m['write_s_per_image'] * 1e3:.1f} ms of it)  feature row {m['row_bytes']:,} B"
        )
    print(f"\nDerived at MFU {args.mfu:.0%} of {args.gpu_flops / 1e12:.0f} TFLOP/s, HBM {args.hbm / 1e12:.2f} TB/s:\n")
    print("| backbone | stage | items | GPU time | host CPU time (one core) | host peak | GPU peak | read | written |")
    print("|---|---|---|---|---|---|---|---|---|")

    def hours(h: float | None) -> str:
        if h is None:
            return "not measured"
        return f"{h:.1f} h" if h >= 1 else f"{h * 60:.0f} min"

    for r in rows:
        print(
            f"| {r['backbone']} | {r['stage']} | {r['items']:,} | {hours(r['gpu_h'])} | {hours(r['host_h'])} | "
            f"{r['host_peak_gb']:.1f} GB | {r['gpu_peak_gb']:.1f} GB | {r['read_gb']:,.1f} GB | "
            f"{r['written_gb']:,.2f} GB |"
        )
    workers = PAPER["extraction"]["workers"]
    total = sum(max(r["gpu_h"], (r["host_h"] or 0) / workers) for r in rows)
    print(
        f"\nAll stages, all backbones, one GPU (host work overlapping the GPU over {workers} DataLoader workers, "
        f"and counted only where measured): {total:.0f} h"
    )
    result = {"settings": vars(args), "measured": measured, "stages": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
