"""The run-wide resource: where storage lives, which LM is frozen, which device runs the models."""

import os
from pathlib import Path

import dagster as dg
import torch
from pydantic import Field

from assets.config import PROFILE
from storage import StorageLayout


class Limber(dg.ConfigurableResource):
    storage_root: str = Field(
        default=os.environ.get("LIMBER_STORAGE", "data"), description="root of every stored artifact (LIMBER_STORAGE)"
    )
    language_model: str = Field(
        default=PROFILE["models"]["language_model"], description="registered LM name, HF id or local path"
    )
    device: str = Field(default="auto", description="'auto' picks CUDA when present, else CPU")

    @property
    def layout(self) -> StorageLayout:
        return StorageLayout(Path(self.storage_root).absolute())

    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device
