"""The tidy metric table, its valid ranges, and shaping it for reading: the paper-style comparison
and a bar chart."""

import io

import numpy as np
import pandas as pd

from pipeline.plots import plt

# Columns in the order the paper's tables use: captioning first, then VQA by shots.
CAPTION_COLUMNS = ["CIDEr-D", "BLEU-4", "METEOR", "ROUGE-L", "CLIP-S", "RefCLIP-S", "names colour+shape (%)"]
TIDY_COLUMNS = ["system", "backbone", "lm", "dataset", "split", "task", "metric", "shots", "value", "n", "note", "key"]
# Valid ranges of the scores as reported: BLEU/METEOR/ROUGE-L in [0, 1], CIDEr-D x10, CLIP-S x2.5,
# percentages ("... (%)", VQA accuracy) in [0, 100].
METRIC_RANGES = {"CIDEr-D": (0.0, 10.0), "CLIP-S": (0.0, 2.5), "RefCLIP-S": (0.0, 2.5), "VQA accuracy": (0.0, 100.0)}


def in_range(metric: str, value: float) -> bool:
    """'CIDEr-D (in-domain)' has CIDEr-D's range; percentages '... (%)' lie in [0, 100]."""
    low, high = (0.0, 100.0) if metric.endswith("(%)") else METRIC_RANGES.get(metric.split(" (")[0], (0.0, 1.0))
    return low <= value <= high


def out_of_range(rows: pd.DataFrame) -> list[str]:
    """Metrics of a ``(metric, value, note)`` table outside their range, or NaN without a note saying why."""
    return [
        metric
        for metric, value, note in zip(rows["metric"], rows["value"], rows["note"], strict=True)
        if (np.isnan(value) and not note) or (not np.isnan(value) and not in_range(metric, value))
    ]


def tidy_metrics(results: list[tuple[dict, pd.DataFrame, str]]) -> pd.DataFrame:
    """One row per (system, dataset, split, task, metric, shots) from each result's labels
    (system, backbone, lm, dataset, split, task, shots), its ``(metric, value, n, note)`` rows and key."""
    rows = [
        {**labels, "metric": r["metric"], "value": float(r["value"]), "n": int(r["n"]), "note": r["note"], "key": key}
        for labels, table, key in results
        for r in table.to_dict("records")
    ]
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def comparison_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per system; columns like 'test CIDEr-D' and 'VQA 0-shot'."""
    captions = tidy[(tidy["task"] == "captioning") & tidy["metric"].isin(CAPTION_COLUMNS)]
    # Splits are named by their dataset too when several datasets are captioned (NoCaps "val" is not COCO's).
    several = captions["dataset"].nunique() > 1
    captions = captions.assign(split=(captions["dataset"] + " " + captions["split"]) if several else captions["split"])
    caption_wide = captions.pivot_table(index="system", columns=["split", "metric"], values="value")
    caption_wide.columns = [f"{split} {metric}" for split, metric in caption_wide.columns]
    order = [f"{s} {m}" for s in sorted(captions["split"].unique(), reverse=True) for m in CAPTION_COLUMNS]
    caption_wide = caption_wide[[c for c in order if c in caption_wide.columns]]
    vqa = tidy[(tidy["task"] == "vqa") & (tidy["metric"] == "VQA accuracy")]
    vqa_wide = vqa.pivot_table(index="system", columns="shots", values="value")
    vqa_wide.columns = [f"VQA {n}-shot" for n in vqa_wide.columns]
    return caption_wide.join(vqa_wide, how="outer")


def metrics_bar_chart(tidy: pd.DataFrame) -> bytes:
    """PNG: one panel per headline metric, one bar per system."""
    wide = comparison_table(tidy)
    headline = [c for c in wide.columns if c.endswith(("CIDEr-D", "colour+shape (%)")) or c.startswith("VQA")]
    figure, axes = plt.subplots(1, len(headline), figsize=(3 * len(headline), 3.2), dpi=100, squeeze=False)
    for axis, column in zip(axes[0], headline, strict=True):
        values = wide[column].dropna()
        axis.bar(range(len(values)), values.to_numpy(), color=[f"C{i}" for i in range(len(values))])
        axis.set_xticks(range(len(values)), values.index, rotation=30, ha="right", fontsize=7)
        axis.set_title(column, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
