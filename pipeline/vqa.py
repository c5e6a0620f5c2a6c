"""Few-shot VQA through the linear map (LiMBeR / MAGMA protocol).

Zero-shot prompt: ``[image, " Q: {question} A:"]``. An n-shot prompt first shows n solved
examples ``[image_i, " Q: q_i A: a_i"]`` drawn from the training split, ``a_i`` the question's
consensus answer (VQAv2's ``multiple_choice_answer``). Each span of text between images is one
string, tokenized in one call. The generated answer is cut to the word count of the longest
ground-truth answer before scoring. The blind baseline uses the same prompts with every
image left out.

Two departures from drawing question by question, so that the questions of an image share their
prompt's prefix ``[solved examples..., image]``: the questions asked are all those of images taken
in a seeded random order until ``questions`` are taken, and the solved examples are drawn per
image (n-shot uses the first n of its ``max(SHOTS)`` draws), so all questions of an image see the
same examples. Each prefix is then prefilled once and its KV cache reused by the image's
questions, and decoding stops once every answer of a batch is complete: the answers are still
those of decoding each whole prompt for ``max_new_tokens`` tokens, then cutting them.

A second, closed-vocabulary answer ranks the support split's most frequent answers by the LM's
likelihood after the same prompt: it tells "the LM does not follow the answer format" apart from
"the image information is not there".
"""

from collections.abc import Iterator
from functools import partial

import numpy as np
import pandas as pd
import torch

from pipeline.adapters import adapted
from pipeline.config import VqaConfig
from pipeline.datasets.manifest import consensus_answer
from pipeline.decoding import Segment, candidate_log_likelihoods, greedy_continue, image_tokens, prefill_shared
from pipeline.image_features import ChunkedRows, rows_by_id
from pipeline.linear_map import LinearMap

SHOTS = (0, 1, 2, 4)
# Part of every stored answer table's key: answers drawn under another protocol are not reused.
PROTOCOL = (
    "questions and solved examples drawn by image; one tokenizer call per text span; examples show the consensus answer"
)


def flatten_questions(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per question: row (of the manifest), image_id, question_id, question, answers, answer_type."""
    rows = [
        {"row": row, "image_id": image_id, **question}
        for row, (image_id, questions) in enumerate(zip(manifest["image_id"], manifest["questions"], strict=True))
        for question in questions
    ]
    return pd.DataFrame(rows)


def sample_by_image(questions: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """All questions of images taken in a seeded random order until at least ``count`` questions
    are taken (all images when 0), grouped by image in that order, each image's questions in the
    order given; column ``image`` numbers the images taken (0, 1, ...) and indexes their solved
    examples. The order depends only on the image ids, not on the manifest's order."""
    image_ids = np.sort(questions["image_id"].unique())
    image_ids = image_ids[np.random.default_rng(seed).permutation(len(image_ids))]
    if count:
        taken = questions.groupby("image_id").size().loc[image_ids].cumsum().to_numpy()
        image_ids = image_ids[: np.searchsorted(taken, count) + 1]
    rank = {image_id: k for k, image_id in enumerate(image_ids.tolist())}
    chosen = questions[questions["image_id"].isin(rank)]
    return chosen.assign(image=chosen["image_id"].map(rank)).sort_values("image", kind="stable").reset_index(drop=True)


def draw_support(train_questions: pd.DataFrame, num_images: int, max_shots: int, seed: int) -> np.ndarray:
    """(num_images, max_shots) indices into ``train_questions``; n-shot uses the first n.

    Depends only on the seed and the sizes, so every backbone sees the same solved examples.
    """
    return np.random.default_rng(seed).integers(0, len(train_questions), size=(num_images, max(max_shots, 1)))


def answer_words(gt_answers: list[str]) -> int:
    """MAGMA's answer budget: the word count of the longest ground-truth answer."""
    return max(len(a.split()) for a in gt_answers)


def truncate_answer(answer: str, gt_answers: list[str]) -> str:
    """MAGMA's rule: keep as many words as the longest ground-truth answer has."""
    return " ".join(answer.split()[: answer_words(gt_answers)])


def answer_complete(text: str, words: int) -> bool:
    """Whether no continuation of ``text`` can change its first ``words`` words (what
    ``truncate_answer`` keeps): a further word has started, or whitespace (a space, a newline)
    follows the last of them."""
    parts = text.split()
    return len(parts) > words or (len(parts) == words and text[-1:].isspace())


def vqa_prefix(image: torch.Tensor | None, support: list[tuple[torch.Tensor | None, str, str]]) -> list[Segment]:
    """What the questions of one image share: ``[image_1, " Q: q_1 A: a_1", ..., image]``. Blind
    (no images), the solved examples are one span of text, so one string."""
    texts = [f" Q: {question} A: {answer}" for _, question, answer in support]
    if image is None:
        return ["".join(texts)] if texts else []
    examples = [segment for (example, _, _), text in zip(support, texts, strict=True) for segment in (example, text)]
    return [*examples, image]


def vqa_question(question: str) -> str:
    """What follows an image's prefix for each of its questions."""
    return f" Q: {question} A:"


def support_pool(num_images: int, pool_images: int, seed: int) -> slice:
    """The manifest rows solved examples are drawn from: a seeded contiguous run of ``pool_images``
    rows of the support split (all of it when 0 or larger). Contiguous, so its features are read
    as whole stored chunks once; bounded, so memory does not grow with the support split."""
    if not pool_images or pool_images >= num_images:
        return slice(0, num_images)
    start = int(np.random.default_rng(seed).integers(0, num_images - pool_images + 1))
    return slice(start, start + pool_images)


def shown_answers(questions: pd.DataFrame) -> list[str]:
    """The answer a solved example shows: its question's consensus ``answer`` (VQAv2's
    ``multiple_choice_answer``), not the first annotator's, which may be an outlier. A record
    without one (a manifest read before readers gave it, a hand-built table) shows the most
    frequent of its answers."""
    given = questions["answer"] if "answer" in questions else [None] * len(questions)
    answers = zip(given, questions["answers"], strict=True)
    return [answer if isinstance(answer, str) else consensus_answer(gt) for answer, gt in answers]


def prompt_batches(
    questions: pd.DataFrame,
    support_questions: pd.DataFrame,
    support: np.ndarray | None,
    *,
    shots: int,
    batch_size: int,
    linear_map: LinearMap | None = None,
    features=None,
    support_features=None,
    device: str = "cpu",
) -> Iterator[tuple[pd.DataFrame, list[list[Segment]], np.ndarray]]:
    """``(batch, prefixes, prefix_of)`` for each batch of ``batch_size`` questions (rows of
    ``sample_by_image``, sorted by ``row``): the prefix of each image in the batch, and which
    prefix each question continues.

    ``features[row]`` are the cached features of the eval manifest's images and
    ``support_features[row]`` those of ``support_questions``' images (any chunked arrays); with no
    linear map (the blind baseline) no image is shown. Image tokens are projected batch by batch,
    for at most ``batch_size * (1 + shots)`` images at a time, and eval features are read chunk by
    chunk, so memory does not grow with the number of questions. An image whose questions straddle
    two batches has its prefix built in both.
    """
    eval_rows = None if linear_map is None else ChunkedRows(features)
    support_rows = None if linear_map is None or not shots else ChunkedRows(support_features)
    for start in range(0, len(questions), batch_size):
        batch = questions.iloc[start : start + batch_size]
        image = batch["image"].to_numpy()
        first = np.r_[True, image[1:] != image[:-1]]  # the first question of each image
        heads = batch[first]
        examples = [
            support_questions.iloc[support[i, :shots]] if shots else support_questions.iloc[:0] for i in heads["image"]
        ]
        images = support_images = None
        if eval_rows is not None:
            images = image_tokens(linear_map, torch.from_numpy(eval_rows[heads["row"].to_numpy()]), device)
        if support_rows is not None:
            rows = np.concatenate([e["row"].to_numpy() for e in examples])
            tokens = image_tokens(linear_map, torch.from_numpy(support_rows[rows]), device)
            support_images = tokens.reshape(len(heads), shots, *tokens.shape[1:])
        prefixes = []
        for k, shown in enumerate(examples):
            solved = [
                (None if support_images is None else support_images[k, j], q, a)
                for j, (q, a) in enumerate(zip(shown["question"], shown_answers(shown), strict=True))
            ]
            prefixes.append(vqa_prefix(None if images is None else images[k], solved))
        yield batch, prefixes, np.cumsum(first) - 1


def answer_vocabulary(questions: pd.DataFrame, size: int) -> list[str]:
    """The ``size`` most frequent ground-truth answers of ``questions`` (every annotator's answer
    counts; ties in name order): all 13 of easy-vqa's, or with 3,129 the size of VQAv2's standard
    answer list (which is drawn from train and val; here from the support split alone)."""
    counts = pd.Series([a for answers in questions["answers"] for a in answers], dtype=object).value_counts()
    return sorted(counts.index, key=lambda answer: (-counts[answer], answer))[:size]


def answer_questions(
    lm,
    tokenizer,
    questions: pd.DataFrame,
    support_questions: pd.DataFrame,
    support: np.ndarray | None,
    *,
    max_new_tokens: int,
    vocabulary: list[str] | None = None,
    on_batch=None,
    **prompting,
) -> pd.DataFrame:
    """Answers for ``questions`` (column ``prediction``), batch by batch as ``prompt_batches``
    (which takes the other arguments) builds them: each image's prefix is prefilled once for all
    of its questions, and a batch stops decoding once all of its answers are complete.

    With a ``vocabulary``, column ``closed_prediction`` is also the answer of the vocabulary the
    LM finds most likely after the same prompt (``" " + answer``'s tokens, scored on the prompts'
    KV cache): whether the image information is there, whatever the answer's format."""
    candidates = [tokenizer(f" {answer}", add_special_tokens=False).input_ids for answer in vocabulary or []]
    answers, closed = [], []
    with adapted(lm, prompting.get("linear_map")):  # a tuned baseline answers with its adapters in
        for batch, prefixes, prefix_of in prompt_batches(questions, support_questions, support, **prompting):
            prompts = prefill_shared(lm, tokenizer, prefixes, [vqa_question(q) for q in batch["question"]], prefix_of)
            if vocabulary:
                scores = candidate_log_likelihoods(
                    lm, prompts, candidates, sequences_per_call=prompting["batch_size"], bound=True
                )
                closed += [vocabulary[k] for k in scores.argmax(-1).tolist()]
            generated = greedy_continue(
                lm,
                tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                ended=[partial(answer_complete, words=answer_words(gt)) for gt in batch["answers"]],
            )
            answers += [truncate_answer(a, gt) for a, gt in zip(generated, batch["answers"], strict=True)]
            if on_batch:
                on_batch(len(answers), len(questions))
    return pd.DataFrame({"prediction": answers, **({"closed_prediction": closed} if vocabulary else {})})


def evaluate_vqa(
    lm,
    tokenizer,
    manifest: pd.DataFrame,
    support_manifest: pd.DataFrame | None,
    config: VqaConfig,
    *,
    shots: int,
    trial_seed: int,
    linear_map: LinearMap | None = None,
    store=None,
    support_store=None,
    device: str,
    on_batch=None,
) -> pd.DataFrame:
    """Answers to a seeded sample of ``config.questions`` questions of ``manifest`` at ``shots``
    shots, as a table ``(question_id, image_id, question, answers, answer_type, prediction)``, and
    ``closed_prediction`` among the ``config.closed_vocabulary`` most frequent answers of
    ``support_manifest`` when that is not 0. Answers are decoded ``config.batch_size`` questions
    per LM call, for at most ``config.max_new_tokens`` tokens; ``on_batch(done, total)`` is called
    after each batch.

    ``config.seed`` draws the images asked about. Solved examples come from a pool of
    ``config.support_images`` images of ``support_manifest`` (needed only when ``shots`` > 0 or a
    closed vocabulary is asked for) drawn by ``trial_seed``: the same for every system, different
    for each few-shot trial (``config.trial_seeds`` is not read: the trial is ``trial_seed``).
    Feature rows are found by image id in ``store`` / ``support_store`` (FeatureArrays), never by
    position; with no linear map (the blind system) no features are read.
    """
    questions, seed, support_images = config.questions, config.seed, config.support_images
    closed_vocabulary = config.closed_vocabulary
    # Images sampled by id, their questions in question-id order, examples drawn per sampled image
    # and pooled in image-id order, so a reordered manifest asks the same questions with the same
    # solved examples.
    by_id = flatten_questions(manifest).sort_values("question_id", kind="stable").reset_index(drop=True)
    sample = sample_by_image(by_id, questions, seed)
    support = support_features = None
    if shots:
        support_manifest = support_manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
        pool = support_pool(len(support_manifest), support_images, trial_seed)
        pool_manifest = support_manifest.iloc[pool].reset_index(drop=True)
        support_questions = flatten_questions(pool_manifest)
        support = draw_support(support_questions, sample["image"].nunique(), max(SHOTS), trial_seed)
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
        # Asked in stored-row order, so each feature chunk is read once; an image's questions stay
        # together (one row) and its examples follow it (column ``image``).
        rows = rows_by_id(store.ids, sample["image_id"].tolist(), "vqa questions")
        sample = sample.assign(row=rows).iloc[np.argsort(rows, kind="stable")].reset_index(drop=True)
    vocabulary = None
    if closed_vocabulary:
        vocabulary = answer_vocabulary(flatten_questions(support_manifest), closed_vocabulary)
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
        vocabulary=vocabulary,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        device=device,
        on_batch=on_batch,
    )
    columns = ["question_id", "image_id", "question", "answers", "answer_type"]
    return pd.concat([sample[columns], predictions], axis=1)
