"""Few-shot VQA through the linear map (LiMBeR / MAGMA protocol).

Zero-shot prompt: ``[image, " Q: ", question, " A:"]``. An n-shot prompt first shows n solved
examples ``[image_i, " Q: q_i A: a_i"]`` drawn from the training split. The generated answer is
cut to the word count of the longest ground-truth answer before scoring. The blind baseline uses
the same prompts with every image left out.
"""

import numpy as np
import pandas as pd
import torch

from pipeline.decoding import Segment, greedy_generate, image_tokens
from pipeline.image_features import ChunkedRows, rows_by_id
from pipeline.linear_map import LinearMap

SHOTS = (0, 1, 2, 4)


def flatten_questions(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per question: row (of the manifest), image_id, question_id, question, answers, answer_type."""
    rows = [
        {"row": row, "image_id": image_id, **question}
        for row, (image_id, questions) in enumerate(zip(manifest["image_id"], manifest["questions"], strict=True))
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


def vqa_prompt(
    image: torch.Tensor | None, question: str, support: list[tuple[torch.Tensor | None, str, str]]
) -> list[Segment]:
    segments: list[Segment] = []
    for support_image, support_question, support_answer in support:
        if support_image is not None:
            segments.append(support_image)
        segments.append(f" Q: {support_question} A: {support_answer}")
    if image is not None:
        segments.append(image)
    segments += [" Q: ", question, " A:"]
    return segments


def support_pool(num_images: int, pool_images: int, seed: int) -> slice:
    """The manifest rows solved examples are drawn from: a seeded contiguous run of ``pool_images``
    rows of the support split (all of it when 0 or larger). Contiguous, so its features are read
    as whole stored chunks once; bounded, so memory does not grow with the support split."""
    if not pool_images or pool_images >= num_images:
        return slice(0, num_images)
    start = int(np.random.default_rng(seed).integers(0, num_images - pool_images + 1))
    return slice(start, start + pool_images)


def answer_questions(
    lm,
    tokenizer,
    questions: pd.DataFrame,
    support_questions: pd.DataFrame,
    support: np.ndarray | None,
    *,
    shots: int,
    batch_size: int,
    max_new_tokens: int,
    linear_map: LinearMap | None = None,
    features=None,
    support_features=None,
    device: str = "cpu",
    on_batch=None,
) -> list[str]:
    """Answers for ``questions`` (rows of ``flatten_questions``, sorted by ``row``).

    ``features[row]`` are the cached features of the eval manifest's images and
    ``support_features[row]`` those of ``support_questions``' images (any chunked arrays); with no
    linear map (the blind baseline) no image is shown. Image tokens are projected batch by batch,
    for at most ``batch_size * (1 + shots)`` images at a time, and eval features are read chunk by
    chunk, so memory does not grow with the number of questions.
    """
    eval_rows = None if linear_map is None else ChunkedRows(features)
    support_rows = None if linear_map is None or not shots else ChunkedRows(support_features)
    answers = []
    for start in range(0, len(questions), batch_size):
        batch = questions.iloc[start : start + batch_size]
        examples = [
            support_questions.iloc[support[i, :shots]] if shots else support_questions.iloc[:0]
            for i in range(start, start + len(batch))
        ]
        images = support_images = None
        if eval_rows is not None:
            images = image_tokens(linear_map, torch.from_numpy(eval_rows[batch["row"].to_numpy()]), device)
        if support_rows is not None:
            rows = np.concatenate([e["row"].to_numpy() for e in examples])
            tokens = image_tokens(linear_map, torch.from_numpy(support_rows[rows]), device)
            support_images = tokens.reshape(len(batch), shots, *tokens.shape[1:])
        prompts = []
        for k, (question, shown) in enumerate(zip(batch["question"], examples, strict=True)):
            solved = [
                (None if support_images is None else support_images[k, j], q, a[0])
                for j, (q, a) in enumerate(zip(shown["question"], shown["answers"], strict=True))
            ]
            prompts.append(vqa_prompt(None if images is None else images[k], question, solved))
        generated = greedy_generate(lm, tokenizer, prompts, max_new_tokens=max_new_tokens)
        answers += [truncate_answer(a, gt) for a, gt in zip(generated, batch["answers"], strict=True)]
        if on_batch:
            on_batch(len(answers), len(questions))
    return answers


def evaluate_vqa(
    lm,
    tokenizer,
    manifest: pd.DataFrame,
    support_manifest: pd.DataFrame | None,
    *,
    shots: int,
    questions: int,
    seed: int,
    support_images: int,
    linear_map: LinearMap | None = None,
    store=None,
    support_store=None,
    **decoding,
) -> pd.DataFrame:
    """Answers to a seeded sample of ``questions`` questions of ``manifest`` at ``shots`` shots, as a
    table ``(question_id, image_id, question, answers, answer_type, prediction)``.

    Solved examples come from a seeded pool of ``support_images`` images of ``support_manifest``
    (needed only when ``shots`` > 0), the same for every system. Feature rows are found by image id
    in ``store`` / ``support_store`` (FeatureArrays), never by position; with no linear map (the
    blind system) no features are read.
    """
    # Sampled in question-id order, examples drawn in that order, and pooled in image-id order, so a
    # reordered manifest asks the same questions with the same solved examples.
    by_id = flatten_questions(manifest).sort_values("question_id", kind="stable").reset_index(drop=True)
    sample = sample_questions(by_id, questions, seed)
    support = support_features = None
    if shots:
        support_manifest = support_manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
        pool = support_pool(len(support_manifest), support_images, seed)
        pool_manifest = support_manifest.iloc[pool].reset_index(drop=True)
        support_questions = flatten_questions(pool_manifest)
        support = draw_support(support_questions, len(sample), max(SHOTS), seed)
        if linear_map is not None:
            pool_rows = rows_by_id(support_store.ids, pool_manifest["image_id"].tolist(), "vqa support")
            ascending = np.argsort(pool_rows, kind="stable")  # read in stored order, kept in the pool's
            support_features = np.empty((len(pool_rows), *support_store.features.shape[1:]), np.float16)
            support_features[ascending] = ChunkedRows(support_store.features)[pool_rows[ascending]]
    else:
        support_questions = pd.DataFrame(columns=["row", "question", "answers"])
    features = None
    if linear_map is not None:
        features = store.features
        # Asked in stored-row order, so each feature chunk is read once; examples follow their question.
        rows = rows_by_id(store.ids, sample["image_id"].tolist(), "vqa questions")
        order = np.argsort(rows, kind="stable")
        sample = sample.assign(row=rows).iloc[order].reset_index(drop=True)
        support = None if support is None else support[order]
    predictions = answer_questions(
        lm,
        tokenizer,
        sample,
        support_questions,
        support,
        shots=shots,
        linear_map=linear_map,
        features=features,
        support_features=support_features,
        **decoding,
    )
    columns = ["question_id", "image_id", "question", "answers", "answer_type", "prediction"]
    return sample.assign(prediction=predictions)[columns]
