"""The tidy metric table, its valid ranges, and shaping it for reading: the paper-style comparison
and a bar chart."""

import numpy as np
import pandas as pd

from pipeline.metrics.vqa import CLOSED_VOCABULARY
from pipeline.plots import figure_png, plt

# Columns in the order the paper's tables use: captioning first, then VQA by shots.
CAPTION_COLUMNS = ["CIDEr-D", "BLEU-4", "METEOR", "ROUGE-L", "CLIP-S", "RefCLIP-S", "names colour+shape (%)"]
TIDY_COLUMNS = [
    "system", "backbone", "lm", "dataset", "split", "task", "metric", "shots",
    "value", "ci_low", "ci_high", "n", "note", "key",
]  # fmt: skip
DIFFERENCE_COLUMNS = [
    "system", "baseline", "task", "dataset", "split", "metric", "shots", "difference", "ci_low", "ci_high", "n",
]  # fmt: skip
# The VQA metrics the comparison shows, and their column labels.
VQA_COLUMNS = {"VQA accuracy": "VQA", CLOSED_VOCABULARY: "VQA closed"}
# Valid ranges of the scores as reported: BLEU/METEOR/ROUGE-L in [0, 1], CIDEr-D x10, CLIP-S x2.5,
# percentages ("... (%)", VQA accuracy) in [0, 100].
METRIC_RANGES = {
    "CIDEr-D": (0.0, 10.0), "CLIP-S": (0.0, 2.5), "RefCLIP-S": (0.0, 2.5),
    "VQA accuracy": (0.0, 100.0), CLOSED_VOCABULARY: (0.0, 100.0),
}  # fmt: skip
# The VQA metrics of a per-question table (pipeline.metrics.vqa.answers_accuracy), by column.
VQA_METRICS = {"accuracy": "VQA accuracy", "closed_accuracy": CLOSED_VOCABULARY}


def in_range(metric: str, value: float) -> bool:
    """'CIDEr-D (in-domain)' has CIDEr-D's range; percentages '... (%)', also over a subset ('... (%)
    (colour red)'), lie in [0, 100]."""
    low, high = (0.0, 100.0) if "(%)" in metric else METRIC_RANGES.get(metric.split(" (")[0], (0.0, 1.0))
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
    (system, backbone, lm, dataset, split, task, shots), its ``(metric, value, ci_low, ci_high, n,
    note)`` rows and key."""
    rows = [
        {**labels, **{c: r[c] for c in ("metric", "note")}, **{c: float(r[c]) for c in ("value", "ci_low", "ci_high")}}
        | {"n": int(r["n"]), "key": key}
        for labels, table, key in results
        for r in table.to_dict("records")
    ]
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def paired_differences(
    results: list[tuple[dict, pd.DataFrame]], baselines: list[str], resamples: int, seed: int
) -> pd.DataFrame:
    """Each system's mean per-item score minus each baseline's, on the items both have (the same
    images or questions), with a paired bootstrap 95% interval.

    ``results`` holds (labels: system, task, dataset, split, shots; per-item table: an
    ``image_id`` or ``question_id`` column and one column per metric, or VQA's ``answer_type`` and
    ``VQA_METRICS``' columns). Metrics that are not means over items (BLEU, METEOR) have no per-item table.
    """
    from pipeline.metrics.intervals import Estimate, resamples_of

    def metrics(table: pd.DataFrame) -> dict[str, pd.Series]:
        if "accuracy" in table:  # VQA: overall and per answer type
            by_id = table.set_index("question_id")
            out = {}
            for column, metric in ((c, m) for c, m in VQA_METRICS.items() if c in by_id):
                out[metric] = by_id[column]
                for answer_type in sorted(by_id["answer_type"].unique()):
                    out[f"{metric} ({answer_type})"] = by_id.loc[by_id["answer_type"] == answer_type, column]
            return out
        by_id = table.set_index("image_id")
        return {column: by_id[column] for column in by_id.columns}

    groups: dict[tuple, dict[str, dict]] = {}
    for labels, table in results:
        group = tuple(labels[k] for k in ("task", "dataset", "split", "shots"))
        groups.setdefault(group, {})[labels["system"]] = metrics(table)
    rows = []
    for (task, dataset, split, shots), systems in groups.items():
        for baseline in (b for b in baselines if b in systems):
            for system, scores in systems.items():
                if system == baseline:
                    continue
                for metric, values in scores.items():
                    reference = systems[baseline].get(metric)
                    if reference is None:
                        continue
                    paired = pd.concat([values, reference], axis=1, join="inner").dropna()
                    difference = (paired.iloc[:, 0] - paired.iloc[:, 1]).to_numpy()
                    estimate = Estimate.mean(difference, resamples_of(len(difference), resamples, seed))
                    rows.append(
                        {
                            "system": system,
                            "baseline": baseline,
                            "task": task,
                            "dataset": dataset,
                            "split": split,
                            "metric": metric,
                            "shots": shots,
                            "difference": estimate.value,
                            "ci_low": estimate.low,
                            "ci_high": estimate.high,
                            "n": len(difference),
                        }
                    )
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def comparison_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per system; columns like 'test CIDEr-D', 'VQA 0-shot' and 'VQA closed 0-shot'
    (closed vocabulary), each followed by its interval ('test CIDEr-D ci_low', 'test CIDEr-D
    ci_high')."""
    captions = tidy[(tidy["task"] == "captioning") & tidy["metric"].isin(CAPTION_COLUMNS)]
    # Splits are named by their dataset too when several datasets are captioned (NoCaps "val" is not COCO's).
    several = captions["dataset"].nunique() > 1
    splits = (captions["dataset"] + " " + captions["split"]) if several else captions["split"]
    captions = captions.assign(column=splits + " " + captions["metric"])
    vqa = tidy[(tidy["task"] == "vqa") & tidy["metric"].isin(VQA_COLUMNS)]
    vqa = vqa.assign(column=vqa["metric"].map(VQA_COLUMNS) + " " + vqa["shots"].astype(str) + "-shot")
    present = set(captions["column"]) | set(vqa["column"])
    columns = [f"{split} {m}" for split in sorted(set(splits), reverse=True) for m in CAPTION_COLUMNS]
    columns += [f"{label} {n}-shot" for label in VQA_COLUMNS.values() for n in sorted(vqa["shots"].unique())]
    columns = [c for c in columns if c in present]
    wide = pd.concat([captions, vqa]).pivot_table(
        index="system", columns="column", values=["value", "ci_low", "ci_high"]
    )
    table = pd.DataFrame(index=wide.index)
    for column in columns:
        for field, suffix in (("value", ""), ("ci_low", " ci_low"), ("ci_high", " ci_high")):
            table[column + suffix] = wide[(field, column)] if (field, column) in wide else np.nan
    return table


def value_columns(comparison: pd.DataFrame) -> list[str]:
    return [c for c in comparison.columns if not c.endswith((" ci_low", " ci_high"))]


def comparison_markdown(comparison: pd.DataFrame, digits: int = 2) -> str:
    """The comparison as a Markdown table, each cell 'value [ci_low, ci_high]'."""
    cells = pd.DataFrame(index=comparison.index)
    for column in value_columns(comparison):
        value, low, high = (comparison[c] for c in (column, f"{column} ci_low", f"{column} ci_high"))
        cells[column] = [
            "" if pd.isna(v) else f"{v:.{digits}f}" + ("" if pd.isna(lo) else f" [{lo:.{digits}f}, {hi:.{digits}f}]")
            for v, lo, hi in zip(value, low, high, strict=True)
        ]
    return cells.to_markdown()


def metrics_bar_chart(tidy: pd.DataFrame) -> bytes:
    """PNG: one panel per headline metric, one bar per system, with its 95% interval."""
    wide = comparison_table(tidy)
    headline = [c for c in value_columns(wide) if c.endswith(("CIDEr-D", "colour+shape (%)")) or c.startswith("VQA")]
    figure, axes = plt.subplots(1, len(headline), figsize=(3 * len(headline), 3.2), dpi=100, squeeze=False)
    for axis, column in zip(axes[0], headline, strict=True):
        shown = wide[wide[column].notna()]
        values = shown[column].to_numpy()
        errors = np.nan_to_num(np.stack([values - shown[f"{column} ci_low"], shown[f"{column} ci_high"] - values]))
        axis.bar(range(len(values)), values, yerr=errors, capsize=3, color=[f"C{i}" for i in range(len(values))])
        axis.set_xticks(range(len(values)), shown.index, rotation=30, ha="right", fontsize=7)
        axis.set_title(column, fontsize=9)
    figure.tight_layout()
    return figure_png(figure)
