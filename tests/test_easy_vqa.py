import pandas as pd
import pytest

from pipeline.datasets import DatasetError, read_manifest, split_off_validation
from pipeline.datasets.easy_vqa import (
    _read_package_split,
    attributes_from_pixels,
    derive_attributes,
    subset_metrics,
)


@pytest.fixture(scope="module")
def package_splits():
    return {split: _read_package_split(split) for split in ("train", "test")}


def test_every_image_gets_a_caption(package_splits, capsys):
    counts = {}
    for split, manifest in package_splits.items():
        from_questions = [
            derive_attributes([(q["question"], q["answers"][0]) for q in questions])
            for questions in manifest["questions"]
        ]
        counts[split] = {
            "images": len(manifest),
            "colour undetermined by questions": sum(a["colour"] is None for a in from_questions),
            "shape undetermined by questions": sum(a["shape"] is None for a in from_questions),
            "without caption after pixels": int((manifest["captions"].str.len() == 0).sum()),
        }
    with capsys.disabled():
        print(f"\neasy-vqa caption derivation: {counts}")
    assert {split: c["images"] for split, c in counts.items()} == {"train": 4000, "test": 1000}
    assert all(c["without caption after pixels"] == 0 for c in counts.values())


def test_each_question_records_its_one_answer_as_the_consensus(package_splits):
    """Solved examples show a question's ``answer``; easy-vqa has one answer per question."""
    for manifest in package_splits.values():
        for questions in manifest["questions"]:
            assert all(q["answer"] == q["answers"][0] and len(q["answers"]) == 1 for q in questions)


def test_captions_of_known_images(package_splits):
    train = package_splits["train"].set_index("image_id")
    # Read off the package's own questions: image 0 "what is the blue shape? -> rectangle",
    # image 2 "what color is the triangle? -> red", image 3 "what color is the rectangle? -> brown".
    assert train.loc["0", "captions"] == ["a blue rectangle"]
    assert train.loc["2", "captions"] == ["a red triangle"]
    assert train.loc["3", "captions"] == ["a brown rectangle"]


def test_pixel_rule_agrees_with_questions_wherever_both_apply(package_splits):
    checked = disagreements = 0
    for manifest in package_splits.values():
        for path, questions in zip(manifest["image_path"], manifest["questions"], strict=True):
            known = derive_attributes([(q["question"], q["answers"][0]) for q in questions])
            pixels = attributes_from_pixels(path)
            for name, value in known.items():
                if value is not None:
                    checked += 1
                    disagreements += value != pixels[name]
    assert checked > 9000
    assert disagreements == 0


def test_negated_yes_no_questions_rule_values_out():
    attributes = derive_attributes(
        [
            ("what shape is present?", "circle"),
            *[
                (f"is there not a {c} shape?", "yes")
                for c in ("red", "green", "blue", "black", "gray", "teal", "brown")
            ],
        ]
    )
    assert attributes == {"colour": "yellow", "shape": "circle"}


def test_contradictory_answers_raise():
    with pytest.raises(DatasetError, match="contradictory colour"):
        derive_attributes([("what color is the shape?", "red"), ("is there a red shape?", "no")])


def test_validation_split_is_fixed_and_disjoint():
    train = read_manifest("easy_vqa", "train", val_size=500, seed=0).manifest
    val = read_manifest("easy_vqa", "val", val_size=500, seed=0).manifest
    again = read_manifest("easy_vqa", "val", val_size=500, seed=0).manifest
    assert (len(train), len(val)) == (3500, 500)
    assert set(train["image_id"]).isdisjoint(val["image_id"])
    assert val["image_id"].tolist() == again["image_id"].tolist()


def test_split_off_validation_rejects_bad_size():
    with pytest.raises(ValueError, match="validation size"):
        split_off_validation(pd.DataFrame({"image_id": ["a", "b"]}), size=2, seed=0)


def test_caption_credit_needs_the_right_colour_and_shape_and_no_other():
    references = {str(i): ["a red circle"] for i in range(8)}
    captions = [
        "a red circle",  # both
        "A RED circle on white.",  # both: case and punctuation do not matter
        "red green blue yellow circle rectangle triangle",  # every word listed: nothing
        "a red circle and a blue one",  # a second colour: shape only
        "a red circle or triangle",  # a second shape: colour only
        "a red square",  # colour only
        "a teal circle",  # shape only
        "",  # nothing
    ]
    scores, per_image = subset_metrics(pd.DataFrame(), references, {str(i): c for i, c in enumerate(captions)})
    # Every image is a red circle, so the red and the circle subsets are the whole set.
    assert per_image.loc["2"].tolist() == [0.0] * 5 and per_image.loc["0"].tolist() == [100.0] * 5
    assert {k: v.value for k, v in scores.items()} == {
        "names colour (%)": pytest.approx(100 * 4 / 8),
        "names shape (%)": pytest.approx(100 * 4 / 8),
        "names colour+shape (%)": pytest.approx(100 * 2 / 8),
        "names colour+shape (%) (colour red)": pytest.approx(100 * 2 / 8),
        "names colour+shape (%) (shape circle)": pytest.approx(100 * 2 / 8),
    }


def test_colour_and_shape_subsets_score_only_their_images():
    references = {"0": ["a red circle"], "1": ["a red triangle"], "2": ["a blue circle"], "3": ["a blue circle"]}
    captions = {"0": "a red circle", "1": "a red circle", "2": "a blue circle", "3": "a green circle"}
    scores, per_image = subset_metrics(pd.DataFrame(), references, captions, resamples=100)
    values = {k: (v.value, v.n) for k, v in scores.items()}
    assert values["names colour+shape (%) (colour red)"] == (pytest.approx(50.0), 2)
    assert values["names colour+shape (%) (colour blue)"] == (pytest.approx(50.0), 2)
    assert values["names colour+shape (%) (shape circle)"] == (pytest.approx(200 / 3), 3)
    assert values["names colour+shape (%) (shape triangle)"] == (pytest.approx(0.0), 1)
    assert "names colour+shape (%) (colour teal)" not in values  # no teal image: no row
    # NaN outside a subset, so paired differences keep to its images.
    assert per_image["names colour+shape (%) (colour red)"].isna().tolist() == [False, False, True, True]


def test_vqa_accuracy_is_also_reported_per_colour_and_shape_of_the_image():
    from pipeline.datasets import dataset_vqa_groups
    from pipeline.metrics.vqa import answers_accuracy

    manifest = pd.DataFrame({"image_id": ["a", "b"], "captions": [["a red circle"], ["a blue circle"]]})
    answers = pd.DataFrame(
        {
            "question_id": [1, 2, 3, 4],
            "image_id": ["a", "a", "b", "b"],
            "prediction": ["yes", "red", "no", "red"],
            "answers": [["yes"], ["red"], ["yes"], ["blue"]],
            "answer_type": ["yes/no", "other", "yes/no", "other"],
        }
    )
    table, _ = answers_accuracy(answers, 100, 0, dataset_vqa_groups("easy_vqa", manifest))
    rows = table.set_index("metric")
    assert rows.loc["VQA accuracy (colour red)", ["value", "n"]].tolist() == [100.0, 2]
    assert rows.loc["VQA accuracy (colour blue)", ["value", "n"]].tolist() == [0.0, 2]
    assert rows.loc["VQA accuracy (shape circle)", ["value", "n"]].tolist() == [50.0, 4]
    assert dataset_vqa_groups("coco", manifest).columns.empty  # no groups for other datasets
