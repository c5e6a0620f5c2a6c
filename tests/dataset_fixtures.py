"""Tiny datasets in the real on-disk formats, with bad records and bad images planted among good
ones. Each writer returns, per part, what it planted, so tests assert exact counts and reasons."""

import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.datasets import DatasetError, read_manifest

# What load_image must answer for the image kinds that cannot be read.
UNREADABLE = {"truncated": "corrupt image", "corrupt": "corrupt image", "missing": "missing file"}
# Kinds whose top-left pixel is fully transparent, so it must load white.
TRANSPARENT = {"rgba", "palette"}


@dataclass
class Planted:
    """One part's expectations: rows maps each kept image id to the manifest fields it must have
    (image_path, captions, and questions or domain where the format has them); skipped maps each
    skipped record to a fragment of its reason; images maps image ids to the image kind written."""

    rows: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)


def image_bytes(kind: str) -> bytes:
    """A small image of one kind, encoded. rgba and palette are transparent on their left half
    (hiding black, which a bare convert("RGB") would show) and opaque red on the right."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    if kind == "rgb":
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    elif kind == "gray":
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(buffer, "JPEG")
    elif kind == "cmyk":
        Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buffer, "JPEG")
    elif kind == "gray16":
        Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(buffer, "PNG")  # 32896 / 257 = 128
    elif kind == "rgba":
        pixels = np.zeros((16, 16, 4), dtype=np.uint8)
        pixels[:, 8:] = (255, 0, 0, 255)
        Image.fromarray(pixels, "RGBA").save(buffer, "PNG")
    elif kind == "palette":
        image = Image.new("P", (16, 16), 0)
        image.putpalette([0, 0, 0, 255, 0, 0])
        image.paste(1, (8, 0, 16, 16))
        image.save(buffer, "PNG", transparency=0)
    elif kind == "truncated":
        return image_bytes("rgb")[:700]
    elif kind == "corrupt":
        return random.Random(0).randbytes(300)
    else:
        raise ValueError(kind)
    return buffer.getvalue()


def write_image(path: Path, kind: str) -> Path:
    if kind != "missing":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(kind))
    return path


def _write_json(path: Path, document) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


# --- CC3M -----------------------------------------------------------------------------------------


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cc3m_shards(root: Path) -> dict[str, Planted]:
    """img2dataset webdataset shards: train/00000.tar (good and bad samples), train/00001.tar and
    val/00000.tar (one good sample each)."""
    directory = root.resolve() / "cc3m"
    # key: (image kind, image extension, caption bytes or None, reason fragment if skipped)
    samples = {
        "train.00000": {
            "000000000": ("rgb", "jpg", b"a dog on a beach", None),
            "000000001": ("gray", "jpg", b"an old photograph", None),
            "000000002": ("cmyk", "jpg", b"a printed poster\n", None),
            "000000003": ("rgba", "png", b"a logo", None),
            "000000004": ("truncated", "jpg", b"a cut-off download", None),
            "000000005": ("corrupt", "jpg", b"noise", None),
            "000000006": ("rgb", "jpg", None, "no caption member"),
            "000000007": (None, None, b"a caption without image", "no image member"),
            "000000008": ("rgb", "jpg", b"   ", "empty caption"),
            "000000009": ("rgb", "jpg", b"caf\xe9 latte", "not UTF-8"),
            "000000010": ("rgb", "jpg", b"a good sample after bad ones", None),
        },
        "train.00001": {"000010000": ("rgb", "jpg", b"the second shard", None)},
        "val.00000": {"000000000": ("gray", "jpg", b"a validation image", None)},
    }
    planted = {}
    for part, part_samples in samples.items():
        split, number = part.split(".")
        path = directory / split / f"{number}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        planted[part] = Planted()
        with tarfile.open(path, "w") as tar:
            for key, (kind, extension, caption, reason) in part_samples.items():
                if kind:
                    _add_member(tar, f"{key}.{extension}", image_bytes(kind))
                if caption is not None:
                    _add_member(tar, f"{key}.txt", caption)
                _add_member(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
                if reason:
                    planted[part].skipped[key] = reason
                else:
                    planted[part].rows[key] = {
                        "image_path": f"tar://{key}.{extension}::{path}",
                        "captions": [caption.decode().strip()],
                        "questions": [],
                    }
                    planted[part].images[key] = kind
    return planted


def write_cc3m_training_shards(root: Path, train_shards: int = 3, val_shards: int = 1, samples: int = 6) -> list[str]:
    """Clean img2dataset shards for training runs: ``samples`` photos-like images per shard (each
    of its own colours) with captions naming them; returns the part keys written."""
    directory = root.resolve() / "cc3m"
    colours = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 200), "yellow": (220, 200, 40)}
    parts, index = [], 0
    for split, count in (("train", train_shards), ("val", val_shards)):
        for shard in range(count):
            path = directory / split / f"{shard:05d}.tar"
            path.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path, "w") as tar:
                for _ in range(samples):
                    name, rgb = list(colours.items())[index % len(colours)]
                    pixels = np.clip(np.random.default_rng(index).normal(rgb, 25, (48, 64, 3)), 0, 255)
                    buffer = io.BytesIO()
                    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG")
                    key = f"{index:09d}"
                    _add_member(tar, f"{key}.jpg", buffer.getvalue())
                    _add_member(tar, f"{key}.txt", f"a {name} picture of a field".encode())
                    _add_member(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
                    index += 1
            parts.append(f"cc3m.{split}.{shard:05d}")
    return parts


def write_cc3m_tsv(root: Path) -> dict[str, Planted]:
    """The released TSVs and images/{split}/{row:09d}.jpg; parts assume rows_per_part=4."""
    directory = root.resolve() / "cc3m"
    # (raw line, image kind or None for a line to skip, reason fragment)
    train = [
        (b"a red car\thttp://example.com/0.jpg", "rgb", None),
        (b"a grey cat\thttp://example.com/1.jpg", "gray", None),
        (b"three\tcolumns\there", None, "3 tab-separated columns"),
        (b"\thttp://example.com/3.jpg", None, "empty caption"),
        (b"a poster\thttp://example.com/4.jpg", "cmyk", None),
        (b"caf\xe9\thttp://example.com/5.jpg", None, "not UTF-8"),
        (b"no tab at all", None, "1 tab-separated columns"),
        (b"a cut-off download\thttp://example.com/7.jpg", "truncated", None),
        (b"noise\thttp://example.com/8.jpg", "corrupt", None),
        (b"a dead link\thttp://example.com/9.jpg", "missing", None),
        (b"the last line has no newline\thttp://example.com/10.jpg", "rgb", None),
    ]
    val = [
        (b"a validation image\thttp://example.com/v0.jpg", "rgb", None),
        (b"another one\thttp://example.com/v1.jpg", "gray", None),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    planted = {}
    for split, lines, file_name in (
        ("train", train, "Train_GCC-training.tsv"),
        ("val", val, "Validation_GCC-1.1.0-Validation.tsv"),
    ):
        (directory / file_name).write_bytes(
            b"\n".join(line for line, _, _ in lines) + (b"\n" if split == "val" else b"")
        )
        for row, (line, kind, reason) in enumerate(lines):
            part = planted.setdefault(f"{split}.{row // 4:05d}", Planted())
            image_id = f"{row:09d}"
            if reason:
                part.skipped[f"line {row + 1}"] = reason
                continue
            path = write_image(directory / "images" / split / f"{image_id}.jpg", kind)
            part.rows[image_id] = {
                "image_path": str(path),
                "captions": [line.split(b"\t")[0].decode()],
                "questions": [],
            }
            part.images[image_id] = kind
    return planted


# --- COCO -----------------------------------------------------------------------------------------


class _Records:
    """A JSON list under construction that remembers which of its records must be skipped."""

    def __init__(self, name: str, planted: Planted):
        self.name, self.items, self.planted = name, [], planted

    def add(self, record, skip_reason: str | None = None) -> None:
        if skip_reason:
            self.planted.skipped[f"{self.name}[{len(self.items)}]"] = skip_reason
        self.items.append(record)


def _coco_format(
    path: Path,
    image_dir: Path,
    images: list[tuple],
    bad_images: list[tuple],
    bad_annotations: list[tuple],
    domain: bool = False,
) -> Planted:
    """A COCO-format caption file. images: (id, kind, captions, domain); bad ones are
    (record, reason); annotations are added for every good image's captions."""
    planted = Planted()
    image_records, annotations = _Records("images", planted), _Records("annotations", planted)
    for image_id, kind, captions, image_domain in images:
        file_name = f"{image_id:012d}.{'png' if kind in TRANSPARENT else 'jpg'}"
        record = {"id": image_id, "file_name": file_name, **({"domain": image_domain} if domain else {})}
        image_records.add(record)
        write_image(image_dir / file_name, kind)
        for caption in captions:
            annotations.add({"image_id": image_id, "id": len(annotations.items), "caption": caption})
        planted.rows[str(image_id)] = {
            "image_path": str(image_dir / file_name),
            "captions": captions,
            "questions": [],
            **({"domain": image_domain} if domain else {}),
        }
        planted.images[str(image_id)] = kind
    for record, reason in bad_images:
        image_records.add(record, reason)
    for record, reason in bad_annotations:
        annotations.add(record, reason)
    _write_json(path, {"info": {}, "images": image_records.items, "annotations": annotations.items})
    return planted


def write_coco(root: Path) -> dict[str, Planted]:
    """Official caption files for train2014 and val2014, and Karpathy's dataset_coco.json."""
    directory = root.resolve() / "coco"
    val_images = [
        (1, "rgb", ["a man riding a horse", "a horse and its rider"], None),
        (2, "gray", ["a black and white street"], None),
        (3, "cmyk", ["a red square"], None),
        (4, "rgba", ["a red logo on white"], None),
        (5, "truncated", ["a cut-off download"], None),
        (6, "corrupt", ["noise"], None),
        (7, "missing", ["an image nobody downloaded"], None),
    ]
    bad_val_images = [
        ({"id": 8, "file_name": "000000000008.jpg"}, "image 8 has no captions"),
        ({"id": 9}, "missing key 'file_name'"),
        ({"id": "10", "file_name": "000000000010.jpg"}, "'id' is str, expected int"),
        ({"id": 1, "file_name": "again.jpg"}, "duplicate image id '1'"),
    ]
    bad_val_annotations = [
        ({"image_id": 999, "id": 100, "caption": "an orphan caption"}, "unknown image id 999"),
        ({"image_id": 1, "id": 101, "caption": 5}, "'caption' is int, expected str"),
        ({"image_id": 2, "id": 102, "caption": "  "}, "empty caption"),
    ]
    planted = {
        "val2014": _coco_format(
            directory / "annotations" / "captions_val2014.json",
            directory / "val2014",
            val_images,
            bad_val_images,
            bad_val_annotations,
        ),
        "train2014": _coco_format(
            directory / "annotations" / "captions_train2014.json",
            directory / "train2014",
            [(100, "rgb", ["a training image"], None)],
            [],
            [],
        ),
    }
    planted.update(_write_karpathy(directory))
    return planted


def _write_karpathy(directory: Path) -> dict[str, Planted]:
    parts = {"karpathy_train": Planted(), "karpathy_val": Planted(), "karpathy_test": Planted()}
    part_of = {"train": "karpathy_train", "restval": "karpathy_train", "val": "karpathy_val", "test": "karpathy_test"}
    images = []

    def add(record, reason=None, kind="rgb"):
        """A record of dataset_coco.json; unknown splits are reported by every part."""
        parts_told = [part_of[record["split"]]] if record.get("split") in part_of else list(parts)
        for part in parts_told:
            planted = parts[part]
            if reason:
                planted.skipped[f"images[{len(images)}]"] = reason
            else:
                path = write_image(directory / record["filepath"] / record["filename"], kind)
                planted.rows[str(record["cocoid"])] = {
                    "image_path": str(path),
                    "captions": [s["raw"].strip() for s in record["sentences"]],
                    "questions": [],
                }
                planted.images[str(record["cocoid"])] = kind
        images.append(record)

    def image(cocoid, split, sentences, folder="val2014"):
        return {
            "filepath": folder,
            "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
            "cocoid": cocoid,
            "split": split,
            "sentences": [{"raw": s, "tokens": s.split()} for s in sentences],
            "imgid": cocoid,
        }

    add(image(1, "test", ["a man riding a horse ", "a horse and its rider"]))
    add(image(11, "train", ["a training image"], folder="train2014"))
    add(image(12, "restval", ["a restval image"]), kind="gray")
    add(image(13, "val", ["a validation image"]), kind="cmyk")
    add({k: v for k, v in image(16, "test", ["x"]).items() if k != "sentences"}, "missing key 'sentences'")
    add(image(17, "bogus", ["x"]), "unknown split 'bogus'")
    add(image(1, "test", ["the same image again"]), "duplicate image id '1'")
    add(image(14, "val", []), "image 14 has no captions")
    add({**image(15, "test", []), "sentences": [{"tokens": ["no", "raw"]}]}, "lacks its 'raw' text")
    _write_json(directory / "dataset_coco.json", {"dataset": "coco", "images": images})
    return parts


# --- NoCaps ---------------------------------------------------------------------------------------


def write_nocaps(root: Path) -> dict[str, Planted]:
    directory = root.resolve() / "nocaps"
    images = [
        (0, "rgb", ["a dog on a sofa", "a brown dog lying down"], "in-domain"),
        (1, "gray", ["a jellyfish in dark water"], "near-domain"),
        (2, "rgba", ["a red accordion"], "out-domain"),
        (3, "cmyk", ["a printed sign"], "in-domain"),
        (4, "truncated", ["a cut-off download"], "near-domain"),
        (5, "corrupt", ["noise"], "out-domain"),
        (6, "missing", ["an image nobody downloaded"], "in-domain"),
    ]
    bad_images = [
        ({"id": 7, "file_name": "7.jpg", "domain": "far-domain"}, "domain 'far-domain' is not one of"),
        ({"id": 0, "file_name": "again.jpg", "domain": "in-domain"}, "duplicate image id '0'"),
        ({"id": 9, "file_name": "9.jpg", "domain": "out-domain"}, "image 9 has no captions"),
        ({"id": 10, "file_name": "10.jpg"}, "missing key 'domain'"),
    ]
    bad_annotations = [
        ({"image_id": 404, "id": 50, "caption": "an orphan"}, "unknown image id 404"),
        ({"image_id": 0, "id": 51}, "missing key 'caption'"),
    ]
    return {
        "val": _coco_format(
            directory / "nocaps_val_4500_captions.json",
            directory / "images",
            images,
            bad_images,
            bad_annotations,
            domain=True,
        )
    }


# --- VQAv2 ----------------------------------------------------------------------------------------


def vqa_answers(answers: list[str]) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


def write_vqav2(root: Path) -> dict[str, Planted]:
    """Questions and annotations for val (good and bad records) and train (one image)."""
    root = root.resolve()
    planted = {"val": Planted(), "train": Planted()}
    yes = ["yes"] * 7 + ["no"] * 3
    two = ["two"] * 6 + ["2"] * 4
    logo = ["no"] + ["yes"] * 6 + ["no"] * 3
    # multiple_choice_answer where it is not answers[0]: VQAv2 takes the consensus over normalised
    # answers ("two" -> "2"), so it may differ from the first and the most frequent raw answer (11);
    # absent (20) or not a string (40), the reader takes the most frequent answer.
    consensus = {11: "2", 20: None, 40: 1}
    answer = {11: "2", 40: "yes"}  # the question record's "answer", where it is not answers[0]
    # val: (image id, image kind, [(question id, question, answers, answer type)])
    val_images = [
        (1, "rgb", [(10, "Is it sunny?", yes, "yes/no"), (11, "How many horses?", two, "number")]),
        (2, "gray", [(20, "Is this old?", yes, "yes/no")]),
        (3, "cmyk", [(30, "What colour is the square?", ["red"] * 10, "other")]),
        (4, "rgba", [(40, "Is there a logo?", logo, "yes/no")]),
        (5, "truncated", [(50, "Is it cut off?", yes, "yes/no")]),
        (6, "corrupt", [(60, "What is this?", ["noise"] * 10, "other")]),
        (7, "missing", [(70, "Is it here?", yes, "yes/no")]),
    ]
    for split, images in (("val", val_images), ("train", [(100, "rgb", [(1000, "Is it training?", yes, "yes/no")])])):
        part = planted[split]
        questions, annotations = _Records("questions", part), _Records("annotations", part)
        for image_id, kind, image_questions in images:
            path = write_image(root / "coco" / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg", kind)
            for question_id, question, answers, answer_type in image_questions:
                questions.add({"image_id": image_id, "question": question, "question_id": question_id})
                annotation = {
                    "question_id": question_id,
                    "image_id": image_id,
                    "answer_type": answer_type,
                    "question_type": "are",
                    "multiple_choice_answer": consensus.get(question_id, answers[0]),
                    "answers": vqa_answers(answers),
                }
                if annotation["multiple_choice_answer"] is None:
                    del annotation["multiple_choice_answer"]
                annotations.add(annotation)
            part.rows[str(image_id)] = {
                "image_path": str(path),
                "captions": [],
                "questions": [
                    {
                        "question_id": str(q),
                        "question": text,
                        "answers": answers,
                        "answer": answer.get(q, answers[0]),
                        "answer_type": answer_type,
                    }
                    for q, text, answers, answer_type in image_questions
                ],
            }
            part.images[str(image_id)] = kind
        if split == "val":
            good = {"image_id": 2, "answer_type": "yes/no", "answers": vqa_answers(yes)}
            questions.add({"image_id": 2, "question": "Nine answers?", "question_id": 21}, "has 9 answers, expected 10")
            annotations.add({**good, "question_id": 21, "answers": vqa_answers(yes[:9])})
            questions.add(
                {"image_id": 3, "question": "An answer without text?", "question_id": 31},
                "an answer without 'answer' text",
            )
            annotations.add(
                {**good, "image_id": 3, "question_id": 31, "answers": vqa_answers(yes[:9]) + [{"answer_id": 10}]}
            )
            questions.add({"image_id": 8, "question": "Unannotated?", "question_id": 80}, "has no annotation")
            questions.add({"image_id": 1, "question_id": 12}, "missing key 'question'")
            questions.add(
                {"image_id": 1, "question": "Is it sunny again?", "question_id": 10}, "duplicate question id 10"
            )
            questions.add(
                {"image_id": 9, "question": "Which image?", "question_id": 90}, "its annotation about image 99"
            )
            annotations.add({**good, "image_id": 99, "question_id": 90})
            annotations.add(
                {"image_id": 1, "answer_type": "other", "answers": vqa_answers(yes)}, "missing key 'question_id'"
            )
        _write_json(
            root / "vqav2" / f"v2_OpenEnded_mscoco_{split}2014_questions.json",
            {"data_subtype": f"{split}2014", "questions": questions.items},
        )
        _write_json(
            root / "vqav2" / f"v2_mscoco_{split}2014_annotations.json",
            {"data_subtype": f"{split}2014", "annotations": annotations.items},
        )
    return planted


# --- Generated malformed input for the readers' property tests (hypothesis strategies) ---

GOOD_ID = 424242  # ids that generated records are kept away from, so the good record stays as it is
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=6)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=9), inner, max_size=3),
    max_leaves=6,
)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def records(keys: list[str]) -> st.SearchStrategy:
    """Records with the reader's keys, each present or not, of any JSON type; or any JSON at all."""
    return st.one_of(JSON, st.dictionaries(st.sampled_from(keys), JSON | SCALARS, max_size=len(keys)))


def far_from_good(record) -> bool:
    return not (
        isinstance(record, dict)
        and any(record.get(k) in (GOOD_ID, str(GOOD_ID)) for k in ("id", "image_id", "cocoid", "question_id"))
    )


def read_or_none(dataset: str, part: str, root: Path):
    try:
        return read_manifest(dataset, part, root=root)
    except DatasetError:
        return None


def write_json(path: Path, document) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def good_row(result, image_id: str) -> dict:
    rows = result.manifest[result.manifest["image_id"] == image_id].to_dict("records")
    assert len(rows) == 1, f"the good record {image_id} was lost: {result.skipped[:3]}"
    return rows[0]
