import numpy as np
import pandas as pd
import torch

from pipeline.vqa import draw_support, flatten_questions, sample_questions, truncate_answer, vqa_prompt


def test_zero_shot_prompt_layout():
    image = torch.zeros(4, 8)
    segments = vqa_prompt(image, "what color is the shape?", [])
    assert segments[0] is image
    assert segments[1:] == [" Q: ", "what color is the shape?", " A:"]


def test_few_shot_prompt_puts_solved_examples_first_and_blind_drops_images():
    a, b, target = torch.zeros(2, 8), torch.ones(2, 8), torch.full((2, 8), 2.0)
    support = [(a, "is there a circle?", "yes"), (b, "what shape is present?", "triangle")]
    segments = vqa_prompt(target, "what color is the shape?", support)
    assert segments[0] is a and segments[1] == " Q: is there a circle? A: yes"
    assert segments[2] is b and segments[3] == " Q: what shape is present? A: triangle"
    assert segments[4] is target
    blind = vqa_prompt(None, "what color is the shape?", [(None, q, ans) for _, q, ans in support])
    assert all(isinstance(s, str) for s in blind)
    assert blind == [" Q: is there a circle? A: yes", " Q: what shape is present? A: triangle", " Q: ",
                     "what color is the shape?", " A:"]


def test_answers_are_cut_to_the_longest_ground_truth():
    assert truncate_answer("red circle on white", ["red", "dark red"]) == "red circle"
    assert truncate_answer("yes it is", ["yes"]) == "yes"


def test_support_and_subsets_are_seeded_and_nested():
    questions = pd.DataFrame({"question": [f"q{i}" for i in range(50)]})
    first, again = draw_support(questions, 10, 4, seed=3), draw_support(questions, 10, 4, seed=3)
    assert first.shape == (10, 4) and np.array_equal(first, again)
    subset = sample_questions(questions, 7, seed=1)
    assert len(subset) == 7 and subset.equals(sample_questions(questions, 7, seed=1))
    assert len(sample_questions(questions, 0, seed=1)) == 50


def test_flatten_questions_keeps_manifest_rows():
    manifest = pd.DataFrame({"image_id": ["a", "b"], "questions": [
        [{"question_id": "1", "question": "x?", "answers": ["yes"], "answer_type": "yes/no"}],
        [{"question_id": "2", "question": "y?", "answers": ["red"], "answer_type": "other"},
         {"question_id": "3", "question": "z?", "answers": ["no"], "answer_type": "yes/no"}],
    ]})
    flat = flatten_questions(manifest)
    assert flat["row"].tolist() == [0, 1, 1] and flat["question_id"].tolist() == ["1", "2", "3"]
