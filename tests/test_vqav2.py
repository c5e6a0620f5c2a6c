"""pipeline/datasets/vqav2.py: questions joined to annotations, duplicates counted, and generated
malformed input skipped with a reason."""

import json

from hypothesis import given
from hypothesis import strategies as st

from pipeline.datasets import read_manifest
from tests.dataset_fixtures import (
    GOOD_ID,
    PROPERTY,
    far_from_good,
    good_row,
    read_or_none,
    records,
    write_json,
    write_vqav2,
)


def test_vqav2_duplicate_annotations_are_counted(tmp_path):
    write_vqav2(tmp_path)
    path = tmp_path / "vqav2" / "v2_mscoco_train2014_annotations.json"
    document = json.loads(path.read_text())
    (first,) = document["annotations"]
    document["annotations"].append({**first, "answers": [{**a, "answer": "no"} for a in first["answers"]]})
    path.write_text(json.dumps(document))
    result = read_manifest("vqav2", "train", root=tmp_path)
    assert [q["answers"][0] for q in result.manifest["questions"][0]] == ["yes"]  # the first is kept
    assert any("duplicate annotation of question 1000 (conflicting answers" in s["reason"] for s in result.skipped)


@PROPERTY
@given(
    questions=st.lists(records(["image_id", "question", "question_id"]), max_size=4),
    annotations=st.lists(records(["question_id", "image_id", "answer_type", "answers"]), max_size=4),
)
def test_vqav2_reader(tmp_path_factory, questions, annotations):
    root = tmp_path_factory.mktemp("vqav2")
    answers = [{"answer": "yes", "answer_id": i} for i in range(10)]
    write_json(
        root / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json",
        {
            "questions": [
                {"image_id": GOOD_ID, "question": "Is it good?", "question_id": GOOD_ID},
                *filter(far_from_good, questions),
            ]
        },
    )
    write_json(
        root / "vqav2" / "v2_mscoco_val2014_annotations.json",
        {
            "annotations": [
                {"question_id": GOOD_ID, "image_id": GOOD_ID, "answer_type": "yes/no", "answers": answers},
                *filter(far_from_good, annotations),
            ]
        },
    )
    result = read_or_none("vqav2", "val", root)
    assert result is not None
    (question,) = good_row(result, str(GOOD_ID))["questions"]
    assert question["question"] == "Is it good?" and list(question["answers"]) == ["yes"] * 10
