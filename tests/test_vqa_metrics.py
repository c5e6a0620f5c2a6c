"""The VQA scorer against the official evaluator's rules, on hand-computed edge cases."""

import json

import numpy as np
import pytest

from assets.cli import main
from pipeline.metrics.vqa import process_digit_article, process_punctuation, question_accuracy, vqa_accuracy


@pytest.mark.parametrize("agreeing, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_agreement_levels(agreeing, expected):
    gt = ["cat"] * agreeing + ["dog"] * (10 - agreeing)
    assert question_accuracy("cat", gt) == pytest.approx(expected)


def test_normalisation_only_when_answers_differ():
    # All ten identical: no normalisation, so "2" does not match "two".
    assert question_accuracy("2", ["two"] * 10) == 0.0
    # Not all identical: both sides are normalised, "two" -> "2".
    assert question_accuracy("2", ["two"] * 9 + ["three"]) == pytest.approx(1.0)
    assert question_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def test_articles_punctuation_and_contractions():
    mixed = ["dog"] * 5 + ["cat"] * 5
    assert question_accuracy("the dog", mixed) == 1.0
    assert question_accuracy("a dog!", mixed) == 1.0
    assert question_accuracy("dog.", mixed) == 1.0
    assert question_accuracy("Dog", mixed) == 1.0
    assert question_accuracy("dont", ["don't"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    # With identical answers nothing is normalised: case and articles must match exactly.
    assert question_accuracy("the dog", ["dog"] * 10) == 0.0


def test_newlines_and_tabs_always_become_spaces_and_are_stripped():
    assert question_accuracy(" red\n", ["red"] * 10) == 1.0
    assert question_accuracy("red\tcar", ["red car"] * 10) == 1.0


def test_punctuation_quirks_of_the_official_code():
    assert process_punctuation("hello, world") == "hello world"  # ", " -> removed
    assert process_punctuation("a-b") == "a b"  # no adjacent space: replaced by a space
    assert process_punctuation("1,000") == "1000"  # a digit comma digit removes every punctuation mark
    assert process_punctuation("3.5") == "3.5"  # a period between digits stays
    assert process_punctuation("end.") == "end"
    assert process_digit_article("The Three dogs") == "3 dogs"


def test_report_per_answer_type_rounded_like_the_official_evaluator():
    report = vqa_accuracy(
        {1: "yes", 2: "no", 3: "red"},
        {1: ["yes"] * 10, 2: ["yes"] * 8 + ["no"] * 2, 3: ["red"] * 3 + ["blue"] * 7},
        {1: "yes/no", 2: "yes/no", 3: "other"},
    )
    assert report["perQuestion"] == {1: 100.0, 2: 60.0, 3: 90.0}
    assert report["overall"] == pytest.approx(83.33)
    assert report["perAnswerType"] == {"yes/no": 80.0, "other": 90.0}


def test_missing_predictions_are_an_error():
    with pytest.raises(ValueError, match="no predicted answer"):
        vqa_accuracy({}, {1: ["yes"] * 10}, {1: "yes/no"})


def _official_files(tmp_path, results):
    annotations = {
        "annotations": [
            {
                "question_id": 10,
                "image_id": 1,
                "answer_type": "yes/no",
                "question_type": "is the",
                "multiple_choice_answer": "yes",
                "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
            },
            {
                "question_id": 11,
                "image_id": 1,
                "answer_type": "number",
                "question_type": "how many",
                "multiple_choice_answer": "2",
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i}
                    for i, a in enumerate(["2"] * 2 + ["3"] * 8, start=1)
                ],
            },
        ]
    }
    questions = {
        "questions": [
            {"question_id": 10, "image_id": 1, "question": "Is it?"},
            {"question_id": 11, "image_id": 1, "question": "How many?"},
        ]
    }
    paths = {}
    for name, content in (("annotations", annotations), ("questions", questions), ("results", results)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(content))
    return paths


def test_score_vqa_command_json(tmp_path, capsys):
    paths = _official_files(tmp_path, [{"question_id": 10, "answer": "yes"}, {"question_id": 11, "answer": "two"}])
    assert (
        main(
            [
                "score-vqa",
                "--annotations",
                str(paths["annotations"]),
                "--questions",
                str(paths["questions"]),
                "--results",
                str(paths["results"]),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "overall": 80.0,
        "perAnswerType": {"yes/no": 100.0, "number": 60.0},
        "perQuestion": {"10": 100.0, "11": 60.0},
    }


def test_score_vqa_command_rejects_incomplete_results(tmp_path, capsys):
    paths = _official_files(tmp_path, [{"question_id": 10, "answer": "yes"}])
    assert (
        main(
            [
                "score-vqa",
                "--annotations",
                str(paths["annotations"]),
                "--questions",
                str(paths["questions"]),
                "--results",
                str(paths["results"]),
            ]
        )
        == 2
    )
    assert "1 questions unanswered" in capsys.readouterr().err


def test_an_answers_table_is_scored_by_question_id_with_single_answers_normalised():
    """easy-vqa's one answer per question counts as ten identical ones, prediction and answer
    normalised; ten VQAv2 answers keep the official rules; the table's order does not matter."""
    import pandas as pd

    from pipeline.metrics.vqa import answers_accuracy

    answers = pd.DataFrame(
        {
            "question_id": [1, 2, 3, 4, 5],
            "image_id": ["a", "a", "b", "c", "c"],
            "prediction": ["No", "red,", "2", "a circle", "blue"],
            "answers": [["no"], ["red"], ["two", "2", "2", "2", "2", "2", "2", "2", "2", "2"], ["circle"], ["red"]],
            "answer_type": ["yes/no", "other", "number", "other", "other"],
        }
    )
    table, per_question = answers_accuracy(answers)
    rows = dict(zip(table["metric"], table["value"], strict=True))
    assert per_question["accuracy"].tolist() == pytest.approx([100, 100, 100, 100, 0])
    # Single answers: "No", "red," and "a circle" normalise to the answer; "blue" stays wrong.
    # Ten answers: "2" matches nine "2"s after the official normalisation ("two" -> "2").
    assert rows["VQA accuracy (yes/no)"] == 100.0 and rows["VQA accuracy (other)"] == pytest.approx(200 / 3)
    assert rows["VQA accuracy (number)"] == 100.0 and rows["VQA accuracy"] == pytest.approx(80.0)
    for reordered, original in zip(answers_accuracy(answers.iloc[[2, 4, 0, 3, 1]]), (table, per_question), strict=True):
        pd.testing.assert_frame_equal(reordered, original)


def test_vqa_intervals_are_seeded_cover_the_value_and_narrow_with_more_questions():
    import pandas as pd

    from pipeline.metrics.vqa import answers_accuracy

    def table(n):
        rng = np.random.default_rng(0)
        right = rng.random(n) < 0.4
        return pd.DataFrame(
            {
                "question_id": np.arange(n),
                "image_id": np.arange(n),  # one question per image: the binomial interval applies
                "prediction": np.where(right, "yes", "no"),
                "answers": [["yes"]] * n,
                "answer_type": "yes/no",
            }
        )

    small, _ = answers_accuracy(table(150), resamples=1000, seed=0)
    large, _ = answers_accuracy(table(1500), resamples=1000, seed=0)
    pd.testing.assert_frame_equal(small, answers_accuracy(table(150), resamples=1000, seed=0)[0])
    for rows, n in ((small, 150), (large, 1500)):
        overall = rows.iloc[0]
        assert overall["ci_low"] < overall["value"] < overall["ci_high"]
        # The binomial 95% half-width, 1.96 * sqrt(p (1 - p) / n), within the bootstrap's own noise.
        p = overall["value"] / 100
        assert (overall["ci_high"] - overall["ci_low"]) / 2 == pytest.approx(196 * np.sqrt(p * (1 - p) / n), rel=0.15)


def test_closed_vocabulary_answers_are_a_second_metric_scored_by_the_same_rules():
    import pandas as pd

    from pipeline.metrics.table import paired_differences
    from pipeline.metrics.vqa import CLOSED_VOCABULARY, answers_accuracy

    answers = pd.DataFrame(
        {
            "question_id": [1, 2, 3, 4],
            "image_id": [1, 2, 3, 4],
            "prediction": ["No", "", "circle and", "blue"],
            "closed_prediction": ["no", "red", "circle", "green"],
            "answers": [["no"], ["red"], ["circle"], ["red"]],
            "answer_type": ["yes/no", "other", "other", "other"],
        }
    )
    table, per_question = answers_accuracy(answers)
    rows = dict(zip(table["metric"], table["value"], strict=True))
    assert rows["VQA accuracy"] == pytest.approx(25.0) and rows[CLOSED_VOCABULARY] == pytest.approx(75.0)
    assert rows[f"{CLOSED_VOCABULARY} (other)"] == pytest.approx(200 / 3)
    assert per_question["closed_accuracy"].tolist() == [100, 100, 100, 0]
    # Paired against a system that answers every question right in the closed vocabulary only.
    perfect = per_question.assign(closed_accuracy=100.0, run="seed-0")
    labels = {"task": "vqa", "dataset": "d", "split": "s", "shots": 0}
    differences = paired_differences(
        [({**labels, "system": "a"}, per_question.assign(run="seed-0")), ({**labels, "system": "b"}, perfect)],
        [("a", "b")],
        0,
        0,
    ).set_index("metric")
    assert differences.loc[CLOSED_VOCABULARY, "difference"] == pytest.approx(-25.0)
    assert differences.loc["VQA accuracy", "difference"] == 0.0
