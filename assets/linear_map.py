"""The linear map per backbone, trained on cached train features into the frozen LM."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import torch

from assets.config import TrainingConfig
from assets.datasets import manifests
from assets.image_features import image_features
from assets.language_model import language_model
from assets.partitions import DATASET, backbone_partitions
from assets.resources import Limber
from pipeline.decoding import greedy_captions
from pipeline.encoders import backbone_spec
from pipeline.language_models import load_language_model
from pipeline.linear_map import LinearMap
from pipeline.plots import loss_curve_png, markdown_image
from pipeline.training import train_linear_map
from storage import FeatureArray, config_hash
from storage.feature_store import OK

CAPTION_PROMPT = "A picture of"


def _trainable_rows(features: FeatureArray, manifest: pd.DataFrame) -> np.ndarray:
    """Rows whose image was encoded and which have a reference caption."""
    has_caption = manifest["captions"].str.len().to_numpy() > 0
    return np.flatnonzero((features.status == OK) & has_caption)


@dg.asset(
    partitions_def=backbone_partitions,
    deps=[
        dg.AssetDep(image_features, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("backbone")),
        dg.AssetDep(manifests, partition_mapping=dg.AllPartitionMapping()),
        language_model,
    ],
    group_name="training",
    kinds={"pytorch", "safetensors"},
    pool="gpu",
)
def linear_map(context: dg.AssetExecutionContext, config: TrainingConfig, limber: Limber) -> dg.MaterializeResult:
    """LiMBeR's linear layer from one backbone's features into the LM's input embeddings."""
    backbone = context.partition_key
    spec = backbone_spec(backbone)
    settings = config.model_dump()
    train_manifest = pd.read_parquet(limber.layout.manifest(DATASET, "train"))
    # Keyed by everything the weights depend on: settings, backbone, LM (in the path) and training images.
    directory = limber.layout.linear_map(backbone, limber.language_model, config_hash(
        {**settings, "backbone": backbone, "dataset": DATASET, "train_ids": config_hash(train_manifest["image_id"].tolist())}
    ))
    device = limber.torch_device()
    lm, tokenizer, lm_description = load_language_model(limber.layout.language_model(limber.language_model), device)

    val_manifest = pd.read_parquet(limber.layout.manifest(DATASET, "val"))
    train_features = FeatureArray.read(str(limber.layout.image_features(backbone, DATASET, "train")))
    val_features = FeatureArray.read(str(limber.layout.image_features(backbone, DATASET, "val")))

    reused = (directory / "linear_map.safetensors").exists()
    if reused:
        context.log.info(f"reusing the linear map trained with these settings: {directory}")
        mapping = LinearMap.load(directory)
        summary = json.loads((directory / "config.json").read_text())["training"]
    else:
        mapping = LinearMap(spec.feature_dim, lm_description["hidden_size"], spec.layout, dropout=config.dropout)
        rows = _trainable_rows(train_features, train_manifest)
        context.log.info(f"training on {len(rows)} cached {backbone} features for {config.steps} steps on {device}")
        result = train_linear_map(
            mapping, lm, tokenizer, train_features.features,
            [c[0] if len(c) else "" for c in train_manifest["captions"]], rows,
            steps=config.steps, batch_size=config.batch_size, lr=config.lr, warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay, betas=(config.beta1, config.beta2), grad_clip=config.grad_clip,
            max_caption_tokens=config.max_caption_tokens, buffer_chunks=config.buffer_chunks, seed=config.seed,
            checkpoint_every=config.checkpoint_every, checkpoint_dir=directory / "checkpoint", device=device,
            on_step=lambda step, loss: (step % 50 == 0) and context.log.info(f"step {step}: loss {loss:.4f}"),
        )
        summary = {
            "settings": settings, "losses": result.losses, "train_rows": len(rows),
            "resumed_from_step": result.resumed_from, "samples_per_second": round(result.samples_per_second, 2),
        }
        mapping.save(directory, extra={"backbone": backbone, "language_model": limber.language_model,
                                       "training": summary})

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
    (directory / "loss.png").write_bytes(png)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(directory)),
            "reused": reused,
            "steps": len(losses),
            "first_loss": round(losses[0], 4),
            "final_loss": round(float(np.mean(losses[-20:])), 4),
            "samples_per_second": summary["samples_per_second"],
            "loss_curve": dg.MetadataValue.md(markdown_image(png, "loss curve")),
            "validation_captions": dg.MetadataValue.md(samples.to_markdown(index=False)),
        }
    )
