"""The file-based dataset readers on tiny fixtures in the real formats, bad records planted."""

import json
from pathlib import Path

import pytest

from pipeline.datasets import DATASETS, DatasetError, list_parts, load_image, nocaps, read_manifest
from pipeline.datasets.manifest import _archive_filesystem
from tests.dataset_fixtures import (
    TRANSPARENT,
    UNREADABLE,
    image_bytes,
    write_cc3m_shards,
    write_cc3m_tsv,
    write_coco,
    write_image,
    write_nocaps,
    write_vqav2,
)

WRITERS = {"cc3m_shards": ("cc3m", write_cc3m_shards), "cc3m_tsv": ("cc3m", write_cc3m_tsv),
           "coco": ("coco", write_coco), "nocaps": ("nocaps", write_nocaps), "vqav2": ("vqav2", write_vqav2)}
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
        assert all(Path(e["source"]).is_file() and Path(e["source"]).is_relative_to(root.resolve())
                   for e in skipped)


def test_every_manifest_image_loads_as_rgb_or_gives_a_reason(written):
    dataset, root, planted, options = written
    for part, expected in planted.items():
        manifest = read_manifest(dataset, part, root=root, **options).manifest
        for image_id, path in zip(manifest["image_id"], manifest["image_path"]):
            kind = expected.images[image_id]
            image, reason = load_image(path)
            if kind in UNREADABLE:
                assert image is None and reason.startswith(UNREADABLE[kind]), (part, image_id, reason)
            else:
                assert reason is None and image.mode == "RGB", (part, image_id, reason)
                if kind in TRANSPARENT:
                    assert image.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "kind", ["rgb", "gray", "gray16", "cmyk", "rgba", "palette", "truncated", "corrupt", "missing"]
)
def test_load_image_kinds(tmp_path, kind):
    image, reason = load_image(str(write_image(tmp_path / f"image.{kind}", kind)))
    if kind in UNREADABLE:
        assert image is None and reason.startswith(UNREADABLE[kind])
        return
    assert reason is None and image.mode == "RGB"
    expected_pixel = {"gray16": (128, 128, 128), "cmyk": (255, 0, 0), "rgba": (255, 255, 255),
                      "palette": (255, 255, 255)}
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


def test_cc3m_prefers_shards_over_the_tsv(tmp_path):
    shards = write_cc3m_shards(tmp_path)
    write_cc3m_tsv(tmp_path)
    assert list_parts("cc3m", tmp_path, rows_per_part=4) == sorted(shards)
    manifest = read_manifest("cc3m", "train.00000", root=tmp_path, rows_per_part=4).manifest
    assert sorted(manifest["image_id"]) == sorted(shards["train.00000"].rows)


def test_cc3m_tsv_default_part_size_and_parts_past_the_end(tmp_path):
    write_cc3m_tsv(tmp_path)
    assert list_parts("cc3m", tmp_path) == ["train.00000", "val.00000"]
    assert len(read_manifest("cc3m", "train.00000", root=tmp_path).manifest) == 7
    with pytest.raises(DatasetError, match="Train_GCC-training.tsv has no line 13"):
        read_manifest("cc3m", "train.00003", root=tmp_path, rows_per_part=4)
    with pytest.raises(KeyError, match="look like"):
        read_manifest("cc3m", "train", root=tmp_path)


def test_an_unreadable_shard_names_itself(tmp_path):
    write_cc3m_shards(tmp_path)
    shard = tmp_path / "cc3m" / "val" / "00000.tar"
    shard.write_bytes(image_bytes("corrupt"))
    with pytest.raises(DatasetError, match="00000.tar is not a readable tar"):
        read_manifest("cc3m", "val.00000", root=tmp_path)


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


@pytest.mark.parametrize("dataset, writer, file_name", [
    ("coco", write_coco, "annotations/captions_val2014.json"),
    ("nocaps", write_nocaps, "nocaps_val_4500_captions.json"),
    ("vqav2", write_vqav2, "v2_mscoco_val2014_annotations.json"),
])
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


def test_nocaps_metrics_score_each_domain_as_a_whole(tmp_path, monkeypatch):
    """The standard scorer (tests/test_caption_metrics.py runs it for real, Java and all) is replaced
    by exact-match share, so this checks what NoCaps adds: one whole set per domain, named per domain."""
    scored_sets = []

    def exact_match_share(references, candidates):
        scored_sets.append(sorted(candidates))
        return {"CIDEr-D": sum(candidates[i] in references[i] for i in candidates) / len(candidates)}

    monkeypatch.setattr(nocaps, "standard_caption_metrics", exact_match_share)
    write_nocaps(tmp_path)
    manifest = read_manifest("nocaps", "val", root=tmp_path).manifest
    references = dict(zip(manifest["image_id"], map(list, manifest["captions"])))
    candidates = {i: c[0] for i, c in references.items()}
    candidates["1"] = "a plate of pasta on a table"  # wrong, in near-domain with the right "4"
    scores = nocaps.caption_metrics(manifest, references, candidates)
    assert scored_sets == [["0", "3", "6"], ["1", "4"], ["2", "5"]]
    assert scores == {"CIDEr-D (in-domain)": 1.0, "CIDEr-D (near-domain)": 0.5, "CIDEr-D (out-domain)": 1.0}
    with pytest.raises(ValueError, match="not in the NoCaps manifest"):
        nocaps.caption_metrics(manifest, references, {**candidates, "404": "an unknown image"})


@pytest.mark.parametrize("file_name", ["../../../etc/passwd", "/etc/passwd", "sub/../../outside.jpg"])
def test_coco_and_karpathy_paths_that_leave_the_dataset_folder_are_skipped(tmp_path, file_name):
    directory = tmp_path / "coco"
    write_image(directory / "val2014" / "good.jpg", "rgb")
    annotations = {"images": [{"id": 1, "file_name": "good.jpg"}, {"id": 2, "file_name": file_name}],
                   "annotations": [{"image_id": 1, "id": 1, "caption": "a photo"},
                                   {"image_id": 2, "id": 2, "caption": "a secret"}]}
    (directory / "annotations").mkdir(parents=True)
    (directory / "annotations" / "captions_val2014.json").write_text(json.dumps(annotations))
    karpathy = {"images": [
        {"filepath": "val2014", "filename": "good.jpg", "cocoid": 1, "split": "test", "sentences": [{"raw": "a"}]},
        {"filepath": str(Path(file_name).parent), "filename": Path(file_name).name, "cocoid": 2, "split": "test",
         "sentences": [{"raw": "b"}]},
    ]}
    (directory / "dataset_coco.json").write_text(json.dumps(karpathy))
    for part in ("val2014", "karpathy_test"):
        result = read_manifest("coco", part, root=tmp_path)
        assert result.manifest["image_id"].tolist() == ["1"], part
        (skipped,) = result.skipped
        assert "leaves the folder" in skipped["reason"] and skipped["record"] == "images[1]", part


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


@pytest.mark.parametrize("mode, values, expected", [
    ("I", 1000, 4), ("I", 200, 200), ("F", 0.5, 128),
])
def test_32_bit_and_float_grey_are_scaled_to_8_bits(tmp_path, mode, values, expected):
    import numpy as np
    from PIL import Image

    pixels = Image.fromarray(np.full((8, 8), values, dtype=np.int32 if mode == "I" else np.float32), mode)
    image, reason = load_image(_save(tmp_path / "deep.tiff", pixels))
    assert reason is None and image.getpixel((0, 0)) == (expected,) * 3


@pytest.mark.parametrize("mode, values, fragment", [
    ("I", 100_000, "beyond 16 bits"), ("F", 3.5, "not [0, 1]"),
])
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


def _shard(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_cc3m_shards_that_cannot_be_read_member_by_member_say_why(tmp_path):
    (tmp_path / "cc3m" / "train" / "00000.tar").mkdir(parents=True)
    with pytest.raises(DatasetError, match="is a folder, not a tar shard"):
        read_manifest("cc3m", "train.00000", root=tmp_path)
    _shard(tmp_path / "cc3m" / "train" / "00001.tar", {"a.jpg": image_bytes("rgb"), "a.txt": b"x"}, "w:gz")
    with pytest.raises(DatasetError, match="gzip-compressed.*decompress it"):
        read_manifest("cc3m", "train.00001", root=tmp_path)


def test_a_tar_member_named_with_double_colons_still_loads(tmp_path):
    _shard(tmp_path / "cc3m" / "val" / "00000.tar", {"a::b.jpg": image_bytes("rgb"), "a::b.txt": b"a photo"})
    manifest = read_manifest("cc3m", "val.00000", root=tmp_path).manifest
    (path,) = manifest["image_path"]
    image, reason = load_image(path)
    assert reason is None and image.size == (32, 32)


def test_tsv_encodings(tmp_path):
    directory = tmp_path / "cc3m"
    directory.mkdir()
    tsv = directory / "Validation_GCC-1.1.0-Validation.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfa red car\thttp://x/0.jpg\nnul\x00 inside\thttp://x/1.jpg\nok\thttp://x/2.jpg\n")
    result = read_manifest("cc3m", "val.00000", root=tmp_path)
    assert [c[0] for c in result.manifest["captions"]] == ["a red car", "ok"]
    assert [(s["record"], s["reason"]) for s in result.skipped] == [("line 2", "line contains NUL bytes")]
    tsv.write_bytes("a red car\thttp://x/0.jpg\n".encode("utf-16"))
    with pytest.raises(DatasetError, match="is UTF-16"):
        read_manifest("cc3m", "val.00000", root=tmp_path)


def test_vqav2_duplicate_annotations_are_counted(tmp_path):
    write_vqav2(tmp_path)
    path = tmp_path / "vqav2" / "v2_mscoco_train2014_annotations.json"
    document = json.loads(path.read_text())
    (first,) = document["annotations"]
    document["annotations"].append({**first, "answers": [{**a, "answer": "no"} for a in first["answers"]]})
    path.write_text(json.dumps(document))
    result = read_manifest("vqav2", "train", root=tmp_path)
    assert [q["answers"][0] for q in result.manifest["questions"][0]] == ["yes"]  # the first is kept
    assert any("duplicate annotation of question 1000 (conflicting answers" in s["reason"] for s in result.skipped)
