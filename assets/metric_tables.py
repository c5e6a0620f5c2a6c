"""The tables analysts read: one tidy long table, and a wide comparison shaped like the paper's."""

from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pandas as pd

from assets.captions import caption_metrics
from assets.partitions import VQA_EVAL, caption_partitions, dataset_part, vqa_partitions
from assets.records import latest_materialization
from assets.resources import Limber
from assets.vqa import vqa_metrics
from pipeline.metrics.table import comparison_table, metrics_bar_chart
from pipeline.plots import markdown_image
from storage.layout import read_table, storage_path, write_table

TABLE_COMPLETE = "table_complete"


def _latest(context, asset, partitions_def) -> list[tuple[dict, object, float]]:
    """(partition dimensions, metrics path, timestamp) of every materialized partition."""
    found = []
    for key in partitions_def.get_partition_keys():
        record = latest_materialization(context.instance, asset, key)
        if record is not None:
            path = storage_path(record.asset_materialization.metadata["path"].value)
            found.append((key.keys_by_dimension, path, record.timestamp))
    return found


@dg.asset(
    deps=[dg.AssetDep(caption_metrics, partition_mapping=dg.AllPartitionMapping()),
          dg.AssetDep(vqa_metrics, partition_mapping=dg.AllPartitionMapping())],
    group_name="reporting",
    kinds={"parquet", "pandas"},
    # Rebuilt after any evaluation finishes, even while other systems are still missing.
    automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
    check_specs=[dg.AssetCheckSpec(TABLE_COMPLETE, asset="metric_tables",
                                   description="no value is NaN without a note saying why")],
)
def metric_tables(context: dg.AssetExecutionContext, limber: Limber):
    """Every materialized caption and VQA metric, one row per (system, split, task, metric, shots)."""
    rows = []
    sources = [("captioning", caption_metrics, caption_partitions), ("vqa", vqa_metrics, vqa_partitions)]
    for task, asset, partitions in sources:
        for keys, path, timestamp in _latest(context, asset, partitions):
            dataset, split = dataset_part(keys.get("split", VQA_EVAL))
            for record in read_table(path).to_dict("records"):
                rows.append({
                    "backbone": keys["system"], "lm": limber.language_model, "dataset": dataset, "split": split,
                    "task": task, "metric": record["metric"], "shots": int(keys.get("shots", 0)),
                    "value": float(record["value"]), "n": int(record["n"]), "note": record["note"],
                    "materialized_at": datetime.fromtimestamp(timestamp, tz=UTC),
                    "config_hash": path.parent.name,
                })
    if not rows:
        raise ValueError("no caption_metrics or vqa_metrics partition is materialized yet")
    tidy = pd.DataFrame(rows)
    wide = comparison_table(tidy)
    path = limber.layout.metrics_table()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(tidy, path)
    write_table(wide, limber.layout.comparison_table())
    png = metrics_bar_chart(tidy)
    path.with_name("metrics.png").write_bytes(png)
    yield dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "comparison_path": dg.MetadataValue.path(str(limber.layout.comparison_table())),
        "rows": len(tidy),
        "comparison": dg.MetadataValue.md(wide.round(2).to_markdown()),
        "chart": dg.MetadataValue.md(markdown_image(png, "metrics by backbone")),
    })
    unexplained = tidy[tidy["value"].isna() & (tidy["note"] == "")]
    yield dg.AssetCheckResult(
        check_name=TABLE_COMPLETE,
        passed=unexplained.empty and bool(np.isfinite(tidy["value"].dropna()).all()),
        metadata={"rows": len(tidy), "unexplained_nan": len(unexplained)},
    )
