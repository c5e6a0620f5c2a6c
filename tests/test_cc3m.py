"""pipeline/datasets/cc3m.py: webdataset shards and the TSV, member by member, in any encoding; on
generated malformed input a bad record is skipped with a reason and the good one reads as alone."""

import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.datasets import DatasetError, list_parts, load_image, read_manifest
from tests.dataset_fixtures import (
    PROPERTY,
    good_row,
    image_bytes,
    read_or_none,
    write_cc3m_shards,
    write_cc3m_tsv,
)


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


@PROPERTY
@given(lines=st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=5))
def test_cc3m_tsv_reader(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("tsv")
    (root / "cc3m").mkdir()
    (root / "cc3m" / "Validation_GCC-1.1.0-Validation.tsv").write_bytes(
        b"\n".join([b"a good caption\thttp://example.com/0.jpg", *lines]) + b"\n"
    )
    result = read_or_none("cc3m", "val.00000", root)
    assert result is not None
    assert list(good_row(result, "000000000")["captions"]) == ["a good caption"]
    assert len(result.manifest) + len(result.skipped) == 1 + len(lines)


MEMBER_NAMES = st.text(
    st.characters(blacklist_characters="\x00/", blacklist_categories=("Cs",)), min_size=1, max_size=12
)


@PROPERTY
@given(members=st.lists(st.tuples(MEMBER_NAMES, st.binary(max_size=40)), max_size=5))
def test_cc3m_shard_reader(tmp_path_factory, members):
    root = tmp_path_factory.mktemp("shard")
    path = root / "cc3m" / "val" / "00000.tar"
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("good.jpg", image_bytes("rgb")),
            ("good.txt", b"a good caption"),
            *[(n, d) for n, d in members if n.partition(".")[0] != "good"],
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = read_or_none("cc3m", "val.00000", root)
    assert result is not None
    row = good_row(result, "good")
    assert list(row["captions"]) == ["a good caption"]
    image, reason = load_image(row["image_path"])
    assert reason is None and image.size == (32, 32)
