"""VQAv2 open-ended questions on COCO 2014 images, ten human answers each.

``vqav2/v2_OpenEnded_mscoco_{train2014,val2014}_questions.json`` (``questions``: image_id,
question, question_id) and ``vqav2/v2_mscoco_{train2014,val2014}_annotations.json``
(``annotations``: question_id, image_id, answer_type, multiple_choice_answer, answers: ten
{answer, ...}); images are COCO's, at ``coco/{split}2014/COCO_{split}2014_{image_id:012d}.jpg``.
Parts "train" and "val"; one manifest row per image with all its questions and no captions. A
question's ``answer`` is its ``multiple_choice_answer``, the consensus answer that few-shot
solved examples show (the most frequent of the ten where an annotation lacks it).
"""

from pathlib import Path

from pipeline.datasets.manifest import (
    ReadResult,
    build_result,
    consensus_answer,
    dataset_dir,
    json_list,
    read_json_file,
    record_problem,
    skipped_record,
)

SPLITS = ("train", "val")
ANSWERS_PER_QUESTION = 10  # the official accuracy compares each answer with the other nine
HOW_TO_GET = (
    "Get the questions and annotations from https://visualqa.org/download.html "
    "(https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_{Questions,Annotations}_{Train,Val}_mscoco.zip) "
    "and unzip them in <root>/vqav2/; the images are COCO's, from http://images.cocodataset.org/zips/"
    "{train2014,val2014}.zip unzipped in <root>/coco/."
)


def _files(directory: Path, split: str) -> tuple[Path, Path]:
    return (
        directory / f"v2_OpenEnded_mscoco_{split}2014_questions.json",
        directory / f"v2_mscoco_{split}2014_annotations.json",
    )


OPTIONS = ()  # read with no settings of the manifests asset


def how_to_get(part: str) -> str:
    return HOW_TO_GET


def list_parts(root) -> list[str]:
    """A split counts as present when either of its files is, so reading it says which one is missing."""
    directory = dataset_dir(root, "vqav2")
    return sorted(split for split in SPLITS if any(path.is_file() for path in _files(directory, split)))


def read_manifest(part: str, *, root) -> ReadResult:
    if part not in SPLITS:
        raise KeyError(f"VQAv2 has parts {SPLITS} (test answers are not public), not {part!r}")
    questions_path, annotations_path = _files(dataset_dir(root, "vqav2"), part)
    questions = json_list(read_json_file(questions_path, HOW_TO_GET), "questions", questions_path)
    annotations = json_list(read_json_file(annotations_path, HOW_TO_GET), "annotations", annotations_path)
    annotated, rejected, skipped = _annotations_by_question(annotations, annotations_path)

    by_image: dict[int, tuple[str, list[dict]]] = {}  # image id -> (its first question's record, questions)
    seen = set()
    for index, question in enumerate(questions):
        record = f"questions[{index}]"
        problem = record_problem(question, {"question_id": int, "image_id": int, "question": str})
        if not problem:
            question_id = question["question_id"]
            if question_id in seen:
                problem = f"duplicate question id {question_id} (the first is kept)"
            elif question_id not in annotated:
                problem = rejected.get(question_id, f"question {question_id} has no annotation")
            elif annotated[question_id]["image_id"] != question["image_id"]:
                problem = (
                    f"question {question_id} is about image {question['image_id']} but its annotation "
                    f"about image {annotated[question_id]['image_id']}"
                )
        if problem:
            skipped.append(skipped_record(questions_path, record, problem))
            continue
        seen.add(question_id)
        annotation = annotated[question_id]
        answers = [answer["answer"] for answer in annotation["answers"]]
        consensus = annotation.get("multiple_choice_answer")
        by_image.setdefault(question["image_id"], (record, []))[1].append(
            {
                "question_id": str(question_id),
                "question": question["question"],
                "answers": answers,
                "answer": consensus if isinstance(consensus, str) else consensus_answer(answers),
                "answer_type": annotation["answer_type"],
            }
        )

    images = dataset_dir(root, "coco") / f"{part}2014"
    rows = [
        (
            record,
            {
                "image_id": str(image_id),
                "image_path": str(images / f"COCO_{part}2014_{image_id:012d}.jpg"),
                "captions": [],
                "questions": image_questions,
            },
        )
        for image_id, (record, image_questions) in by_image.items()
    ]
    return build_result(rows, skipped, questions_path)


def _annotations_by_question(annotations: list, path: Path) -> tuple[dict[int, dict], dict[int, str], list[dict]]:
    """Usable annotations by question id; why the others were rejected, by question id, so their
    question is skipped once with that reason; and skipped entries for annotations naming no question."""
    annotated, rejected, skipped = {}, {}, []
    for index, annotation in enumerate(annotations):
        record = f"annotations[{index}]"
        problem = record_problem(annotation, {"question_id": int, "image_id": int, "answer_type": str, "answers": list})
        if problem:
            question_id = annotation.get("question_id") if isinstance(annotation, dict) else None
            if isinstance(question_id, int):
                rejected.setdefault(question_id, f"its annotation ({record}) is a {problem}")
            else:
                skipped.append(skipped_record(path, record, problem))
            continue
        answers, question_id = annotation["answers"], annotation["question_id"]
        if not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
            rejected.setdefault(question_id, f"its annotation ({record}) has an answer without 'answer' text")
        elif len(answers) != ANSWERS_PER_QUESTION:
            rejected.setdefault(
                question_id, f"its annotation ({record}) has {len(answers)} answers, expected {ANSWERS_PER_QUESTION}"
            )
        elif question_id in annotated:  # a repeated annotation: the first is kept, the repeat is counted
            same = annotated[question_id]["answers"] == answers
            skipped.append(
                skipped_record(
                    path,
                    record,
                    f"duplicate annotation of question {question_id} "
                    f"({'identical' if same else 'conflicting answers'}; the first is kept)",
                )
            )
        else:
            annotated[question_id] = annotation
    return annotated, rejected, skipped
