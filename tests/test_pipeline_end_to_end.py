"""Materializes the whole graph in-process on a tiny subset, as `limber demo` does at full size."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import pipeline.captioning
from assets.definitions import ALL_ASSETS
from assets.partitions import (
    adapter_partitions,
    backbone_partitions,
    caption_partitions,
    feature_partitions,
    image_system_partitions,
    part_partitions,
    vqa_partitions,
)
from assets.resources import Runtime
from pipeline import load_differences, load_metrics, load_rankings, load_runs
from pipeline.metrics.vqa import CLOSED_VOCABULARY
from storage import FeatureArray
from tests.tiny_run import TINY, materialize_tiny, tiny

LITE0, LITE1, RANDOM = "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite0_random"
TUNED = "efficientnet_lite0+adapters"
SYSTEMS = {LITE0, LITE1, RANDOM, TUNED, "blind"}


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    instance = dg.DagsterInstance.ephemeral()
    resources = {"runtime": Runtime(storage_root=str(root))}
    return root, instance, resources, materialize_tiny(instance, root)


def _metadata(result):
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_every_partition_materialized(materialized):
    _, instance, _, _ = materialized
    for asset, partitions in (
        ("manifests", part_partitions),
        ("image_features", feature_partitions),
        ("linear_map", backbone_partitions),
        ("adapters", adapter_partitions),
        ("captions", caption_partitions),
        ("caption_metrics", caption_partitions),
        ("vqa_answers", vqa_partitions),
        ("vqa_metrics", vqa_partitions),
        ("image_prompt_readout", image_system_partitions),
    ):
        done = instance.get_materialized_partitions(dg.AssetKey(asset))
        assert done == set(partitions.get_partition_keys(dynamic_partitions_store=instance)), asset
        assert len(done) > 0, asset


def test_features_are_stored_and_checked(materialized):
    root, _, _, results = materialized
    key = dg.MultiPartitionKey({"backbone": "efficientnet_lite0", "part": "easy_vqa.test"})
    result = results[("image_features", key)]
    metadata = _metadata(result)
    assert metadata["rows"] == 32 and metadata["shape"] == "(32, 1, 1280)" and metadata["dtype"] == "float16"
    assert metadata["images_per_second"] > 0 and metadata["skipped_images"] == 0
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.check_name == "features_valid"
    store = FeatureArray.read(str(root / "features" / "easy_vqa" / "test" / "efficientnet_lite0.zarr"))
    manifest = pd.read_parquet(root / "manifests" / "easy_vqa" / "test.parquet")
    assert store.ids.tolist() == manifest["image_id"].tolist()


def test_linear_map_trained_on_cached_features(materialized):
    root, _, _, results = materialized
    metadata = _metadata(results[("linear_map", "efficientnet_lite0")])
    assert metadata["steps"] == 24 and not metadata["reused"] and metadata["train_parts"] == 1
    assert metadata["seeds"] == 2 and "seed" in metadata["final_loss_by_seed"]
    assert "data:image/png;base64" in metadata["loss_curve"]
    assert "A picture of" in metadata["validation_captions"]
    assert metadata["machine"]["torch"] and metadata["machine"]["precision"] in ("bfloat16", "float32")
    directory = root / "linear_maps" / "smollm2-135m" / "efficientnet_lite0"
    index = json.loads((directory / "seeds.json").read_text())["seeds"]
    assert sorted(index) == ["0", "1"] and index["0"] != index["1"]  # one map per seed, each its own key
    weights = []
    for seed in (0, 1):
        config = json.loads((directory / f"seed-{seed}" / "config.json").read_text())
        assert config["layout"] == {"kind": "pooled", "positions": 1, "tokens_per_position": 4}
        assert config["lm_dim"] == 576 and len(config["training"]["losses"]) == 24
        assert np.isfinite(config["training"]["losses"]).all() and config["training"]["settings"]["seed"] == seed
        assert config["key"] == index[str(seed)]
        weights.append(load_file(directory / f"seed-{seed}" / "linear_map.safetensors")["proj.weight"])
    assert not torch.equal(*weights)  # the seeds train different maps


def test_captions_and_answers_are_stored_in_standard_forms(materialized):
    _, _, _, results = materialized
    key = dg.MultiPartitionKey({"system": "blind", "part": "easy_vqa.test"})
    metadata = _metadata(results[("captions", key)])
    assert metadata["runs"] == 1  # blind: no map, one run
    captions = pd.read_parquet(Path(metadata["path"]) / "once.parquet")
    assert captions.columns.tolist() == ["image_id", "caption"] and len(captions) == 32
    coco = json.loads((Path(metadata["path"]) / "once.coco.json").read_text())
    assert coco[0] == {"image_id": captions["image_id"][0], "caption": captions["caption"][0]}
    key = dg.MultiPartitionKey({"system": "efficientnet_lite0", "part": "easy_vqa.test"})
    assert _metadata(results[("captions", key)])["runs"] == 2  # one per training seed
    metadata = _metadata(results[("vqa_answers", dg.MultiPartitionKey({"system": LITE0, "shots": "2"}))])
    # Two seeds paired with two trials; at 0 shots nothing is drawn: one run per seed.
    assert metadata["runs"] == 2
    assert _metadata(results[("vqa_answers", dg.MultiPartitionKey({"system": LITE0, "shots": "0"}))])["runs"] == 2
    runs = {path.stem: pd.read_parquet(path) for path in Path(metadata["path"]).glob("*.parquet")}
    assert sorted(runs) == ["seed-0.trial-0", "seed-1.trial-1"]
    answers = runs["seed-0.trial-0"]
    # Whole images until 6 questions are taken: the seeded first two have 4 and 13.
    assert len(answers) == 17 and answers["image_id"].nunique() == 2
    assert {"question_id", "prediction", "answer_type"} <= set(answers.columns)
    assert all(table["question_id"].tolist() == answers["question_id"].tolist() for table in runs.values())


def test_metric_tables_for_analysts(materialized):
    root, _, _, results = materialized
    tidy = load_metrics(root)
    assert pd.read_parquet(root / "metrics" / "metrics.parquet").equals(tidy)
    assert list(tidy.columns) == [
        "system",
        "backbone",
        "lm",
        "dataset",
        "split",
        "task",
        "metric",
        "shots",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "runs",
        "std",
        "min",
        "max",
        "note",
        "key",
    ]
    # Every interval holds its value; a subset of one image's questions has none (one cluster).
    numbers = tidy[tidy["ci_low"].notna()]
    assert (numbers["ci_low"] <= numbers["value"] + 1e-9).all() and (
        numbers["value"] <= numbers["ci_high"] + 1e-9
    ).all()
    assert set(tidy["system"]) == SYSTEMS
    # Runs: two seeds per linear map (paired with two trials at 1+ shots), one tuned baseline with
    # two trials, blind's trials.
    first = tidy.drop_duplicates(["system", "task", "shots"]).set_index(["system", "task", "shots"])["runs"]
    assert first[LITE0, "captioning", 0] == 2 and first[LITE0, "vqa", 0] == 2 and first[LITE0, "vqa", 4] == 2
    assert first[TUNED, "vqa", 4] == 2 and first["blind", "vqa", 4] == 2 and first["blind", "captioning", 0] == 1
    several = numbers[numbers["runs"] > 1]
    assert (several["min"] <= several["value"] + 1e-9).all() and (several["value"] <= several["max"] + 1e-9).all()
    assert several["std"].notna().all()
    runs = load_runs(root)
    lite0_cider = runs[(runs["system"] == LITE0) & (runs["metric"] == "CIDEr-D") & (runs["split"] == "test")]
    assert sorted(lite0_cider["run"]) == ["seed-0", "seed-1"]
    mean = tidy[(tidy["system"] == LITE0) & (tidy["metric"] == "CIDEr-D") & (tidy["split"] == "test")]["value"]
    assert lite0_cider["value"].mean() == pytest.approx(float(mean.iloc[0]))
    assert set(tidy["backbone"]) == {LITE0, LITE1, RANDOM, ""}
    assert set(tidy["lm"]) == {"smollm2-135m"}
    for metric in ("VQA accuracy", CLOSED_VOCABULARY):  # the closed vocabulary: on by default on easy-vqa
        vqa = tidy[(tidy["task"] == "vqa") & (tidy["metric"] == metric)]
        assert sorted(vqa["shots"].unique()) == [0, 1, 2, 4] and vqa["value"].between(0, 100).all()
        assert set(vqa["system"]) == SYSTEMS
    cider = tidy[(tidy["metric"] == "CIDEr-D")]
    assert len(cider) == len(SYSTEMS) and np.isfinite(cider["value"]).all()  # the test split, captioned
    clip = tidy[tidy["metric"] == "CLIP-S"]
    # No CLIP weights on this machine: the table says so in words and holds no number.
    assert clip["value"].isna().all() and clip["note"].str.contains("CLIP ViT-B/32 weights").all()
    metadata = _metadata(results[("metric_tables", None)])
    assert "data:image/png;base64" in metadata["chart"] and "VQA 4-shot" in metadata["comparison"]
    wide = pd.read_parquet(root / "metrics" / "comparison.parquet")
    assert set(wide.index) == SYSTEMS
    assert {"VQA 4-shot", "VQA 4-shot ci_low", "VQA 4-shot ci_high", "VQA closed 4-shot"} <= set(wide.columns)
    differences = load_differences(root)
    # Every system against blind and against the random encoder, on the same images and questions.
    pairs = set(zip(differences["system"], differences["baseline"], strict=True))
    assert pairs == {
        (LITE0, "blind"),
        (LITE1, "blind"),
        (RANDOM, "blind"),
        (TUNED, "blind"),
        (LITE0, RANDOM),
        (LITE1, RANDOM),
        (TUNED, RANDOM),
        ("blind", RANDOM),
    }
    vqa_differences = differences[(differences["task"] == "vqa") & (differences["metric"] == "VQA accuracy")]
    assert sorted(vqa_differences["shots"].unique()) == [0, 1, 2, 4]
    assert len(differences[differences["metric"] == CLOSED_VOCABULARY]) == len(vqa_differences)
    assert (vqa_differences["n"] == 17).all()  # the 17 questions every system answered
    assert (differences["ci_low"] <= differences["difference"] + 1e-9).all()
    rankings = load_rankings(root)
    ranked = rankings[
        (rankings["task"] == "vqa") & (rankings["metric"] == CLOSED_VOCABULARY) & (rankings["shots"] == 4)
    ]
    assert set(ranked["system"]) == SYSTEMS and ranked["rank"].min() == 1
    assert ranked["value"].is_monotonic_decreasing
    ranks = dict(zip(ranked["system"], ranked["rank"], strict=True))
    for rank, tied in zip(ranked["rank"], ranked["tied_with"], strict=True):
        assert all(ranks[partner] == rank for partner in tied)  # a tie never splits two ranks
    assert "VQA accuracy" in _metadata(results[("rankings", None)])["rankings"]


def test_the_tuned_baseline_trains_a_prefix_and_adapters_on_the_same_data(materialized):
    root, _, _, results = materialized
    maps = root / "linear_maps" / "smollm2-135m"
    linear, tuned = (json.loads((maps / name / "seed-0" / "config.json").read_text()) for name in (LITE0, TUNED))
    assert tuned["prefix"] == "dropout, LayerNorm"  # MAGMA's order, recorded with the weights
    assert tuned["adapters"] == {"layers": 30, "reduction": 4} and "adapters" not in linear
    # The same steps, batch, learning rate and rows; only the trained parameters differ.
    assert {k: v for k, v in tuned["training"]["settings"].items() if k != "reduction"} == linear["training"][
        "settings"
    ]
    assert tuned["training"]["train_rows"] == linear["training"]["train_rows"]
    # Prefix (2,949,120 + 2,304 + LayerNorm 1,152) and 30 adapters of 576 -> 144 -> 576 (166,608 each).
    assert linear["training"]["trained_parameters"] == 1280 * 576 * 4 + 576 * 4
    assert tuned["training"]["trained_parameters"] == 1280 * 576 * 4 + 576 * 4 + 2 * 576 + 30 * 166_608
    metadata = _metadata(results[("adapters", LITE0)])
    assert metadata["steps"] == 24 and not metadata["reused"]


def test_image_prompt_readout_names_nearest_tokens_and_lexical_shares(materialized):
    root, _, _, results = materialized
    for system in (LITE0, RANDOM, TUNED):
        metadata = _metadata(results[("image_prompt_readout", system)])
        assert metadata["images"] == 8
        for label in ("colour", "shape"):
            for metric in (
                f"nearest tokens name the {label} (%)",
                f"nearest tokens name a shuffled {label} (chance, %)",
            ):
                value, low, high = map(float, metadata[metric].strip("]").replace(" [", ", ").split(", "))
                assert 0 <= low <= value <= high <= 100, (system, metric)
        tokens = pd.read_parquet(root / "image_prompt_readout" / "smollm2-135m" / system / "nearest_tokens.parquet")
        # 8 images x 4 image tokens (Lite0 pooled to 4) x 5 nearest, ranked by falling cosine.
        assert len(tokens) == 8 * 4 * 5 and tokens["image_id"].nunique() == 8
        ranked = tokens.sort_values(["image_id", "position", "rank"])["cosine"].to_numpy().reshape(-1, 5)
        assert (np.diff(ranked, axis=1) <= 1e-6).all()


def test_the_gallery_shows_every_system_on_the_same_images(materialized):
    root, _, _, results = materialized
    metadata = _metadata(results[("caption_gallery", None)])
    assert all("data:image/png;base64" in metadata[f"{task}_gallery"] for task in ("captioning", "vqa"))
    gallery = pd.read_parquet(root / "gallery" / "smollm2-135m" / "gallery.parquet")
    captions = gallery[gallery["task"] == "captioning"]
    assert captions["image_id"].nunique() == 2 and set(captions["system"]) == SYSTEMS | {"reference"}
    vqa = gallery[gallery["task"] == "vqa"]
    assert vqa["question"].nunique() == 2
    for _, asked in vqa[vqa["system"] != "reference"].groupby("question"):
        assert sorted(asked[["system", "shots"]].itertuples(index=False, name=None)) == sorted(
            (system, shots) for system in SYSTEMS for shots in (0, 1, 2, 4)
        )


def test_rematerializing_unchanged_reuses_everything(materialized):
    _, instance, resources, _ = materialized
    features = dg.materialize(
        ALL_ASSETS,
        selection=["image_features"],
        instance=instance,
        resources=resources,
        partition_key=dg.MultiPartitionKey({"backbone": "efficientnet_lite0", "part": "easy_vqa.val"}),
        run_config=tiny("image_features"),
    )
    assert _metadata(features)["chunks_computed"] == 0
    trained = dg.materialize(
        ALL_ASSETS,
        selection=["linear_map"],
        instance=instance,
        resources=resources,
        partition_key="efficientnet_lite0",
        run_config=tiny("linear_map"),
    )
    assert _metadata(trained)["reused"]


def test_an_added_seed_trains_and_evaluates_only_itself(materialized):
    _, instance, resources, _ = materialized

    def run(asset, partition_key, config):
        return _metadata(
            dg.materialize(
                ALL_ASSETS,
                selection=[asset],
                instance=instance,
                resources=resources,
                partition_key=partition_key,
                run_config={"ops": {asset: {"config": config}}},
            )
        )

    trained = run("linear_map", LITE1, {**TINY["linear_map"]["config"], "seeds": [0, 1, 2]})
    assert trained["seeds"] == 3 and trained["trained_seeds"] == [2]  # seeds 0 and 1 are reused
    captioned = run(
        "captions", dg.MultiPartitionKey({"system": LITE1, "part": "easy_vqa.test"}), TINY["captions"]["config"]
    )
    assert captioned["runs"] == 3 and captioned["computed_runs"] == ["seed-2"]
    vqa = {**TINY["vqa_answers"]["config"], "trial_seeds": [0, 1, 2]}
    answered = run("vqa_answers", dg.MultiPartitionKey({"system": LITE1, "shots": "1"}), vqa)
    # Three seeds paired with three trials: only the new seed's run is new.
    assert answered["runs"] == 3 and answered["computed_runs"] == ["seed-2.trial-2"]


def test_a_new_learning_rate_recomputes_only_the_map_and_what_reads_it(materialized):
    _, instance, resources, _ = materialized
    new_lr = {"ops": {"linear_map": {"config": {**TINY["linear_map"]["config"], "lr": 5e-3}}}}
    trained = dg.materialize(
        ALL_ASSETS,
        selection=["linear_map"],
        instance=instance,
        resources=resources,
        partition_key="efficientnet_lite0",
        run_config=new_lr,
    )
    assert not _metadata(trained)["reused"]

    def captions_reused(system):
        key = dg.MultiPartitionKey({"system": system, "part": "easy_vqa.test"})
        result = dg.materialize(
            ALL_ASSETS,
            selection=["captions"],
            instance=instance,
            resources=resources,
            partition_key=key,
            run_config=tiny("captions"),
        )
        return _metadata(result)["reused"]

    assert not captions_reused(LITE0)
    # The tuned baseline has its own config: a new learning rate for LiMBeR's map leaves it as it is.
    assert captions_reused(RANDOM) and captions_reused(TUNED) and captions_reused("blind")


def test_every_stage_runs_its_checks(materialized):
    _, _, _, results = materialized
    expected = {
        "manifests": "manifest_valid",
        "image_features": "features_valid",
        "linear_map": "loss_decreased",
        "adapters": "loss_decreased",
        "captions": "captions_non_empty",
        "caption_metrics": "metrics_in_range",
        "vqa_metrics": "accuracy_in_range",
        "metric_tables": "table_complete",
    }
    for (asset, _), result in results.items():
        if asset in expected:
            (check,) = result.get_asset_check_evaluations()
            assert check.check_name == expected[asset]
            assert check.passed, (asset, check.metadata)


def test_a_failing_blocking_check_stops_its_downstream(materialized, monkeypatch):
    """A model that captions nothing fails captions_non_empty; caption_metrics then does not run."""
    _, instance, resources, _ = materialized
    monkeypatch.setattr(
        pipeline.captioning, "greedy_captions", lambda mapping, lm, tokenizer, batch, **_: [""] * len(batch)
    )
    key = dg.MultiPartitionKey({"system": "efficientnet_lite0_random", "part": "easy_vqa.test"})
    config = {"ops": {"captions": {"config": {"batch_size": 16, "max_new_tokens": 3}}}}  # new settings: recomputed
    result = dg.materialize(
        ALL_ASSETS,
        selection=["captions", "caption_metrics"],
        partition_key=key,
        instance=instance,
        resources=resources,
        run_config=config,
        raise_on_error=False,
    )
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "captions_non_empty" and not check.passed
    materialized_assets = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "caption_metrics" not in materialized_assets
    assert not result.success


def test_the_report_assets_redraw_after_an_evaluation(materialized):
    """metric_tables and caption_gallery are eager: nothing is requested after the whole graph ran;
    recomputed captions and caption metrics request both (the gallery reads captions, the tables
    their metrics)."""
    from assets.definitions import defs

    _, instance, resources, _ = materialized
    reports = dg.AssetSelection.assets("metric_tables", "caption_gallery")
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=reports)
    assert first.total_requested == 0  # everything was just materialized
    recaptioned = dg.materialize(  # the blind captions of test and their metrics, with new settings
        ALL_ASSETS,
        selection=["captions", "caption_metrics"],
        partition_key=dg.MultiPartitionKey({"system": "blind", "part": "easy_vqa.test"}),
        instance=instance,
        resources=resources,
        run_config={"ops": {"captions": {"config": {"batch_size": 16, "max_new_tokens": 2}}}},
    )
    assert recaptioned.success
    assert not any(
        event.materialization.metadata["reused"].value for event in recaptioned.get_asset_materialization_events()
    )
    evaluation = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=reports, cursor=first.cursor
    )
    for name in ("metric_tables", "caption_gallery"):
        assert evaluation.get_num_requested(dg.AssetKey(name)) == 1, name


def test_two_processes_train_the_map_one_would_and_the_count_is_not_in_its_key(materialized):
    """The linear_map asset on 2 data-parallel processes (gloo on this CPU): a map that 1 process
    then reuses, as the process count is not in the key, and that 1 process trains again to the
    same weights (up to float rounding) once the stored one is removed."""
    import shutil

    root, instance, resources, _ = materialized
    directory = root / "linear_maps" / "smollm2-135m" / LITE1 / "seed-0"

    def train(processes):
        # Micro-batches of 2: each of the 2 processes trains one of a batch's two.
        config = {**TINY["linear_map"]["config"], "seeds": [0], "lr": 4e-3, "micro_batch_size": 2}
        config["processes"] = processes
        return _metadata(
            dg.materialize(
                ALL_ASSETS,
                selection=["linear_map"],
                instance=instance,
                resources=resources,
                partition_key=LITE1,
                run_config={"ops": {"linear_map": {"config": config}}},
            )
        )

    two = train(2)
    assert not two["reused"] and two["processes"] == 2
    weights_two = load_file(directory / "linear_map.safetensors")
    losses_two = json.loads((directory / "config.json").read_text())["training"]["losses"]
    assert train(1)["reused"]
    shutil.rmtree(directory)
    one = train(1)
    assert not one["reused"] and one["processes"] == 1
    losses_one = json.loads((directory / "config.json").read_text())["training"]["losses"]
    assert losses_one == pytest.approx(losses_two, rel=1e-4)
    for name, value in load_file(directory / "linear_map.safetensors").items():
        torch.testing.assert_close(weights_two[name], value, rtol=1e-3, atol=1e-4)
