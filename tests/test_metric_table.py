"""pipeline/metrics/table.py: the tidy table keeps each value's interval, the comparison and chart
show them, and paired differences are drawn on the items two systems share."""

import numpy as np
import pandas as pd
import pytest

from pipeline.metrics.table import (
    DIFFERENCE_COLUMNS,
    comparison_markdown,
    comparison_table,
    metrics_bar_chart,
    paired_differences,
    tidy_metrics,
)


def _rows(metric: str, value: float, low: float, high: float, n: int = 100) -> pd.DataFrame:
    spread = {"runs": 3, "std": 0.1, "min": value - 0.1, "max": value + 0.1}
    row = {"metric": metric, "value": value, "ci_low": low, "ci_high": high, "n": n, "note": ""}
    return pd.DataFrame([row | spread])


@pytest.fixture()
def tidy():
    results = []
    for system, cider, vqa in (("lite0", 0.7, 40.0), ("blind", 0.0, 30.0)):
        labels = {"system": system, "backbone": "", "lm": "lm", "dataset": "easy_vqa", "split": "test"}
        results.append(
            ({**labels, "task": "captioning", "shots": 0}, _rows("CIDEr-D", cider, cider - 0.1, cider + 0.1), "k")
        )
        results.append(({**labels, "task": "vqa", "shots": 4}, _rows("VQA accuracy", vqa, vqa - 3, vqa + 3), "k"))
    return tidy_metrics(results)


def test_the_comparison_carries_each_interval_beside_its_value(tidy):
    wide = comparison_table(tidy)
    assert list(wide.columns) == [
        "test CIDEr-D",
        "test CIDEr-D ci_low",
        "test CIDEr-D ci_high",
        "VQA 4-shot",
        "VQA 4-shot ci_low",
        "VQA 4-shot ci_high",
    ]
    assert wide.loc["lite0", "VQA 4-shot ci_high"] == 43.0 and wide.loc["blind", "test CIDEr-D ci_low"] == -0.1
    markdown = comparison_markdown(wide)
    assert "40.00 [37.00, 43.00]" in markdown and "0.70 [0.60, 0.80]" in markdown
    assert metrics_bar_chart(tidy).startswith(b"\x89PNG")


def test_paired_differences_use_only_shared_items_and_cancel_what_they_share():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 10, 400)  # shared by both systems: it must cancel
    ids = np.arange(400)

    def vqa(system, accuracy):
        table = pd.DataFrame(
            {"question_id": ids, "image_id": ids // 4, "answer_type": np.where(ids % 2, "yes/no", "other")}
            | {"accuracy": accuracy, "run": "seed-0"}
        )
        labels = {"system": system, "task": "vqa", "dataset": "easy_vqa", "split": "test", "shots": 1}
        return labels, table

    better = vqa("lite0", 50 + difficulty + 2.0)
    baseline = vqa("blind", 50 + difficulty)
    shifted_captions = (
        {"system": "lite0", "task": "captioning", "dataset": "easy_vqa", "split": "test", "shots": 0},
        pd.DataFrame({"image_id": ["a", "b", "c"], "CIDEr-D": [1.0, 2.0, np.nan], "run": "seed-0"}),
    )
    blind_captions = (
        {"system": "blind", "task": "captioning", "dataset": "easy_vqa", "split": "test", "shots": 0},
        pd.DataFrame({"image_id": ["b", "c", "d"], "CIDEr-D": [0.5, 0.5, 9.0], "run": "once"}),
    )
    table = paired_differences([better, baseline, shifted_captions, blind_captions], [("lite0", "blind")], 500, 0)
    assert list(table.columns) == DIFFERENCE_COLUMNS
    overall = table[(table["metric"] == "VQA accuracy")].iloc[0]
    assert (overall["system"], overall["baseline"], overall["n"]) == ("lite0", "blind", 400)
    assert overall["difference"] == pytest.approx(2.0)
    assert overall["ci_high"] - overall["ci_low"] < 1e-9  # the shared difficulty cancels exactly
    assert set(table.loc[table["task"] == "vqa", "metric"]) == {
        "VQA accuracy",
        "VQA accuracy (other)",
        "VQA accuracy (yes/no)",
    }
    cider = table[table["metric"] == "CIDEr-D"].iloc[0]
    assert cider["n"] == 1 and cider["difference"] == pytest.approx(1.5)  # only image "b" is scored by both
    assert not (table["system"] == table["baseline"]).any()
