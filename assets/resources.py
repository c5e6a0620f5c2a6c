"""The run-wide resource, ``runtime``: where storage and raw data live, which LM is frozen, which
device runs the models."""

import functools
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import torch
from pydantic import Field, PrivateAttr

from assets.config import PROFILE
from pipeline import settings
from pipeline.devices import compute_dtype, cpu_precision
from pipeline.gpus import GpuLeases, gpu_count
from pipeline.language_models import load_language_model, prepared_description
from pipeline.machine import machine_record
from storage import StorageLayout
from storage.layout import LocalMirror


class Runtime(dg.ConfigurableResource):
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
    device: str = Field(
        default="auto",
        description="'auto' picks CUDA when present, else CPU; on CUDA each step leases its own GPUs of the "
        f"machine ({settings.GPUS_ENV}), so steps running side by side never share one",
    )
    precision: str = Field(
        default=settings.precision(),
        description="dtype the frozen encoders and LM compute in: 'auto' (bfloat16 on CUDA; on a CPU, bfloat16 "
        "only where it was measured faster than float32 on this machine, once per CPU model, torch version and "
        "thread count, cached under the cache directory; else float32), 'bfloat16' or 'float32' "
        f"({settings.PRECISION_ENV})",
    )

    # The GPUs this step's process leases; they go back when the process ends, however it ends
    # (each step of the multiprocess and Kubernetes executors is its own process).
    _leases: GpuLeases | None = PrivateAttr(default=None)

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
        """(model, tokenizer, description) of the prepared LM, frozen, on this step's device."""
        return self.lm_loader()(self.torch_device())

    def lm_loader(self) -> Callable[[str], tuple]:
        """device -> (model, tokenizer, description) of the prepared LM, frozen; picklable, for the
        processes of data-parallel training, each of which loads its own copy."""
        directory = self.mirror(self.layout.language_model(self.language_model)).pull()
        return functools.partial(load_language_model, directory, dtype=self.compute_dtype())

    def compute_dtype(self) -> torch.dtype:
        return compute_dtype(self.torch_device(), self.precision, self.cache_dir)

    def machine(self) -> dict:
        """Where a result was computed, for its metadata: ``pipeline.machine.machine_record``, the
        devices this step leased and the dtype; with ``auto`` on a CPU, also the timings the dtype
        was chosen by."""
        device = self.torch_device()
        record = {**machine_record(device), "precision": str(self.compute_dtype()).removeprefix("torch.")}
        if self._leases and self._leases.held:
            record["devices"] = [f"cuda:{index}" for index in self._leases.held]
        if self.precision == "auto" and torch.device(device).type == "cpu":
            record["precision_measured"] = cpu_precision(self.cache_dir)
        return record

    def torch_device(self) -> str:
        """The device this step computes on: on CUDA, the first GPU it leases (one, unless it asked
        for more through ``torch_devices``)."""
        return self.torch_devices()[0]

    def torch_devices(self, count: int | None = None) -> list[str]:
        """``count`` devices for this step (None: what it holds, else one). On CUDA they are GPUs
        leased for this step alone, waiting while other steps hold them; on a CPU, the CPU ``count``
        times. 0 asks for every GPU of the machine."""
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if torch.device(device).type != "cuda" or torch.device(device).index is not None:
            return [device] * max(1, count or 1)  # a CPU, or a GPU named in the config: not leased
        if self._leases is None:
            self._leases = GpuLeases(Path(self.cache_dir).expanduser() / "gpu-leases", gpu_count())
        if not self._leases.count:  # CUDA named where torch sees no GPU: as named (torch says why on first use)
            return [device] * max(1, count or 1)
        wanted = self._leases.count if count == 0 else count or max(1, len(self._leases.held))
        if len(self._leases.held) != wanted:
            log = dg.get_dagster_logger()
            self._leases.acquire(wanted, on_wait=log.info)
            log.info(f"this step computes on GPU(s) {self._leases.held} of {self._leases.count}")
        return [f"cuda:{index}" for index in self._leases.held]
