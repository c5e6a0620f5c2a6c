"""The manifest contract shared by every dataset reader, the helpers readers share to skip bad
records instead of crashing, and image loading with skip reasons."""

import functools
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

MANIFEST_COLUMNS = ["image_id", "image_path", "captions", "questions"]


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file, the record and the fix."""


@dataclass
class ReadResult:
    """One part of a dataset: the manifest of good records, and every record left out with why.

    Each skipped entry is ``{"source": file, "record": id / line / member, "reason": text}``, so a
    few bad records in millions are reported and counted rather than failing the whole read.
    """

    manifest: pd.DataFrame
    skipped: list[dict]


def skipped_record(source, record, reason: str) -> dict:
    return {"source": str(source), "record": str(record), "reason": reason}


def path_inside(folder: Path, *parts: str) -> tuple[Path | None, str | None]:
    """``folder / parts``, or why it is refused: a record's path that leaves ``folder`` (``..``, or an
    absolute path) is never followed. Checked on the path as written, so a folder that is a
    symbolic link to another disk still works."""
    path = Path(folder).joinpath(*parts)
    base = os.path.normpath(folder)
    if not os.path.normpath(path).startswith(base.rstrip(os.sep) + os.sep):
        return None, f"image path {'/'.join(parts)!r} leaves the folder {folder}"
    return path, None


def dataset_dir(root, name: str) -> Path:
    """``root/name``: where a file-based dataset lives under the raw-data root."""
    if root is None:
        raise DatasetError(f"{name} is read from files: give the raw-data root (the folder holding {name}/)")
    return Path(root).resolve() / name


def read_json_file(path: Path, how_to_get: str):
    """Parses one annotation file; a missing or unparsable file stops the read with the fix."""
    if not path.is_file():
        raise DatasetError(f"{path} not found. {how_to_get}")
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not valid JSON ({error}); download it again. {how_to_get}") from error
    except RecursionError:
        raise DatasetError(
            f"{path} nests deeper than Python's recursion limit; this is not the expected file. {how_to_get}"
        ) from None


def json_list(document, key: str, path: Path) -> list:
    """``document[key]`` when the file has the expected top-level shape; otherwise the file is not
    the one we think it is, and no record in it can be trusted."""
    if not isinstance(document, dict) or not isinstance(document.get(key), list):
        raise DatasetError(f"{path}: expected a JSON object with a list {key!r}; is this the right file?")
    return document[key]


def json_records(path, expected: dict[str, type | tuple], key: str | None = None) -> list[dict]:
    """Every record of a JSON file that must be whole (a results file, an annotation file being
    scored): the top-level list, or ``document[key]``. Any bad record is an error naming the file,
    the record and the problem: a score over part of a file would be a silent wrong result."""
    path = Path(path)
    document = read_json_file(path, "Check the path passed.")
    if key is not None:
        records = json_list(document, key, path)
    elif isinstance(document, list):
        records = document
    else:
        raise DatasetError(f"{path}: expected a JSON list of records, found a {type(document).__name__}")
    for index, record in enumerate(records):
        if problem := record_problem(record, expected):
            raise DatasetError(f"{path}: {key or 'record'}[{index}]: {problem}")
    return records


def record_problem(record, expected: dict[str, type]) -> str | None:
    """Why a JSON record lacks the keys and types a reader relies on, or None when it has them."""
    if not isinstance(record, dict):
        return f"malformed record: {type(record).__name__}, expected an object"
    for key, kind in expected.items():
        if key not in record:
            return f"malformed record: missing key {key!r}"
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(record[key], kinds) or (isinstance(record[key], bool) and bool not in kinds):
            expected_names = " or ".join(k.__name__ for k in kinds)
            return f"malformed record: {key!r} is {type(record[key]).__name__}, expected {expected_names}"
    return None


def consensus_answer(answers: list[str]) -> str:
    """The most frequent of a question's answers, ties broken by first occurrence: the consensus a
    question record's ``answer`` holds where the dataset gives none (a VQAv2 annotation without a
    string ``multiple_choice_answer``, which VQAv2 itself takes over normalised answers). Here, so
    every reader and ``pipeline.vqa`` share one rule."""
    return Counter(answers).most_common(1)[0][0]  # equal counts stay in first-seen order


def drop_duplicate_ids(rows: list[tuple[str, dict]], source) -> tuple[list[dict], list[dict]]:
    """Keeps the first row of each image id. ``rows`` are (record name, manifest row) pairs;
    returns the kept rows and a skipped entry for each later duplicate."""
    seen: dict[str, str] = {}
    kept, skipped = [], []
    for record, row in rows:
        if row["image_id"] in seen:
            reason = f"duplicate image id {row['image_id']!r} (first seen at {seen[row['image_id']]}, which is kept)"
            skipped.append(skipped_record(source, record, reason))
        else:
            seen[row["image_id"]] = record
            kept.append(row)
    return kept, skipped


def build_result(rows: list[tuple[str, dict]], skipped: list[dict], source, columns=MANIFEST_COLUMNS) -> ReadResult:
    """The readers' common ending: drop duplicate ids, build and validate the manifest."""
    kept, duplicates = drop_duplicate_ids(rows, source)
    manifest = validate_manifest(pd.DataFrame(kept, columns=columns), str(source))
    return ReadResult(manifest, skipped + duplicates)


def validate_manifest(manifest: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DatasetError(f"{source}: manifest lacks columns {missing}")
    duplicated = manifest["image_id"][manifest["image_id"].duplicated()]
    if len(duplicated):
        raise DatasetError(f"{source}: duplicate image ids {duplicated.head(5).tolist()}; ids must be unique per split")
    return manifest.reset_index(drop=True)


def seeded_ids(ids, count: int, seed: int) -> list:
    """A seeded sample of ``count`` ids (all when fewer), in sorted order; the ids are sorted
    first, so the sample does not depend on the order they come in."""
    ordered = sorted(ids)
    return [ordered[i] for i in np.sort(np.random.default_rng(seed).permutation(len(ordered))[:count])]


def split_off_validation(manifest: pd.DataFrame, size: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carves a fixed, seeded validation split out of a training manifest: (train, val)."""
    if not 0 < size < len(manifest):
        raise ValueError(f"validation size {size} must be between 1 and {len(manifest) - 1}")
    order = np.random.default_rng(seed).permutation(len(manifest))
    val_rows = np.sort(order[:size])
    is_val = np.zeros(len(manifest), dtype=bool)
    is_val[val_rows] = True
    return manifest[~is_val].reset_index(drop=True), manifest[is_val].reset_index(drop=True)


# Limits checked from the header, before decoding: a 1 x 50,000 PNG is tiny on disk and within
# PIL's pixel limit, but resizing its short side to 384 px would need about 13 GB.
MAX_PIXELS = 64_000_000
MAX_ASPECT = 20


class UnusableImage(ValueError):
    """An image that decodes but cannot be used as it is (its size, shape or pixel format)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as a viewer would show it: EXIF orientation applied, transparent pixels over white (a
    bare convert("RGB") shows whatever colour they hide, usually black), 16- and 32-bit grey scaled
    to 8 bits and float grey in [0, 1] scaled to 0-255 (a bare convert clips them to white or black)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        low, high = float(grey.min()), float(grey.max())
        if image.mode == "F":
            if low < 0 or high > 1:
                raise UnusableImage(f"float pixels range over [{low:g}, {high:g}], not [0, 1]")
            scale = 1 / 255
        elif low < 0 or high > 65535:
            raise UnusableImage(f"32-bit pixels range over [{low:g}, {high:g}], beyond 16 bits")
        else:
            scale = 1 if high <= 255 and not image.mode.startswith("I;16") else 257
        return Image.fromarray((grey / scale).round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def load_image(path: str) -> tuple[Image.Image | None, str | None]:
    """Opens an image file or fsspec URL (e.g. ``tar://key.jpg::/abs/shard.tar``) as RGB.

    Returns (image, None), or (None, reason) for an image to skip: a bad image among millions is
    counted by the caller, never an exception.
    """
    try:
        if "://" in path:
            with _open_url(path) as file:
                return _decode(file), None
        if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            return None, "not a regular file (a folder, FIFO or device is never opened)"
        return _decode(path), None
    except FileNotFoundError:
        return None, "missing file"
    except UnusableImage as error:
        return None, f"unusable image: {error}"
    except Exception as error:  # PIL raises many types for damaged data; all mean "skip this image"
        return None, f"corrupt image: {type(error).__name__}: {error}"


def _decode(file) -> Image.Image:
    with Image.open(file) as image:
        width, height = image.size  # from the header: nothing is decoded yet
        if width * height > MAX_PIXELS:
            raise UnusableImage(f"{width}x{height} has more than {MAX_PIXELS:,} pixels")
        if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
            raise UnusableImage(f"{width}x{height} is more than {MAX_ASPECT}:1")
        image.load()  # decode now, so truncated files fail here and not inside a batch
        return to_rgb(image)


def _open_url(url: str):
    # The archive is the last "::" part: a member's own name may contain "::".
    member_url, chained, archive = url.rpartition("::")
    if not chained or "://" not in member_url:  # not an archive member: fsspec opens it as is
        return fsspec.open(url, "rb")
    protocol, _, member = member_url.partition("://")
    return _archive_filesystem(protocol, archive, os.getpid()).open(member, "rb")


@functools.lru_cache(maxsize=4)
def _archive_filesystem(protocol: str, archive: str, pid: int) -> fsspec.AbstractFileSystem:
    """An archive filesystem (``tar://``, ``zip://``) over ``archive``, kept for the next member.

    Making one indexes the whole archive (about a second for a 10,000-sample shard) and fsspec does
    not cache these instances, so opening each member through ``fsspec.open`` would re-read the
    shard once per image. Keyed by process id: a forked worker must not share the parent's file
    offset.
    """
    return fsspec.filesystem(protocol, fo=archive)
