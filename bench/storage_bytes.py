"""Bytes per image as stored, per backbone: real images through each encoder into the feature store.

    python bench/storage_bytes.py [--images 32] [--backbones clip_rn50x16 nfrn50 ...]

Images are scikit-image's sample photos, repeated to ``--images``. Backbones
without installed weights run with random weights (said in the output): their feature values, and
so how well zstd compresses them, differ from the pretrained model's. Prints raw float16 bytes,
stored bytes (Zarr, zstd) and the CC3M (3.3M images) total for each.
"""

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from pipeline.encoders import backbone_spec, create_backbone
from pipeline.image_features import extract_image_features
from storage import FeatureArray

CC3M_IMAGES = 3_318_333


def sample_photos(directory: Path, count: int) -> list[str]:
    """Real photographs that ship in scikit-image, written as JPEG files."""
    import skimage.data

    photos = [
        getattr(skimage.data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field")
    ]
    paths = []
    for i in range(count):
        path = directory / f"{i}.jpg"
        Image.fromarray(photos[i % len(photos)]).convert("RGB").save(path, quality=90)
        paths.append(str(path))
    return paths


def stored_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in (path / "features").rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument(
        "--backbones", nargs="+", default=["efficientnet_lite0", "clip_rn50x16", "nfrn50", "beit_large"]
    )
    parser.add_argument("--chunk-rows", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = sample_photos(Path(tmp), args.images)
        print("| backbone | weights | layout | raw fp16 bytes/image | stored bytes/image (zstd) | CC3M stored |")
        print("|---|---|---|---|---|---|")
        for name in args.backbones:
            try:
                backbone, weights = create_backbone(name, "cpu"), "pretrained"
            except FileNotFoundError:
                backbone, weights = create_backbone(name, "cpu", pretrained=False), "random (no weights here)"
            spec = backbone_spec(name)
            store_path = Path(tmp) / f"{name}.zarr"
            store = FeatureArray.open(
                str(store_path),
                [str(i) for i in range(len(paths))],
                spec.layout.positions,
                spec.feature_dim,
                args.chunk_rows,
            )
            extract_image_features(backbone, paths, store, device="cpu", batch_size=8)
            raw = spec.layout.positions * spec.feature_dim * 2
            stored = stored_bytes(store_path) / len(paths)
            print(
                f"| `{name}` | {weights} | {spec.layout.positions} x {spec.feature_dim} | "
                f"{raw:,} ({raw / 2**10:,.1f} KiB) "
                f"| {stored:,.0f} ({stored / raw:.0%} of raw) | {stored * CC3M_IMAGES / 1e9:,.1f} GB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
