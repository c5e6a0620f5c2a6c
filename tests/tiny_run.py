"""Materializes the whole asset graph on a tiny subset (shared by the end-to-end and UI tests)."""

import dagster as dg

from assets.materialize import materialize_all
from assets.resources import Runtime

# 24 steps with 12 warm-up (about 8 s) lower the loss clearly for both backbones (the blocking
# loss_decreased check); with 4 warm-up steps the random encoder's loss did not fall.
# Two seeds of each linear map and two few-shot trials: every result with several runs.
TRAINING = {"steps": 24, "batch_size": 4, "warmup_steps": 12, "checkpoint_every": 12, "sample_captions": 2}
TINY = {
    "manifests": {"config": {"max_images": 32}},
    "image_features": {"config": {"batch_size": 16, "chunk_rows": 16}},
    "linear_map": {"config": {**TRAINING, "seeds": [0, 1]}},
    "adapters": {"config": {**TRAINING, "seeds": [0]}},
    "captions": {"config": {"batch_size": 16, "max_new_tokens": 4}},
    "vqa_answers": {"config": {"questions": 6, "batch_size": 6, "max_new_tokens": 2, "trial_seeds": [0, 1]}},
    "image_prompt_readout": {"config": {"images": 8, "batch_size": 8}},
    "caption_gallery": {"config": {"images": 2, "questions": 2}},
}


def tiny(asset: str) -> dict:
    """Run config for one selected asset (a run rejects config for assets it does not run)."""
    return {"ops": {asset: TINY[asset]} if asset in TINY else {}}


def materialize_tiny(instance: dg.DagsterInstance, storage_root: str, keep=lambda asset, key: True, **resource) -> dict:
    """Every asset, every partition that ``keep(asset name, key)`` accepts, in graph order, by the
    loop ``limber demo`` runs; returns {(asset name, partition key): result}. ``resource``
    overrides fields of the runtime resource."""
    steps = materialize_all(
        instance, {"runtime": Runtime(storage_root=str(storage_root), **resource)}, run_config=tiny, keep=keep
    )
    failed = [step for step in steps if not step.success]
    assert not failed, f"{failed[0].label} failed: " + "; ".join(
        event.message or "" for event in failed[0].result.all_events if event.is_failure
    )
    return {(step.asset, step.partition): step.result for step in steps}
