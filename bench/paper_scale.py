"""The paper profile on one 80 GB GPU, per stage: time, memory and bytes, derived from measured per-item costs;
and each stage's time, and the whole comparison's, at 1, 8 and 16 GPUs.

    python bench/paper_scale.py [--mfu 0.4] [--gpu-flops 989e12] [--hbm 3.35e12] [--gpus 1 8 16] [--json out.json]

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

At N GPUs (``--gpus``), also derived:
- Training one map is data-parallel: one process per GPU, each with its own frozen GPT-J, runs
  ceil(128 / N) of a step's 128 micro-batches of 16 (so the step's compute / N), then the map's
  float32 gradients (trained parameters x 4 bytes, counted on the real ``LinearMap``, or the tuned
  baseline's ``AdaptedMap``) are all-reduced once per optimizer step, not overlapped with compute:
  a ring moves 2(N-1)/N x those bytes per GPU over NVLink (``--nvlink``) within a node of
  ``--gpus-per-node``; across nodes a hierarchical ring adds 2(nodes-1)/nodes x the bytes over each
  node's network (``--internode``), the two terms summed; plus ``--allreduce-latency`` per all-reduce.
- Extraction and evaluation are independent steps of one GPU each (a CC3M shard of 10,000 rows per
  backbone; a captioned dataset per system; a shot count per system for VQA), run side by side:
  a stage takes its one-GPU time / N, but no less than its longest step (time / min(N, steps) when
  the steps are equal). Each GPU has its own DataLoader workers for extraction's host work.
- The whole comparison runs stage after stage: all backbones' extraction steps over the N GPUs, the
  maps one after another each on all N GPUs, then all evaluation steps over the N GPUs.
"""

import argparse
import importlib.util
import io
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPTJConfig

from pipeline.adapters import AdaptedMap
from pipeline.datasets import load_image
from pipeline.encoders import backbone_spec, create_backbone
from pipeline.image_features import WRITES_IN_FLIGHT
from pipeline.linear_map import LinearMap
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
SHARD_ROWS = 10_000  # rows per CC3M shard: img2dataset's default, and the TSV reader's cc3m.train.NNNNN
GB = 1e9


def trained_params(name: str) -> dict[str, int]:
    """Trained parameters of the map built for this backbone as assets/linear_map.py builds it, and of
    the tuned baseline's as assets/adapters.py does (the map, a LayerNorm and one adapter per layer)."""
    spec = backbone_spec(name, pretrained=False)  # the layout does not depend on the weights
    reduction = PAPER["adapters"]["reduction"]
    with torch.device("meta"):
        maps = {
            "map": LinearMap(spec.feature_dim, GPTJ.n_embd, spec.layout),
            "adapters": AdaptedMap(spec.feature_dim, GPTJ.n_embd, spec.layout, 0.1, GPTJ.n_layer, reduction),
        }
    return {kind: sum(p.numel() for p in m.parameters() if p.requires_grad) for kind, m in maps.items()}


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
    trained = trained_params(name)
    return {
        "flops_per_image": counter.get_total_flops(),
        "largest_activation_values": largest[0],
        "host_s_per_image": statistics.median(host[2:]) + write_s,  # the first two calls warm caches
        "write_s_per_image": write_s,
        "params": sum(p.numel() for p in backbone.model.parameters()),
        "row_bytes": spec.layout.positions * spec.feature_dim * 2,
        "tokens": spec.layout.num_tokens,
        "map_params": trained["map"],
        "adapted_params": trained["adapters"],  # the tuned baseline's
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
        "independent_steps": math.ceil(CC3M_TRAIN / SHARD_ROWS),
        "longest_step": SHARD_ROWS / CC3M_TRAIN,  # of the stage's time
    }
    seq = k + CAPTION_TOKENS
    samples = tr["steps"] * tr["batch_size"]
    flops_per_token = benchmark.train_flops_per_token(GPTJ, seq, b["map_params"], k, CAPTION_TOKENS)
    train_flops = samples * seq * flops_per_token
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
        "independent_steps": 1,
        "longest_step": None,  # data-parallel over the GPUs
        "flops_per_token": flops_per_token,
        "trained_params": b["map_params"],
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
        "independent_steps": 2,
        "longest_step": max(COCO_KARPATHY_TEST, NOCAPS_VAL) / images,
    }
    shots = (0, 1, 2, 4)
    decode_s = (VQAV2_VAL_QUESTIONS / vqa["batch_size"]) * vqa["max_new_tokens"] * lm_weights / args.hbm
    # one step per shot count: n solved examples and the question, each with its image
    shot_s = [VQAV2_VAL_QUESTIONS * (n + 1) * (k + VQA_TOKENS) * lm_flops_per_token / flops_s + decode_s for n in shots]
    answers = {
        "stage": "vqa_answers (VQAv2 val, 0/1/2/4 shots)",
        "items": VQAV2_VAL_QUESTIONS * len(shots),
        "gpu_h": sum(shot_s) / 3600,
        "host_h": None,
        # one eval chunk, the support pool, and a batch's images with their solved examples
        "host_peak_gb": (chunk + vqa["support_images"] * b["row_bytes"] + vqa["batch_size"] * 5 * b["row_bytes"]) / GB,
        "gpu_peak_gb": (lm_weights + vqa["batch_size"] * (5 * (k + VQA_TOKENS) + vqa["max_new_tokens"]) * kv_per_token)
        / GB,
        "read_gb": (VQAV2_VAL_IMAGES + vqa["support_images"]) * b["row_bytes"] * len(shots) / GB,
        "written_gb": VQAV2_VAL_QUESTIONS * len(shots) * 100 / GB,
        "independent_steps": len(shots),
        "longest_step": max(shot_s) / sum(shot_s),
    }
    return [extraction, training, captions, answers]


def allreduce_s(grad_bytes: float, gpus: int, args) -> float:
    """One ring all-reduce of the gradients over ``gpus`` GPUs (hierarchical across nodes), in seconds."""
    if gpus == 1:
        return 0.0
    local, nodes = min(gpus, args.gpus_per_node), math.ceil(gpus / args.gpus_per_node)
    within = 2 * (local - 1) / local * grad_bytes / args.nvlink
    across = 2 * (nodes - 1) / nodes * grad_bytes / args.internode
    return args.allreduce_latency + within + across


def wall_h(row: dict) -> float:
    """A stage's time on one GPU: its GPU time, or its host work over the DataLoader workers where longer."""
    return max(row["gpu_h"], (row["host_h"] or 0) / PAPER["extraction"]["workers"])


def stage_h(row: dict, gpus: int, args) -> float:
    """A stage's time at ``gpus`` GPUs: data-parallel training, or independent steps side by side."""
    if row["longest_step"] is not None:
        return max(wall_h(row) / gpus, wall_h(row) * row["longest_step"])
    tr = PAPER["training"]
    micro = tr["batch_size"] // tr["micro_batch_size"]
    step_s = row["gpu_h"] * 3600 / tr["steps"] * math.ceil(micro / gpus) / micro
    return tr["steps"] * (step_s + allreduce_s(row["trained_params"] * 4, gpus, args)) / 3600


def comparison_h(rows: list[dict], gpus: int, args) -> float:
    """All stages, stage after stage: maps one after another on all GPUs, other steps packed over them."""
    total = 0.0
    for stage in dict.fromkeys(row["stage"] for row in rows):
        same = [row for row in rows if row["stage"] == stage]
        if same[0]["longest_step"] is None:
            total += sum(stage_h(row, gpus, args) for row in same)
        else:
            total += max(sum(map(wall_h, same)) / gpus, max(wall_h(row) * row["longest_step"] for row in same))
    return total


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation")
    parser.add_argument("--gpu-flops", type=float, default=989e12, help="peak dense bf16 FLOP/s (H100 80 GB SXM)")
    parser.add_argument("--hbm", type=float, default=3.35e12, help="GPU memory bandwidth, bytes/s (H100 SXM)")
    parser.add_argument("--jpeg-kb", type=float, default=25.0, help="mean JPEG size in the CC3M shards, kB")
    parser.add_argument("--backbones", nargs="+", default=PAPER["models"]["backbones"])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 16], help="GPU counts to derive times at")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs on one NVLink node (HGX/DGX H100: 8)")
    # H100 SXM: NVLink 4, 900 GB/s per GPU in both directions together (NVIDIA's datasheet): 450 GB/s each way.
    parser.add_argument("--nvlink", type=float, default=450e9, help="NVLink bytes/s per GPU, per direction")
    # DGX H100: 8 ConnectX-7 NICs, 400 Gb/s InfiniBand NDR each, per node: 8 x 50 GB/s = 400 GB/s each way.
    parser.add_argument("--internode", type=float, default=400e9, help="network bytes/s per node, per direction")
    # NCCL's small-message all-reduce latency is tens of microseconds across nodes: an assumption, not measured.
    parser.add_argument("--allreduce-latency", type=float, default=50e-6, help="fixed seconds per all-reduce")
    parser.add_argument("--json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
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
    total = sum(map(wall_h, rows))
    print(
        f"\nAll stages, all backbones, one GPU (host work overlapping the GPU over {workers} DataLoader workers, "
        f"and counted only where measured): {total:.0f} h"
    )
    tuned = []  # the tuned baseline's training: its map's, plus 6 FLOPs per adapter parameter and token
    for r in rows:
        if r["longest_step"] is None and r["backbone"] in PAPER["models"]["adapters"]:
            params = measured[r["backbone"]]["adapted_params"]
            extra = 1 + 6 * (params - r["trained_params"]) / r["flops_per_token"]
            tuned.append(
                {
                    "backbone": f"{r['backbone']}+adapters",
                    "stage": "adapters (15k steps x 2048)",
                    "gpu_h": r["gpu_h"] * extra,
                    "host_h": None,
                    "longest_step": None,
                    "flops_per_token": r["flops_per_token"] * extra,
                    "trained_params": params,
                }
            )
    shards = math.ceil(CC3M_TRAIN / SHARD_ROWS)
    print(
        f"\nAt N GPUs: each map trained data-parallel (each GPU runs 1/N of a step's micro-batches, then one ring "
        f"all-reduce of the map's float32 gradients per step: 2(N-1)/N x their bytes per GPU over NVLink at "
        f"{args.nvlink / 1e9:.0f} GB/s within a node of {args.gpus_per_node} GPUs, plus 2(nodes-1)/nodes x their "
        f"bytes over {args.internode / 1e9:.0f} GB/s per node across nodes, plus {args.allreduce_latency * 1e6:.0f} "
        f"us); extraction ({shards} CC3M shards per backbone) and evaluation steps one GPU each, side by side (the "
        f"stage's time / N, at least its longest step). All stages: stage after stage, the maps one after another "
        f"on all N GPUs (the tuned baseline not included).\n"
    )
    multi = [n for n in args.gpus if n > 1]
    steps = PAPER["training"]["steps"]
    print(
        "| backbone | stage | "
        + " | ".join(f"{n} GPU{'s' * (n > 1)}" for n in args.gpus)
        + " | all-reduce per step | "
        + " | ".join(f"all-reduce share, {n} GPUs" for n in multi)
        + " |"
    )
    print("|---|---|" + "---|" * (len(args.gpus) + 1 + len(multi)))
    for r in rows + tuned:
        r["hours_by_gpus"] = {n: stage_h(r, n, args) for n in args.gpus}
        allreduce = ["-"] * (1 + len(multi))
        if r["longest_step"] is None:
            r["allreduce_mb"] = r["trained_params"] * 4 / 1e6
            r["allreduce_share_by_gpus"] = {
                n: steps * allreduce_s(r["trained_params"] * 4, n, args) / 3600 / r["hours_by_gpus"][n] for n in multi
            }
            allreduce = [f"{r['allreduce_mb']:.1f} MB"] + [f"{s:.3%}" for s in r["allreduce_share_by_gpus"].values()]
        print(
            f"| {r['backbone']} | {r['stage']} | "
            + " | ".join([*map(hours, r["hours_by_gpus"].values()), *allreduce])
            + " |"
        )
    comparison = {n: comparison_h(rows, n, args) for n in args.gpus}
    cells = [f"**{hours(h)}**" for h in comparison.values()] + ["-"] * (1 + len(multi))
    print(f"| **all {len(args.backbones)} backbones** | **all stages** | " + " | ".join(cells) + " |")
    result = {
        "settings": vars(args),
        "measured": measured,
        "stages": rows,
        "tuned_baseline": tuned,
        "comparison_hours_by_gpus": comparison,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
