"""Feature extraction throughput: the whole path against the model forward it has to keep busy.

    python bench/extraction.py [--device cpu|cuda] [--iters N] [--quick] [--precision P]
                               [--backbone NAME ...] [--images N] [--json out.json]

For each backbone in ``SIZES``, in one run and interleaved (so both see the same machine load):

- ``extraction_vs_forward``: images/s of ``pipeline.image_features.extract_image_features`` into a
  real FeatureArray in a temporary folder (decode and resize, in DataLoader workers where the
  profile has them, normalise and forward on the device, background zstd writes), over images/s of
  the model forward alone on the same images already as uint8 batches on the device (normalise,
  forward, float16 copy back). 1.0: the host work is entirely hidden behind the forward. Both
  are warmed up first (the forward's first calls; an extraction of two chunks per worker count,
  for the workers' start, the codec and the writer thread). Each repetition times a forward and,
  right after it, an extraction, and takes their ratio; the result is the median over repetitions
  (each repetition's ratio in ``extraction_vs_forward_repetitions``, printed as their range): a shared
  machine's speed drifts by more than the effect measured, and a ratio of two timings seconds
  apart cancels most of the drift. With the number of workers of the profile made for the device
  (``profile_workers``: the paper's 8 on CUDA, the demo's 0 elsewhere);
  ``extraction_vs_forward_by_workers`` has it for that number and for 0 and 1, timed in the same
  run in alternating order, which is what the profile's setting is chosen by.
- ``cpu_ms_per_image``: the host work per image (decode, resize, write), timed as the same
  extraction with a model that costs nothing and no workers (median), beside
  ``forward_ms_per_image`` (median), the time it has to hide in.
- ``mfu``: FLOPs per image (torch's FlopCounterMode) x forward images/s over ``peak_flops``.

Random weights throughout (timing does not depend on weight values): EfficientNet-Lite0 on the
embedded demo's easy-vqa images (64x64 PNGs from the easy-vqa package), CLIP RN50x16 on 640x480
JPEG photographs.
"""

import argparse
import io
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.datasets import load_image
from pipeline.devices import PRECISIONS, autocast, compute_dtype
from pipeline.encoders import create_backbone
from pipeline.image_features import extract_image_features
from pipeline.settings import DEFAULT, PROFILES
from storage import FeatureArray

# images: files extracted per timing, enough for the steady state of a long part: a DataLoader
# worker's start and the pipeline's fill and drain cost a few tenths of a second, which at 1,024
# Lite0 images made one worker look slower than none, and at 3,500 (the demo's train part) the two
# were level (a demo part is 500 to 3,500 images, a CC3M shard 10,000). batch: the encoder
# batch (the demo's setting for Lite0). chunk_rows: rows per stored chunk, so that each timing
# writes several chunks and a chunk's write overlaps the next chunk's forwards, as in a long part
# (a part's only chunk would be written alone at the end, at full size even where it is mostly
# padding: Zarr stores an edge chunk whole). About eight minutes on 2 CPU cores at iters=5.
SIZES = {
    "efficientnet_lite0": dict(
        images=2048,
        batch=DEFAULT["extraction"]["batch_size"],
        chunk_rows=DEFAULT["extraction"]["chunk_rows"],
        source="easy_vqa",
    ),
    "clip_rn50x16": dict(images=64, batch=4, chunk_rows=16, source="jpeg_640x480"),
}
QUICK_SIZES = {"efficientnet_lite0": dict(images=32, batch=16, chunk_rows=16, source="easy_vqa")}  # the code path


def profile_workers(device: str) -> int:
    """DataLoader workers as the profile made for this device sets them: the paper's on CUDA, the
    demo's elsewhere. The benchmark times these, and 0 and 1 beside them."""
    return PROFILES["paper" if torch.device(device).type == "cuda" else "default"]["extraction"]["workers"]


class ZeroFeatures(nn.Module):
    """A model that costs nothing: zeros of the backbone's feature shape."""

    def __init__(self, positions: int, dim: int):
        super().__init__()
        self.shape = (positions, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros((len(images), *self.shape))


def image_files(source: str, count: int, folder: Path) -> list[str]:
    if source == "easy_vqa":
        import easy_vqa

        return sorted(easy_vqa.get_train_image_paths().values())[:count]
    import skimage.data
    from PIL import Image

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    paths = []
    for i in range(count):
        buffer = io.BytesIO()  # a real photograph at a web image's size
        Image.fromarray(photos[i % len(photos)]).resize((640, 480)).save(buffer, "JPEG", quality=90)
        paths.append(str(folder / f"{i}.jpg"))
        Path(paths[-1]).write_bytes(buffer.getvalue())
    return paths


def extraction_seconds(backbone, paths: list[str], device: str, size: dict, workers: int, folder: Path, dtype) -> float:
    spec = backbone.spec
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        store = FeatureArray.open(
            f"{tmp}/f.zarr",
            [str(i) for i in range(len(paths))],
            spec.layout.positions,
            spec.feature_dim,
            size["chunk_rows"],
        )
        started = time.perf_counter()
        extract_image_features(
            backbone, paths, store, device=device, batch_size=size["batch"], workers=workers, dtype=dtype
        )
        return time.perf_counter() - started


def bench_backbone(
    name: str, size: dict, device: str, iters: int, peak_flops: float | None, folder: Path, dtype: torch.dtype
) -> dict:
    workers_set = profile_workers(device)
    worker_counts = sorted({0, 1, workers_set})
    backbone = create_backbone(name, device, pretrained=False)
    paths = image_files(size["source"], size["images"], folder)
    pixels = [backbone.preprocessing.pixels(load_image(path)[0]) for path in paths]
    batches = [torch.stack(pixels[i : i + size["batch"]]).to(device) for i in range(0, len(pixels), size["batch"])]

    @torch.inference_mode()
    def forward():  # the device work of extraction, on batches already there
        for batch in batches:
            images = backbone.normalise(batch)
            with autocast(device, dtype):
                features = backbone.model(images)
            features.to(torch.float16).cpu()

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backbone.model(backbone.normalise(batches[0]))
    flops_per_image = counter.get_total_flops() / len(batches[0])
    forward()  # warm-up: first-call allocations and kernel selection
    for workers in worker_counts:  # and the extraction's own first calls: worker start, codec, writer thread
        extraction_seconds(backbone, paths[: 2 * size["chunk_rows"]], device, size, workers, folder, dtype)
    zero_cost = replace(backbone, model=ZeroFeatures(backbone.spec.layout.positions, backbone.spec.feature_dim))
    forward_s, host_s, ratios = [], [], {workers: [] for workers in worker_counts}
    for i in range(iters):
        for workers in worker_counts[:: 1 if i % 2 == 0 else -1]:  # alternating, so drift favours neither
            started = time.perf_counter()
            forward()
            forward_s.append(time.perf_counter() - started)
            extraction_s = extraction_seconds(backbone, paths, device, size, workers, folder, dtype)
            ratios[workers].append(forward_s[-1] / extraction_s)
        host_s.append(extraction_seconds(zero_cost, paths, device, size, 0, folder, dtype))
    forward_per_s = len(paths) / statistics.median(forward_s)
    by_workers = {workers: statistics.median(r) for workers, r in ratios.items()}
    return {
        **size,
        "workers": workers_set,
        "dtype": str(dtype),
        "forward_images_per_s": forward_per_s,
        "extraction_images_per_s": by_workers[workers_set] * forward_per_s,
        "extraction_vs_forward": by_workers[workers_set],
        "extraction_vs_forward_by_workers": {str(workers): ratio for workers, ratio in by_workers.items()},
        "extraction_vs_forward_repetitions": {str(workers): r for workers, r in ratios.items()},
        "forward_ms_per_image": 1e3 / forward_per_s,
        "cpu_ms_per_image": 1e3 * statistics.median(host_s) / len(paths),
        "flops_per_image": flops_per_image,
        "mfu": flops_per_image * forward_per_s / peak_flops if peak_flops else None,
    }


def run(
    device: str, iters: int, peak_flops: float | None, sizes: dict[str, dict] = SIZES, precision: str = "auto"
) -> dict:
    """Every backbone of ``sizes``, computing in ``compute_dtype(device, precision)`` as
    ``extract_image_features`` does; the headline numbers are also keyed by backbone at the top."""
    dtype = compute_dtype(device, precision)
    with tempfile.TemporaryDirectory() as folder:
        backbones = {
            name: bench_backbone(name, size, device, iters, peak_flops, Path(folder), dtype)
            for name, size in sizes.items()
        }
    headline = ("extraction_vs_forward", "cpu_ms_per_image", "forward_ms_per_image", "mfu")
    return {
        "device": device,
        "iters": iters,
        "peak_flops": peak_flops,
        **{key: {name: b[key] for name, b in backbones.items()} for key in headline},
        "backbones": backbones,
    }


def report_rows(result: dict) -> list[tuple[str, str]]:
    rows = []
    for name, b in result["backbones"].items():
        repetitions = b["extraction_vs_forward_repetitions"]
        spread = {w: f"[{min(r):.2f}, {max(r):.2f}]" for w, r in repetitions.items()}
        mfu = f"{100 * b['mfu']:.1f}%" if b["mfu"] is not None else "n/a"
        rows += [
            (
                f"extraction_vs_forward {name}",
                f"{b['extraction_vs_forward']:.2f} {spread[str(b['workers'])]} ({b['extraction_images_per_s']:.1f} vs "
                f"{b['forward_images_per_s']:.1f} images/s; {b['images']} images, batch {b['batch']}, "
                f"{b['workers']} workers, {b['dtype']})",
            ),
            (
                f"extraction_vs_forward by workers {name}",
                ", ".join(f"{w} workers {r:.2f} {spread[w]}" for w, r in b["extraction_vs_forward_by_workers"].items()),
            ),
            (
                f"cpu_ms_per_image {name}",
                f"{b['cpu_ms_per_image']:.2f} ms host (decode, resize, write) vs {b['forward_ms_per_image']:.1f} ms",
            ),
            (f"{name} encoder MFU", f"{mfu} ({b['flops_per_image'] / 1e9:.2f} GFLOPs/image)"),
        ]
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=5, help="repetitions; the median ratio is reported")
    parser.add_argument("--peak-flops", type=float, help="the device's peak FLOP/s for MFU (default: none)")
    parser.add_argument("--quick", action="store_true", help="Lite0 on a few images: checks the code path only")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="as the runtime resource's")
    parser.add_argument("--backbone", action="append", choices=sorted(SIZES), help="only these (repeatable)")
    parser.add_argument("--images", type=int, help="images per timing, for every backbone (default: SIZES)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    sizes = {
        name: {**size, "images": args.images or size["images"]}
        for name, size in sizes.items()
        if not args.backbone or name in args.backbone
    }
    result = run(args.device, args.iters, args.peak_flops, sizes, args.precision)
    width = max(len(label) for label, _ in report_rows(result))
    for label, value in report_rows(result):
        print(f"{label:{width}s}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
