"""Materializes the whole asset graph on a tiny subset (shared by the end-to-end and UI tests)."""

import dagster as dg

from assets.definitions import ALL_ASSETS
from assets.partitions import register_dataset_parts
from assets.resources import Limber

TINY = {
    "manifests": {"config": {"max_images": 32}},
    "image_features": {"config": {"batch_size": 16, "chunk_rows": 16}},
    # 24 steps with 12 warm-up (about 8 s) lower the loss clearly for both backbones (the blocking
    # loss_decreased check); with 4 warm-up steps the random encoder's loss did not fall.
    "linear_map": {"config": {"steps": 24, "batch_size": 4, "warmup_steps": 12, "checkpoint_every": 12,
                              "sample_captions": 2}},
    "captions": {"config": {"batch_size": 16, "max_new_tokens": 4}},
    "vqa_answers": {"config": {"questions": 6, "batch_size": 6, "max_new_tokens": 2}},
}


def tiny(asset: str) -> dict:
    """Run config for one selected asset (a run rejects config for assets it does not run)."""
    return {"ops": {asset: TINY[asset]} if asset in TINY else {}}


def materialize_tiny(instance: dg.DagsterInstance, storage_root: str, keep=lambda asset, key: True, **resource) -> dict:
    """Every asset, every partition that ``keep(asset name, key)`` accepts, in graph order; returns
    {(asset name, partition key): result}. ``resource`` overrides fields of the Limber resource."""
    limber = Limber(storage_root=str(storage_root), **resource)
    register_dataset_parts(instance, limber.data_root)
    resources = {"limber": limber}
    results = {}
    for asset in ALL_ASSETS:
        keys = asset.partitions_def.get_partition_keys(dynamic_partitions_store=instance) if asset.partitions_def else [None]
        for key in [k for k in keys if keep(asset.key.to_user_string(), k)]:
            result = dg.materialize(ALL_ASSETS, selection=[asset], partition_key=key, instance=instance,
                                    resources=resources, run_config=tiny(asset.key.to_user_string()))
            assert result.success, f"{asset.key.to_user_string()}[{key}] failed"
            results[(asset.key.to_user_string(), key)] = result
    return results
