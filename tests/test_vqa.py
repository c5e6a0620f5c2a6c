"""pipeline/vqa.py: the few-shot prompt and its tokenization, the seeded question sample (whole
images) and solved examples (per image), streaming a question set batch by batch, answers equal to
decoding every whole prompt, and answers joined to questions and features by id."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline.vqa
from pipeline.config import VqaConfig
from pipeline.decoding import image_tokens
from pipeline.vqa import (
    SHOTS,
    answer_complete,
    answer_questions,
    answer_vocabulary,
    draw_support,
    evaluate_vqa,
    flatten_questions,
    prompt_batches,
    sample_by_image,
    support_pool,
    truncate_answer,
    vqa_prefix,
    vqa_question,
)
from storage import FeatureArray
from tests.conftest import EVAL_CHUNK, EVAL_DIM, EVAL_ROWS, assert_whole_chunks_once, text_ids

_spec = importlib.util.spec_from_file_location(
    "vqa_answers", Path(__file__).resolve().parents[1] / "bench" / "vqa_answers.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def easy_vqa_batch(tiny_llama):
    """``answer_questions``' arguments: all questions of 3 easy-vqa test images (mixed lengths,
    about 10 per image), solved examples from 20 train images, random features and map."""
    arguments, _ = bench.vqa_inputs(tiny_llama[0], images=3, support_images=20, device="cpu")
    # Some answers of two words, so some rows stop at their second word.
    questions = arguments["questions"]
    questions["answers"] = [["dark " + a[0], a[0]] if k % 3 else a for k, a in enumerate(questions["answers"])]
    return arguments


def test_prompt_layout_solved_examples_first_and_blind_drops_images():
    a, b, target = torch.zeros(2, 8), torch.ones(2, 8), torch.full((2, 8), 2.0)
    support = [(a, "is there a circle?", "yes"), (b, "what shape is present?", "triangle")]
    assert vqa_prefix(target, []) == [target]
    prefix = vqa_prefix(target, support)
    assert prefix[0] is a and prefix[1] == " Q: is there a circle? A: yes"
    assert prefix[2] is b and prefix[3] == " Q: what shape is present? A: triangle"
    assert prefix[4] is target and len(prefix) == 5
    assert vqa_prefix(None, [(None, q, ans) for _, q, ans in support]) == [
        " Q: is there a circle? A: yes Q: what shape is present? A: triangle"
    ]
    assert vqa_prefix(None, []) == []
    assert vqa_question("what color is the shape?") == " Q: what color is the shape? A:"


@pytest.mark.parametrize("shots", [0, 2])
@pytest.mark.parametrize("blind", [False, True])
def test_prompts_tokenize_as_the_protocol_strings(tiny_llama, easy_vqa_batch, shots, blind):
    """Each span of text between images is tokenized whole: " Q: {question} A:" as the string, not
    " Q: ", the question and " A:" apart (a stray space token, an un-spaced first word)."""
    _, tokenizer = tiny_llama
    arguments = {**easy_vqa_batch, "shots": shots, "linear_map": None if blind else easy_vqa_batch["linear_map"]}
    arguments.pop("max_new_tokens")
    support_questions, support = arguments["support_questions"], arguments["support"]
    whole = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    for batch, prefixes, prefix_of in prompt_batches(**arguments):
        for image, question, p in zip(batch["image"], batch["question"], prefix_of, strict=True):
            solved = [
                f" Q: {support_questions['question'][i]} A: {support_questions['answer'][i]}"
                for i in support[image, :shots]
            ]
            prompt = [*prefixes[p], vqa_question(question)]
            if blind:
                assert sum(text_ids(tokenizer, prompt), []) == whole("".join(solved) + f" Q: {question} A:")
            else:
                assert text_ids(tokenizer, prompt) == [whole(text) for text in [*solved, f" Q: {question} A:"]]
                assert [isinstance(s, torch.Tensor) for s in prompt] == [True, False] * (shots + 1)


@pytest.mark.parametrize("shots", [1, 4])
def test_every_prompt_holds_its_own_images_tokens_and_its_solved_examples_tokens(easy_vqa_batch, shots):
    """The tokens in a question's prompt are its own image's and its own solved examples' (so the
    test fails if the features were zeroed, misaligned, or the image left out)."""
    arguments = {**easy_vqa_batch, "shots": shots, "batch_size": 7}
    arguments.pop("max_new_tokens")
    linear_map, questions = arguments["linear_map"], arguments["support_questions"]
    tokens_of = lambda features, rows: image_tokens(linear_map, torch.from_numpy(features[rows]), "cpu")  # noqa: E731
    checked = 0
    for batch, prefixes, prefix_of in prompt_batches(**arguments):
        for image, row, p in zip(batch["image"], batch["row"], prefix_of, strict=True):
            shown = [s for s in prefixes[p] if isinstance(s, torch.Tensor)]
            support_rows = questions["row"].to_numpy()[arguments["support"][image, :shots]]
            expected = [
                *tokens_of(arguments["support_features"], support_rows),
                tokens_of(arguments["features"], [row])[0],
            ]
            assert len(shown) == shots + 1
            for got, want in zip(shown, expected, strict=True):
                torch.testing.assert_close(got, want)
            checked += 1
    assert checked == len(arguments["questions"])
    # Different images give different tokens: the check above could not pass on one shared image.
    rows = arguments["questions"]["row"].unique()[:2]
    assert not torch.allclose(*tokens_of(arguments["features"], rows))


def test_answers_are_cut_to_the_longest_ground_truth_and_complete_once_it_cannot_change():
    assert truncate_answer("red circle on white", ["red", "dark red"]) == "red circle"
    assert truncate_answer("yes it is", ["yes"]) == "yes"
    assert [answer_complete(text, 1) for text in (" ye", " yes", " yes ", " yes\n", " yes,", " yes b")] == [
        False,
        False,
        True,
        True,
        False,
        True,
    ]
    assert not answer_complete(" dark red", 2) and answer_complete(" dark red circle", 2)


@pytest.mark.parametrize("shots", SHOTS)
@pytest.mark.parametrize("blind", [False, True])
@pytest.mark.parametrize("lm_fixture", ["tiny_llama", "tiny_gptj"])
def test_prefix_reuse_and_early_stop_answer_as_the_whole_prompts(request, easy_vqa_batch, lm_fixture, shots, blind):
    """Images' prefixes prefilled once (left-padded, several images per batch, images straddling
    batches), suffixes after them, decoding stopped once every answer is complete: the answers of
    decoding each whole prompt for every step, then truncating."""
    lm, tokenizer = request.getfixturevalue(lm_fixture)
    arguments = {**easy_vqa_batch, "shots": shots, "batch_size": 8, "max_new_tokens": 6}
    arguments["linear_map"] = None if blind else arguments["linear_map"]  # both LMs are 64 wide
    answers = answer_questions(lm, tokenizer, **arguments)["prediction"].tolist()
    assert answers == bench.full_prompt_answers(lm, tokenizer, **arguments)
    assert len(set(answers)) > 1


def test_the_questions_of_an_image_share_its_solved_examples_for_every_system_and_shot(
    monkeypatch, tmp_path, counting_map
):
    prompts = {}

    def record(lm, tokenizer, prefixes, suffixes, prefix_of):
        for suffix, p in zip(suffixes, prefix_of, strict=True):
            prompts[key].setdefault(suffix, []).append("".join(s for s in prefixes[p] if isinstance(s, str)))
        return len(suffixes)

    monkeypatch.setattr(pipeline.vqa, "prefill_shared", record)
    monkeypatch.setattr(pipeline.vqa, "greedy_continue", lambda lm, tokenizer, rows, **_: [""] * rows)
    manifest, support = _manifest(12, "q", questions=3), _manifest(20, "s")
    rng = np.random.default_rng(0)
    stores = {
        name: _store(tmp_path / name, frame, rng.standard_normal((len(frame), 3, EVAL_DIM)))
        for name, frame in (("eval", manifest), ("support", support))
    }
    for key in [(blind, shots) for blind in (False, True) for shots in (1, 2, 4)]:
        prompts[key] = {}
        linear_map = (
            {} if key[0] else {"linear_map": counting_map, "store": stores["eval"], "support_store": stores["support"]}
        )
        evaluate_vqa(
            None,
            None,
            manifest,
            support,
            VqaConfig(questions=9, support_images=8, batch_size=4, max_new_tokens=1, closed_vocabulary=0),
            shots=key[1],
            trial_seed=0,
            device="cpu",
            **linear_map,
        )
    for key, by_question in prompts.items():
        by_image = {}
        for suffix, (examples,) in by_question.items():
            by_image.setdefault(suffix.split(",")[0], set()).add(examples)
        assert len(by_image) == 3 and all(len(e) == 1 for e in by_image.values()), key  # 3 whole images
    for shots in (1, 2, 4):
        assert prompts[False, shots] == prompts[True, shots]  # blind sees the map's examples
        for suffix, (examples,) in prompts[False, shots].items():
            assert prompts[False, 4][suffix][0].startswith(examples)  # n shots: the first n of 4


def test_solved_examples_show_the_consensus_answer_not_the_first_annotators():
    """A solved example shows its question's consensus ``answer`` (VQAv2's ``multiple_choice_answer``),
    not the first of its ten answers. VQAv2 takes the consensus over normalised answers ("seven" ->
    "7"), so it can differ from the most frequent raw answer, which stands in only where a record
    has no ``answer``."""
    questions = pd.DataFrame({"row": [0], "image": [0], "question": ["how many dogs?"], "answers": [["2"] * 10]})
    support_questions = pd.DataFrame(
        {
            "row": [0, 1],
            "question": ["how many cats?", "what number is the bus?"],
            "answers": [["two", "2", "2", "2", "2", "2", "2", "2", "2", "two"], ["7"] * 4 + ["seven"] * 6],
            "answer": ["2", "7"],
        }
    )

    def blind_prefixes(support_questions):
        ((_, prefixes, _),) = prompt_batches(questions, support_questions, np.array([[0, 1]]), shots=2, batch_size=4)
        return prefixes

    assert blind_prefixes(support_questions) == [[" Q: how many cats? A: 2 Q: what number is the bus? A: 7"]]
    without = support_questions.drop(columns="answer")
    assert blind_prefixes(without) == [[" Q: how many cats? A: 2 Q: what number is the bus? A: seven"]]


def test_questions_are_sampled_by_whole_images_seeded_and_by_id():
    questions = pd.DataFrame(
        {
            "image_id": [f"i{i:02d}" for i in range(20) for _ in range(i % 4 + 1)],
            "question_id": [f"i{i:02d}-{j}" for i in range(20) for j in range(i % 4 + 1)],
        }
    )
    sample = sample_by_image(questions, 7, seed=3)
    per_image = questions.groupby("image_id").size()
    taken = sample.groupby("image_id", sort=False).size()
    assert taken.equals(per_image.loc[taken.index])  # every question of each image taken
    assert len(sample) >= 7 > len(sample) - taken.iloc[-1]  # images until 7 questions are taken
    assert sample["image"].tolist() == sorted(sample["image"]) and taken.index.is_unique  # grouped by image
    assert sample.equals(sample_by_image(questions, 7, seed=3))
    assert not sample.equals(sample_by_image(questions, 7, seed=4))
    shuffled = questions.sample(frac=1, random_state=0)
    assert set(sample_by_image(shuffled, 7, seed=3)["question_id"]) == set(sample["question_id"])
    assert len(sample_by_image(questions, 0, seed=3)) == len(questions) == len(sample_by_image(questions, 999, 3))


def test_solved_examples_are_seeded_one_draw_per_image():
    questions = pd.DataFrame({"question": [f"q{i}" for i in range(50)]})
    first, again = draw_support(questions, 10, 4, seed=3), draw_support(questions, 10, 4, seed=3)
    assert first.shape == (10, 4) and np.array_equal(first, again)


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
    # Five questions per image, sorted by image, as sample_by_image gives them.
    questions = pd.DataFrame(
        [
            {"row": row, "image": row, "question": f"what is in image {row}?", "answers": ["red"] * 10}
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
        draw_support(support_questions, EVAL_ROWS, 4, 0),
        shots=2,
        batch_size=8,
        max_new_tokens=2,
        linear_map=linear_map,
        features=stored,
        support_features=support_features,
    )
    assert len(answers) == len(questions)
    # Per batch of 8 questions: one call for the images they ask about, one for their 2 solved examples each.
    images = [questions["image"][start : start + 8].nunique() for start in range(0, len(questions), 8)]
    assert linear_map.calls == [calls for n in images for calls in (n, 2 * n)]
    assert_whole_chunks_once(stored.reads)
    assert len(stored.reads) == EVAL_ROWS // EVAL_CHUNK


def _manifest(images: int, prefix: str, questions: int = 2) -> pd.DataFrame:
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
                    for j in range(questions)
                ]
                for i in range(images)
            ],
        }
    )


def _store(path, frame: pd.DataFrame, values: np.ndarray) -> FeatureArray:
    """A feature store of ``frame``'s images (4-row chunks), row i holding ``values[i]``."""
    features = FeatureArray.open(str(path), frame["image_id"].tolist(), 3, EVAL_DIM, 4)
    for chunk in range(features.num_chunks()):
        features.write_chunk(chunk, values[features.chunk_slice(chunk)], {})
    return features


def test_a_reordered_manifest_asks_and_answers_the_same(tmp_path, counting_map, tiny_gptj):
    """The question sample, the solved examples and every answer follow ids, not positions: the
    manifests (and the feature stores) in another order give the same table, row for row by id."""
    lm, tokenizer = tiny_gptj
    manifest, support = _manifest(12, "q"), _manifest(20, "s")
    rng = np.random.default_rng(0)
    values, support_values = rng.standard_normal((12, 3, EVAL_DIM)), rng.standard_normal((20, 3, EVAL_DIM))
    config = VqaConfig(questions=9, support_images=8, batch_size=4, max_new_tokens=2, closed_vocabulary=0)
    settings = {"shots": 2, "trial_seed": 0, "device": "cpu"}
    first = evaluate_vqa(
        lm,
        tokenizer,
        manifest,
        support,
        config,
        linear_map=counting_map,
        store=_store(tmp_path / "eval", manifest, values),
        support_store=_store(tmp_path / "support", support, support_values),
        **settings,
    )
    order, support_order = rng.permutation(12), rng.permutation(20)
    manifest2 = manifest.iloc[order].reset_index(drop=True)
    support2 = support.iloc[support_order].reset_index(drop=True)
    second = evaluate_vqa(
        lm,
        tokenizer,
        manifest2,
        support2,
        config,
        linear_map=counting_map,
        store=_store(tmp_path / "eval2", manifest2, values[order]),
        support_store=_store(tmp_path / "support2", support2, support_values[support_order]),
        **settings,
    )
    assert len(first) == 10  # whole images of 2 questions until 9 are taken
    pd.testing.assert_frame_equal(
        second.set_index("question_id").loc[first["question_id"]].reset_index(), first.reset_index(drop=True)
    )


def test_the_closed_vocabulary_is_the_most_frequent_answers_ties_by_name():
    questions = pd.DataFrame({"answers": [["yes"], ["no"], ["yes"], ["red", "red", "teal"], ["blue"]]})
    assert answer_vocabulary(questions, 3) == ["red", "yes", "blue"]
    assert answer_vocabulary(questions, 99) == ["red", "yes", "blue", "no", "teal"]


@pytest.mark.parametrize("shots", [0, 2])
def test_closed_vocabulary_answers_leave_the_open_answers_as_they_were(tmp_path, counting_map, tiny_llama, shots):
    lm, tokenizer = tiny_llama
    manifest, support = _manifest(6, "q"), _manifest(10, "s")
    support["questions"] = [
        [{**q, "answers": [answer]} for q in questions]
        for questions, answer in zip(support["questions"], ["teal", "red", "blue", "red", "yes"] * 2, strict=True)
    ]
    rng = np.random.default_rng(0)
    config = VqaConfig(questions=0, batch_size=4, max_new_tokens=2, closed_vocabulary=0)
    settings = {"shots": shots, "trial_seed": 0, "device": "cpu"}
    stores = {
        "store": _store(tmp_path / "eval", manifest, rng.standard_normal((6, 3, EVAL_DIM))),
        "support_store": _store(tmp_path / "support", support, rng.standard_normal((10, 3, EVAL_DIM))),
    }
    open_only = evaluate_vqa(lm, tokenizer, manifest, support, config, linear_map=counting_map, **stores, **settings)
    both = evaluate_vqa(
        lm,
        tokenizer,
        manifest,
        support,
        dataclasses.replace(config, closed_vocabulary=3),
        linear_map=counting_map,
        **stores,
        **settings,
    )
    pd.testing.assert_frame_equal(both.drop(columns="closed_prediction"), open_only)
    assert "closed_prediction" not in open_only
    assert set(both["closed_prediction"]) <= {"red", "blue", "teal"}  # the 3 most frequent
