"""pipeline/vqa.py: the few-shot prompt, the seeded question sample and solved examples, streaming
a question set batch by batch, and answers joined to questions and features by id."""

import numpy as np
import pandas as pd
import torch

from pipeline.vqa import (
    answer_questions,
    draw_support,
    evaluate_vqa,
    flatten_questions,
    sample_questions,
    support_pool,
    truncate_answer,
    vqa_prompt,
)
from storage import FeatureArray
from tests.conftest import EVAL_CHUNK, EVAL_DIM, EVAL_ROWS, assert_whole_chunks_once


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
    assert blind == [
        " Q: is there a circle? A: yes",
        " Q: what shape is present? A: triangle",
        " Q: ",
        "what color is the shape?",
        " A:",
    ]


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
    manifest = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "questions": [
                [{"question_id": "1", "question": "x?", "answers": ["yes"], "answer_type": "yes/no"}],
                [
                    {"question_id": "2", "question": "y?", "answers": ["red"], "answer_type": "other"},
                    {"question_id": "3", "question": "z?", "answers": ["no"], "answer_type": "yes/no"},
                ],
            ],
        }
    )
    flat = flatten_questions(manifest)
    assert flat["row"].tolist() == [0, 1, 1] and flat["question_id"].tolist() == ["1", "2", "3"]


def test_vqa_projects_one_batch_of_questions_and_their_examples_at_a_time(stored_features, counting_map, tiny_gptj):
    lm, tokenizer = tiny_gptj
    linear_map, stored = counting_map, stored_features
    # Five questions per image, sorted by image, as flatten_questions gives them.
    questions = pd.DataFrame(
        [
            {"row": row, "question": f"what is in image {row}?", "answers": ["red"] * 10}
            for row in range(EVAL_ROWS)
            for _ in range(5)
        ]
    )
    support_manifest_rows = 100
    pool = support_pool(support_manifest_rows, 12, seed=0)
    assert pool.stop - pool.start == 12
    support_questions = pd.DataFrame({"row": np.arange(12), "question": "is it a shape?", "answers": [["yes"]] * 12})
    support_features = np.random.default_rng(1).standard_normal((12, 3, EVAL_DIM)).astype(np.float16)
    answers = answer_questions(
        lm,
        tokenizer,
        questions,
        support_questions,
        draw_support(support_questions, len(questions), 4, 0),
        shots=2,
        batch_size=8,
        max_new_tokens=2,
        linear_map=linear_map,
        features=stored,
        support_features=support_features,
    )
    assert len(answers) == len(questions)
    # Per batch of 8 questions: one call for their 8 images, one for their 16 solved examples.
    assert max(linear_map.calls) <= 16 and sum(linear_map.calls) == len(questions) * 3
    assert_whole_chunks_once(stored.reads)
    assert len(stored.reads) == EVAL_ROWS // EVAL_CHUNK


def _manifest(images: int, prefix: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"{prefix}{i:02d}" for i in range(images)],
            "questions": [
                [
                    {
                        "question_id": f"{prefix}{i:02d}-{j}",
                        "question": f"what is {prefix}{i}, {j}?",
                        "answers": ["red"],
                        "answer_type": "other",
                    }
                    for j in range(2)
                ]
                for i in range(images)
            ],
        }
    )


def test_a_reordered_manifest_asks_and_answers_the_same(tmp_path, counting_map, tiny_gptj):
    """The question sample, the solved examples and every answer follow ids, not positions: the
    manifests (and the feature stores) in another order give the same table, row for row by id."""
    lm, tokenizer = tiny_gptj
    manifest, support = _manifest(12, "q"), _manifest(20, "s")
    rng = np.random.default_rng(0)

    def store(name, frame):
        features = FeatureArray.open(str(tmp_path / name), frame["image_id"].tolist(), 3, EVAL_DIM, 4)
        for chunk in range(features.num_chunks()):
            rows = features.chunk_slice(chunk)
            features.write_chunk(chunk, values[name][rows], {})
        return features

    values = {"eval": rng.standard_normal((12, 3, EVAL_DIM)), "support": rng.standard_normal((20, 3, EVAL_DIM))}
    settings = {"shots": 2, "questions": 9, "seed": 0, "support_images": 8, "batch_size": 4, "max_new_tokens": 2}
    first = evaluate_vqa(
        lm,
        tokenizer,
        manifest,
        support,
        linear_map=counting_map,
        store=store("eval", manifest),
        support_store=store("support", support),
        **settings,
    )
    order, support_order = rng.permutation(12), rng.permutation(20)
    values = {"eval2": values["eval"][order], "support2": values["support"][support_order]}
    manifest2 = manifest.iloc[order].reset_index(drop=True)
    support2 = support.iloc[support_order].reset_index(drop=True)
    second = evaluate_vqa(
        lm,
        tokenizer,
        manifest2,
        support2,
        linear_map=counting_map,
        store=store("eval2", manifest2),
        support_store=store("support2", support2),
        **settings,
    )
    assert len(first) == 9
    pd.testing.assert_frame_equal(
        second.set_index("question_id").loc[first["question_id"]].reset_index(), first.reset_index(drop=True)
    )
