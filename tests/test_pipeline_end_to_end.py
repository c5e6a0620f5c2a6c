"""Materializes the whole graph in-process on a tiny subset, as `limber demo` does at full size."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets.definitions import ALL_ASSETS
from assets.partitions import backbone_partitions, feature_partitions, split_partitions
from assets.resources import Limber
from storage import FeatureArray

TINY = {
    "manifests": {"config": {"max_images": 32}},
    "image_features": {"config": {"batch_size": 16, "chunk_rows": 16}},
    "linear_map": {"config": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2,
                              "sample_captions": 2}},
}


def tiny(asset: str) -> dict:
    """Run config for one selected asset (a run rejects config for assets it does not run)."""
    return {"ops": {asset: TINY[asset]} if asset in TINY else {}}


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    instance = dg.DagsterInstance.ephemeral()
    resources = {"limber": Limber(storage_root=str(root))}
    results = {}
    for asset in ALL_ASSETS:
        keys = asset.partitions_def.get_partition_keys() if asset.partitions_def else [None]
        for key in keys:
            result = dg.materialize(ALL_ASSETS, selection=[asset], partition_key=key, instance=instance,
                                    resources=resources, run_config=tiny(asset.key.to_user_string()))
            assert result.success
            results[(asset.key.to_user_string(), key)] = result
    return root, instance, resources, results


def _metadata(result):
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_every_partition_materialized(materialized):
    _, instance, _, _ = materialized
    for asset, partitions in (("manifests", split_partitions), ("image_features", feature_partitions),
                              ("linear_map", backbone_partitions)):
        done = instance.get_materialized_partitions(dg.AssetKey(asset))
        assert done == set(partitions.get_partition_keys()), asset


def test_features_are_stored_and_checked(materialized):
    root, _, _, results = materialized
    key = dg.MultiPartitionKey({"backbone": "efficientnet_lite0", "split": "easy_vqa.test"})
    result = results[("image_features", key)]
    metadata = _metadata(result)
    assert metadata["rows"] == 32 and metadata["shape"] == "(32, 1, 1280)" and metadata["dtype"] == "float16"
    assert metadata["images_per_second"] > 0 and metadata["skipped_images"] == 0
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    store = FeatureArray.read(str(root / "features" / "easy_vqa" / "test" / "efficientnet_lite0.zarr"))
    manifest = pd.read_parquet(root / "manifests" / "easy_vqa" / "test.parquet")
    assert store.ids.tolist() == manifest["image_id"].tolist()


def test_linear_map_trained_on_cached_features(materialized):
    root, _, _, results = materialized
    metadata = _metadata(results[("linear_map", "efficientnet_lite0")])
    assert metadata["steps"] == 4 and not metadata["reused"]
    assert "data:image/png;base64" in metadata["loss_curve"]
    assert "A picture of" in metadata["validation_captions"]
    (directory,) = (root / "linear_maps" / "smollm2-135m" / "efficientnet_lite0").iterdir()
    config = json.loads((directory / "config.json").read_text())
    assert config["layout"] == {"kind": "pooled", "positions": 1, "tokens_per_position": 4}
    assert config["lm_dim"] == 576 and len(config["training"]["losses"]) == 4
    assert np.isfinite(config["training"]["losses"]).all()


def test_rematerializing_unchanged_reuses_everything(materialized):
    _, instance, resources, _ = materialized
    features = dg.materialize(ALL_ASSETS, selection=["image_features"], instance=instance, resources=resources,
                              partition_key=dg.MultiPartitionKey({"backbone": "efficientnet_lite0", "split": "easy_vqa.val"}),
                              run_config=tiny("image_features"))
    assert _metadata(features)["chunks_computed"] == 0
    trained = dg.materialize(ALL_ASSETS, selection=["linear_map"], instance=instance, resources=resources,
                             partition_key="efficientnet_lite0", run_config=tiny("linear_map"))
    assert _metadata(trained)["reused"]
