import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

from assets.image_features import feature_checks
from pipeline.encoders import create_backbone
from pipeline.image_features import ChunkedRows, encode_chunks, extract_image_features, rows_by_id
from storage import FeatureArray
from storage.feature_store import OK, PENDING, SKIPPED
from tests.conftest import assert_whole_chunks_once

ROWS, CHUNK = 160, 16

EXTRACT = textwrap.dedent(
    """
    import sys, pandas as pd
    from pipeline.encoders import create_backbone
    from pipeline.image_features import ChunkedRows, extract_image_features, rows_by_id
    from storage import FeatureArray
    manifest = pd.read_parquet(sys.argv[1])
    store = FeatureArray.open(sys.argv[2], manifest["image_id"].tolist(), 1, 1280, int(sys.argv[3]))
    extract_image_features(create_backbone("efficientnet_lite0_random"), manifest["image_path"].tolist(), store,
                           device="cpu", batch_size=8)
    """
)


@pytest.fixture(scope="module")
def subset(easy_vqa_val, tmp_path_factory):
    """160 easy-vqa images, one of them missing and one corrupt, saved as a manifest file."""
    directory = tmp_path_factory.mktemp("images")
    manifest = easy_vqa_val.head(ROWS).copy()
    corrupt = directory / "corrupt.png"
    corrupt.write_bytes(open(manifest.loc[20, "image_path"], "rb").read()[:60])  # truncated PNG
    manifest.loc[5, "image_path"] = str(directory / "missing.png")
    manifest.loc[20, "image_path"] = str(corrupt)
    path = directory / "manifest.parquet"
    manifest.to_parquet(path)
    return manifest, path


@pytest.fixture(scope="module")
def uninterrupted(subset, tmp_path_factory):
    manifest, _ = subset
    store = FeatureArray.open(
        str(tmp_path_factory.mktemp("a") / "f.zarr"), manifest["image_id"].tolist(), 1, 1280, CHUNK
    )
    stats = extract_image_features(
        create_backbone("efficientnet_lite0_random"), manifest["image_path"].tolist(), store, device="cpu", batch_size=8
    )
    return store, stats


def test_bad_images_are_skipped_and_counted(uninterrupted):
    store, stats = uninterrupted
    assert set(stats.skipped) == {5, 20}
    assert "missing file" in stats.skipped[5] and "missing.png" in stats.skipped[5]
    assert "corrupt" in stats.skipped[20] or "not an image" in stats.skipped[20]
    assert store.skipped == stats.skipped
    status = store.status
    assert status[5] == SKIPPED and status[20] == SKIPPED and (np.delete(status, [5, 20]) == OK).all()
    assert stats.images_encoded == ROWS - 2
    assert np.isfinite(store.features[:]).all() and np.abs(store.features[:6]).sum() > 0


def test_killed_extraction_resumes_without_recomputing_and_matches(subset, uninterrupted, tmp_path):
    _, manifest_path = subset
    path = tmp_path / "killed.zarr"
    process = subprocess.Popen(
        [sys.executable, "-c", EXTRACT, str(manifest_path), str(path), str(CHUNK)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and process.poll() is None:
        try:
            done = int((FeatureArray.read(str(path)).status != PENDING).sum() // CHUNK)
        except Exception:  # the group is still being created
            done = 0
        if done >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"

    manifest, _ = subset
    store = FeatureArray.open(str(path), manifest["image_id"].tolist(), 1, 1280, CHUNK)
    pending_before = store.pending_chunks()
    assert 0 < len(pending_before) < ROWS // CHUNK
    stats = extract_image_features(
        create_backbone("efficientnet_lite0_random"), manifest["image_path"].tolist(), store, device="cpu", batch_size=8
    )
    assert stats.chunks_computed == len(pending_before)  # finished chunks were not recomputed
    reference, _ = uninterrupted
    assert store.is_complete()
    np.testing.assert_array_equal(store.features[:], reference.features[:])
    np.testing.assert_array_equal(store.ids, reference.ids)
    assert store.skipped == reference.skipped


def test_changed_ids_recreate_the_partition(uninterrupted, tmp_path):
    store, _ = uninterrupted
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store.group.store.root, copy)
    ids = store.ids.tolist()
    assert FeatureArray.open(str(copy), ids, 1, 1280, CHUNK).is_complete()
    reopened = FeatureArray.open(str(copy), ids[:-1], 1, 1280, CHUNK)
    assert len(reopened.pending_chunks()) == reopened.num_chunks()


def test_a_failed_write_is_raised_and_a_rerun_resumes(subset, uninterrupted, tmp_path, monkeypatch):
    """The writer thread's error reaches the caller; the chunks written before it stay finished."""
    manifest = subset[0].head(5 * CHUNK)
    store = FeatureArray.open(str(tmp_path / "f.zarr"), manifest["image_id"].tolist(), 1, 1280, CHUNK)
    write_chunk = store.write_chunk

    def disk_full_at_chunk_3(chunk, features, reasons):
        if chunk == 3:
            raise OSError("disk full")
        write_chunk(chunk, features, reasons)

    monkeypatch.setattr(store, "write_chunk", disk_full_at_chunk_3)
    backbone = create_backbone("efficientnet_lite0_random")
    paths = manifest["image_path"].tolist()
    with pytest.raises(OSError, match="disk full"):
        extract_image_features(backbone, paths, store, device="cpu", batch_size=8)
    pending = store.pending_chunks()
    assert pending[0] == 3  # the chunks before the failed one are finished
    monkeypatch.undo()
    stats = extract_image_features(backbone, paths, store, device="cpu", batch_size=8)
    assert stats.chunks_computed == len(pending)
    np.testing.assert_array_equal(store.features[:], uninterrupted[0].features[: 5 * CHUNK])


def test_worker_processes_give_the_same_features_as_the_main_process(subset, uninterrupted, tmp_path):
    manifest = subset[0].head(3 * CHUNK)
    store = FeatureArray.open(str(tmp_path / "f.zarr"), manifest["image_id"].tolist(), 1, 1280, CHUNK)
    stats = extract_image_features(
        create_backbone("efficientnet_lite0_random"),
        manifest["image_path"].tolist(),
        store,
        device="cpu",
        batch_size=8,
        workers=2,
    )
    reference, reference_stats = uninterrupted
    assert stats.skipped == {row: reason for row, reason in reference_stats.skipped.items() if row < 3 * CHUNK}
    np.testing.assert_array_equal(store.features[:], reference.features[: 3 * CHUNK])


class NaNFromSecondBatch(torch.nn.Module):
    """Zero features for the first batch, NaN after (a model gone numerically wrong mid-run)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return torch.full((len(images), 1, 1280), 0.0 if self.calls == 1 else float("nan"))


def test_validity_is_recorded_per_row_as_chunks_are_written(subset, uninterrupted, tmp_path):
    manifest = subset[0].head(2 * CHUNK)
    ids = manifest["image_id"].tolist()
    store = FeatureArray.open(str(tmp_path / "f.zarr"), ids, 1, 1280, CHUNK)
    backbone = replace(create_backbone("efficientnet_lite0_random"), model=NaNFromSecondBatch())
    extract_image_features(backbone, manifest["image_path"].tolist(), store, device="cpu", batch_size=8)
    expected = np.arange(2 * CHUNK) < 8
    expected[20] = True  # a skipped image: its row stays zeros
    np.testing.assert_array_equal(store.finite, expected)
    check = feature_checks(store, ids)
    assert not check.passed and check.metadata["nonfinite_rows"].value == 23
    assert feature_checks(uninterrupted[0], subset[0]["image_id"].tolist()).passed


def test_a_store_from_before_recorded_validity_is_read_back_once(uninterrupted, tmp_path):
    store, _ = uninterrupted
    copy = tmp_path / "old.zarr"
    shutil.copytree(store.group.store.root, copy)
    old = zarr.open_group(str(copy), mode="r+")
    del old["finite"]
    old["features"][7] = np.nan
    reopened = FeatureArray.open(str(copy), store.ids.tolist(), 1, 1280, CHUNK)
    assert reopened.is_complete()  # the features are kept
    assert np.flatnonzero(~reopened.finite).tolist() == [7]


def test_an_image_that_fails_preprocessing_costs_only_itself(subset):
    """A MemoryError while resizing one image (a decompression bomb the header checks let by)
    skips that image with its reason; the rest of its batch is encoded."""
    manifest, _ = subset
    backbone = create_backbone("efficientnet_lite0_random")
    pixels, bomb = backbone.preprocessing.pixels, manifest.loc[3, "image_path"]
    calls = iter(range(8))  # row 5 is the subset's missing file: it never reaches preprocessing

    def exploding(image):
        if next(calls) == 3:
            raise MemoryError("cannot allocate 13 GB")
        return pixels(image)

    backbone.preprocessing = replace(backbone.preprocessing, pixels=exploding)
    paths = manifest["image_path"].head(8).tolist()
    [(_, features, reasons)] = encode_chunks(backbone, paths, [slice(0, 8)], device="cpu", batch_size=8, workers=0)
    assert reasons[3] == f"{bomb}: preprocessing failed: MemoryError: cannot allocate 13 GB"
    assert set(reasons) == {3, 5}
    assert not features[3].any() and all(features[i].any() for i in range(8) if i not in reasons)


def test_chunked_rows_reads_whole_chunks_once_in_ascending_order(stored_features):
    reader = ChunkedRows(stored_features)
    rows = np.array([0, 3, 7, 8, 9, 20, 39])
    got = np.concatenate([reader[rows[:3]], reader[rows[3:5]], reader[rows[5:]]])
    np.testing.assert_array_equal(got, stored_features.array[:][rows])
    assert_whole_chunks_once(stored_features.reads)
    assert len(stored_features.reads) == 4


def test_rows_join_by_id_and_a_stranger_is_named():
    assert rows_by_id(np.array(["a", "b", "c"]), ["c", "a"], "here").tolist() == [2, 0]
    try:
        rows_by_id(np.array(["a"]), ["a", "zz"], "captions")
    except ValueError as error:
        assert "captions: 1 image ids have no feature row (first: 'zz')" in str(error)
    else:
        raise AssertionError("an id with no feature row was accepted")
