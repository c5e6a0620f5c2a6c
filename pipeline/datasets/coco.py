"""COCO captions (2014 images), as the official split files or as Karpathy's split.

- Official: ``coco/annotations/captions_{train2014,val2014}.json`` (``images``: id, file_name;
  ``annotations``: image_id, caption), images at ``coco/{train2014,val2014}/{file_name}``.
  Parts "train2014", "val2014".
- Karpathy: ``coco/dataset_coco.json`` (``images``: filepath, filename, cocoid, split,
  sentences[].raw), images at ``coco/{filepath}/{filename}``. Parts "karpathy_train" (its train
  and restval images, as is usual for training), "karpathy_val", "karpathy_test" (the usual
  captioning test set).

image_id is the COCO id as a string, so both layouts name an image alike.
"""

from collections import defaultdict

from pipeline.datasets.manifest import (
    MANIFEST_COLUMNS,
    ReadResult,
    build_result,
    dataset_dir,
    json_list,
    path_inside,
    read_json_file,
    record_problem,
    skipped_record,
)

OFFICIAL_SPLITS = ("train2014", "val2014")
KARPATHY_PARTS = {"karpathy_train": ("train", "restval"), "karpathy_val": ("val",), "karpathy_test": ("test",)}
KARPATHY_SPLITS = {split for splits in KARPATHY_PARTS.values() for split in splits}
OFFICIAL_HOW_TO_GET = (
    "Get it from http://images.cocodataset.org/annotations/annotations_trainval2014.zip and unzip it in "
    "<root>/coco/ (giving <root>/coco/annotations/); images from http://images.cocodataset.org/zips/"
    "{train2014,val2014}.zip into <root>/coco/."
)
KARPATHY_HOW_TO_GET = (
    "Get it from https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip and put "
    "dataset_coco.json in <root>/coco/; images from http://images.cocodataset.org/zips/"
    "{train2014,val2014}.zip into <root>/coco/."
)

OPTIONS = ()  # read with no settings of the manifests asset


def how_to_get(part: str) -> str:
    return KARPATHY_HOW_TO_GET if part in KARPATHY_PARTS else OFFICIAL_HOW_TO_GET


def list_parts(root) -> list[str]:
    directory = dataset_dir(root, "coco")
    parts = [split for split in OFFICIAL_SPLITS if _official_file(directory, split).is_file()]
    if (directory / "dataset_coco.json").is_file():
        parts += list(KARPATHY_PARTS)
    return sorted(parts)


def read_manifest(part: str, *, root) -> ReadResult:
    directory = dataset_dir(root, "coco")
    if part in OFFICIAL_SPLITS:
        return _read_official(directory, part)
    if part in KARPATHY_PARTS:
        return _read_karpathy(directory, KARPATHY_PARTS[part])
    raise KeyError(f"COCO has parts {[*OFFICIAL_SPLITS, *KARPATHY_PARTS]}, not {part!r}")


def _official_file(directory, split: str):
    return directory / "annotations" / f"captions_{split}.json"


def _read_official(directory, split: str) -> ReadResult:
    return read_coco_format(_official_file(directory, split), directory / split, OFFICIAL_HOW_TO_GET)


def read_coco_format(path, images, how_to_get: str, columns: dict[str, tuple[str, ...]] | None = None) -> ReadResult:
    """A caption file in the COCO format (``images``: id, file_name; ``annotations``: image_id,
    caption), images in the folder ``images``. ``columns`` names extra image fields copied into the
    manifest with their allowed values (NoCaps' domain)."""
    columns = columns or {}
    document = read_json_file(path, how_to_get)
    skipped = []
    image_records, known_ids = [], set()
    for index, image in enumerate(json_list(document, "images", path)):
        record = f"images[{index}]"
        problem = record_problem(image, {"id": int, "file_name": str, **dict.fromkeys(columns, str)})
        wrong = [
            f"{name} {image[name]!r} is not one of {allowed}"
            for name, allowed in columns.items()
            if not problem and image[name] not in allowed
        ]
        if problem or wrong:
            skipped.append(skipped_record(path, record, problem or wrong[0]))
            continue
        image_records.append((record, image))
        known_ids.add(image["id"])
    captions = defaultdict(list)
    for index, annotation in enumerate(json_list(document, "annotations", path)):
        record = f"annotations[{index}]"
        problem = record_problem(annotation, {"image_id": int, "caption": str})
        if problem:
            skipped.append(skipped_record(path, record, problem))
        elif annotation["image_id"] not in known_ids:
            skipped.append(skipped_record(path, record, f"caption for unknown image id {annotation['image_id']}"))
        elif annotation["caption"].strip():
            captions[annotation["image_id"]].append(annotation["caption"].strip())
        else:
            skipped.append(skipped_record(path, record, "empty caption"))
    rows = []
    for record, image in image_records:
        image_path, outside = path_inside(images, image["file_name"])
        if outside or not captions[image["id"]]:
            skipped.append(skipped_record(path, record, outside or f"image {image['id']} has no captions"))
            continue
        rows.append(
            (
                record,
                {
                    "image_id": str(image["id"]),
                    "image_path": str(image_path),
                    "captions": captions[image["id"]],
                    "questions": [],
                    **{name: image[name] for name in columns},
                },
            )
        )
    return build_result(rows, skipped, path, columns=[*MANIFEST_COLUMNS, *columns])


def _read_karpathy(directory, splits: tuple[str, ...]) -> ReadResult:
    """Records of the asked splits; a record whose split cannot be read is reported in every part,
    since no part can claim it."""
    path = directory / "dataset_coco.json"
    images = json_list(read_json_file(path, KARPATHY_HOW_TO_GET), "images", path)
    rows, skipped = [], []
    for index, image in enumerate(images):
        record = f"images[{index}]"
        split = image.get("split") if isinstance(image, dict) else None
        if not isinstance(split, str) or split not in KARPATHY_SPLITS:
            skipped.append(
                skipped_record(path, record, f"unknown split {split!r}, expected one of {sorted(KARPATHY_SPLITS)}")
            )
            continue
        if split not in splits:
            continue
        problem = record_problem(image, {"filepath": str, "filename": str, "cocoid": int, "sentences": list})
        sentences = [] if problem else [s.get("raw") if isinstance(s, dict) else None for s in image["sentences"]]
        if not problem and not all(isinstance(raw, str) for raw in sentences):
            problem = "malformed record: a sentence lacks its 'raw' text"
        if problem:
            skipped.append(skipped_record(path, record, problem))
            continue
        captions = [raw.strip() for raw in sentences if raw.strip()]
        if not captions:
            skipped.append(skipped_record(path, record, f"image {image['cocoid']} has no captions"))
            continue
        image_path, outside = path_inside(directory, image["filepath"], image["filename"])
        if outside:
            skipped.append(skipped_record(path, record, outside))
            continue
        rows.append(
            (
                record,
                {
                    "image_id": str(image["cocoid"]),
                    "image_path": str(image_path),
                    "captions": captions,
                    "questions": [],
                },
            )
        )
    return build_result(rows, skipped, path)
