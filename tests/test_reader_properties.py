"""Property-based tests of every dataset reader and of image loading on generated malformed input.

The contract: a bad record is skipped with a reason, or the whole file gets a DatasetError naming
it; never another exception; and the good records read exactly as they would alone.
"""

import io
import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.datasets import DatasetError, load_image, read_manifest
from tests.dataset_fixtures import image_bytes

GOOD_ID = 424242  # ids that generated records are kept away from, so the good record stays as it is
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=6)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=9), inner, max_size=3), max_leaves=6)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def records(keys: list[str]) -> st.SearchStrategy:
    """Records with the reader's keys, each present or not, of any JSON type; or any JSON at all."""
    return st.one_of(JSON, st.dictionaries(st.sampled_from(keys), JSON | SCALARS, max_size=len(keys)))


def _far_from_good(record) -> bool:
    return not (isinstance(record, dict)
                and any(record.get(k) in (GOOD_ID, str(GOOD_ID)) for k in ("id", "image_id", "cocoid", "question_id")))


def _read(dataset: str, part: str, root: Path):
    try:
        return read_manifest(dataset, part, root=root)
    except DatasetError:
        return None


def _write(path: Path, document) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def _good_row(result, image_id: str) -> dict:
    rows = result.manifest[result.manifest["image_id"] == image_id].to_dict("records")
    assert len(rows) == 1, f"the good record {image_id} was lost: {result.skipped[:3]}"
    return rows[0]


@PROPERTY
@given(images=st.lists(records(["id", "file_name", "domain"]), max_size=4),
       annotations=st.lists(records(["image_id", "id", "caption"]), max_size=4))
@pytest.mark.parametrize("dataset", ["coco", "nocaps"])
def test_coco_format_readers(tmp_path_factory, dataset, images, annotations):
    root = tmp_path_factory.mktemp(dataset)
    good = {"id": GOOD_ID, "file_name": "good.jpg", "domain": "in-domain"}
    document = {"images": [good, *filter(_far_from_good, images)],
                "annotations": [{"image_id": GOOD_ID, "id": 0, "caption": "a good caption"},
                                *filter(_far_from_good, annotations)]}
    if dataset == "coco":
        _write(root / "coco" / "annotations" / "captions_val2014.json", document)
        result = _read("coco", "val2014", root)
    else:
        _write(root / "nocaps" / "nocaps_val_4500_captions.json", document)
        result = _read("nocaps", "val", root)
    assert result is not None  # the file's shape is right: only records can be bad
    row = _good_row(result, str(GOOD_ID))
    assert list(row["captions"]) == ["a good caption"] and row["image_path"].endswith("good.jpg")
    # Every image record is accounted for: read, or skipped with a reason.
    skipped_images = [s for s in result.skipped if s["record"].startswith("images[")]
    assert len(result.manifest) + len(skipped_images) == len(document["images"])
    assert all(s["reason"] for s in result.skipped)


@PROPERTY
@given(images=st.lists(records(["filepath", "filename", "cocoid", "split", "sentences"]), max_size=4))
def test_karpathy_reader(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("karpathy")
    good = {"filepath": "val2014", "filename": "good.jpg", "cocoid": GOOD_ID, "split": "test",
            "sentences": [{"raw": "a good caption"}]}
    _write(root / "coco" / "dataset_coco.json", {"images": [good, *filter(_far_from_good, images)]})
    result = _read("coco", "karpathy_test", root)
    assert result is not None
    row = _good_row(result, str(GOOD_ID))
    assert list(row["captions"]) == ["a good caption"] and row["image_path"].endswith("val2014/good.jpg")


@PROPERTY
@given(questions=st.lists(records(["image_id", "question", "question_id"]), max_size=4),
       annotations=st.lists(records(["question_id", "image_id", "answer_type", "answers"]), max_size=4))
def test_vqav2_reader(tmp_path_factory, questions, annotations):
    root = tmp_path_factory.mktemp("vqav2")
    answers = [{"answer": "yes", "answer_id": i} for i in range(10)]
    _write(root / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": [
        {"image_id": GOOD_ID, "question": "Is it good?", "question_id": GOOD_ID}, *filter(_far_from_good, questions)]})
    _write(root / "vqav2" / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": GOOD_ID, "image_id": GOOD_ID, "answer_type": "yes/no", "answers": answers},
        *filter(_far_from_good, annotations)]})
    result = _read("vqav2", "val", root)
    assert result is not None
    (question,) = _good_row(result, str(GOOD_ID))["questions"]
    assert question["question"] == "Is it good?" and list(question["answers"]) == ["yes"] * 10


@PROPERTY
@given(lines=st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=5))
def test_cc3m_tsv_reader(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("tsv")
    (root / "cc3m").mkdir()
    (root / "cc3m" / "Validation_GCC-1.1.0-Validation.tsv").write_bytes(
        b"\n".join([b"a good caption\thttp://example.com/0.jpg", *lines]) + b"\n")
    result = _read("cc3m", "val.00000", root)
    assert result is not None
    assert list(_good_row(result, "000000000")["captions"]) == ["a good caption"]
    assert len(result.manifest) + len(result.skipped) == 1 + len(lines)


MEMBER_NAMES = st.text(st.characters(blacklist_characters="\x00/", blacklist_categories=("Cs",)), min_size=1,
                       max_size=12)


@PROPERTY
@given(members=st.lists(st.tuples(MEMBER_NAMES, st.binary(max_size=40)), max_size=5))
def test_cc3m_shard_reader(tmp_path_factory, members):
    root = tmp_path_factory.mktemp("shard")
    path = root / "cc3m" / "val" / "00000.tar"
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w") as tar:
        for name, data in [("good.jpg", image_bytes("rgb")), ("good.txt", b"a good caption"),
                           *[(n, d) for n, d in members if n.partition(".")[0] != "good"]]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = _read("cc3m", "val.00000", root)
    assert result is not None
    row = _good_row(result, "good")
    assert list(row["captions"]) == ["a good caption"]
    image, reason = load_image(row["image_path"])
    assert reason is None and image.size == (32, 32)


PNG = image_bytes("rgba")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200),
                      st.tuples(st.integers(0, len(PNG) - 1), st.binary(min_size=1, max_size=8)).map(
                          lambda edit: PNG[: edit[0]] + edit[1] + PNG[edit[0] + len(edit[1]):])))
def test_load_image_returns_an_image_or_a_reason(tmp_path, data):
    path = tmp_path / "image.png"
    path.write_bytes(data)
    image, reason = load_image(str(path))
    assert (image is None) != (reason is None)
    if image is not None:
        assert image.mode == "RGB"
