"""pipeline/datasets/manifest.py: image loading, from plain files, URLs and archive members; bad,
hostile or unusual images load as RGB or give a reason, never another exception."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.datasets import load_image
from pipeline.datasets.manifest import _archive_filesystem
from tests.dataset_fixtures import (
    TRANSPARENT,
    UNREADABLE,
    image_bytes,
    write_cc3m_shards,
    write_image,
)


@pytest.mark.parametrize(
    "kind", ["rgb", "gray", "gray16", "cmyk", "rgba", "palette", "truncated", "corrupt", "missing"]
)
def test_load_image_kinds(tmp_path, kind):
    image, reason = load_image(str(write_image(tmp_path / f"image.{kind}", kind)))
    if kind in UNREADABLE:
        assert image is None and reason.startswith(UNREADABLE[kind])
        return
    assert reason is None and image.mode == "RGB"
    expected_pixel = {
        "gray16": (128, 128, 128),
        "cmyk": (255, 0, 0),
        "rgba": (255, 255, 255),
        "palette": (255, 255, 255),
    }
    if kind in expected_pixel:
        assert image.getpixel((0, 0)) == expected_pixel[kind]
    if kind in TRANSPARENT:
        assert image.getpixel((15, 0)) == (255, 0, 0)  # the opaque half keeps its colour


def test_load_image_urls(tmp_path):
    part = write_cc3m_shards(tmp_path)["train.00000"]
    shard = tmp_path.resolve() / "cc3m" / "train" / "00000.tar"
    image, reason = load_image(part.rows["000000003"]["image_path"])
    assert reason is None and image.getpixel((0, 0)) == (255, 255, 255)
    assert load_image(f"tar://no-such-key.jpg::{shard}") == (None, "missing file")
    assert load_image(f"tar://000000000.jpg::{tmp_path}/no-such-shard.tar") == (None, "missing file")
    assert load_image(f"file://{write_image(tmp_path / 'plain.jpg', 'rgb')}")[0].size == (32, 32)


def test_a_shard_is_indexed_once_not_once_per_image(tmp_path):
    part = write_cc3m_shards(tmp_path)["train.00000"]
    _archive_filesystem.cache_clear()
    for row in part.rows.values():
        load_image(row["image_path"])
    assert _archive_filesystem.cache_info().misses == 1


def _save(path: Path, image, **options) -> str:
    image.save(path, **options)
    return str(path)


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    pixels = Image.new("RGB", (40, 20), (255, 0, 0))
    pixels.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image, reason = load_image(_save(tmp_path / "rotated.jpg", pixels, exif=exif, quality=95))
    assert reason is None and image.size == (20, 40)
    assert image.getpixel((10, 2))[2] > 200  # the blue half is on top once rotated


@pytest.mark.parametrize(
    "mode, values, expected",
    [
        ("I", 1000, 4),
        ("I", 200, 200),
        ("F", 0.5, 128),
    ],
)
def test_32_bit_and_float_grey_are_scaled_to_8_bits(tmp_path, mode, values, expected):
    import numpy as np
    from PIL import Image

    pixels = Image.fromarray(np.full((8, 8), values, dtype=np.int32 if mode == "I" else np.float32), mode)
    image, reason = load_image(_save(tmp_path / "deep.tiff", pixels))
    assert reason is None and image.getpixel((0, 0)) == (expected,) * 3


@pytest.mark.parametrize(
    "mode, values, fragment",
    [
        ("I", 100_000, "beyond 16 bits"),
        ("F", 3.5, "not [0, 1]"),
    ],
)
def test_deep_images_out_of_range_are_skipped_with_a_reason(tmp_path, mode, values, fragment):
    import numpy as np
    from PIL import Image

    pixels = Image.fromarray(np.full((8, 8), values, dtype=np.int32 if mode == "I" else np.float32), mode)
    image, reason = load_image(_save(tmp_path / "deep.tiff", pixels))
    assert image is None and reason.startswith("unusable image") and fragment in reason


def test_extreme_shapes_are_refused_from_the_header(tmp_path):
    from PIL import Image

    image, reason = load_image(_save(tmp_path / "strip.png", Image.new("RGB", (1, 50_000))))
    assert image is None and "1x50000 is more than 20:1" in reason


def test_a_fifo_or_folder_is_never_opened(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "folder.jpg").mkdir()
    for name in ("pipe.jpg", "folder.jpg"):
        image, reason = load_image(str(tmp_path / name))
        assert image is None and reason.startswith("not a regular file"), name


PNG = image_bytes("rgba")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.tuples(st.integers(0, len(PNG) - 1), st.binary(min_size=1, max_size=8)).map(
            lambda edit: PNG[: edit[0]] + edit[1] + PNG[edit[0] + len(edit[1]) :]
        ),
    )
)
def test_load_image_returns_an_image_or_a_reason(tmp_path, data):
    path = tmp_path / "image.png"
    path.write_bytes(data)
    image, reason = load_image(str(path))
    assert (image is None) != (reason is None)
    if image is not None:
        assert image.mode == "RGB"
