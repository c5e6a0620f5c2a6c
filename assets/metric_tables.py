"""The tables analysts read: one tidy long table, and a wide comparison shaped like the paper's."""

import dagster as dg
import numpy as np
import pandas as pd

from assets.captions import caption_metrics
from assets.config import IntervalConfig
from assets.inputs import Inputs, stored_result
from assets.partitions import BLIND, VQA_EVAL, caption_partitions, system_backbone, vqa_partitions
from assets.resources import Runtime
from assets.vqa import vqa_metrics
from pipeline.encoders import backbone_spec
from pipeline.metrics.rankings import TIES, ranking_markdown
from pipeline.metrics.rankings import rankings as ranked_systems
from pipeline.metrics.table import (
    comparison_columns,
    comparison_markdown,
    comparison_table,
    metrics_bar_chart,
    paired_differences,
    run_values,
    several_datasets,
    tidy_metrics,
)
from pipeline.plots import markdown_image
from storage.artifacts import Table, keyed_table
from storage.layout import dataset_part, read_table, stored_key

TABLE_COMPLETE = "table_complete"


def _stored_metrics(instance, runtime: Runtime, inputs: Inputs) -> list:
    """(labels, metric rows, key, per-item path, per-run path) of every caption_metrics and
    vqa_metrics partition stored so far."""
    lm, layout, found = runtime.language_model, runtime.layout, []
    partitions = [("captioning", caption_metrics, caption_partitions), ("vqa", vqa_metrics, vqa_partitions)]
    for task, asset, partitions_def in partitions:
        for partition in partitions_def.get_partition_keys(dynamic_partitions_store=instance):
            keys = partition.keys_by_dimension
            system, part, shots = keys["system"], keys.get("part", VQA_EVAL), int(keys.get("shots", 0))
            path, items, runs = layout.metric_tables(task, system, lm, part, shots)
            label = f"{asset.key.to_user_string()}[{partition}]"
            if stored_key(path) is None:
                continue
            dataset, split = dataset_part(part)
            labels = {
                "system": system,
                "backbone": system_backbone(system) or "",
                "lm": lm,
                "dataset": dataset,
                "split": split,
                "task": task,
                "shots": shots,
            }
            found.append((labels, inputs.table(label, path), inputs.read[label], items, runs))
    return found


def _tidy_and_items(results: list) -> tuple[pd.DataFrame, list]:
    """The tidy table of stored results (``_stored_metrics``) and their per-item tables."""
    tidy = tidy_metrics([(labels, table, read) for labels, table, read, _, _ in results])
    return tidy, [(labels, read_table(item_path)) for labels, _, _, item_path, _ in results]


def baselines(systems: set[str]) -> list[str]:
    """The systems every other is compared with: blind, and each random-init encoder's linear map."""
    maps = [s for s in systems if s != BLIND and system_backbone(s) == s]  # a backbone's own linear map
    random_init = sorted(s for s in maps if backbone_spec(s).random_init)
    return [BLIND, *random_init]


@dg.asset(
    deps=[
        dg.AssetDep(caption_metrics, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(vqa_metrics, partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="reporting",
    kinds={"parquet", "pandas"},
    # Rebuilt after any evaluation finishes, even while other systems are still missing.
    automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
    check_specs=[
        dg.AssetCheckSpec(
            TABLE_COMPLETE, asset="metric_tables", description="no value is NaN without a note saying why"
        )
    ],
)
def metric_tables(context: dg.AssetExecutionContext, config: IntervalConfig, runtime: Runtime):
    """Every stored caption and VQA metric, one row per (system, part, task, metric, shots): the
    mean over the system's runs (training seeds x few-shot trials), their spread and number, and a
    95% interval drawing the images and the runs; every run's value; and each system's paired
    differences against blind and the random encoder."""
    inputs = Inputs(runtime)
    results = _stored_metrics(context.instance, runtime, inputs)
    if not results:
        raise ValueError("no caption_metrics or vqa_metrics partition is materialized yet")
    key = inputs.key(intervals=config.interval_settings())
    layout = runtime.layout
    path = layout.metrics_table()

    def tables():
        tidy, items = _tidy_and_items(results)
        runs = run_values([(labels, read_table(runs_path)) for labels, _, _, _, runs_path in results])
        systems = {labels["system"] for labels, *_ in results}
        pairs = [(system, baseline) for baseline in baselines(systems) for system in sorted(systems)]
        differences = paired_differences(items, pairs, config.bootstrap_resamples, config.bootstrap_seed)
        beside = {
            layout.differences_table(): differences,
            layout.metric_runs_table(): runs,
            layout.comparison_table(): comparison_table(tidy),
            layout.metrics_chart(): metrics_bar_chart(tidy, runs),
        }
        return Table(tidy, beside)

    tidy, reused = keyed_table(path, key, tables)
    wide = read_table(layout.comparison_table())
    yield stored_result(
        path,
        key,
        reused,
        comparison_path=dg.MetadataValue.path(str(layout.comparison_table())),
        rows=len(tidy),
        comparison=dg.MetadataValue.md(comparison_markdown(wide)),
        differences_path=dg.MetadataValue.path(str(layout.differences_table())),
        runs_path=dg.MetadataValue.path(str(layout.metric_runs_table())),
        chart=dg.MetadataValue.md(markdown_image(layout.metrics_chart().read_bytes(), "metrics by system")),
    )
    unexplained = tidy[tidy["value"].isna() & (tidy["note"] == "")]
    yield dg.AssetCheckResult(
        check_name=TABLE_COMPLETE,
        passed=unexplained.empty and bool(np.isfinite(tidy["value"].dropna()).all()),
        metadata={"rows": len(tidy), "unexplained_nan": len(unexplained)},
    )


@dg.asset(
    deps=[
        metric_tables,
        dg.AssetDep(caption_metrics, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(vqa_metrics, partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="reporting",
    kinds={"parquet", "pandas"},
    automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
)
def rankings(context: dg.AssetExecutionContext, config: IntervalConfig, runtime: Runtime):
    """Per task, metric (the comparison's) and shot count, the systems in order of their means,
    with a shared rank where the paired difference's 95% interval (the same images and runs drawn
    for both systems) contains 0: the ranking the data supports, read with ``load_rankings()``."""
    inputs = Inputs(runtime)
    results = _stored_metrics(context.instance, runtime, inputs)
    if not results:
        raise ValueError("no caption_metrics or vqa_metrics partition is materialized yet")
    key = inputs.key(intervals=config.interval_settings(), ties=TIES)
    path = runtime.layout.rankings_table()

    def rank() -> pd.DataFrame:
        tidy, items = _tidy_and_items(results)
        systems = sorted({labels["system"] for labels, *_ in results})
        pairs = [(a, b) for i, a in enumerate(systems) for b in systems[i + 1 :]]
        shown = set(tidy.loc[comparison_columns(tidy, several_datasets(tidy)).notna(), "metric"])
        differences = paired_differences(items, pairs, config.bootstrap_resamples, config.bootstrap_seed, shown)
        return ranked_systems(tidy, differences)

    table, reused = keyed_table(path, key, rank)
    yield stored_result(
        path,
        key,
        reused,
        rows=len(table),
        tied_rows=int(table["tied"].sum()),
        rankings=dg.MetadataValue.md(ranking_markdown(table)),
    )
