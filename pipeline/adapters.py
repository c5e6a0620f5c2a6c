"""The tuned baseline: MAGMA's recipe on the same cached features (Aleph-Alpha/magma,
``configs/MAGMA_v1.yml``, ``magma/adapters.py`` and ``magma/image_prefix.py``).

MAGMA trains an image prefix (a linear projection, then dropout, then LayerNorm) together with
bottleneck adapters after each feed-forward block of the frozen LM: ``h + Up(ReLU(Down(h)))``,
Down d -> d / 4, initialised near identity. Here the image encoder stays frozen (its features
are cached), so the prefix and the adapters are what is trained, with LiMBeR's loss, data, steps
and batch: the one difference from the linear map is the added capacity.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from pipeline.encoders import TokenLayout
from pipeline.linear_map import LinearMap


class Adapter(nn.Module):
    """``h + Up(ReLU(Down(h)))``. Weights and biases start at N(0, 1e-3) clamped to +-2e-3, as in
    MAGMA, so the adapted LM starts as the frozen one."""

    def __init__(self, width: int, reduction: int):
        super().__init__()
        self.down = nn.Linear(width, width // reduction)
        self.up = nn.Linear(width // reduction, width)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.normal_(0.0, 1e-3).clamp_(-2e-3, 2e-3)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # Kept in float32 while the LM may compute in bfloat16: cast in and out.
        update = self.up(torch.relu(self.down(hidden.to(self.down.weight.dtype))))
        return hidden + update.to(hidden.dtype)


def feed_forward_blocks(lm) -> list[nn.Module]:
    """The LM's decoder blocks, each holding its feed-forward block as ``.mlp`` (GPT-J, Llama)."""
    blocks = [module for module in lm.modules() if isinstance(getattr(module, "mlp", None), nn.Module)]
    layers = lm.config.num_hidden_layers
    if len(blocks) != layers:
        raise TypeError(
            f"{type(lm).__name__}: found {len(blocks)} blocks with a feed-forward `.mlp` for {layers} layers; "
            "adapters need one per layer"
        )
    return blocks


class AdaptedMap(LinearMap):
    """MAGMA's image prefix (linear, dropout, LayerNorm) and one adapter per LM layer, trained together.

    The adapters are this module's parameters (saved, checkpointed and optimised with the map);
    ``adapted`` puts them into the LM while it runs."""

    def __init__(self, feature_dim: int, lm_dim: int, layout: TokenLayout, dropout: float, layers: int, reduction: int):
        super().__init__(feature_dim, lm_dim, layout, dropout)
        self.norm = nn.LayerNorm(lm_dim)
        self.reduction = reduction
        self.adapters = nn.ModuleList(Adapter(lm_dim, reduction) for _ in range(layers))

    def config(self) -> dict:
        # A stored map says the prefix order it was trained with: maps trained before the order
        # matched MAGMA's (LayerNorm, then dropout) have no "prefix".
        return {
            **super().config(),
            "prefix": "dropout, LayerNorm",
            "adapters": {"layers": len(self.adapters), "reduction": self.reduction},
        }

    @classmethod
    def from_config(cls, config: dict) -> "AdaptedMap":
        shape = (config["feature_dim"], config["lm_dim"], TokenLayout(**config["layout"]), config["dropout"])
        return cls(*shape, **config["adapters"])


def load_map(directory: str | Path) -> LinearMap:
    """The map saved in ``directory``: the tuned baseline's when its config has adapters, else LiMBeR's."""
    config = LinearMap.stored_config(directory)
    if config is None:
        raise FileNotFoundError(f"no finished map in {directory}: materialize linear_map (or adapters) first")
    return (AdaptedMap if "adapters" in config else LinearMap).load(directory)


@contextmanager
def adapted(lm, linear_map: LinearMap | None) -> Iterator[None]:
    """While inside, the LM runs the map's adapters after each feed-forward block; afterwards it is
    as it was (one loaded LM serves every system). A map without adapters leaves the LM as it is."""
    adapters = getattr(linear_map, "adapters", None)
    if adapters is None:
        yield
        return
    blocks = feed_forward_blocks(lm)
    originals = [block.mlp for block in blocks]
    adapters.to(lm.get_input_embeddings().weight.device)
    try:
        for block, adapter in zip(blocks, adapters, strict=True):
            block.mlp = nn.Sequential(block.mlp, adapter)
        yield
    finally:
        for block, mlp in zip(blocks, originals, strict=True):
            block.mlp = mlp
