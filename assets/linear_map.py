"""The linear map per backbone, trained on cached train features into the frozen LM."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import torch

from assets.config import TrainingConfig
from assets.datasets import manifests
from assets.execution import GPU_POOL, GPU_TAGS
from assets.image_features import image_features
from assets.language_model import language_model
from assets.partitions import TRAIN, VALIDATION, backbone_partitions, registered_parts
from assets.records import latest_materialization
from assets.resources import Limber
from pipeline.decoding import greedy_captions
from pipeline.encoders import backbone_spec
from pipeline.linear_map import LinearMap
from pipeline.plots import loss_curve_png, markdown_image
from pipeline.training import train_linear_map
from storage import FeatureArray, config_hash
from storage.feature_store import OK, ConcatenatedFeatures
from storage.layout import read_table

CAPTION_PROMPT = "A picture of"
LOSS_DECREASED = "loss_decreased"


def _trainable_rows(features: FeatureArray, manifest: pd.DataFrame) -> np.ndarray:
    """Rows whose image was encoded and which have a reference caption."""
    has_caption = manifest["captions"].str.len().to_numpy() > 0
    return np.flatnonzero((features.status == OK) & has_caption)


def training_set(limber: Limber, backbone: str, parts: list[str]):
    """Every train part's features as one array, with captions and trainable rows in its indexing."""
    stores = [FeatureArray.read(str(limber.layout.image_features(backbone, part))) for part in parts]
    features = ConcatenatedFeatures(stores)
    captions = [""] * len(features)
    rows, ids = [], []
    for index, (part, store) in enumerate(zip(parts, stores)):
        manifest = read_table(limber.layout.manifest(part))
        offset = features.offsets[index]
        captions[offset : offset + len(manifest)] = [c[0] if len(c) else "" for c in manifest["captions"]]
        rows.append(features.global_rows(index, _trainable_rows(store, manifest)))
        ids.append(config_hash(manifest["image_id"].tolist()))
    return features, captions, np.concatenate(rows), ids


def loss_check(losses: list[float]) -> dg.AssetCheckResult:
    """The loss fell: its mean over the last quarter of the steps is below that over the first quarter."""
    quarter = max(1, len(losses) // 4)
    first, last = float(np.mean(losses[:quarter])), float(np.mean(losses[-quarter:]))
    return dg.AssetCheckResult(
        check_name=LOSS_DECREASED,
        passed=bool(np.isfinite(losses).all() and last < first),
        metadata={"first_quarter_loss": round(first, 4), "last_quarter_loss": round(last, 4)},
    )


@dg.asset(
    partitions_def=backbone_partitions,
    deps=[
        dg.AssetDep(image_features, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("backbone")),
        dg.AssetDep(manifests, partition_mapping=dg.AllPartitionMapping()),
        language_model,
    ],
    group_name="training",
    kinds={"pytorch", "safetensors"},
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    check_specs=[dg.AssetCheckSpec(
        LOSS_DECREASED, asset="linear_map", blocking=True,
        description="finite losses; mean loss of the last quarter of the steps below the first quarter's",
    )],
)
def linear_map(context: dg.AssetExecutionContext, config: TrainingConfig, limber: Limber):
    """LiMBeR's linear layer from one backbone's features into the LM's input embeddings.

    Trains on every registered train part (all CC3M shards) whose features are extracted.
    """
    backbone = context.partition_key
    spec = backbone_spec(backbone)
    settings = config.model_dump(exclude={"log_every"})  # what the weights depend on
    registered = registered_parts(context.instance, TRAIN)
    parts = [p for p in registered
             if latest_materialization(context.instance, "image_features",
                                       dg.MultiPartitionKey({"backbone": backbone, "split": p})) is not None]
    if not parts:
        raise FileNotFoundError(f"no image_features partition of {backbone} on {TRAIN} is materialized yet")
    if len(parts) < len(registered):
        context.log.warning(f"{len(registered) - len(parts)} of {len(registered)} {TRAIN} parts have no "
                            f"{backbone} features yet and are left out of training")
    features, captions, rows, part_ids = training_set(limber, backbone, parts)
    # Keyed by everything the weights depend on: settings, backbone, LM (in the path) and training images.
    directory = limber.layout.linear_map(backbone, limber.language_model, config_hash(
        {**settings, "backbone": backbone, "train": TRAIN, "train_ids": config_hash(part_ids)}
    ))
    mirror = limber.mirror(directory)
    local = mirror.pull()
    device = limber.torch_device()
    lm, tokenizer, lm_description = limber.load_lm()

    reused = (local / "linear_map.safetensors").exists()
    if reused:
        context.log.info(f"reusing the linear map trained with these settings: {directory}")
        mapping = LinearMap.load(local)
        summary = json.loads((local / "config.json").read_text())["training"]
    else:
        torch.manual_seed(config.seed)  # the initial weights, too, come from the settings
        mapping = LinearMap(spec.feature_dim, lm_description["hidden_size"], spec.layout, dropout=config.dropout)
        context.log.info(f"training on {len(rows)} cached {backbone} features from {len(parts)} parts "
                         f"for {config.steps} steps on {device}")
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
            checkpoint_dir=local / "checkpoint",
            device=device,
            on_step=log_loss,
            on_checkpoint=mirror.push,
        )
        summary = {
            "settings": settings, "losses": result.losses, "train_rows": len(rows), "train_parts": parts,
            "resumed_from_step": result.resumed_from, "samples_per_second": round(result.samples_per_second, 2),
            "shuffle_buffers": result.buffers,
        }
        mapping.save(local, extra={"backbone": backbone, "language_model": limber.language_model,
                                   "training": summary})

    validation_part = registered_parts(context.instance, VALIDATION)[0]
    val_manifest = read_table(limber.layout.manifest(validation_part))
    val_features = FeatureArray.read(str(limber.layout.image_features(backbone, validation_part)))
    sample = torch.from_numpy(np.asarray(val_features.features[: config.sample_captions]))
    samples = pd.DataFrame({
        "image_id": val_manifest["image_id"][: len(sample)],
        "reference": [c[0] if len(c) else "" for c in val_manifest["captions"][: len(sample)]],
    })
    # LiMBeR trains without a prompt and captions from "A picture of"; both are shown because a
    # small LM's own continuation of the prompt can override the image tokens.
    for column, prompt in ((f"from '{CAPTION_PROMPT}'", CAPTION_PROMPT), ("no prompt", "")):
        samples[column] = greedy_captions(mapping, lm, tokenizer, sample, prompt=prompt, max_new_tokens=12,
                                          device=device)
    losses = summary["losses"]
    png = loss_curve_png(losses, f"{backbone} -> {limber.language_model}")
    (local / "loss.png").write_bytes(png)
    mirror.push()
    yield dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(directory)),
            "reused": reused,
            "train_parts": len(summary.get("train_parts", parts)),
            "steps": len(losses),
            "first_loss": round(losses[0], 4),
            "final_loss": round(float(np.mean(losses[-20:])), 4),
            "samples_per_second": summary["samples_per_second"],
            "shuffle_buffers": summary.get("shuffle_buffers", 0),
            "loss_curve": dg.MetadataValue.md(markdown_image(png, "loss curve")),
            "validation_captions": dg.MetadataValue.md(samples.to_markdown(index=False)),
        }
    )
    yield loss_check(losses)
