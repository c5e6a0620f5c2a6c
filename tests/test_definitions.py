import dagster as dg

from assets.definitions import ALL_ASSETS, defs
from assets.linear_map import linear_map
from assets.partitions import (
    BACKBONES,
    backbone_partitions,
    discover_parts,
    feature_partitions,
    register_backbones,
    register_dataset_parts,
)


def test_definitions_load_and_validate():
    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "manifests",
        "image_features",
        "language_model",
        "linear_map",
        "adapters",
        "captions",
        "caption_metrics",
        "vqa_answers",
        "vqa_metrics",
        "image_prompt_readout",
        "metric_tables",
        "rankings",
        "caption_gallery",
    }
    assert len(ALL_ASSETS) == len(keys)


def test_dataset_parts_are_registered_dynamic_partitions():
    instance = dg.DagsterInstance.ephemeral()
    assert feature_partitions.get_partition_keys(dynamic_partitions_store=instance) == []
    assert discover_parts("unused") == ["easy_vqa.test", "easy_vqa.train", "easy_vqa.val"]
    assert register_dataset_parts(instance, "unused") == ["easy_vqa.test", "easy_vqa.train", "easy_vqa.val"]
    assert register_dataset_parts(instance, "unused") == []  # already known: nothing new
    assert feature_partitions.get_partition_keys(dynamic_partitions_store=instance) == []  # no backbone yet
    assert register_backbones(instance, BACKBONES) == BACKBONES
    keys = feature_partitions.get_partition_keys(dynamic_partitions_store=instance)
    assert len(keys) == len(BACKBONES) * 3
    key = dg.MultiPartitionKey({"backbone": "efficientnet_lite0", "part": "easy_vqa.train"})
    assert key in keys
    assert key.keys_by_dimension == {"backbone": "efficientnet_lite0", "part": "easy_vqa.train"}


def test_linear_map_depends_on_its_backbones_features_only():
    instance = dg.DagsterInstance.ephemeral()
    register_dataset_parts(instance, "unused")
    register_backbones(instance, BACKBONES)
    mapping = linear_map.get_partition_mapping(dg.AssetKey("image_features"))
    downstream = backbone_partitions.subset_with_partition_keys(["efficientnet_lite0"])
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        downstream, backbone_partitions, feature_partitions, dynamic_partitions_store=instance
    ).partitions_subset.get_partition_keys()
    assert {k.keys_by_dimension["backbone"] for k in upstream} == {"efficientnet_lite0"}
    assert len(list(upstream)) == 3


def test_paper_profile_is_one_environment_variable_away():
    import os
    import subprocess
    import sys

    code = (
        "from assets.partitions import BACKBONES; from assets.resources import Runtime; "
        "from assets.config import TrainingConfig; import dagster as dg; from assets.definitions import defs; "
        "dg.Definitions.validate_loadable(defs); "
        "from assets.partitions import PROFILE_SYSTEMS; "
        "print(BACKBONES, Runtime().language_model, TrainingConfig().lr, PROFILE_SYSTEMS)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "LIMBER_PROFILE": "paper"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'clip_rn50x16', 'nfrn50', 'nfrn50_random', 'beit_large', 'beit_large_ft'" in out
    assert "gpt-j-6b 0.0008" in out
    assert "'beit_large_ft', 'clip_rn50x16+adapters', 'blind']" in out  # the tuned baseline on MAGMA's encoder


def test_ml_core_imports_without_dagster():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['dagster'] = None; "  # any import of dagster now fails
        "import pipeline, pipeline.encoders, pipeline.language_models, pipeline.linear_map, pipeline.training, "
        "pipeline.decoding, pipeline.image_features, pipeline.vqa, pipeline.datasets, pipeline.metrics.vqa, "
        "pipeline.adapters, pipeline.readout, pipeline.gallery, "
        "pipeline.metrics.captions, pipeline.metrics.clip_score, pipeline.metrics.table, storage"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dagster_cli_validates_the_workspace(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=Path(__file__).parents[1],
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_an_evaluation_partition_depends_on_its_own_systems_features_and_blind_on_none():
    from assets.captions import captions
    from assets.partitions import caption_partitions
    from assets.vqa import vqa_answers

    instance = dg.DagsterInstance.ephemeral()
    register_dataset_parts(instance, "unused")
    register_backbones(instance, BACKBONES)
    for asset, partitions_def, other, parts in (
        (captions, caption_partitions, {"part": "easy_vqa.test"}, {"easy_vqa.test"}),
        (vqa_answers, vqa_answers.partitions_def, {"shots": "1"}, {"easy_vqa.test", "easy_vqa.train"}),
    ):
        mapping = asset.get_partition_mapping(dg.AssetKey("image_features"))
        # A tuned baseline's edge to its backbone's features runs through the adapters asset (which
        # reads every backbone's features): backbones are dynamic partitions, and no built-in
        # mapping maps a dynamic key onto another name.
        for system, backbones in (
            ("efficientnet_lite0", {"efficientnet_lite0"}),
            ("efficientnet_lite0+adapters", set()),
            ("efficientnet_lite0_random", {"efficientnet_lite0_random"}),
            ("blind", set()),
        ):
            downstream = partitions_def.subset_with_partition_keys([dg.MultiPartitionKey({"system": system, **other})])
            upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
                downstream, partitions_def, feature_partitions, dynamic_partitions_store=instance
            ).partitions_subset.get_partition_keys()
            assert {k.keys_by_dimension["backbone"] for k in upstream} == backbones, (asset.key, system)
        # Only the evaluation parts' manifests, never a training shard's.
        assert set(asset.get_partition_mapping(dg.AssetKey("manifests")).partition_keys) == parts
