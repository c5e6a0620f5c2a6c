"""LiMBeR's only trained part: one linear layer from image features to LM input embeddings."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.encoders import TokenLayout


class LinearMap(nn.Module):
    """(B, positions, feature_dim) -> (B, positions * tokens_per_position, lm_dim).

    A grid backbone uses one token per position (the same layer at every position); a pooled one
    maps its single vector to k tokens. Dropout 0.1 on the projected embeddings, no LayerNorm.
    """

    def __init__(self, feature_dim: int, lm_dim: int, layout: TokenLayout, dropout: float = 0.1):
        super().__init__()
        self.layout = layout
        self.lm_dim = lm_dim
        self.proj = nn.Linear(feature_dim, lm_dim * layout.tokens_per_position)
        self.norm = nn.Identity()  # LiMBeR has none; the tuned baseline's prefix sets a LayerNorm here
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        tokens = self.proj(features).reshape(batch, self.layout.num_tokens, self.lm_dim)
        # Dropout before the norm, as MAGMA's image prefix (magma/image_prefix.py); LiMBeR's Identity
        # norm makes the order moot.
        return self.norm(self.dropout(tokens))

    def config(self) -> dict:
        return {
            "feature_dim": self.proj.in_features,
            "lm_dim": self.lm_dim,
            "layout": vars(self.layout),
            "dropout": self.dropout.p,
        }

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # A map saved over another: the old weights go first, so a crash never pairs them with the new config.
        (directory / "linear_map.safetensors").unlink(missing_ok=True)
        (directory / "config.json").write_text(json.dumps({**self.config(), **(extra or {})}, indent=2))
        # The weights, written last, mark the map finished.
        save_file(
            {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()},
            directory / "linear_map.safetensors",
        )

    @staticmethod
    def stored_config(directory: str | Path) -> dict | None:
        """The config saved with a finished map in ``directory`` (a local path, or a UPath on an
        object store: only the small config is read), with its ``extra``; None when no map is there."""
        directory = directory if isinstance(directory, Path) or hasattr(directory, "fs") else Path(directory)
        if not (directory / "linear_map.safetensors").exists():
            return None
        return json.loads((directory / "config.json").read_text())

    @classmethod
    def stored_key(cls, directory: str | Path) -> str | None:
        """The ``key`` saved with a finished map in ``directory`` (None when no map is saved there)."""
        config = cls.stored_config(directory)
        return None if config is None else config.get("key", "")

    @classmethod
    def from_config(cls, config: dict) -> "LinearMap":
        """An untrained map of the shape a stored ``config`` describes."""
        return cls(config["feature_dim"], config["lm_dim"], TokenLayout(**config["layout"]), config["dropout"])

    @classmethod
    def load(cls, directory: str | Path) -> "LinearMap":
        """The map of this class saved in ``directory`` (``pipeline.adapters.load_map``: of either kind)."""
        directory = Path(directory)
        linear_map = cls.from_config(json.loads((directory / "config.json").read_text()))
        linear_map.load_state_dict(load_file(directory / "linear_map.safetensors"))
        return linear_map
