"""Dataset readers. Each reader turns one *part* of a dataset into a *manifest*: one row per image.

A part is a split, optionally with a shard suffix ("val2014", "train.00003"), small enough to read
in one go; ``list_parts`` says which parts the raw-data root holds.

Manifest columns (the contract every downstream stage relies on):

- ``image_id`` (str): unique within the part.
- ``image_path`` (str): absolute path of the image file, or an fsspec URL such as a webdataset tar
  member ``tar://key.jpg::/abs/shard.tar``; open it with ``load_image``.
- ``captions`` (list[str]): reference captions (may be empty for VQA-only data).
- ``questions`` (list[dict]): ``question_id`` (str), ``question`` (str), ``answers`` (list[str],
  ten for VQAv2), ``answer`` (str: the consensus answer, VQAv2's ``multiple_choice_answer``, else
  ``consensus_answer(answers)``; what a few-shot solved example shows), ``answer_type`` (str).

A reader may add columns (NoCaps: ``domain``). Records it cannot use are skipped and listed in
``ReadResult.skipped`` with the file, the record and the reason; a missing or unparsable
annotation file raises ``DatasetError`` saying where to get it and where to put it.
"""

import importlib
from typing import Protocol, runtime_checkable

import pandas as pd

from pipeline.datasets.manifest import (
    MANIFEST_COLUMNS,
    DatasetError,
    ReadResult,
    consensus_answer,
    load_image,
    seeded_ids,
    split_off_validation,
    validate_manifest,
)

DATASETS = {
    "easy_vqa": "pipeline.datasets.easy_vqa",
    "cc3m": "pipeline.datasets.cc3m",
    "coco": "pipeline.datasets.coco",
    "nocaps": "pipeline.datasets.nocaps",
    "vqav2": "pipeline.datasets.vqav2",
}


@runtime_checkable
class DatasetReader(Protocol):
    """What every reader module (``DATASETS``) defines."""

    OPTIONS: tuple[str, ...]  # the manifests asset's settings ``read_manifest`` takes (easy-vqa: val_size, seed)

    def list_parts(self, root) -> list[str]:
        """The parts present under the raw-data root, sorted."""

    def read_manifest(self, part: str, *, root, **options) -> ReadResult:
        """One part's manifest and the records skipped."""

    def how_to_get(self, part: str) -> str:
        """Where to get a part's files and where to put them under the raw-data root."""


@runtime_checkable
class CaptionSubsets(Protocol):
    """Optional: caption metrics over a dataset's own subsets (NoCaps's domains, easy-vqa's colours
    and shapes), beside the standard ones."""

    def subset_metrics(
        self, manifest: pd.DataFrame, references: dict, candidates: dict, resamples: int, seed: int
    ) -> tuple[dict, pd.DataFrame]:
        """``pipeline.metrics.intervals.Estimate`` by name, and per-image scores (indexed by image id)."""


@runtime_checkable
class VqaGroups(Protocol):
    """Optional: image groups a dataset's VQA accuracy is also reported over (easy-vqa: colour, shape)."""

    def vqa_groups(self, manifest: pd.DataFrame) -> pd.DataFrame:
        """One column per grouping, indexed by image id."""


def reader(dataset: str) -> DatasetReader:
    """The registered reader of ``dataset``, checked against ``DatasetReader``."""
    if dataset not in DATASETS:
        raise KeyError(f"unknown dataset {dataset!r}; registered: {sorted(DATASETS)}")
    module = importlib.import_module(DATASETS[dataset])
    if not isinstance(module, DatasetReader):
        missing = [
            name for name in ("OPTIONS", "list_parts", "read_manifest", "how_to_get") if not hasattr(module, name)
        ]
        raise TypeError(f"{DATASETS[dataset]} is not a DatasetReader: it lacks {missing}")
    return module


def list_parts(dataset: str, root, **options) -> list[str]:
    """The parts of a dataset present under the raw-data root, sorted."""
    return reader(dataset).list_parts(root, **options)


def read_manifest(dataset: str, part: str, root=None, **options) -> ReadResult:
    """Reads one part of a registered dataset: its manifest and the records skipped."""
    return reader(dataset).read_manifest(part, root=root, **options)


def how_to_get(dataset: str, part: str) -> str:
    """Where to get a dataset part's files and where to put them under the raw-data root."""
    return reader(dataset).how_to_get(part)


def dataset_subset_metrics(
    dataset: str, manifest: pd.DataFrame, references: dict, candidates: dict, resamples: int = 0, seed: int = 0
) -> tuple[dict, pd.DataFrame]:
    """Caption metrics particular to a dataset (``CaptionSubsets``; none for most), beside the
    standard ones: their ``pipeline.metrics.intervals.Estimate`` by name, and their per-image scores
    (indexed by image id)."""
    module = reader(dataset)
    if not isinstance(module, CaptionSubsets):
        return {}, pd.DataFrame(index=pd.Index([], name="image_id"))
    return module.subset_metrics(manifest, references, candidates, resamples, seed)


def dataset_vqa_groups(dataset: str, manifest: pd.DataFrame) -> pd.DataFrame:
    """Image groups a dataset's VQA accuracy is also reported over (``VqaGroups``), one column per
    grouping, indexed by image id; no columns for most datasets."""
    module = reader(dataset)
    if not isinstance(module, VqaGroups):
        return pd.DataFrame(index=pd.Index(manifest["image_id"], name="image_id"))
    return module.vqa_groups(manifest)


__all__ = [
    "DATASETS",
    "CaptionSubsets",
    "DatasetReader",
    "VqaGroups",
    "MANIFEST_COLUMNS",
    "DatasetError",
    "ReadResult",
    "consensus_answer",
    "dataset_subset_metrics",
    "dataset_vqa_groups",
    "how_to_get",
    "list_parts",
    "load_image",
    "read_manifest",
    "reader",
    "seeded_ids",
    "split_off_validation",
    "validate_manifest",
]
