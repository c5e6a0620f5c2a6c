"""pipeline/metrics/rankings.py: systems the data cannot order share a rank."""

import numpy as np
import pandas as pd
import pytest

from pipeline.metrics.rankings import rank_groups, ranking_markdown, rankings
from pipeline.metrics.table import paired_differences, tidy_metrics


def test_rank_groups_hold_every_tie_whole():
    systems = ["a", "b", "c", "d", "e"]

    def tie(a, b):
        return frozenset((a, b))

    assert rank_groups(systems, set()) == [1, 2, 3, 4, 5]
    assert rank_groups(systems, {tie("a", "b")}) == [1, 1, 2, 3, 4]
    # Not transitive: a above c is clear, but b is tied with both, so a, b and c share rank 1.
    assert rank_groups(systems, {tie("a", "b"), tie("b", "c")}) == [1, 1, 1, 2, 3]
    # A tie reaching past a system pulls it into the group.
    assert rank_groups(systems, {tie("b", "d")}) == [1, 2, 2, 2, 3]


def _per_question(system_scores: dict[str, np.ndarray], runs: int = 1) -> list:
    labels = {"task": "vqa", "dataset": "easy_vqa", "split": "test", "shots": 0}
    results = []
    for system, scores in system_scores.items():
        table = pd.concat(
            pd.DataFrame(
                {"question_id": np.arange(len(scores)), "image_id": np.arange(len(scores)) // 2}
                | {"answer_type": "yes/no", "accuracy": scores, "run": f"seed-{k}"}
            )
            for k in range(runs)
        )
        results.append(({**labels, "system": system}, table))
    return results


def _tidy(system_scores: dict[str, np.ndarray]) -> pd.DataFrame:
    labels = {"backbone": "", "lm": "lm", "dataset": "easy_vqa", "split": "test", "task": "vqa", "shots": 0}
    rows = []
    for system, scores in system_scores.items():
        row = {"metric": "VQA accuracy", "value": float(scores.mean()), "ci_low": 0.0, "ci_high": 100.0}
        row |= {"n": len(scores), "runs": 1, "std": np.nan, "min": np.nan, "max": np.nan, "note": ""}
        rows.append(({**labels, "system": system}, pd.DataFrame([row]), "k"))
    return tidy_metrics(rows)


def test_systems_whose_paired_interval_contains_zero_share_a_rank():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(60, 20, 600)
    scores = {
        "strong": difficulty + 10,
        "close": difficulty + 10 + rng.normal(0, 5, 600) * 0.1,  # within noise of "strong"
        "weak": difficulty,
        "blind": difficulty - 30,
    }
    systems = sorted(scores)
    pairs = [(a, b) for i, a in enumerate(systems) for b in systems[i + 1 :]]
    differences = paired_differences(_per_question(scores), pairs, 500, 0, {"VQA accuracy"})
    table = rankings(_tidy(scores), differences)
    ranks = dict(zip(table["system"], table["rank"], strict=True))
    assert ranks["strong"] == ranks["close"] == 1 and ranks["weak"] == 2 and ranks["blind"] == 3
    assert set(table.loc[table["system"] == "strong", "tied_with"].iloc[0]) == {"close"}
    assert not table.loc[table["system"] == "weak", "tied"].iloc[0]
    # Every tied pair shares a rank, whatever the order of the means.
    for _, row in table.iterrows():
        for partner in row["tied_with"]:
            assert ranks[partner] == row["rank"]
    markdown = ranking_markdown(table)
    assert " = " in markdown and markdown.index("weak") > markdown.index("strong")


def test_without_an_interval_no_order_is_claimed():
    scores = {"a": np.full(10, 60.0), "b": np.full(10, 50.0)}
    differences = paired_differences(_per_question(scores), [("a", "b")], 0, 0)
    table = rankings(_tidy(scores), differences)
    assert table["rank"].tolist() == [1, 1] and table["tied"].all()


@pytest.mark.parametrize("runs", [1, 3])
def test_differences_between_identical_systems_are_ties(runs):
    scores = {"a": np.linspace(0, 100, 50), "b": np.linspace(0, 100, 50)}
    differences = paired_differences(_per_question(scores, runs), [("a", "b")], 200, 0)
    row = differences[differences["metric"] == "VQA accuracy"].iloc[0]
    assert row["difference"] == 0 and row["ci_low"] == row["ci_high"] == 0
    assert rankings(_tidy(scores), differences)["rank"].tolist() == [1, 1]
