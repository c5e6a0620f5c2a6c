"""Dataset readers. Each reader returns a *manifest*: one row per image.

Manifest columns (the contract every downstream stage relies on):

- ``image_id`` (str): unique within the split.
- ``image_path`` (str): absolute path of the image file.
- ``captions`` (list[str]): reference captions (may be empty for VQA-only data).
- ``questions`` (list[dict]): ``question_id`` (str), ``question`` (str), ``answers`` (list[str],
  ten for VQAv2), ``answer_type`` (str).
"""

from pipeline.datasets.manifest import (
    MANIFEST_COLUMNS,
    DatasetError,
    load_image,
    split_off_validation,
    validate_manifest,
)

DATASETS = {"easy_vqa": "pipeline.datasets.easy_vqa"}


def _reader(dataset: str):
    import importlib

    if dataset not in DATASETS:
        raise KeyError(f"unknown dataset {dataset!r}; registered: {sorted(DATASETS)}")
    return importlib.import_module(DATASETS[dataset])


def read_manifest(dataset: str, split: str, **options):
    """Reads one split of a registered dataset into a manifest DataFrame."""
    return _reader(dataset).read_manifest(split, **options)


def dataset_caption_metrics(dataset: str, references: dict, candidates: dict) -> dict[str, float]:
    """Caption metrics particular to a dataset (none for most)."""
    reader = _reader(dataset)
    return reader.caption_metrics(references, candidates) if hasattr(reader, "caption_metrics") else {}


__all__ = [
    "DATASETS",
    "MANIFEST_COLUMNS",
    "DatasetError",
    "dataset_caption_metrics",
    "load_image",
    "read_manifest",
    "split_off_validation",
    "validate_manifest",
]
