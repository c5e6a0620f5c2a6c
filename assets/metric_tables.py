"""The tables analysts read: one tidy long table, and a wide comparison shaped like the paper's."""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.captions import caption_metrics
from assets.partitions import DATASET, caption_partitions, dataset_split, vqa_partitions
from assets.resources import Limber
from assets.systems import latest_materialization
from assets.vqa import EVAL_SPLIT, vqa_metrics
from pipeline.metrics.table import comparison_table, metrics_bar_chart
from pipeline.plots import markdown_image


def _latest(context, asset, partitions_def) -> list[tuple[dict, Path, float]]:
    """(partition dimensions, metrics path, timestamp) of every materialized partition."""
    found = []
    for key in partitions_def.get_partition_keys():
        record = latest_materialization(context.instance, asset, key)
        if record is not None:
            path = Path(record.asset_materialization.metadata["path"].value)
            found.append((key.keys_by_dimension, path, record.timestamp))
    return found


@dg.asset(
    deps=[dg.AssetDep(caption_metrics, partition_mapping=dg.AllPartitionMapping()),
          dg.AssetDep(vqa_metrics, partition_mapping=dg.AllPartitionMapping())],
    group_name="reporting",
    kinds={"parquet", "pandas"},
)
def metric_tables(context: dg.AssetExecutionContext, limber: Limber) -> dg.MaterializeResult:
    """Every materialized caption and VQA metric, one row per (system, split, task, metric, shots)."""
    rows = []
    sources = [("captioning", caption_metrics, caption_partitions), ("vqa", vqa_metrics, vqa_partitions)]
    for task, asset, partitions in sources:
        for keys, path, timestamp in _latest(context, asset, partitions):
            split = dataset_split(keys["split"])[1] if "split" in keys else EVAL_SPLIT
            for record in pd.read_parquet(path).to_dict("records"):
                rows.append({
                    "backbone": keys["system"], "lm": limber.language_model, "dataset": DATASET, "split": split,
                    "task": task, "metric": record["metric"], "shots": int(keys.get("shots", 0)),
                    "value": float(record["value"]), "n": int(record["n"]), "note": record["note"],
                    "materialized_at": datetime.fromtimestamp(timestamp, tz=timezone.utc),
                    "config_hash": path.parent.name,
                })
    if not rows:
        raise ValueError("no caption_metrics or vqa_metrics partition is materialized yet")
    tidy = pd.DataFrame(rows)
    wide = comparison_table(tidy)
    path = limber.layout.metrics_table()
    path.parent.mkdir(parents=True, exist_ok=True)
    tidy.to_parquet(path)
    wide.to_parquet(limber.layout.comparison_table())
    png = metrics_bar_chart(tidy)
    path.with_name("metrics.png").write_bytes(png)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "comparison_path": dg.MetadataValue.path(str(limber.layout.comparison_table())),
        "rows": len(tidy),
        "comparison": dg.MetadataValue.md(wide.round(2).to_markdown()),
        "chart": dg.MetadataValue.md(markdown_image(png, "metrics by backbone")),
    })
