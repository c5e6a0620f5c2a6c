"""Materializes the whole asset graph on a tiny subset (shared by the end-to-end and UI tests)."""

import dagster as dg

from assets.definitions import ALL_ASSETS
from assets.resources import Limber

TINY = {
    "manifests": {"config": {"max_images": 32}},
    "image_features": {"config": {"batch_size": 16, "chunk_rows": 16}},
    "linear_map": {"config": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2,
                              "sample_captions": 2}},
    "captions": {"config": {"batch_size": 16, "max_new_tokens": 4}},
    "vqa_answers": {"config": {"questions": 6, "batch_size": 6, "max_new_tokens": 2}},
}


def tiny(asset: str) -> dict:
    """Run config for one selected asset (a run rejects config for assets it does not run)."""
    return {"ops": {asset: TINY[asset]} if asset in TINY else {}}


def materialize_tiny(instance: dg.DagsterInstance, storage_root: str) -> dict:
    """Every asset, every partition, in graph order; returns {(asset name, partition key): result}."""
    resources = {"limber": Limber(storage_root=str(storage_root))}
    results = {}
    for asset in ALL_ASSETS:
        keys = asset.partitions_def.get_partition_keys() if asset.partitions_def else [None]
        for key in keys:
            result = dg.materialize(ALL_ASSETS, selection=[asset], partition_key=key, instance=instance,
                                    resources=resources, run_config=tiny(asset.key.to_user_string()))
            assert result.success, f"{asset.key.to_user_string()}[{key}] failed"
            results[(asset.key.to_user_string(), key)] = result
    return results
