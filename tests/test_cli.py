"""Results files, annotation files and run config come from outside: malformed input gives exit
status 2 and one line naming the file, the record and the problem; never a traceback, a hang or a
silent result."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assets.cli import main
from pipeline.datasets.manifest import DatasetError
from pipeline.metrics.captions import score_caption_files
from pipeline.metrics.vqa import score_vqa_files

ANNOTATIONS = {
    "annotations": [
        {"question_id": 1, "image_id": 5, "answer_type": "yes/no", "answers": [{"answer": "yes"}] * 10},
        {"question_id": 2, "image_id": 5, "answer_type": "number", "answers": [{"answer": "2"}] * 10},
    ]
}
QUESTIONS = {
    "questions": [
        {"question_id": 1, "image_id": 5, "question": "?"},
        {"question_id": 2, "image_id": 5, "question": "?"},
    ]
}
CAPTIONS = {"annotations": [{"image_id": 5, "id": 1, "caption": "a dog"}, {"image_id": 6, "id": 2, "caption": "a cat"}]}


def _write(directory, name, document) -> str:
    path = directory / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "results, fragment",
    [
        ({"question_id": 1}, "expected a JSON list"),
        ([1, 2], "record[0]: malformed record: int, expected an object"),
        (
            [{"question_id": 1, "answer": None}, {"question_id": 2, "answer": "2"}],
            "record[0]: malformed record: 'answer' is NoneType",
        ),
        ([{"question_id": "1", "answer": "yes"}], "'question_id' is str, expected int"),
        ([{"question_id": 1, "answer": "yes"}, {"question_id": 1, "answer": "no"}], "question 1 is answered twice"),
        ([], "2 questions unanswered"),
        ("[{", "is not valid JSON"),
        ("[" * 100_000, "nests deeper than"),
    ],
)
def test_score_vqa_rejects_malformed_results_in_one_line(tmp_path, capsys, results, fragment):
    argv = [
        "score-vqa",
        "--annotations",
        _write(tmp_path, "a.json", ANNOTATIONS),
        "--questions",
        _write(tmp_path, "q.json", QUESTIONS),
        "--results",
        _write(tmp_path, "r.json", results),
    ]
    err = _one_line_error(capsys, argv)
    assert fragment in err and "r.json" in err


@pytest.mark.parametrize(
    "annotations, fragment",
    [
        ({"annotation": []}, "expected a JSON object with a list 'annotations'"),
        ({"annotations": [{"question_id": 1, "answers": []}]}, "missing key 'answer_type'"),
        ({"annotations": []}, "no annotated questions"),
    ],
)
def test_score_vqa_rejects_malformed_annotations(tmp_path, capsys, annotations, fragment):
    argv = [
        "score-vqa",
        "--annotations",
        _write(tmp_path, "a.json", annotations),
        "--questions",
        _write(tmp_path, "q.json", QUESTIONS),
        "--results",
        _write(tmp_path, "r.json", [{"question_id": 1, "answer": "yes"}]),
    ]
    assert fragment in _one_line_error(capsys, argv)


@pytest.mark.parametrize(
    "results, fragment",
    [
        ({"image_id": 5}, "expected a JSON list"),
        ([{"image_id": 5, "caption": 3}], "'caption' is int, expected str"),
        ([{"image_id": 5, "caption": "a"}, {"image_id": 5, "caption": "b"}], "image 5 is captioned twice"),
        ([{"image_id": 99, "caption": "a"}], "image 99 has no reference"),
        ([], "no captions to score"),
    ],
)
def test_score_captions_rejects_malformed_results_before_any_java(tmp_path, capsys, results, fragment):
    argv = [
        "score-captions",
        "--annotations",
        _write(tmp_path, "a.json", CAPTIONS),
        "--results",
        _write(tmp_path, "r.json", results),
    ]
    assert fragment in _one_line_error(capsys, argv)


def test_a_caption_with_line_breaks_is_scored_against_its_own_image(tmp_path):
    """\\r, U+2028 and friends once split a caption into two lines of the tokenizer's input, and
    every later caption was scored against the previous image's references."""
    annotations = _write(tmp_path, "a.json", CAPTIONS)
    clean = score_caption_files(
        annotations,
        _write(tmp_path, "r.json", [{"image_id": 5, "caption": "a brown dog"}, {"image_id": 6, "caption": "a cat"}]),
    )
    broken = score_caption_files(
        annotations,
        _write(
            tmp_path,
            "r2.json",
            [{"image_id": 5, "caption": "a brown\r\u2028dog\x0b"}, {"image_id": 6, "caption": "a\u2029cat"}],
        ),
    )
    assert broken == pytest.approx(clean)


def test_a_folder_given_as_a_file_is_one_line_too(tmp_path, capsys):
    (tmp_path / "folder.yaml").mkdir()
    assert "folder.yaml" in _one_line_error(capsys, ["demo", "--config", str(tmp_path / "folder.yaml")])
    argv = ["score-captions", "--annotations", str(tmp_path), "--results", str(tmp_path)]
    assert "not found" in _one_line_error(capsys, argv)


@pytest.mark.parametrize(
    "config, fragment",
    [
        ("", "needs an 'ops' mapping"),
        ("linear_map: {config: {lr: 0.1}}", "needs an 'ops' mapping"),
        ("ops: {nothing: {config: {}}}", "ops.nothing: no such asset"),
        ("ops: {linear_map: {config: {lr: fast}}}", "ops.linear_map: Invalid scalar"),
        ("ops: [: :", "is not valid YAML"),
    ],
)
def test_demo_config_is_checked_before_anything_runs(tmp_path, capsys, monkeypatch, config, fragment):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    err = _one_line_error(capsys, ["demo", "--config", _write(tmp_path, "c.yaml", config)])
    assert fragment in err and "c.yaml" in err
    assert not (tmp_path / "storage").exists() and not list(tmp_path.glob("history"))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
VQA_RECORD = st.fixed_dictionaries(
    {
        "question_id": st.sampled_from([1, 2, "1", None]),
        "answer": st.one_of(st.text(max_size=5), st.none(), st.integers()),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(results=st.one_of(JSON, st.lists(st.one_of(VQA_RECORD, JSON), max_size=4)))
def test_any_vqa_results_file_scores_or_names_its_problem(tmp_path, results):
    """Property: whatever the results file holds, the scorer returns the official report or raises
    DatasetError; and a report means every question got exactly one string answer."""
    paths = [
        _write(tmp_path, "a.json", ANNOTATIONS),
        _write(tmp_path, "q.json", QUESTIONS),
        _write(tmp_path, "r.json", results),
    ]
    try:
        report = score_vqa_files(*paths)
    except DatasetError as error:
        assert "r.json" in str(error)
        return
    assert isinstance(results, list) and sorted(r["question_id"] for r in results) == [1, 2]
    assert all(isinstance(r["answer"], str) for r in results) and 0 <= report["overall"] <= 100


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    results=st.lists(
        st.one_of(
            JSON,
            st.fixed_dictionaries(
                {"image_id": st.sampled_from([5, 6, 99, "5", None]), "caption": st.one_of(st.none(), st.integers())}
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_malformed_caption_results_never_reach_the_scorers(tmp_path, results):
    """Property: a results list with any non-string caption (or none that is well-formed) is an error
    naming the file, before the Java tools start."""
    with pytest.raises(DatasetError, match="r.json"):
        score_caption_files(_write(tmp_path, "a.json", CAPTIONS), _write(tmp_path, "r.json", results))
