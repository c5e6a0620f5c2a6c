"""pipeline/datasets: the reader registry and the contract every file-based reader keeps, on tiny
fixtures in the real formats with bad records planted: good records read whole, each bad record
skipped once with its reason, a missing or unparsable file named with where to get it."""

import json
from pathlib import Path

import pytest

from pipeline.datasets import DATASETS, DatasetError, consensus_answer, list_parts, load_image, read_manifest
from tests.dataset_fixtures import (
    TRANSPARENT,
    UNREADABLE,
    write_cc3m_shards,
    write_cc3m_tsv,
    write_coco,
    write_nocaps,
    write_vqav2,
)

WRITERS = {
    "cc3m_shards": ("cc3m", write_cc3m_shards),
    "cc3m_tsv": ("cc3m", write_cc3m_tsv),
    "coco": ("coco", write_coco),
    "nocaps": ("nocaps", write_nocaps),
    "vqav2": ("vqav2", write_vqav2),
}


OPTIONS = {"cc3m_tsv": {"rows_per_part": 4}}


@pytest.fixture(scope="module", params=sorted(WRITERS))
def written(request, tmp_path_factory):
    """(dataset, root, planted parts, reader options) for one fixture format."""
    dataset, write = WRITERS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    return dataset, root, write(root), OPTIONS.get(request.param, {})


def test_registry_names_every_reader():
    assert set(DATASETS) == {"easy_vqa", "cc3m", "coco", "nocaps", "vqav2"}
    assert list_parts("easy_vqa", None) == ["test", "train", "val"]


def test_every_reader_is_a_dataset_reader_with_its_optional_parts():
    from assets.config import DatasetConfig
    from pipeline.datasets import CaptionSubsets, DatasetReader, VqaGroups, how_to_get, reader

    for dataset in DATASETS:
        module = reader(dataset)
        assert isinstance(module, DatasetReader)
        assert set(module.OPTIONS) <= set(DatasetConfig.model_fields), dataset  # settings the asset has
        assert how_to_get(dataset, "val")
    assert {d for d in DATASETS if isinstance(reader(d), CaptionSubsets)} == {"easy_vqa", "nocaps"}
    assert {d for d in DATASETS if isinstance(reader(d), VqaGroups)} == {"easy_vqa"}


def test_a_reader_missing_a_required_part_is_named(monkeypatch):
    import types

    from pipeline import datasets

    module = types.ModuleType("partial_reader")
    module.OPTIONS, module.list_parts = (), lambda root: []
    monkeypatch.setitem(datasets.DATASETS, "partial", "partial_reader")
    monkeypatch.setitem(__import__("sys").modules, "partial_reader", module)
    with pytest.raises(
        TypeError, match=r"partial_reader is not a DatasetReader: it lacks \['read_manifest', 'how_to_get'\]"
    ):
        datasets.reader("partial")


def test_the_consensus_answer_is_the_most_frequent_ties_by_first_occurrence():
    assert consensus_answer(["two", "2", "2", "two", "2"]) == "2"
    assert consensus_answer(["no", "yes", "yes", "no"]) == "no"
    assert consensus_answer(["red"]) == "red"


def test_list_parts_finds_the_parts_on_disk(written):
    dataset, root, planted, options = written
    assert list_parts(dataset, root, **options) == sorted(planted)


def test_good_records_are_read_whole(written):
    dataset, root, planted, options = written
    for part, expected in planted.items():
        manifest = read_manifest(dataset, part, root=root, **options).manifest
        assert sorted(manifest["image_id"]) == sorted(expected.rows), part
        for row in manifest.to_dict("records"):
            assert {k: row[k] for k in expected.rows[row["image_id"]]} == expected.rows[row["image_id"]], part


def test_each_bad_record_is_skipped_once_with_its_reason(written):
    dataset, root, planted, options = written
    for part, expected in planted.items():
        skipped = read_manifest(dataset, part, root=root, **options).skipped
        assert len(skipped) == len(expected.skipped), (part, skipped)
        reasons = {entry["record"]: entry["reason"] for entry in skipped}
        assert set(reasons) == set(expected.skipped), part
        for record, fragment in expected.skipped.items():
            assert fragment in reasons[record], (part, record, reasons[record])
        assert all(Path(e["source"]).is_file() and Path(e["source"]).is_relative_to(root.resolve()) for e in skipped)


def test_every_manifest_image_loads_as_rgb_or_gives_a_reason(written):
    dataset, root, planted, options = written
    for part, expected in planted.items():
        manifest = read_manifest(dataset, part, root=root, **options).manifest
        for image_id, path in zip(manifest["image_id"], manifest["image_path"], strict=True):
            kind = expected.images[image_id]
            image, reason = load_image(path)
            if kind in UNREADABLE:
                assert image is None and reason.startswith(UNREADABLE[kind]), (part, image_id, reason)
            else:
                assert reason is None and image.mode == "RGB", (part, image_id, reason)
                if kind in TRANSPARENT:
                    assert image.getpixel((0, 0)) == (255, 255, 255)


MISSING = [
    ("cc3m", "train.00000", "Train_GCC-training.tsv", "ConceptualCaptions/download"),
    ("coco", "val2014", "captions_val2014.json", "annotations_trainval2014.zip"),
    ("coco", "karpathy_test", "dataset_coco.json", "caption_datasets.zip"),
    ("nocaps", "val", "nocaps_val_4500_captions.json", "s3.amazonaws.com/nocaps"),
    ("vqav2", "val", "v2_OpenEnded_mscoco_val2014_questions.json", "visualqa.org"),
]


@pytest.mark.parametrize("dataset, part, file_name, url", MISSING)
def test_a_missing_annotation_file_says_where_to_get_it(tmp_path, dataset, part, file_name, url):
    assert list_parts(dataset, tmp_path) == []
    with pytest.raises(DatasetError, match=rf"{file_name} not found\..*{url}.*<root>/{dataset}"):
        read_manifest(dataset, part, root=tmp_path)


@pytest.mark.parametrize(
    "dataset, writer, file_name",
    [
        ("coco", write_coco, "annotations/captions_val2014.json"),
        ("nocaps", write_nocaps, "nocaps_val_4500_captions.json"),
        ("vqav2", write_vqav2, "v2_mscoco_val2014_annotations.json"),
    ],
)
def test_an_unparsable_json_names_the_file(tmp_path, dataset, writer, file_name):
    part = sorted(writer(tmp_path))[-1]
    path = tmp_path.resolve() / dataset / file_name
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match=rf"{path} is not valid JSON"):
        read_manifest(dataset, part, root=tmp_path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(DatasetError, match="expected a JSON object"):
        read_manifest(dataset, part, root=tmp_path)


def test_file_readers_need_the_raw_data_root():
    with pytest.raises(DatasetError, match="raw-data root"):
        read_manifest("coco", "val2014")
