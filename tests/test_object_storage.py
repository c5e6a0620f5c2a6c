"""The whole graph with its storage root on an S3-compatible server (moto) on loopback."""

import dagster as dg
import fsspec
import numpy as np
import pytest
from moto.server import ThreadedMotoServer
from upath import UPath

from pipeline import load_metrics
from storage import FeatureArray, StorageLayout
from storage.layout import LocalMirror
from tests.tiny_run import materialize_tiny

ROOT = "s3://limber-test/run"


@pytest.fixture(scope="module")
def s3_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    previous = fsspec.config.conf.get("s3")
    # What FSSPEC_S3_ENDPOINT_URL / FSSPEC_S3_KEY / FSSPEC_S3_SECRET set in a deployment.
    fsspec.config.conf["s3"] = {"endpoint_url": f"http://{host}:{port}", "key": "test", "secret": "test"}
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("limber-test")
    yield fs
    fsspec.config.conf.pop("s3")
    if previous is not None:
        fsspec.config.conf["s3"] = previous
    server.stop()


def _one_backbone(asset, key):
    """The pretrained backbone, its tuned baseline and blind, at 0 and 1 shots: every stage, fewer partitions."""
    dimensions = key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else {"backbone": key}
    system = dimensions.get("system", dimensions.get("backbone"))  # a backbone, a system, or a part
    return system not in {"efficientnet_lite0_random", "efficientnet_lite1"} and dimensions.get("shots", "0") in (
        "0",
        "1",
    )


def test_every_artifact_lives_in_the_bucket(s3_server, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    results = materialize_tiny(instance, ROOT, keep=_one_backbone, cache_dir=str(tmp_path / "cache"))
    stored = s3_server.find("limber-test/run")
    for prefix in (
        "manifests/easy_vqa/test.parquet",
        "features/easy_vqa/train/efficientnet_lite0.zarr/zarr.json",
        "language_models/smollm2-135m/language_model.json",
        "linear_maps/smollm2-135m/efficientnet_lite0/",
        "linear_maps/smollm2-135m/efficientnet_lite0/seeds.json",
        "linear_maps/smollm2-135m/efficientnet_lite0+adapters/seed-0/linear_map.safetensors",
        "captions/smollm2-135m/blind/",
        "vqa_answers/smollm2-135m/efficientnet_lite0/",
        "metrics/metrics.parquet",
        "metrics/metrics.png",
        "image_prompt_readout/smollm2-135m/efficientnet_lite0+adapters/nearest_tokens.parquet",
        "gallery/smollm2-135m/captioning.png",
    ):
        assert any(path.startswith(f"limber-test/run/{prefix}") for path in stored), prefix
    checkpoint = [p for p in stored if p.startswith("limber-test/run/linear_maps/") and p.endswith("state.pt")]
    assert checkpoint and any(p.endswith("linear_map.safetensors") for p in stored)

    layout = StorageLayout.at(ROOT)
    features = FeatureArray.read(str(layout.image_features("efficientnet_lite0", "easy_vqa.test")))
    assert features.is_complete() and np.isfinite(features.features[:]).all()
    tidy = load_metrics(ROOT)
    assert set(tidy["system"]) == {"efficientnet_lite0", "efficientnet_lite0+adapters", "blind"}
    assert tidy["value"].notna().any()
    (event,) = results[("metric_tables", None)].get_asset_materialization_events()
    assert event.materialization.metadata["path"].value == f"{ROOT}/metrics/metrics.parquet"

    # A rerun from another machine's empty cache reuses what the bucket holds.
    rerun = materialize_tiny(
        instance,
        ROOT,
        keep=lambda asset, key: asset == "linear_map" and key == "efficientnet_lite0",
        cache_dir=str(tmp_path / "other-cache"),
    )
    (event,) = rerun[("linear_map", "efficientnet_lite0")].get_asset_materialization_events()
    assert event.materialization.metadata["reused"].value is True


def test_mirror_uploads_a_rewritten_checkpoint_of_the_same_size(s3_server, tmp_path):
    directory = StorageLayout.at(ROOT).linear_map("backbone", "lm")
    mirror = LocalMirror(directory, tmp_path / "cache")
    local = mirror.pull()
    (local / "checkpoint").mkdir()
    (local / "checkpoint" / "state.pt").write_text("step 100")
    mirror.push()
    (local / "checkpoint" / "state.pt").write_text("step 200")  # same size: only the write time tells
    mirror.push()
    assert s3_server.cat(f"{directory.path}/checkpoint/state.pt") == b"step 200"
    elsewhere = LocalMirror(directory, tmp_path / "other-cache").pull()
    assert (elsewhere / "checkpoint" / "state.pt").read_text() == "step 200"


def test_mirror_refuses_a_stored_key_that_leaves_its_folder(tmp_path):
    """The bucket is not trusted: a key with '..' must not write outside the local cache."""
    from fsspec.implementations.memory import MemoryFile

    fs = fsspec.filesystem("memory")
    fs.pipe("/limber-test/map/ok.bin", b"ok")
    fs.store["/limber-test/map/../../evil.bin"] = MemoryFile(fs, "/limber-test/map/../../evil.bin", b"evil")
    mirror = LocalMirror(UPath("memory://limber-test/map"), tmp_path / "cache")
    with pytest.raises(ValueError, match=r"stored key '\.\./\.\./evil\.bin' leaves its folder"):
        mirror.pull()
    assert not list(tmp_path.rglob("evil.bin"))


def test_a_table_cut_short_has_no_key_and_is_recomputed(tmp_path):
    """A write killed midway leaves part of a Parquet file: it reads as absent, never as a result."""
    import pandas as pd

    from storage.artifacts import keyed_table
    from storage.layout import storage_path, stored_key, write_table

    path = storage_path(tmp_path / "t.parquet")
    write_table(pd.DataFrame({"a": [1, 2, 3]}), path, key="k1")
    assert stored_key(path) == "k1"
    path.write_bytes(path.read_bytes()[:-20])
    assert stored_key(path) is None
    table, reused = keyed_table(path, "k1", lambda: pd.DataFrame({"a": [4]}))
    assert not reused and table["a"].tolist() == [4] and stored_key(path) == "k1"
