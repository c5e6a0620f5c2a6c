"""Conceptual Captions 3M (CC3M): web images with one caption each, in either of two layouts.

1. img2dataset webdataset shards (the usual download): ``cc3m/{train,val}/NNNNN.tar``, each sample
   the adjacent members ``<key>.jpg`` (or .png/.webp), ``<key>.txt`` (the caption) and
   ``<key>.json`` (img2dataset's metadata, unused). Part "train.00003" is ``train/00003.tar``;
   image_id is the key and image_path the fsspec URL of the image member, so images are read
   straight out of the tar and nothing is extracted.
2. The released TSVs (caption<TAB>url, no header): ``cc3m/Train_GCC-training.tsv`` and
   ``cc3m/Validation_GCC-1.1.0-Validation.tsv``, with the images you downloaded saved as
   ``cc3m/images/{train,val}/{row:09d}.jpg``, row being the 0-based line index in the TSV.
   Part "train.00003" is rows 30000..39999 (``rows_per_part`` 10,000); image_id is f"{row:09d}".
   Image files are not looked for here: about a tenth of CC3M's URLs are dead, and the feature
   extraction skips and counts missing files anyway, so reading a part stays one pass over text.

A split with shards is read from its shards and its TSV is ignored.
"""

import itertools
import math
import tarfile
from pathlib import Path

from pipeline.datasets.manifest import DatasetError, ReadResult, build_result, dataset_dir, skipped_record

SPLITS = ("train", "val")
TSV_FILES = {"train": "Train_GCC-training.tsv", "val": "Validation_GCC-1.1.0-Validation.tsv"}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
ROWS_PER_PART = 10_000
HOW_TO_GET = (
    "Get the CC3M TSVs from https://ai.google.com/research/ConceptualCaptions/download, then either "
    "download the images with img2dataset (--input_format tsv --output_format webdataset) into "
    "<root>/cc3m/{train,val}/, or put the TSVs in <root>/cc3m/ and each row's image at "
    "<root>/cc3m/images/{train,val}/{row:09d}.jpg."
)


OPTIONS = ()  # read with no settings of the manifests asset


def how_to_get(part: str) -> str:
    return HOW_TO_GET


def list_parts(root, rows_per_part: int = ROWS_PER_PART) -> list[str]:
    """One part per shard, or per ``rows_per_part`` TSV lines (counting them reads the TSV once)."""
    directory = dataset_dir(root, "cc3m")
    parts = []
    for split in SPLITS:
        shards = _shards(directory, split)
        if shards:
            parts += [f"{split}.{shard.stem}" for shard in shards]
        elif (directory / TSV_FILES[split]).is_file():
            lines = _count_lines(directory / TSV_FILES[split])
            parts += [f"{split}.{index:05d}" for index in range(math.ceil(lines / rows_per_part))]
    return sorted(parts)


def read_manifest(part: str, *, root, rows_per_part: int = ROWS_PER_PART) -> ReadResult:
    directory = dataset_dir(root, "cc3m")
    split, _, number = part.partition(".")
    if split not in SPLITS or not number.isdigit():
        raise KeyError(f"CC3M parts look like 'train.00003' or 'val.00000', not {part!r}")
    if _shards(directory, split):
        return _read_shard(directory / split / f"{number}.tar")
    if rows_per_part < 1:
        raise ValueError(f"rows_per_part must be positive, not {rows_per_part}")
    return _read_tsv(directory / TSV_FILES[split], directory / "images" / split, int(number), rows_per_part)


def _shards(directory: Path, split: str) -> list[Path]:
    return sorted(path for path in (directory / split).glob("*.tar") if path.stem.isdigit())


def _count_lines(path: Path) -> int:
    lines, last = 0, b"\n"
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")  # a last line without its newline still counts


def _read_tsv(path: Path, images: Path, index: int, rows_per_part: int) -> ReadResult:
    """Rows index*rows_per_part onwards; only the lines of this part become Python objects."""
    if not path.is_file():
        raise DatasetError(f"{path} not found. {HOW_TO_GET}")
    start = index * rows_per_part
    rows, skipped = [], []
    with open(path, "rb") as file:
        head = file.read(3)
        if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise DatasetError(f"{path} is UTF-16; the released TSVs are UTF-8: re-save it as UTF-8")
        file.seek(3 if head == b"\xef\xbb\xbf" else 0)  # a UTF-8 byte-order mark is not part of the caption
        for row, raw in enumerate(itertools.islice(file, start, start + rows_per_part), start=start):
            line_name = f"line {row + 1}"
            if b"\x00" in raw:
                skipped.append(skipped_record(path, line_name, "line contains NUL bytes"))
                continue
            try:
                fields = raw.decode("utf-8").rstrip("\r\n").split("\t")
            except UnicodeDecodeError:
                skipped.append(skipped_record(path, line_name, "line is not UTF-8"))
                continue
            if len(fields) != 2:
                reason = f"{len(fields)} tab-separated columns, expected 2 (caption, url)"
                skipped.append(skipped_record(path, line_name, reason))
            elif not fields[0].strip():
                skipped.append(skipped_record(path, line_name, "empty caption"))
            else:
                image_id = f"{row:09d}"
                rows.append(
                    (
                        line_name,
                        {
                            "image_id": image_id,
                            "image_path": str(images / f"{image_id}.jpg"),
                            "captions": [fields[0].strip()],
                            "questions": [],
                        },
                    )
                )
    if not rows and not skipped:
        raise DatasetError(
            f"{path} has no line {start + 1}: part {index:05d} lies past its end "
            f"(with rows_per_part={rows_per_part}); list_parts gives the parts present"
        )
    return build_result(rows, skipped, path)


# Magic bytes of compressed files: a compressed shard reads as a tar stream, but its members cannot
# be opened one at a time, so every image would fail to load.
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def _read_shard(path: Path) -> ReadResult:
    if path.is_dir():
        raise DatasetError(f"{path} is a folder, not a tar shard; move it out of {path.parent}")
    if path.is_file():
        with open(path, "rb") as file:
            head = file.read(6)
        for magic, codec in COMPRESSED.items():
            if head.startswith(magic):
                raise DatasetError(
                    f"{path} is {codec}-compressed; images are read straight from the shard, "
                    f"which needs a plain tar (img2dataset's default): decompress it in place"
                )
    try:
        tar = tarfile.open(path, "r:")  # plain tar only (see COMPRESSED)
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; list_parts gives the shards present. {HOW_TO_GET}") from None
    except tarfile.TarError as error:
        raise DatasetError(f"{path} is not a readable tar ({error}); download this shard again") from error
    rows, skipped = [], []
    with tar:
        try:
            for key, members in _samples(tar):
                row, reason = _shard_row(tar, path, key, members)
                if reason:
                    skipped.append(skipped_record(path, key, reason))
                else:
                    rows.append((key, row))
        except (tarfile.TarError, OSError) as error:
            skipped.append(skipped_record(path, "rest of the shard", f"tar unreadable from here on: {error}"))
    return build_result(rows, skipped, path)


def _samples(tar: tarfile.TarFile):
    """(key, {extension: member}) per sample. As in webdataset, a sample is a run of adjacent
    members sharing a key (the name up to the first dot of its last component), so a key that
    comes back later is a second sample."""
    key, members = None, {}
    for member in tar:
        if not member.isfile():
            continue
        folder, _, name = member.name.rpartition("/")
        stem, _, extension = name.partition(".")
        member_key = f"{folder}/{stem}" if folder else stem
        if member_key != key and members:
            yield key, members
            members = {}
        key = member_key
        members[extension.lower()] = member
    if members:
        yield key, members


def _shard_row(tar: tarfile.TarFile, path: Path, key: str, members: dict) -> tuple[dict | None, str | None]:
    image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
    if image is None:
        return None, f"no image member ({', '.join('.' + e for e in IMAGE_EXTENSIONS)})"
    if "txt" not in members:
        return None, "no caption member (.txt)"
    try:
        caption = tar.extractfile(members["txt"]).read().decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "caption .txt is not UTF-8"
    if not caption:
        return None, "empty caption"
    return {"image_id": key, "image_path": f"tar://{image.name}::{path}", "captions": [caption], "questions": []}, None
