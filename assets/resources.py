"""The run-wide resource: where storage and raw data live, which LM is frozen, which device runs the models."""

import dagster as dg
import torch
from pydantic import Field

from assets.config import PROFILE
from pipeline import settings
from pipeline.devices import compute_dtype, cpu_precision
from pipeline.language_models import load_language_model, prepared_description
from pipeline.machine import machine_record
from storage import StorageLayout
from storage.layout import LocalMirror


class Limber(dg.ConfigurableResource):
    storage_root: str = Field(
        default=settings.storage_root(),
        description="root of every stored artifact: a folder or an fsspec URL such as s3://bucket/prefix "
        f"({settings.STORAGE_ENV})",
    )
    data_root: str = Field(
        default=settings.data_root(),
        description=f"folder of the raw datasets (CC3M shards, COCO, NoCaps, VQAv2 files) ({settings.DATA_ENV})",
    )
    cache_dir: str = Field(
        default=settings.cache_dir(),
        description="local working copies of checkpoints when the storage root is an object store, and "
        f"this machine's measured CPU precision ({settings.CACHE_ENV})",
    )
    language_model: str = Field(
        default=PROFILE["models"]["language_model"], description="registered LM name, HF id or local path"
    )
    device: str = Field(default="auto", description="'auto' picks CUDA when present, else CPU")
    precision: str = Field(
        default=settings.precision(),
        description="dtype the frozen encoders and LM compute in: 'auto' (bfloat16 on CUDA; on a CPU, bfloat16 "
        "only where it was measured faster than float32 on this machine, once per CPU model, torch version and "
        "thread count, cached under the cache directory; else float32), 'bfloat16' or 'float32' "
        f"({settings.PRECISION_ENV})",
    )

    @property
    def layout(self) -> StorageLayout:
        return StorageLayout.at(self.storage_root)

    def mirror(self, path) -> LocalMirror:
        return LocalMirror(path, self.cache_dir)

    def prepared_lm(self) -> dict | None:
        """The description of the LM prepared under the storage root, or None (read in place: no
        checkpoint is fetched)."""
        return prepared_description(self.layout.language_model(self.language_model))

    def load_lm(self):
        """(model, tokenizer, description) of the prepared LM, frozen, on this resource's device."""
        directory = self.mirror(self.layout.language_model(self.language_model)).pull()
        return load_language_model(directory, self.torch_device(), self.compute_dtype())

    def compute_dtype(self) -> torch.dtype:
        return compute_dtype(self.torch_device(), self.precision, self.cache_dir)

    def machine(self) -> dict:
        """Where a result was computed, for its metadata: ``pipeline.machine.machine_record`` and the
        dtype; with ``auto`` on a CPU, also the timings the dtype was chosen by."""
        device = self.torch_device()
        record = {**machine_record(device), "precision": str(self.compute_dtype()).removeprefix("torch.")}
        if self.precision == "auto" and torch.device(device).type == "cpu":
            record["precision_measured"] = cpu_precision(self.cache_dir)
        return record

    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device
