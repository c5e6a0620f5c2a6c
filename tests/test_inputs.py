"""Every stored result is keyed by everything it read (assets/inputs.py): an unchanged rerun reuses
every step and writes no file, and a changed input recomputes exactly the results that read it."""

import hashlib

import dagster as dg
import pytest
import torch

import pipeline.encoders
from assets.materialize import materialize_all
from assets.resources import Runtime
from pipeline.weights import PackageWeights
from tests.tiny_run import TINY

LITE0, LITE1, RANDOM = "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite0_random"
TUNED = "efficientnet_lite0+adapters"
BACKBONES = (LITE0, LITE1, RANDOM)
SYSTEMS = (*BACKBONES, TUNED, "blind")


def keep(asset: str, key) -> bool:
    """One captioning part and two shot counts: enough to tell which results were recomputed."""
    dims = key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else {}
    return dims.get("shots", "0") in ("0", "1") and (
        asset not in ("captions", "caption_metrics") or dims.get("part") == "easy_vqa.test"
    )


class Graph:
    """One storage root and instance, materialized again after each change of an input."""

    def __init__(self, root):
        self.root, self.instance = root, dg.DagsterInstance.ephemeral()
        self.config = {asset: {"config": dict(values["config"])} for asset, values in TINY.items()}

    def run(self) -> dict[str, bool]:
        """{asset[partition]: reused} of every step."""
        resources = {"runtime": Runtime(storage_root=str(self.root))}
        steps = materialize_all(
            self.instance,
            resources,
            keep=keep,
            run_config=lambda asset: {"ops": {asset: self.config[asset]} if asset in self.config else {}},
        )
        failed = [step for step in steps if not step.success]
        assert not failed, f"{failed[0].label} failed"
        return {step.label: step.metadata["reused"] for step in steps}

    def files(self) -> dict[str, tuple[str, int]]:
        return {
            str(p.relative_to(self.root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """The tests below change one input each, in order, and each change stays (``graph.patch``)."""
    graph = Graph(tmp_path_factory.mktemp("storage"))
    first = graph.run()
    assert not any(first.values()), "a first run into an empty root reused something"
    with pytest.MonkeyPatch.context() as graph.patch:
        yield graph


def recomputed(steps: dict[str, bool]) -> set[str]:
    return {label for label, reused in steps.items() if not reused}


def labels(asset: str, systems=SYSTEMS, parts=None, shots=("0", "1")) -> set[str]:
    """The step labels of an asset for some systems (backbones), as materialize_all names them."""
    if asset in ("captions", "caption_metrics"):
        return {f"{asset}[easy_vqa.test|{s}]" for s in systems}
    if asset in ("vqa_answers", "vqa_metrics"):
        return {f"{asset}[{n}|{s}]" for n in shots for s in systems}
    if asset == "image_features":
        return {f"{asset}[{b}|{p}]" for b in systems for p in parts}
    if asset in ("linear_map", "adapters", "image_prompt_readout"):
        return {f"{asset}[{b}]" for b in systems}
    raise KeyError(asset)


EVALUATION = ("captions", "caption_metrics", "vqa_answers", "vqa_metrics")
REPORTS = {"metric_tables", "rankings", "caption_gallery"}  # read every system's results


def downstream_of_system(system: str) -> set[str]:
    readout = set() if system == "blind" else labels("image_prompt_readout", [system])
    return set().union(*(labels(a, [system]) for a in EVALUATION)) | readout | REPORTS


def test_an_unchanged_rerun_reuses_every_step_and_writes_no_file(graph):
    before = graph.files()
    steps = graph.run()
    assert recomputed(steps) == set()
    assert graph.files() == before


def test_dagster_marks_no_materialized_partition_unsynced(graph):
    """The UI's Unsynced comes from this resolver: with every result's key as its data version, a
    whole-graph run (and an unchanged rerun) leaves every materialized partition fresh."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    from assets.definitions import defs

    asset_graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(graph.instance, asset_graph, LoadingContextForTest(graph.instance))
    stale = []
    for key in asset_graph.get_all_asset_keys():
        partitions_def = asset_graph.get(key).partitions_def
        for partition in (
            partitions_def.get_partition_keys(dynamic_partitions_store=graph.instance) if partitions_def else [None]
        ):
            if not keep(key.to_user_string(), partition):
                continue
            status = resolver.get_status(key, partition)
            if status != StaleStatus.FRESH:
                stale.append((key.to_user_string(), str(partition), status, resolver.get_stale_causes(key, partition)))
    assert stale == []


def test_new_captioning_settings_recompute_only_captions_and_their_metrics(graph):
    graph.config["captions"]["config"]["max_new_tokens"] = 3
    expected = labels("captions") | labels("caption_metrics") | REPORTS
    assert recomputed(graph.run()) == expected


def test_new_vqa_settings_recompute_only_answers_and_their_metrics(graph):
    graph.config["vqa_answers"]["config"]["questions"] = 5
    assert recomputed(graph.run()) == labels("vqa_answers") | labels("vqa_metrics") | REPORTS


def test_new_encoder_weights_recompute_that_backbone_and_nothing_else(graph):
    """The lite0 weights file changes (one tensor perturbed): its features, map and evaluations are
    recomputed, and so is the tuned baseline on it; the random encoder and the blind system are reused."""
    weights = torch.load(pipeline.encoders.backbone_spec(LITE0).weights.path(), map_location="cpu", weights_only=True)
    first = next(iter(weights))
    weights[first] = weights[first] * 1.01
    changed = graph.root.parent / "lite0.pth"
    torch.save(weights, changed)
    real = PackageWeights.path
    graph.patch.setattr(PackageWeights, "path", lambda self: changed if self.name == LITE0 else real(self))
    expected = labels("image_features", [LITE0], ["easy_vqa.test", "easy_vqa.train", "easy_vqa.val"])
    expected |= (
        {f"linear_map[{LITE0}]", f"adapters[{LITE0}]"} | downstream_of_system(LITE0) | downstream_of_system(TUNED)
    )
    assert recomputed(graph.run()) == expected


def test_a_new_validation_carve_out_recomputes_what_reads_train_or_val(graph):
    """Another seed carves another validation set out of easy-vqa train: the train and val manifests
    change, the test manifest does not. The blind system's captions of test read neither, so they
    are reused; its answers read train (1-shot: the solved examples; 0-shot: the closed vocabulary,
    the train answers' most frequent): recomputed."""
    graph.config["manifests"]["config"]["seed"] = 1
    expected = {"manifests[easy_vqa.train]", "manifests[easy_vqa.val]"}
    expected |= labels("image_features", BACKBONES, ["easy_vqa.train", "easy_vqa.val"])
    expected |= labels("linear_map", BACKBONES) | labels("adapters", [LITE0])
    expected |= set().union(*(downstream_of_system(s) for s in (*BACKBONES, TUNED)))
    expected |= labels("vqa_answers", ["blind"]) | labels("vqa_metrics", ["blind"])
    assert recomputed(graph.run()) == expected


def test_a_new_language_model_recomputes_everything_but_manifests_and_features(graph):
    real = PackageWeights.fingerprint
    graph.patch.setattr(
        PackageWeights, "fingerprint", lambda self: real(self) + (":retrained" if self.name == "smollm2-135m" else "")
    )
    expected = {"language_model"} | labels("linear_map", BACKBONES) | labels("adapters", [LITE0])
    expected |= set().union(*(downstream_of_system(s) for s in SYSTEMS))
    assert recomputed(graph.run()) == expected


NEW_BACKBONE = "timm:convnext_atto.d2_in1k?random&pool=1"  # one 320-d token: cheap on 2 cores


def test_a_new_backbone_in_the_sweep_file_runs_only_its_own_work(graph, tmp_path):
    """Added by name, with no code change: its features on every part, its map, its evaluations,
    its readout and the reports that read every system; nothing already stored runs again."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"backbones: ['{NEW_BACKBONE}']\n")
    graph.patch.setenv("LIMBER_SWEEP", str(sweep))
    expected = labels("image_features", [NEW_BACKBONE], ["easy_vqa.test", "easy_vqa.train", "easy_vqa.val"])
    expected |= {f"linear_map[{NEW_BACKBONE}]"} | downstream_of_system(NEW_BACKBONE)
    assert recomputed(graph.run()) == expected

    from storage.layout import read_table

    tidy = read_table(Runtime(storage_root=str(graph.root)).layout.metrics_table())
    assert NEW_BACKBONE in set(tidy["system"]) and set(tidy[tidy["system"] == NEW_BACKBONE]["task"]) == {
        "captioning",
        "vqa",
    }

    # Removed from the sweep file: it stays registered, and its stored results stay.
    sweep.write_text("backbones: []\n")
    assert recomputed(graph.run()) == set()


def test_automation_requests_a_new_backbones_work_in_order_and_nothing_stored(graph):
    """With the automation sensor on, a backbone registered in the UI gets its features requested;
    its map waits for them (on_missing), then is requested; no stored partition is requested."""
    from assets.definitions import defs
    from tests.tiny_run import tiny

    def tick(cursor):
        evaluation = dg.evaluate_automation_conditions(defs=defs, instance=graph.instance, cursor=cursor)
        requested = {
            (key.to_user_string(), str(partition))
            for key in defs.resolve_asset_graph().get_all_asset_keys()
            for partition in evaluation.get_requested_partitions(key)
        }
        for asset, partition in requested:
            stored = graph.instance.get_materialized_partitions(dg.AssetKey(asset))
            assert partition not in {str(p) for p in stored}, (asset, partition)
        return evaluation.cursor, requested

    name = "timm:resnet18?random&layout=pooled"
    cursor, _ = tick(None)  # the sensor's first tick sets its cursor
    graph.instance.add_dynamic_partitions("backbones", [name])
    cursor, requested = tick(cursor)
    parts = ("easy_vqa.test", "easy_vqa.train", "easy_vqa.val")
    assert {r for r in requested if r[0] == "image_features"} == {("image_features", f"{name}|{p}") for p in parts}
    assert not any(asset == "linear_map" for asset, _ in requested)

    resources = {"runtime": Runtime(storage_root=str(graph.root))}
    for part in parts:
        key = dg.MultiPartitionKey({"backbone": name, "part": part})
        assert dg.materialize(
            defs.assets, selection=["image_features"], partition_key=key, instance=graph.instance,
            resources=resources, run_config=tiny("image_features"),
        ).success  # fmt: skip
    _, requested = tick(cursor)
    assert {r for r in requested if r[0] == "linear_map"} == {("linear_map", name)}
