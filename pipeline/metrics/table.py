"""The tidy metric table, its valid ranges, and shaping it for reading: the paper-style comparison
and a bar chart."""

import numpy as np
import pandas as pd

from pipeline.metrics.intervals import Estimate, resamples_of, run_resamples
from pipeline.metrics.vqa import CLOSED_VOCABULARY
from pipeline.plots import figure_png, plt

# Columns in the order the paper's tables use: captioning first, then VQA by shots.
CAPTION_COLUMNS = ["CIDEr-D", "BLEU-4", "METEOR", "ROUGE-L", "CLIP-S", "RefCLIP-S", "names colour+shape (%)"]
# value: the mean over the system's runs (training seeds x few-shot trials), whose number, standard
# deviation, minimum and maximum follow n; the interval draws the images and the runs.
TIDY_COLUMNS = [
    "system", "backbone", "lm", "dataset", "split", "task", "metric", "shots",
    "value", "ci_low", "ci_high", "n", "runs", "std", "min", "max", "note", "key",
]  # fmt: skip
RUN_COLUMNS = ["system", "dataset", "split", "task", "metric", "shots", "run", "value"]
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
    (system, backbone, lm, dataset, split, task, shots), its ``ESTIMATE_COLUMNS`` rows and key."""
    numbers = ("value", "ci_low", "ci_high", "std", "min", "max")
    rows = [
        {**labels, **{c: r[c] for c in ("metric", "note")}, **{c: float(r[c]) for c in numbers}}
        | {"n": int(r["n"]), "runs": int(r["runs"]), "key": key}
        for labels, table, key in results
        for r in table.to_dict("records")
    ]
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def run_values(results: list[tuple[dict, pd.DataFrame]]) -> pd.DataFrame:
    """Every run's value of every metric (``RUN_COLUMNS``), from each result's labels and its
    ``(run, metric, value)`` table."""
    frames = [table.assign(**{k: labels[k] for k in RUN_COLUMNS if k in labels}) for labels, table in results]
    return pd.concat(frames, ignore_index=True)[RUN_COLUMNS] if frames else pd.DataFrame(columns=RUN_COLUMNS)


def per_item_metrics(table: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    """A per-item table of every run (``run``, an item id, metric columns) as one (items x runs)
    frame per metric, and each item's image, the unit resampled. VQA's items are questions (with
    their ``answer_type``; its ``VQA_METRICS`` also per answer type), captioning's images."""
    question = "question_id" in table
    item = "question_id" if question else "image_id"
    firsts = table.drop_duplicates(item)
    image_of = pd.Series(firsts["image_id"].astype(str).to_numpy(), index=firsts[item].to_numpy())
    if question:
        columns = {metric: column for column, metric in VQA_METRICS.items() if column in table}
        subsets = {metric: table for metric in columns}
        for metric, column in list(columns.items()):
            for answer_type in sorted(table["answer_type"].unique()):
                columns[f"{metric} ({answer_type})"] = column
                subsets[f"{metric} ({answer_type})"] = table[table["answer_type"] == answer_type]
    else:
        columns = {c: c for c in table.columns if c not in ("image_id", "run")}
        subsets = dict.fromkeys(columns, table)
    return {
        metric: subsets[metric].pivot(index=item, columns="run", values=column) for metric, column in columns.items()
    }, image_of


def paired_difference(
    system: pd.DataFrame, baseline: pd.DataFrame, image_of: pd.Series, resamples: int, seed: int
) -> Estimate:
    """The mean over runs of ``system``'s per-item scores (items x runs) minus ``baseline``'s, on the
    items both scored, with a bootstrap 95% interval that draws the same images (each with all its
    items) and the same runs for both (the same trial seeds: the same solved examples)."""
    paired = system.join(baseline, how="inner", lsuffix=" system", rsuffix=" baseline").dropna()
    a, b = paired.iloc[:, : system.shape[1]], paired.iloc[:, system.shape[1] :]
    images, clusters = np.unique(image_of.loc[paired.index].to_numpy(), return_inverse=True)
    rows = resamples_of(len(images), resamples, seed)

    def over_runs(scores: pd.DataFrame) -> Estimate:
        runs = [Estimate.mean(scores[c].to_numpy(), rows, clusters) for c in scores.columns]
        return Estimate.over_runs(runs, run_resamples(len(runs), resamples, seed))

    return over_runs(a).minus(over_runs(b))


def paired_differences(
    results: list[tuple[dict, pd.DataFrame]], pairs: list[tuple[str, str]], resamples: int, seed: int, metrics=None
) -> pd.DataFrame:
    """Each (system, baseline) pair's paired difference (``paired_difference``) in every group of
    results (task, dataset, split, shots) that holds both, for every metric both have (or those in
    ``metrics``).

    ``results`` holds (labels: system, task, dataset, split, shots; per-item table of every run:
    ``run``, an ``image_id`` or ``question_id`` column and one column per metric, or VQA's
    ``answer_type`` and ``VQA_METRICS``' columns). Metrics that are not means over items (BLEU,
    METEOR) have no per-item table.
    """
    groups: dict[tuple, dict[str, tuple]] = {}
    for labels, table in results:
        group = tuple(labels[k] for k in ("task", "dataset", "split", "shots"))
        groups.setdefault(group, {})[labels["system"]] = per_item_metrics(table)
    rows = []
    for (task, dataset, split, shots), systems in groups.items():
        for system, baseline in ((s, b) for s, b in pairs if s in systems and b in systems and s != b):
            (scores, image_of), (reference, _) = systems[system], systems[baseline]
            for metric in (m for m in scores if m in reference and (metrics is None or m in metrics)):
                estimate = paired_difference(scores[metric], reference[metric], image_of, resamples, seed)
                rows.append(
                    {"system": system, "baseline": baseline, "task": task, "dataset": dataset, "split": split}
                    | {"metric": metric, "shots": shots, "difference": estimate.value}
                    | {"ci_low": estimate.low, "ci_high": estimate.high, "n": estimate.n}
                )
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def comparison_columns(rows: pd.DataFrame, several_datasets: bool) -> pd.Series:
    """Each metric row's column in the comparison ('test CIDEr-D', 'VQA 0-shot', 'VQA closed
    0-shot'); None for a metric the comparison does not show. Splits are named by their dataset too
    when several datasets are captioned (NoCaps "val" is not COCO's)."""
    split = (rows["dataset"] + " " + rows["split"]) if several_datasets else rows["split"]
    captioning = (rows["task"] == "captioning") & rows["metric"].isin(CAPTION_COLUMNS)
    vqa = (rows["task"] == "vqa") & rows["metric"].isin(VQA_COLUMNS)
    labels = pd.Series(None, index=rows.index, dtype=object)
    labels[captioning] = split[captioning] + " " + rows.loc[captioning, "metric"]
    labels[vqa] = rows.loc[vqa, "metric"].map(VQA_COLUMNS) + " " + rows.loc[vqa, "shots"].astype(str) + "-shot"
    return labels


def several_datasets(tidy: pd.DataFrame) -> bool:
    return tidy.loc[tidy["task"] == "captioning", "dataset"].nunique() > 1


def comparison_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per system; columns like 'test CIDEr-D', 'VQA 0-shot' and 'VQA closed 0-shot'
    (closed vocabulary), each followed by its interval ('test CIDEr-D ci_low', 'test CIDEr-D
    ci_high')."""
    shown = tidy.assign(column=comparison_columns(tidy, several_datasets(tidy))).dropna(subset=["column"])
    captions, vqa = shown[shown["task"] == "captioning"], shown[shown["task"] == "vqa"]
    splits = {c.removesuffix(" " + m) for c, m in zip(captions["column"], captions["metric"], strict=True)}
    columns = [f"{split} {m}" for split in sorted(splits, reverse=True) for m in CAPTION_COLUMNS]
    columns += [f"{label} {n}-shot" for label in VQA_COLUMNS.values() for n in sorted(vqa["shots"].unique())]
    columns = [c for c in columns if c in set(shown["column"])]
    wide = shown.pivot_table(index="system", columns="column", values=["value", "ci_low", "ci_high"])
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


def metrics_bar_chart(tidy: pd.DataFrame, runs: pd.DataFrame | None = None) -> bytes:
    """PNG: one panel per headline metric, one bar per system (the mean over its runs) with its 95%
    interval, and each run's value (``run_values``: a training seed, a few-shot trial) as a point
    beside it."""
    wide = comparison_table(tidy)
    headline = [c for c in value_columns(wide) if c.endswith(("CIDEr-D", "colour+shape (%)")) or c.startswith("VQA")]
    points = {} if runs is None else _run_points(runs, tidy)
    figure, axes = plt.subplots(1, len(headline), figsize=(3 * len(headline), 3.2), dpi=100, squeeze=False)
    for axis, column in zip(axes[0], headline, strict=True):
        shown = wide[wide[column].notna()]
        values = shown[column].to_numpy()
        errors = np.nan_to_num(np.stack([values - shown[f"{column} ci_low"], shown[f"{column} ci_high"] - values]))
        axis.bar(range(len(values)), values, yerr=errors, capsize=3, color=[f"C{i}" for i in range(len(values))])
        for x, system in enumerate(shown.index):
            seeds = points.get((system, column), [])
            offsets = np.linspace(-0.25, 0.25, len(seeds)) if len(seeds) > 1 else np.zeros(len(seeds))
            axis.scatter(x + offsets, seeds, s=9, color="black", zorder=3)
        axis.set_xticks(range(len(values)), shown.index, rotation=30, ha="right", fontsize=7)
        axis.set_title(column, fontsize=9)
    figure.tight_layout()
    return figure_png(figure)


def _run_points(runs: pd.DataFrame, tidy: pd.DataFrame) -> dict[tuple[str, str], list[float]]:
    """Each (system, comparison column)'s run values."""
    labelled = runs.assign(column=comparison_columns(runs, several_datasets(tidy))).dropna(subset=["column"])
    return {key: group["value"].tolist() for key, group in labelled.groupby(["system", "column"])}
