"""Results stored under the key of what they were computed from, so that an unchanged input reuses
them and a changed one recomputes exactly what read it.

A result is a table (with files beside it) or a trained map's folder. Each is reused when its
stored key equals the key asked for, else computed and written: the files beside it first and the
result itself last, carrying the key, so a write killed midway never leaves a result that looks
finished, and a rerun recomputes it.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from upath import UPath

from pipeline.adapters import load_map
from pipeline.linear_map import LinearMap
from storage.layout import (
    LocalMirror,
    StorageLayout,
    config_hash,
    read_table,
    stored_key,
    write_bytes,
    write_index,
    write_table,
)


@dataclass
class Table:
    """A computed table and the files written beside it under the same key: tables (Parquet) or
    bytes (a chart)."""

    table: pd.DataFrame
    beside: dict[UPath, pd.DataFrame | bytes] = field(default_factory=dict)


def keyed_table(
    path: UPath, key: str, compute: Callable[[], "Table | pd.DataFrame"], read: bool = True
) -> tuple[pd.DataFrame | None, bool]:
    """The table stored at ``path`` under ``key``: reused, or computed and written with what it
    puts beside it; returns the table (None with ``read=False``: the caller holds it already) and
    whether it was reused."""
    reused = stored_key(path) == key
    if not reused:
        result = compute()
        result = result if isinstance(result, Table) else Table(result)
        for side, content in result.beside.items():
            if isinstance(content, bytes):
                write_bytes(side, content)
            else:
                write_table(content, side, key)
        write_table(result.table, path, key)  # last: the key marks the result complete
    return (read_table(path) if read else None), reused


@dataclass(frozen=True)
class Run:
    """One run of an asset partition (a training seed, a few-shot trial): its name, key, path,
    and how to compute its table."""

    name: str
    key: str
    path: UPath
    compute: Callable[[], "Table | pd.DataFrame"]


@dataclass
class KeyedRuns:
    """The tables of one asset partition's runs, each stored under its own key."""

    tables: dict[str, pd.DataFrame]
    keys: dict[str, str]
    computed: list[str]

    @property
    def key(self) -> str:
        """The partition's key: that of its runs' keys."""
        return config_hash(self.keys)

    @property
    def reused(self) -> bool:
        return not self.computed

    @property
    def first(self) -> pd.DataFrame:
        return self.tables[min(self.tables)]


def keyed_runs(runs: Iterable[Run], index: UPath | None = None) -> KeyedRuns:
    """Each run's table, reused or computed (``keyed_table``), so an added run computes only
    itself; ``index`` (when given) lists the runs and their keys for the assets downstream."""
    result = KeyedRuns({}, {}, [])
    for run in runs:
        result.tables[run.name], reused = keyed_table(run.path, run.key, run.compute)
        result.keys[run.name] = run.key
        if not reused:
            result.computed.append(run.name)
    if index is not None:
        write_index(index, {"runs": result.keys})
    return result


@dataclass
class TrainedMap:
    """A trained map, what its training reports (``TrainingResult.summary``) and its loss curve
    (PNG; none when reused: it stays stored beside the map)."""

    linear_map: LinearMap
    summary: dict
    loss_curve: bytes = b""


def keyed_map(
    mirror: LocalMirror, key: str, train: Callable[[Path, Callable[[], None]], TrainedMap], about: dict
) -> tuple[TrainedMap, bool]:
    """The map stored in ``mirror``'s folder under ``key``: reused, or trained by
    ``train(checkpoint_dir, push)`` and saved with ``about`` (what it is) and its summary. One
    checkpoint folder per key, so a run never resumes another key's training; ``push`` uploads
    checkpoints as they are written, so a rerun on another machine resumes. Returns the map and
    whether it was reused."""
    local = mirror.pull()
    if LinearMap.stored_key(local) == key:
        return TrainedMap(load_map(local), LinearMap.stored_config(local)["training"]), True
    trained = train(StorageLayout.checkpoints(local, key), mirror.push)
    StorageLayout.loss_curve(local).write_bytes(trained.loss_curve)
    trained.linear_map.save(local, extra={"key": key, **about, "training": trained.summary})
    mirror.push()
    return trained, False
