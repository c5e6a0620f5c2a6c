"""The new-data sensor, the nightly evaluation schedules, declarative automation, and shard training."""

import shutil

import dagster as dg
import pytest

import assets.linear_map
import assets.partitions
from assets.automation import backbone_sweep, new_data
from assets.definitions import ALL_ASSETS, defs
from assets.partitions import BACKBONES, register_backbones
from assets.resources import Runtime
from tests.dataset_fixtures import write_cc3m_shards
from tests.tiny_run import tiny

CC3M_PARTS = ["cc3m.train", "cc3m.val"]


@pytest.fixture
def cc3m(tmp_path, monkeypatch):
    """Raw CC3M webdataset shards, with the profile training on them (and easy-vqa for the rest)."""
    write_cc3m_shards(tmp_path / "raw")
    monkeypatch.setattr(assets.partitions, "PROFILE_PARTS", assets.partitions.PROFILE_PARTS + CC3M_PARTS)
    runtime = Runtime(storage_root=str(tmp_path / "storage"), data_root=str(tmp_path / "raw"))
    return tmp_path / "raw" / "cc3m", runtime


def _tick(instance, runtime):
    register_backbones(instance, BACKBONES)
    result = new_data(dg.build_sensor_context(instance=instance, resources={"runtime": runtime}))
    return sorted(r.partition_key for r in result.run_requests), [r.run_key for r in result.run_requests]


def test_new_data_sensor_requests_only_new_parts(cc3m):
    shards, runtime = cc3m
    instance = dg.DagsterInstance.ephemeral()
    held_back = shutil.move(shards / "train" / "00001.tar", shards / "later.tar")

    keys, run_keys = _tick(instance, runtime)
    assert keys == ["cc3m.train.00000", "cc3m.val.00000", "easy_vqa.test", "easy_vqa.train", "easy_vqa.val"]
    assert run_keys == [f"manifest:{k}" for k in keys]
    assert set(instance.get_dynamic_partitions("dataset_parts")) == set(keys)
    assert _tick(instance, runtime) == ([], [])  # nothing new on disk: nothing requested

    shutil.move(held_back, shards / "train" / "00001.tar")
    assert _tick(instance, runtime) == (["cc3m.train.00001"], ["manifest:cc3m.train.00001"])


def test_a_new_shard_gets_features_and_training_reads_every_shard(cc3m, monkeypatch, prepared_lm):
    shards, runtime = cc3m
    instance = dg.DagsterInstance.ephemeral()
    held_back = shutil.move(shards / "train" / "00001.tar", shards / "later.tar")
    _tick(instance, runtime)
    resources = {"runtime": runtime}

    def materialize(asset, key, config=None):
        result = dg.materialize(
            ALL_ASSETS,
            selection=[asset],
            partition_key=key,
            instance=instance,
            resources=resources,
            run_config=config or tiny(asset),
        )
        assert result.success
        return result

    def features_key(part):
        return dg.MultiPartitionKey({"backbone": "efficientnet_lite0", "part": part})

    def evaluate(cursor):
        return dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=cursor, asset_selection=dg.AssetSelection.assets("image_features")
        )

    evaluation = evaluate(None)  # the automation sensor's first tick: manifests missing, nothing to do
    assert evaluation.total_requested == 0
    for part in ("cc3m.train.00000", "cc3m.val.00000"):
        materialize("manifests", part)
    evaluation = evaluate(evaluation.cursor)
    requested = evaluation.get_requested_partitions(dg.AssetKey("image_features"))
    assert {k.keys_by_dimension["part"] for k in requested} == {"cc3m.train.00000", "cc3m.val.00000"}
    for part in ("cc3m.train.00000", "cc3m.val.00000"):
        materialize("image_features", features_key(part))

    # A new shard: only its own manifest and features are requested.
    shutil.move(held_back, shards / "train" / "00001.tar")
    assert _tick(instance, runtime)[0] == ["cc3m.train.00001"]
    materialize("manifests", "cc3m.train.00001")
    evaluation = evaluate(evaluation.cursor)
    requested = evaluation.get_requested_partitions(dg.AssetKey("image_features"))
    assert {k.keys_by_dimension["part"] for k in requested} == {"cc3m.train.00001"}
    extracted = materialize("image_features", features_key("cc3m.train.00001"))
    (event,) = extracted.get_asset_materialization_events()
    assert event.materialization.metadata["skipped_images"].value == 0

    # Training reads both shards as one dataset.
    shutil.copytree(prepared_lm, runtime.layout.language_model(runtime.language_model).path)
    monkeypatch.setattr(assets.linear_map, "TRAIN", "cc3m.train")
    monkeypatch.setattr(assets.linear_map, "VALIDATION", "cc3m.val")
    trained = materialize(
        "linear_map",
        "efficientnet_lite0",
        {
            "ops": {
                "linear_map": {
                    "config": {
                        "steps": 24,
                        "batch_size": 2,
                        "warmup_steps": 12,
                        "checkpoint_every": 12,
                        "sample_captions": 1,
                    }
                }
            }
        },
    )
    (event,) = trained.get_asset_materialization_events()
    assert event.materialization.metadata["train_parts"].value == 2
    (check,) = trained.get_asset_check_evaluations()
    assert check.check_name == "loss_decreased" and check.passed


def test_evaluation_schedules_request_what_has_inputs_once(tmp_path):
    """Run keys are the keys of the stored inputs: a repeated tick asks nothing new, a retrained map
    gives new keys for its own system only."""
    import json

    import numpy as np
    import pandas as pd

    from pipeline.encoders import TokenLayout
    from pipeline.linear_map import LinearMap
    from storage import FeatureArray
    from storage.layout import write_table

    # The schedules read the registered systems from the instance: one with a ref, as a daemon's is.
    with dg.instance_for_test() as instance:
        runtime = Runtime(storage_root=str(tmp_path))
        layout, parts = runtime.layout, ("easy_vqa.val", "easy_vqa.test", "easy_vqa.train")
        caption_evaluation_schedule = defs.get_schedule_def("caption_evaluation_schedule")
        vqa_evaluation_schedule = defs.get_schedule_def("vqa_evaluation_schedule")
        assert caption_evaluation_schedule.cron_schedule == "0 3 * * *"
        context = dg.build_schedule_context(instance=instance, resources={"runtime": runtime})
        register_backbones(instance, BACKBONES)
        assert isinstance(caption_evaluation_schedule(context), dg.SkipReason)

        lm_dir = layout.language_model(runtime.language_model)
        lm_dir.mkdir(parents=True, exist_ok=True)
        (lm_dir / "language_model.json").write_text(json.dumps({"name": runtime.language_model, "fingerprint": "lm"}))
        for part in parts:
            write_table(pd.DataFrame({"image_id": ["a", "b"]}), layout.manifest(part), key=f"manifest {part}")
        # Only the blind baseline has every input: no backbone has features or a map yet.
        requests = caption_evaluation_schedule(context)
        assert sorted(r.partition_key.keys_by_dimension["system"] for r in requests) == ["blind"]
        first_keys = {r.run_key for r in requests}
        assert first_keys == {r.run_key for r in caption_evaluation_schedule(context)}  # a repeated tick: same keys

        def train(key):
            directory = layout.trained_map("efficientnet_lite0", runtime.language_model, 0)
            LinearMap(4, 8, TokenLayout("pooled", 1, 1)).save(directory, extra={"key": key})
            index = {"seeds": {"0": key}}
            layout.map_index("efficientnet_lite0", runtime.language_model).write_text(json.dumps(index))

        train("first")
        for part in parts:
            store = FeatureArray.open(str(layout.image_features("efficientnet_lite0", part)), ["a", "b"], 1, 4, 2, "f")
            store.write_chunk(0, np.zeros((2, 1, 4)), {})
        requests = caption_evaluation_schedule(context)
        assert sorted(r.partition_key.keys_by_dimension["system"] for r in requests) == ["blind", "efficientnet_lite0"]
        assert first_keys <= {r.run_key for r in requests}  # blind's inputs did not change: same run keys
        vqa = vqa_evaluation_schedule(context)
        assert len(vqa) == 2 * 4 and {r.job_name for r in vqa} in ({None}, {"vqa_evaluation"})

        train("retrained")  # a retrained map: new run keys for that system only
        retrained = {r.run_key for r in caption_evaluation_schedule(context)}
        assert first_keys <= retrained and len(retrained - {r.run_key for r in requests}) == 1


def test_the_sweep_sensor_registers_names_from_the_profile_the_sweep_file_and_the_ui(tmp_path, monkeypatch):
    """A name that resolves becomes a backbone partition with its systems; one that does not is
    reported and not registered; a name removed from the file stays registered (its results stay)."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("backbones:\n  - timm:convnext_atto.d2_in1k?random&pool=2\n  - timm:no_such_model\n")
    monkeypatch.setenv("LIMBER_SWEEP", str(sweep))
    instance = dg.DagsterInstance.ephemeral()

    def tick():
        return backbone_sweep(dg.build_sensor_context(instance=instance))

    new = "timm:convnext_atto.d2_in1k?random&pool=2"
    reason = tick().skip_message
    assert f"{len(BACKBONES) + 1} new backbone(s)" in reason and "timm:no_such_model" in reason
    assert instance.get_dynamic_partitions("backbones") == [*BACKBONES, new]
    assert set(instance.get_dynamic_partitions("systems")) == {*BACKBONES, new, "efficientnet_lite0+adapters", "blind"}
    assert set(instance.get_dynamic_partitions("image_systems")) == {*BACKBONES, new, "efficientnet_lite0+adapters"}
    assert "0 new backbone(s)" in tick().skip_message  # nothing new: nothing added

    instance.add_dynamic_partitions("backbones", ["timm:resnet18?random&layout=pooled"])  # added in the UI
    assert "1 new backbone(s)" not in tick().skip_message  # already a backbone: its systems are added
    assert "timm:resnet18?random&layout=pooled" in instance.get_dynamic_partitions("systems")

    sweep.write_text("backbones: []\n")
    tick()
    assert new in instance.get_dynamic_partitions("backbones")


def test_a_malformed_sweep_file_names_the_file(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("backbones: timm:resnet18\n")
    monkeypatch.setenv("LIMBER_SWEEP", str(sweep))
    with pytest.raises(ValueError, match=f"{sweep}: expected 'backbones:' with a list"):
        backbone_sweep(dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral()))
