"""easy-VQA (PyPI ``easy-vqa``): 64x64 images of one coloured shape, with questions.

The package has no captions. An image's colour and shape mostly follow from its questions and
answers ("what is the blue shape?" -> rectangle gives both; yes/no questions, some negated, rule
values in or out), which yields one reference caption per image: "a {colour} {shape}". About one
image in ten is left undetermined by its questions; for those the pixels decide: shapes are drawn
in exact palette colours, and the shape's fill of its bounding box separates rectangles (~1.0),
circles (~0.8) and triangles (~0.5). tests/test_easy_vqa.py checks that the pixel rule agrees with
the questions on every image where both apply.
"""

import re
from collections import defaultdict

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.datasets.manifest import DatasetError, ReadResult, split_off_validation, validate_manifest

# easy-vqa draws with these exact RGB values (PIL's names, except green, which is full 0,255,0).
PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "rectangle", "triangle")
SPLITS = ("train", "val", "test")

_WORD = re.compile(r"[a-z]+")
_NEGATION = {"not", "no"}


def _package():
    try:
        import easy_vqa
    except ImportError as error:
        raise ImportError(
            "the embedded default dataset needs the package easy-vqa: pip install easy-vqa==1.0"
        ) from error
    return easy_vqa


def derive_attributes(qa_pairs: list[tuple[str, str]]) -> dict[str, str | None]:
    """Colour and shape of one image from its (question, answer) pairs; None where undetermined.

    Raises DatasetError when the answers contradict each other.
    """
    candidates = {"colour": set(COLOURS), "shape": set(SHAPES)}
    known: dict[str, set[str]] = {"colour": set(), "shape": set()}

    def attribute(word):
        return "colour" if word in COLOURS else "shape" if word in SHAPES else None

    for question, answer in qa_pairs:
        words = _WORD.findall(question.lower())
        mentioned = [w for w in words if attribute(w)]
        if answer in COLOURS or answer in SHAPES:
            # "what colour is the X?" / "what is the X shape?": the answer and any mentioned word hold.
            for word in [answer, *mentioned]:
                known[attribute(word)].add(word)
        elif answer in ("yes", "no"):
            holds = (answer == "yes") != bool(_NEGATION & set(words))
            for word in mentioned:
                if holds:
                    known[attribute(word)].add(word)
                else:
                    candidates[attribute(word)].discard(word)
        else:
            raise DatasetError(f"unexpected answer {answer!r} to {question!r}")

    result = {}
    for name in ("colour", "shape"):
        if len(known[name]) > 1 or (known[name] and not known[name] <= candidates[name]):
            raise DatasetError(f"contradictory {name} evidence: {sorted(known[name])} vs {sorted(candidates[name])}")
        if known[name]:
            result[name] = next(iter(known[name]))
        elif len(candidates[name]) == 1:
            result[name] = next(iter(candidates[name]))
        else:
            result[name] = None
    return result


def attributes_from_pixels(path: str) -> dict[str, str]:
    """Colour (the palette colour with most exact pixels) and shape (bounding-box fill) of an image."""
    image = np.asarray(Image.open(path).convert("RGB")).astype(np.int32)
    pixels = image.reshape(-1, 3)
    counts = {name: int((pixels == rgb).all(axis=1).sum()) for name, rgb in PALETTE.items()}
    colour = max(counts, key=counts.get)
    if counts[colour] == 0:
        raise DatasetError(f"{path}: no pixel has an easy-vqa palette colour")
    background = np.median(pixels, axis=0)
    # Anti-aliased edge pixels count as shape when nearer the shape colour than the background.
    mask = np.abs(image - PALETTE[colour]).sum(-1) < np.abs(image - background).sum(-1)
    rows, cols = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
    shape = "triangle" if fill < 0.7 else "circle" if fill < 0.93 else "rectangle"
    return {"colour": colour, "shape": shape}


def caption_for(attributes: dict[str, str | None]) -> str | None:
    if attributes["colour"] is None or attributes["shape"] is None:
        return None
    return f"a {attributes['colour']} {attributes['shape']}"


def _read_package_split(package_split: str) -> pd.DataFrame:
    easy_vqa = _package()
    questions, answers, image_ids = (
        easy_vqa.get_train_questions() if package_split == "train" else easy_vqa.get_test_questions()
    )
    paths = easy_vqa.get_train_image_paths() if package_split == "train" else easy_vqa.get_test_image_paths()

    by_image = defaultdict(list)
    for index, (question, answer, image_id) in enumerate(zip(questions, answers, image_ids, strict=True)):
        by_image[image_id].append(
            {
                "question_id": f"{package_split}-{index}",
                "question": question,
                "answers": [answer],
                "answer": answer,
                "answer_type": "yes/no" if answer in ("yes", "no") else "other",
            }
        )
    rows = []
    for image_id in sorted(paths):
        image_questions = by_image.get(image_id, [])
        try:
            attributes = derive_attributes([(q["question"], q["answers"][0]) for q in image_questions])
        except DatasetError as error:
            raise DatasetError(f"easy-vqa {package_split} image {image_id}: {error}") from error
        if None in attributes.values():
            from_pixels = attributes_from_pixels(paths[image_id])
            attributes = {k: v if v is not None else from_pixels[k] for k, v in attributes.items()}
        caption = caption_for(attributes)
        rows.append(
            {
                "image_id": str(image_id),
                "image_path": paths[image_id],
                "captions": [caption] if caption else [],
                "questions": image_questions,
            }
        )
    return validate_manifest(pd.DataFrame(rows), f"easy-vqa {package_split}")


# The manifests asset's settings this reader takes: the validation split carved from train.
OPTIONS = ("val_size", "seed")


def how_to_get(part: str) -> str:
    return "easy-vqa ships inside the easy-vqa package: nothing to fetch"


def list_parts(root=None) -> list[str]:
    """The package ships every split, so the raw-data root plays no part."""
    return sorted(SPLITS)


def read_manifest(part: str, *, root=None, val_size: int, seed: int) -> ReadResult:
    """One split: ``train`` and ``val`` are carved from the package's train set, ``test`` is its test set.
    Nothing is skipped: every record of the fixed package reads (tests/test_easy_vqa.py checks)."""
    if part not in SPLITS:
        raise KeyError(f"easy-vqa has splits {SPLITS}, not {part!r}")
    if part == "test":
        return ReadResult(_read_package_split("test"), [])
    train, val = split_off_validation(_read_package_split("train"), size=val_size, seed=seed)
    return ReadResult(train if part == "train" else val, [])


def reference_attributes(reference: str) -> tuple[str, str]:
    """The colour and shape of an image's reference caption, "a {colour} {shape}"."""
    _, colour, shape = reference.split()
    return colour, shape


def caption_hits(caption: str, reference: str) -> dict[str, bool]:
    """Whether a caption names the reference's colour, its shape, and both, exactly: the right word
    and no other colour (or shape) word, so listing every colour or shape earns nothing."""
    words = set(_WORD.findall(caption.lower()))
    colour, shape = reference_attributes(reference)
    colour_ok = words & set(COLOURS) == {colour}
    shape_ok = words & set(SHAPES) == {shape}
    return {"colour": colour_ok, "shape": shape_ok, "colour+shape": colour_ok and shape_ok}


def subset_metrics(
    manifest: pd.DataFrame,
    references: dict[str, list[str]],
    candidates: dict[str, str],
    resamples: int = 0,
    seed: int = 0,
) -> tuple[dict, pd.DataFrame]:
    """Share of captions that name exactly the image's colour, its shape, and both (x100; see
    ``caption_hits``), with bootstrap intervals over the images; and "names colour+shape (%)" over
    the images of each colour and each shape present ("... (colour red)", "... (shape circle)"):
    which concepts pass through the map. The references say both, so the manifest is not needed."""
    from pipeline.metrics.intervals import Estimate, resamples_of

    ids = pd.Index(list(candidates), name="image_id")
    hits = pd.DataFrame([caption_hits(caption, references[i][0]) for i, caption in candidates.items()], index=ids)
    per_image = 100.0 * hits.rename(columns=lambda k: f"names {k} (%)").astype(float)
    attributes = pd.DataFrame(
        [reference_attributes(references[i][0]) for i in ids], index=ids, columns=["colour", "shape"]
    )
    both = per_image["names colour+shape (%)"]
    for attribute, values in (("colour", COLOURS), ("shape", SHAPES)):
        for value in (v for v in values if (attributes[attribute] == v).any()):
            # NaN outside the subset, so paired differences keep to its images.
            per_image[f"names colour+shape (%) ({attribute} {value})"] = both.where(attributes[attribute] == value)
    estimates = {}
    for metric in per_image:
        values = per_image[metric].dropna()
        estimates[metric] = Estimate.mean(values, resamples_of(len(values), resamples, seed))
    return estimates, per_image


def vqa_groups(manifest: pd.DataFrame) -> pd.DataFrame:
    """The groups VQA accuracy is also reported over (indexed by image id): each image's colour and
    shape."""
    attributes = [reference_attributes(captions[0]) for captions in manifest["captions"]]
    return pd.DataFrame(attributes, index=pd.Index(manifest["image_id"], name="image_id"), columns=["colour", "shape"])
