"""The linear map per backbone, trained on cached train features into the frozen LM."""

import dagster as dg
import numpy as np
import pandas as pd
import torch

from assets.config import TrainingConfig
from assets.datasets import manifests
from assets.execution import GPU_POOL, GPU_TAGS
from assets.image_features import image_features
from assets.inputs import Inputs, MissingInput, stored_result
from assets.language_model import language_model
from assets.partitions import ON_MISSING, TRAIN, VALIDATION, backbone_partitions, registered_parts
from assets.resources import Limber
from pipeline.decoding import greedy_captions
from pipeline.encoders import backbone_spec
from pipeline.image_features import ChunkedRows, rows_by_id
from pipeline.linear_map import LinearMap
from pipeline.plots import loss_curve_png, markdown_image
from pipeline.training import train_linear_map, training_set

LOSS_DECREASED = "loss_decreased"


def loss_check_spec(asset: str) -> dg.AssetCheckSpec:
    """The trained-map assets' blocking check (``linear_map``, ``adapters``)."""
    return dg.AssetCheckSpec(
        LOSS_DECREASED,
        asset=asset,
        blocking=True,
        description="finite losses; mean loss of the last quarter of the steps below the first quarter's",
    )


def loss_check(losses: list[float]) -> dg.AssetCheckResult:
    """The loss fell: its mean over the last quarter of the steps is below that over the first quarter."""
    quarter = max(1, len(losses) // 4)
    first, last = float(np.mean(losses[:quarter])), float(np.mean(losses[-quarter:]))
    return dg.AssetCheckResult(
        check_name=LOSS_DECREASED,
        passed=bool(np.isfinite(losses).all() and last < first),
        metadata={"first_quarter_loss": round(first, 4), "last_quarter_loss": round(last, 4)},
    )


def _train_inputs(context, limber: Limber, backbone: str) -> tuple[Inputs, list[str], list]:
    """The train parts whose features are extracted, read through ``Inputs`` (so they are in the key)."""
    inputs = Inputs(limber)
    registered = registered_parts(context.instance, TRAIN)
    parts, read = [], []
    for part in registered:
        try:
            read.append((inputs.features(backbone, part), inputs.manifest(part)))
            parts.append(part)
        except MissingInput:
            continue
    if not parts:
        raise FileNotFoundError(
            f"no {backbone} features of a {TRAIN} part are extracted yet: materialize image_features first"
        )
    if len(parts) < len(registered):
        context.log.warning(
            f"{len(registered) - len(parts)} of {len(registered)} {TRAIN} parts have no "
            f"{backbone} features yet and are left out of training"
        )
    return inputs, parts, read


def validation_captions(context, limber: Limber, config: TrainingConfig, backbone: str, mapping, lm, tokenizer):
    """A few validation images captioned from the paper's prompt and from none: a small LM's own
    continuation of the prompt can override the image tokens, and both show it. Shown in the
    metadata only: they are not part of the stored map."""
    inputs = Inputs(limber)
    part = registered_parts(context.instance, VALIDATION)[0]
    manifest = inputs.manifest(part).head(config.sample_captions)
    store = inputs.features(backbone, part)
    rows = rows_by_id(store.ids, manifest["image_id"].tolist(), "validation captions")
    sample = torch.from_numpy(ChunkedRows(store.features)[rows])
    table = pd.DataFrame(
        {"image_id": manifest["image_id"], "reference": [c[0] if len(c) else "" for c in manifest["captions"]]}
    )
    for column, prompt in ((f"from '{config.sample_prompt}'", config.sample_prompt), ("no prompt", "")):
        table[column] = greedy_captions(
            mapping,
            lm,
            tokenizer,
            sample,
            prompt=prompt,
            max_new_tokens=config.sample_caption_tokens,
            device=limber.torch_device(),
        )
    return table


def trained_map(context, config: TrainingConfig, limber: Limber, backbone: str, system: str, new_map):
    """Trains (or reuses) ``system``'s map on ``backbone``'s train features and reports it, with its
    loss check. ``new_map(lm_dim, lm)`` makes the untrained map: LiMBeR's, or the tuned baseline's."""
    inputs, parts, read = _train_inputs(context, limber, backbone)
    inputs.language_model()
    key = inputs.key(training=config.weight_settings(), backbone=backbone)
    directory = limber.layout.linear_map(system, limber.language_model)
    mirror = limber.mirror(directory)
    local = mirror.pull()
    device = limber.torch_device()
    lm, tokenizer, lm_description = limber.load_lm()

    reused = LinearMap.stored_key(local) == key
    if reused:
        context.log.info(f"reusing the map trained from these inputs and settings: {directory}")
        mapping = LinearMap.load(local)
        summary = LinearMap.stored_config(local)["training"]
    else:
        features, captions, rows = training_set(read)
        torch.manual_seed(config.seed)  # the initial weights, too, come from the settings
        mapping = new_map(lm_description["hidden_size"], lm)
        trained = sum(p.numel() for p in mapping.parameters())
        context.log.info(
            f"training {system} ({trained:,} parameters) on {len(rows)} cached {backbone} features from "
            f"{len(parts)} parts for {config.steps} steps on {device}"
        )

        def log_loss(step: int, loss: float) -> None:
            if step % config.log_every == 0:
                context.log.info(f"step {step}: loss {loss:.4f}")

        result = train_linear_map(
            mapping,
            lm,
            tokenizer,
            features,
            captions,
            rows,
            steps=config.steps,
            batch_size=config.batch_size,
            micro_batch_size=config.micro_batch_size,
            lr=config.lr,
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            betas=(config.beta1, config.beta2),
            grad_clip=config.grad_clip,
            max_caption_tokens=config.max_caption_tokens,
            buffer_chunks=config.buffer_chunks,
            seed=config.seed,
            checkpoint_every=config.checkpoint_every,
            # One checkpoint folder per key: a run never resumes another key's training.
            checkpoint_dir=limber.layout.checkpoints(local, key),
            device=device,
            on_step=log_loss,
            on_checkpoint=mirror.push,
        )
        summary = {
            "settings": config.weight_settings(),
            "trained_parameters": trained,
            "losses": result.losses,
            "train_rows": len(rows),
            "train_parts": parts,
            "resumed_from_step": result.resumed_from,
            "samples_per_second": round(result.samples_per_second, 2),
            "shuffle_buffers": result.buffers,
            "recompute": result.recompute,
            "activation_bytes_per_token": result.activation_bytes_per_token,
        }
        per_token = result.activation_bytes_per_token
        context.log.info(
            f"gradient checkpointing {'on' if result.recompute else 'off'}"
            + (f": {per_token / 2**20:.2f} MiB of activations per token measured" if per_token else " (CPU)")
        )
        loss_png = loss_curve_png(result.losses, f"{system} -> {limber.language_model}")
        limber.layout.loss_curve(local).write_bytes(loss_png)
        mapping.save(
            local,
            extra={"key": key, "backbone": backbone, "language_model": limber.language_model, "training": summary},
        )
        mirror.push()

    samples = validation_captions(context, limber, config, backbone, mapping, lm, tokenizer)
    losses = summary["losses"]
    yield stored_result(
        directory,
        key,
        reused,
        train_parts=len(summary["train_parts"]),
        trained_parameters=summary.get("trained_parameters", 0),
        steps=len(losses),
        first_loss=round(losses[0], 4),
        final_loss=round(float(np.mean(losses[-config.final_loss_window :])), 4),
        samples_per_second=summary["samples_per_second"],
        shuffle_buffers=summary["shuffle_buffers"],
        recompute=summary.get("recompute", False),
        loss_curve=dg.MetadataValue.md(markdown_image(limber.layout.loss_curve(local).read_bytes(), "loss curve")),
        validation_captions=dg.MetadataValue.md(samples.to_markdown(index=False)),
    )
    yield loss_check(losses)


@dg.asset(
    partitions_def=backbone_partitions,
    deps=[
        dg.AssetDep(image_features, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("backbone")),
        dg.AssetDep(manifests, partition_mapping=dg.AllPartitionMapping()),
        language_model,
    ],
    automation_condition=ON_MISSING,  # a new backbone's map, once all its features are stored
    group_name="training",
    kinds={"pytorch", "safetensors"},
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    check_specs=[loss_check_spec("linear_map")],
)
def linear_map(context: dg.AssetExecutionContext, config: TrainingConfig, limber: Limber):
    """LiMBeR's linear layer from one backbone's features into the LM's input embeddings.

    Trains on every registered train part (all CC3M shards) whose features are extracted. Keyed by
    those parts' features and manifests, the LM and the settings the weights depend on.
    """
    backbone = context.partition_key
    spec = backbone_spec(backbone)
    yield from trained_map(
        context,
        config,
        limber,
        backbone,
        system=backbone,
        new_map=lambda lm_dim, lm: LinearMap(spec.feature_dim, lm_dim, spec.layout, dropout=config.dropout),
    )
