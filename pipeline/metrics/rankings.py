"""The systems in order, per task, metric and shot count, with ties where the data cannot order them.

Two systems are tied when the 95% interval of their paired difference (the same images and runs
drawn for both: ``pipeline.metrics.table.paired_difference``) contains 0. Ties are not always
transitive (A above C, but B tied with both), so ranks are given to groups: the systems, in order
of their means, are cut into the fewest consecutive groups such that every tied pair falls in one
group. Every system of a group shares its rank; a rank is never read into a difference inside the
noise, at the price of sometimes tying two systems whose own difference is clear (``tied_with``
names each system's direct ties).
"""

import numpy as np
import pandas as pd

from pipeline.metrics.table import comparison_columns, several_datasets

RANKING_COLUMNS = [
    "task", "dataset", "split", "metric", "shots", "rank", "system", "value", "ci_low", "ci_high",
    "runs", "tied", "tied_with",
]  # fmt: skip
GROUP = ["task", "dataset", "split", "metric", "shots"]
# Part of the rankings' key: tables ranked under another rule are not reused.
TIES = "tied when the paired 95% interval contains 0; fewest consecutive groups holding every tie"


def tied(difference: pd.Series | None) -> bool:
    """Whether a paired difference's interval contains 0; with no interval, nothing can be ordered."""
    if difference is None or not np.isfinite([difference["ci_low"], difference["ci_high"]]).all():
        return True
    return bool(difference["ci_low"] <= 0 <= difference["ci_high"])


def rank_groups(systems: list[str], ties: set[frozenset[str]]) -> list[int]:
    """Dense ranks (1, 2, ...) of ``systems`` (best first): the fewest consecutive groups that hold
    every tied pair whole."""
    ranks, rank, group_end = [], 0, -1
    reach = [
        max([j for j in range(i, len(systems)) if frozenset((systems[i], systems[j])) in ties] + [i])
        for i in range(len(systems))
    ]
    for i in range(len(systems)):
        if i > group_end:
            rank += 1
        group_end = max(group_end, reach[i])
        ranks.append(rank)
    return ranks


def rankings(tidy: pd.DataFrame, differences: pd.DataFrame) -> pd.DataFrame:
    """``RANKING_COLUMNS``: per (task, dataset, split, metric, shots) of the comparison's metrics,
    the systems by mean (every metric here is better higher), their rank, and whether and with whom
    they are tied. ``differences`` holds the paired differences of the pairs of systems
    (``pipeline.metrics.table.paired_differences``, columns ``DIFFERENCE_COLUMNS``)."""
    shown = tidy[comparison_columns(tidy, several_datasets(tidy)).notna()]
    by_pair = {(*(row[k] for k in GROUP), row["system"], row["baseline"]): row for _, row in differences.iterrows()}
    rows = []
    for group, rows_of_group in shown.groupby(GROUP, sort=True):
        ordered = rows_of_group.sort_values(["value", "system"], ascending=[False, True]).reset_index(drop=True)
        systems = ordered["system"].tolist()
        ties = {
            frozenset((a, b))
            for i, a in enumerate(systems)
            for b in systems[i + 1 :]
            if tied(by_pair.get((*group, a, b), by_pair.get((*group, b, a))))
        }
        for (_, row), rank in zip(ordered.iterrows(), rank_groups(systems, ties), strict=True):
            partners = sorted(s for s in systems if frozenset((row["system"], s)) in ties)
            rows.append(
                dict(zip(GROUP, group, strict=True))
                | {"rank": rank, "system": row["system"], "value": row["value"], "ci_low": row["ci_low"]}
                | {"ci_high": row["ci_high"], "runs": row["runs"], "tied": bool(partners), "tied_with": partners}
            )
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def ranking_markdown(table: pd.DataFrame, digits: int = 1) -> str:
    """One line per (task, split, metric, shots): the systems by rank, '=' between tied ones."""
    lines = []
    for group, ranked in table.groupby(GROUP, sort=False):
        task, _, split, metric, shots = group
        where = f"{split} {metric}" if task == "captioning" else f"{metric}, {shots}-shot"
        by_rank = ranked.groupby("rank")
        order = " > ".join(
            " = ".join(f"{s} ({v:.{digits}f})" for s, v in zip(r["system"], r["value"], strict=True))
            for _, r in by_rank
        )
        lines.append(f"- {where}: {order}")
    return "\n".join(lines)
