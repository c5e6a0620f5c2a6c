"""Few-shot VQA through the linear map (LiMBeR / MAGMA protocol).

Zero-shot prompt: ``[image, " Q: ", question, " A:"]``. An n-shot prompt first shows n solved
examples ``[image_i, " Q: q_i A: a_i"]`` drawn from the training split. The generated answer is
cut to the word count of the longest ground-truth answer before scoring. The blind baseline uses
the same prompts with every image left out.
"""

import numpy as np
import pandas as pd
import torch

from pipeline.decoding import Segment, greedy_generate

SHOTS = (0, 1, 2, 4)


def flatten_questions(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per question: row (of the manifest), image_id, question_id, question, answers, answer_type."""
    rows = [
        {"row": row, "image_id": image_id, **question}
        for row, (image_id, questions) in enumerate(zip(manifest["image_id"], manifest["questions"]))
        for question in questions
    ]
    return pd.DataFrame(rows)


def sample_questions(questions: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """A fixed random subset of questions (all of them when count is 0 or too large)."""
    if not count or count >= len(questions):
        return questions.reset_index(drop=True)
    chosen = np.sort(np.random.default_rng(seed).choice(len(questions), size=count, replace=False))
    return questions.iloc[chosen].reset_index(drop=True)


def draw_support(train_questions: pd.DataFrame, num_questions: int, max_shots: int, seed: int) -> np.ndarray:
    """(num_questions, max_shots) indices into ``train_questions``; n-shot uses the first n.

    Depends only on the seed and the sizes, so every backbone sees the same solved examples.
    """
    return np.random.default_rng(seed).integers(0, len(train_questions), size=(num_questions, max(max_shots, 1)))


def truncate_answer(answer: str, gt_answers: list[str]) -> str:
    """MAGMA's rule: keep as many words as the longest ground-truth answer has."""
    words = max(len(a.split()) for a in gt_answers)
    return " ".join(answer.split()[:words])


def vqa_prompt(image: torch.Tensor | None, question: str, support: list[tuple[torch.Tensor | None, str, str]]) -> list[Segment]:
    segments: list[Segment] = []
    for support_image, support_question, support_answer in support:
        if support_image is not None:
            segments.append(support_image)
        segments.append(f" Q: {support_question} A: {support_answer}")
    if image is not None:
        segments.append(image)
    segments += [" Q: ", question, " A:"]
    return segments


def answer_questions(
    lm,
    tokenizer,
    questions: pd.DataFrame,
    image_tokens: torch.Tensor | None,
    train_questions: pd.DataFrame,
    train_image_tokens: torch.Tensor | None,
    support: np.ndarray,
    *,
    shots: int,
    batch_size: int,
    max_new_tokens: int,
    on_batch=None,
) -> list[str]:
    """Answers for ``questions`` (rows of ``flatten_questions``). ``image_tokens[row]`` and
    ``train_image_tokens[row]`` are the projected tokens of the eval / train manifests' images;
    None for the blind baseline."""
    answers = []
    for start in range(0, len(questions), batch_size):
        prompts = []
        for i in range(start, min(start + batch_size, len(questions))):
            q = questions.iloc[i]
            examples = []
            for j in support[i, :shots]:
                s = train_questions.iloc[j]
                examples.append((None if train_image_tokens is None else train_image_tokens[s["row"]],
                                 s["question"], s["answers"][0]))
            image = None if image_tokens is None else image_tokens[q["row"]]
            prompts.append(vqa_prompt(image, q["question"], examples))
        generated = greedy_generate(lm, tokenizer, prompts, max_new_tokens=max_new_tokens)
        answers += [truncate_answer(a, questions.iloc[start + k]["answers"]) for k, a in enumerate(generated)]
        if on_batch:
            on_batch(len(answers), len(questions))
    return answers
