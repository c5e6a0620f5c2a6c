"""The gallery: a fixed sample of evaluation images with every system's caption and VQA answers,
as a tidy table and as PNGs for the Dagster UI."""

import pandas as pd

from pipeline.datasets.manifest import load_image, seeded_ids
from pipeline.plots import gallery_png

COLUMNS = ["task", "image_id", "question", "system", "shots", "text"]
REFERENCE = "reference"  # the ``system`` of a reference caption or ground-truth answer


def caption_samples(manifest: pd.DataFrame, captions: dict[str, pd.DataFrame], images: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``images`` images captioned by every system in ``captions`` (system ->
    table of image_id, caption): one row per reference caption and per system's caption."""
    common = set(manifest["image_id"])
    for table in captions.values():
        common &= set(table["image_id"])
    references = manifest.set_index("image_id")["captions"]
    by_system = {system: table.set_index("image_id")["caption"] for system, table in captions.items()}
    rows = []
    for image_id in seeded_ids(common, images, seed):
        rows += [("captioning", image_id, "", REFERENCE, 0, text) for text in references[image_id]]
        rows += [("captioning", image_id, "", system, 0, caption[image_id]) for system, caption in by_system.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def vqa_samples(answers: dict[tuple[str, int], pd.DataFrame], questions: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``questions`` questions asked of every system at every shot count in
    ``answers`` ((system, shots) -> answer table): the most common ground-truth answer, and each
    system's open-ended answer (with its closed-vocabulary answer, when there is one)."""
    tables = [table.set_index("question_id") for table in answers.values()]
    if not tables:
        return pd.DataFrame(columns=COLUMNS)
    common = set.intersection(*(set(table.index) for table in tables))
    first = tables[0]
    rows = []
    for question_id in seeded_ids(common, questions, seed):
        image_id, question, truth = first.loc[question_id, ["image_id", "question", "answers"]]
        rows.append(("vqa", image_id, question, REFERENCE, 0, pd.Series(list(truth)).mode()[0]))
        for (system, shots), table in zip(answers, tables, strict=True):
            answer = table.loc[question_id]
            text = repr(answer["prediction"])  # an empty answer shows as ''
            if "closed_prediction" in answer:
                text += f"/{answer['closed_prediction']}"
            rows.append(("vqa", image_id, question, system, shots, text))
    return pd.DataFrame(rows, columns=COLUMNS)


def gallery_pngs(gallery: pd.DataFrame, image_paths: dict) -> dict[str, bytes]:
    """One PNG per task of the gallery: each image beside its systems' outputs. ``image_paths``
    maps an image id to its file."""
    pngs = {}
    for task, rows in gallery.groupby("task", sort=False):
        items = []
        for (image_id, question), item in rows.groupby(["image_id", "question"], sort=False):
            image, _ = load_image(image_paths[image_id])
            truth = item[item["system"] == REFERENCE]["text"].tolist()
            outputs = item[item["system"] != REFERENCE].assign(text=lambda t: t["text"].str.split().str.join(" "))
            if task == "captioning":
                heading = f"{image_id}: " + " | ".join(truth)
                lines = [f"{system}: {text}" for system, text in zip(outputs["system"], outputs["text"], strict=True)]
            else:
                heading = f"{image_id}: {question}  (answer: {truth[0]}; each system: open 'answer'/closed answer)"
                lines = [
                    f"{system}: "
                    + "  ".join(f"{shots}-shot {text}" for shots, text in zip(g["shots"], g["text"], strict=True))
                    for system, g in outputs.groupby("system", sort=False)
                ]
            items.append((image, heading, lines))
        pngs[task] = gallery_png(items, f"{task}: every system on the same sample")
    return pngs
