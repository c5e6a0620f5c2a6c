"""Keyed results (``storage.artifacts``): reused under their key, recomputed under another, and
never left looking finished by a computation that fails midway."""

import pandas as pd
import pytest
import torch

from pipeline.encoders import TokenLayout
from pipeline.linear_map import LinearMap
from storage.artifacts import Run, Table, TrainedMap, keyed_map, keyed_runs, keyed_table
from storage.layout import LocalMirror, StorageLayout, read_table, storage_path, stored_key, stored_runs


@pytest.fixture
def root(tmp_path):
    return storage_path(tmp_path / "store")


def counting(table: pd.DataFrame, calls: list, beside=None):
    def compute():
        calls.append(1)
        return Table(table, beside or {})

    return compute


def test_a_table_is_computed_once_per_key_with_its_side_files(root):
    calls = []
    path, side, chart = root / "t.parquet", root / "t.runs.parquet", root / "t.png"
    compute = counting(pd.DataFrame({"a": [1]}), calls, {side: pd.DataFrame({"b": [2]}), chart: b"png"})
    table, reused = keyed_table(path, "k1", compute)
    assert not reused and table["a"].tolist() == [1]
    assert stored_key(side) == "k1" and read_table(side)["b"].tolist() == [2] and chart.read_bytes() == b"png"
    table, reused = keyed_table(path, "k1", compute)
    assert reused and len(calls) == 1
    _, reused = keyed_table(path, "k2", compute)
    assert not reused and len(calls) == 2 and stored_key(path) == "k2"


def test_a_write_that_fails_midway_leaves_no_result_and_is_recomputed(root):
    """Side files go first and the result last: a result that cannot be written leaves its side
    file but no key, and the next call computes again."""
    path, side = root / "t.parquet", root / "t.side.parquet"
    unwritable = pd.DataFrame({"a": [object()]})  # pyarrow cannot store an arbitrary object
    with pytest.raises(Exception, match="object"):
        keyed_table(path, "k1", lambda: Table(unwritable, {side: pd.DataFrame({"b": [1]})}))
    assert stored_key(side) == "k1" and stored_key(path) is None
    calls = []
    table, reused = keyed_table(path, "k1", counting(pd.DataFrame({"a": [1]}), calls))
    assert not reused and calls == [1] and table["a"].tolist() == [1]


def test_a_table_not_read_back_is_still_stored_under_its_key(root):
    path = root / "t.parquet"
    table, reused = keyed_table(path, "k1", lambda: pd.DataFrame({"a": [1]}), read=False)
    assert table is None and not reused and stored_key(path) == "k1"
    assert keyed_table(path, "k1", lambda: pd.DataFrame({"a": [2]}))[0]["a"].tolist() == [1]


def test_an_added_run_computes_only_itself_and_the_index_lists_every_run(root):
    calls = []

    def runs(names):
        return [Run(n, f"key-{n}", root / f"{n}.parquet", counting(pd.DataFrame({"run": [n]}), calls)) for n in names]

    index = root / "runs.json"
    first = keyed_runs(runs(["seed-0"]), index)
    assert first.computed == ["seed-0"] and not first.reused
    second = keyed_runs(runs(["seed-0", "seed-1"]), index)
    assert second.computed == ["seed-1"] and len(calls) == 2
    assert stored_runs(index) == ["seed-0", "seed-1"] and second.first["run"].tolist() == ["seed-0"]
    assert keyed_runs(runs(["seed-0", "seed-1"]), index).reused
    assert second.key != first.key


def test_a_map_is_trained_once_per_key_and_stored_with_its_summary_and_loss_curve(root, tmp_path):
    trainings = []

    def train(checkpoint_dir, push):
        trainings.append(checkpoint_dir)
        torch.manual_seed(0)
        return TrainedMap(LinearMap(4, 8, TokenLayout("pooled", 1, 2)), {"losses": [2.0, 1.0]}, b"curve")

    folder = root / "linear_maps" / "lm" / "system" / "seed-0"
    mirror = LocalMirror(folder, tmp_path / "cache")
    trained, reused = keyed_map(mirror, "k1", train, {"system": "system"})
    assert not reused and trainings == [StorageLayout.checkpoints(mirror.local, "k1")]
    assert StorageLayout.loss_curve(folder).read_bytes() == b"curve"
    again, reused = keyed_map(mirror, "k1", train, {"system": "system"})
    assert reused and len(trainings) == 1 and again.summary == {"losses": [2.0, 1.0]}
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.linear_map.state_dict().values(), trained.linear_map.state_dict().values(), strict=True)
    )
    assert LinearMap.stored_config(folder)["system"] == "system"
    _, reused = keyed_map(mirror, "k2", train, {"system": "system"})
    assert not reused and len(trainings) == 2 and LinearMap.stored_key(folder) == "k2"
