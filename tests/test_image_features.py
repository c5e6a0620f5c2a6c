import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from pipeline.encoders import create_backbone
from pipeline.image_features import ChunkedRows, extract_image_features, rows_by_id
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


def test_an_image_that_fails_preprocessing_costs_only_itself(subset):
    """A MemoryError while resizing one image (a decompression bomb the header checks let by)
    skips that image with its reason; the rest of its batch is encoded."""
    from pipeline.image_features import encode_images

    manifest, _ = subset
    backbone = create_backbone("efficientnet_lite0_random")
    preprocess, bomb = backbone.preprocess, manifest.loc[3, "image_path"]
    calls = iter(range(8))  # row 5 is the subset's missing file: it never reaches preprocessing

    def exploding(image):
        if next(calls) == 3:
            raise MemoryError("cannot allocate 13 GB")
        return preprocess(image)

    backbone.preprocess = exploding
    paths = manifest["image_path"].head(8).tolist()
    features, reasons = encode_images(backbone, paths, "cpu", batch_size=8)
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
