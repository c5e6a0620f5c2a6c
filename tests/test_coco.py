"""pipeline/datasets/coco.py: COCO-format annotations and the Karpathy split; paths that leave the
dataset folder are skipped; on generated malformed input the good record reads as alone."""

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.datasets import read_manifest
from tests.dataset_fixtures import (
    GOOD_ID,
    PROPERTY,
    far_from_good,
    good_row,
    read_or_none,
    records,
    write_image,
    write_json,
)


@pytest.mark.parametrize("file_name", ["../../../etc/passwd", "/etc/passwd", "sub/../../outside.jpg"])
def test_coco_and_karpathy_paths_that_leave_the_dataset_folder_are_skipped(tmp_path, file_name):
    directory = tmp_path / "coco"
    write_image(directory / "val2014" / "good.jpg", "rgb")
    annotations = {
        "images": [{"id": 1, "file_name": "good.jpg"}, {"id": 2, "file_name": file_name}],
        "annotations": [
            {"image_id": 1, "id": 1, "caption": "a photo"},
            {"image_id": 2, "id": 2, "caption": "a secret"},
        ],
    }
    (directory / "annotations").mkdir(parents=True)
    (directory / "annotations" / "captions_val2014.json").write_text(json.dumps(annotations))
    karpathy = {
        "images": [
            {"filepath": "val2014", "filename": "good.jpg", "cocoid": 1, "split": "test", "sentences": [{"raw": "a"}]},
            {
                "filepath": str(Path(file_name).parent),
                "filename": Path(file_name).name,
                "cocoid": 2,
                "split": "test",
                "sentences": [{"raw": "b"}],
            },
        ]
    }
    (directory / "dataset_coco.json").write_text(json.dumps(karpathy))
    for part in ("val2014", "karpathy_test"):
        result = read_manifest("coco", part, root=tmp_path)
        assert result.manifest["image_id"].tolist() == ["1"], part
        (skipped,) = result.skipped
        assert "leaves the folder" in skipped["reason"] and skipped["record"] == "images[1]", part


@PROPERTY
@given(
    images=st.lists(records(["id", "file_name", "domain"]), max_size=4),
    annotations=st.lists(records(["image_id", "id", "caption"]), max_size=4),
)
@pytest.mark.parametrize("dataset", ["coco", "nocaps"])
def test_coco_format_readers(tmp_path_factory, dataset, images, annotations):
    root = tmp_path_factory.mktemp(dataset)
    good = {"id": GOOD_ID, "file_name": "good.jpg", "domain": "in-domain"}
    document = {
        "images": [good, *filter(far_from_good, images)],
        "annotations": [
            {"image_id": GOOD_ID, "id": 0, "caption": "a good caption"},
            *filter(far_from_good, annotations),
        ],
    }
    if dataset == "coco":
        write_json(root / "coco" / "annotations" / "captions_val2014.json", document)
        result = read_or_none("coco", "val2014", root)
    else:
        write_json(root / "nocaps" / "nocaps_val_4500_captions.json", document)
        result = read_or_none("nocaps", "val", root)
    assert result is not None  # the file's shape is right: only records can be bad
    row = good_row(result, str(GOOD_ID))
    assert list(row["captions"]) == ["a good caption"] and row["image_path"].endswith("good.jpg")
    # Every image record is accounted for: read, or skipped with a reason.
    skipped_images = [s for s in result.skipped if s["record"].startswith("images[")]
    assert len(result.manifest) + len(skipped_images) == len(document["images"])
    assert all(s["reason"] for s in result.skipped)


@PROPERTY
@given(images=st.lists(records(["filepath", "filename", "cocoid", "split", "sentences"]), max_size=4))
def test_karpathy_reader(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("karpathy")
    good = {
        "filepath": "val2014",
        "filename": "good.jpg",
        "cocoid": GOOD_ID,
        "split": "test",
        "sentences": [{"raw": "a good caption"}],
    }
    write_json(root / "coco" / "dataset_coco.json", {"images": [good, *filter(far_from_good, images)]})
    result = read_or_none("coco", "karpathy_test", root)
    assert result is not None
    row = good_row(result, str(GOOD_ID))
    assert list(row["captions"]) == ["a good caption"] and row["image_path"].endswith("val2014/good.jpg")
