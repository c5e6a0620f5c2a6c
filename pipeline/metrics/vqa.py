"""VQA accuracy exactly as the official VQAv2 evaluator computes it, quirks included.

- Newlines and tabs become spaces, then answers are stripped.
- Punctuation, digit words, articles and contractions are normalised ONLY when the ten
  ground-truth answers are not all identical.
- Accuracy for a question: for each GT answer, min(1, matches among the other nine / 3), averaged;
  so 3 of 10 agreeing gives 0.9, 2 gives 0.6, 1 gives 0.3. Reported x100, rounded to 2 decimals.
- The period-stripping regex is applied with ``count=re.UNICODE`` (32) and its look-behind is
  written ``(?!<=\\d)``; both are the official code's behaviour and are kept.
"""

import re
from collections import defaultdict

# The second metric: the answer among a closed vocabulary the LM finds most likely (pipeline.vqa).
CLOSED_VOCABULARY = "VQA accuracy, closed vocabulary"

CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
DIGITS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)  # count=32, as the official code passes it


def process_digit_article(text: str) -> str:
    words = [DIGITS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """Accuracy in [0, 1] of one predicted answer against the (usually ten) ground-truth answers."""
    gt = [_clean(a) for a in gt_answers]
    prediction = _clean(prediction)
    if len(set(gt)) > 1:
        gt = [process_digit_article(process_punctuation(a)) for a in gt]
        prediction = process_digit_article(process_punctuation(prediction))
    scores = []
    for i in range(len(gt)):
        others = gt[:i] + gt[i + 1 :]
        scores.append(min(1.0, sum(a == prediction for a in others) / 3))
    return sum(scores) / len(scores)


def vqa_accuracy(predictions: dict, gt_answers: dict, answer_types: dict) -> dict:
    """Official-style report: {"overall", "perAnswerType", "perQuestion"}, values x100, 2 decimals.

    ``predictions``, ``gt_answers`` and ``answer_types`` are keyed by question id.
    """
    missing = set(gt_answers) - set(predictions)
    if missing:
        raise ValueError(f"{len(missing)} questions have no predicted answer, e.g. {sorted(missing, key=str)[:3]}")
    per_question = {q: question_accuracy(predictions[q], gt_answers[q]) for q in gt_answers}
    by_type = defaultdict(list)
    for q, accuracy in per_question.items():
        by_type[answer_types[q]].append(accuracy)
    return {
        "overall": round(100 * sum(per_question.values()) / len(per_question), 2),
        "perAnswerType": {t: round(100 * sum(v) / len(v), 2) for t, v in by_type.items()},
        "perQuestion": {q: round(100 * a, 2) for q, a in per_question.items()},
    }


def score_vqa_files(annotations_path: str, questions_path: str, results_path: str) -> dict:
    """Scores a results file ([{"question_id", "answer"}]) against official VQAv2 annotation and
    question files; like the official evaluator, every annotated question needs exactly one answer.
    Any malformed record (an answer that is not a string, null included) is an error naming it."""
    from pipeline.datasets.manifest import DatasetError, json_records

    annotations = json_records(
        annotations_path, {"question_id": int, "answer_type": str, "answers": list}, key="annotations"
    )
    for index, annotation in enumerate(annotations):
        if not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in annotation["answers"]):
            raise DatasetError(f"{annotations_path}: annotations[{index}]: an answer without 'answer' text")
    question_ids = {q["question_id"] for q in json_records(questions_path, {"question_id": int}, key="questions")}
    annotated = {a["question_id"] for a in annotations}
    if not annotated:
        raise DatasetError(f"{annotations_path}: no annotated questions to score")
    if annotated != question_ids:
        raise DatasetError(f"{questions_path} and {annotations_path} list different questions")
    predictions = {}
    for index, record in enumerate(json_records(results_path, {"question_id": int, "answer": str})):
        if record["question_id"] in predictions:
            raise DatasetError(f"{results_path}: record[{index}]: question {record['question_id']} is answered twice")
        predictions[record["question_id"]] = record["answer"]
    if set(predictions) != annotated:
        raise DatasetError(
            f"{results_path} does not correspond to {annotations_path}: "
            f"{len(annotated - set(predictions))} questions unanswered, "
            f"{len(set(predictions) - annotated)} answers to questions not in the annotations"
        )
    return vqa_accuracy(
        predictions,
        {a["question_id"]: [x["answer"] for x in a["answers"]] for a in annotations},
        {a["question_id"]: a["answer_type"] for a in annotations},
    )


def normalise(answer: str) -> str:
    """The official evaluator's normalisation (punctuation, digit words, articles, contractions)."""
    return process_digit_article(process_punctuation(_clean(answer)))


def answers_accuracy(answers, resamples: int = 0, seed: int = 0, groups=None):
    """VQA accuracy of an answers table as rows ``(metric, value, ci_low, ci_high, n, note, ...)``
    (``pipeline.metrics.intervals.estimates_table``), and the per-question accuracies; see
    ``vqa_estimates``."""
    from pipeline.metrics.intervals import estimates_table

    estimates, per_question = vqa_estimates(answers, resamples, seed, groups)
    return estimates_table(estimates), per_question


def vqa_estimates(answers, resamples: int = 0, seed: int = 0, groups=None):
    """VQA accuracy of an answers table (``question_id``, ``image_id``, ``prediction``, ``answers``,
    ``answer_type``, and optionally ``closed_prediction``): ``Estimate`` by metric, overall and per
    answer type, x100, with seeded bootstrap 95% intervals that resample the images (``resamples``
    of them), each with all its questions, for the open-ended answers ("VQA accuracy") and the
    closed-vocabulary ones (``CLOSED_VOCABULARY``); and the per-question accuracies
    (``question_id``, ``image_id``, ``answer_type``, ``accuracy``, ``closed_accuracy``), from which
    paired differences between systems are drawn. ``groups`` (indexed by image id, one column per
    grouping, e.g. easy-vqa's colour and shape) adds estimates over each group's questions,
    "VQA accuracy (colour red)".

    A question with ten ground-truth answers (VQAv2) is scored exactly as the official evaluator
    does. A question with a single clean answer (easy-vqa) is scored as ten identical answers after
    normalising the prediction and the answer: the official code skips normalisation when all ten
    answers agree, which for one clean word would only count "no," or "No" as wrong.
    """
    import numpy as np

    from pipeline.metrics.intervals import Estimate, resamples_of

    # Resampled in question-id order, so a question's draw does not depend on the table's order.
    answers = answers.sort_values("question_id", kind="stable", ignore_index=True)
    types = dict(zip(answers["question_id"], answers["answer_type"], strict=True))
    per_question = answers[["question_id", "image_id", "answer_type"]].copy()
    # The images, in id order, are the unit resampled: each question's cluster is its image.
    images, clusters = np.unique(answers["image_id"].astype(str).to_numpy(), return_inverse=True)
    image_rows = resamples_of(len(images), resamples, seed)
    scored = {"prediction": ("VQA accuracy", "accuracy"), "closed_prediction": (CLOSED_VOCABULARY, "closed_accuracy")}
    estimates = {}
    for column, (metric, name) in ((c, scored[c]) for c in scored if c in answers):
        gt, predictions = {}, {}
        for q, prediction, a in zip(answers["question_id"], answers[column], answers["answers"], strict=True):
            single = len(a) == 1
            gt[q] = [normalise(a[0])] * 10 if single else list(a)
            predictions[q] = normalise(prediction) if single else prediction
        vqa_accuracy(predictions, gt, types)  # the official checks: every question answered
        # Unrounded: the official report rounds to 2 decimals only for display.
        per_question[name] = [100 * question_accuracy(predictions[q], gt[q]) for q in answers["question_id"]]
        subsets = [(metric, np.ones(len(answers), dtype=bool))]
        for answer_type in sorted(per_question["answer_type"].unique()):
            subsets.append((f"{metric} ({answer_type})", (per_question["answer_type"] == answer_type).to_numpy()))
        for grouping in [] if groups is None else groups.columns:
            group_of = answers["image_id"].map(groups[grouping])
            for group in sorted(group_of.dropna().unique()):
                subsets.append((f"{metric} ({grouping} {group})", (group_of == group).to_numpy()))
        for label, chosen in subsets:
            estimates[label] = Estimate.mean(per_question.loc[chosen, name], image_rows, clusters[chosen])
    return estimates, per_question
