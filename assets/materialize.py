"""Materializing every asset and every partition in graph order: what ``limber demo`` runs, and the
tests' whole-graph runs (embedded and paper profile) with it."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from assets.definitions import ALL_ASSETS
from assets.partitions import register_backbones, register_dataset_parts, resolvable, wanted_backbones


@dataclass
class Step:
    """One asset partition's run: its label ``asset[partition]``, outcome, time and metadata."""

    asset: str
    partition: str | dg.MultiPartitionKey | None
    result: dg.ExecuteInProcessResult
    seconds: float
    metadata: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.asset}[{self.partition}]" if self.partition else self.asset

    @property
    def success(self) -> bool:
        return self.result.success


def materialize_all(
    instance: dg.DagsterInstance,
    resources: dict,
    run_config: Callable[[str], dict] = lambda asset: {},
    keep: Callable[[str, object], bool] = lambda asset, key: True,
    on_start: Callable[[str], None] = lambda label: None,
    tags: dict | None = None,
) -> list[Step]:
    """Registers the dataset parts under the raw-data root and the backbones (the profile's, the sweep
    file's, any registered before), then materializes every asset partition that ``keep(asset,
    key)`` accepts, one run each, in graph order, with ``run_config(asset)``. Stops at the first
    failed run (its step is the last one returned)."""
    register_dataset_parts(instance, resources["runtime"].data_root)
    good, bad = resolvable(wanted_backbones(instance))
    if bad:  # preflight reports the profile's; a sweep file's are named here, before anything runs
        raise ValueError("; ".join(f"backbone {name}: {problem}" for name, problem in bad.items()))
    register_backbones(instance, good)
    steps = []
    for asset in ALL_ASSETS:
        name = asset.key.to_user_string()
        keys = (
            asset.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
            if asset.partitions_def
            else [None]
        )
        for key in [k for k in keys if keep(name, k)]:
            on_start(f"{name}[{key}]" if key else name)
            started = time.perf_counter()
            result = dg.materialize(
                ALL_ASSETS,
                selection=[asset],
                partition_key=key,
                instance=instance,
                resources=resources,
                run_config=run_config(name),
                raise_on_error=False,
                tags=tags,
            )
            metadata = {}
            for event in result.get_asset_materialization_events():
                metadata = {k: v.value for k, v in event.materialization.metadata.items()}
            steps.append(Step(name, key, result, time.perf_counter() - started, metadata))
            if not result.success:
                return steps
    return steps
