"""Captions per system x eval split, and their metrics (CIDEr-D, BLEU, METEOR, ROUGE-L, CLIP-S)."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import torch

from assets.config import CaptioningConfig, CaptionMetricsConfig
from assets.partitions import caption_partitions, dataset_split
from assets.resources import Limber
from assets.systems import SYSTEM_INPUTS, System, load_lm, upstream_path
from pipeline.datasets import dataset_caption_metrics, load_image
from pipeline.decoding import greedy_captions
from pipeline.metrics.captions import caption_metrics as score_captions
from pipeline.metrics.clip_score import ClipScorer, ClipUnavailable, clip_s, ref_clip_s
from storage import config_hash
from storage.feature_store import OK


def _system_and_split(context) -> tuple[str, str, str]:
    keys = context.partition_key.keys_by_dimension
    dataset, split = dataset_split(keys["split"])
    return keys["system"], dataset, split


def _captions_path(limber: Limber, system: System, config: CaptioningConfig, split: str):
    inputs = config_hash({"linear_map": system.linear_map_hash, "captioning": config.model_dump(), "split": split})
    return limber.layout.evaluation("captions", system.name, limber.language_model, inputs, split)


@dg.asset(
    partitions_def=caption_partitions,
    deps=SYSTEM_INPUTS,
    group_name="evaluation",
    kinds={"parquet"},
)
def captions(context: dg.AssetExecutionContext, config: CaptioningConfig, limber: Limber) -> dg.MaterializeResult:
    """Greedy captions from [image tokens, prompt]; the blind system gets the prompt alone."""
    name, dataset, split = _system_and_split(context)
    system = System.resolve(context, name)
    path = _captions_path(limber, system, config, split)
    manifest = pd.read_parquet(limber.layout.manifest(dataset, split))
    reused = path.exists()
    if not reused:
        lm, tokenizer, _ = load_lm(limber)
        mapping = system.linear_map()
        features = None if mapping is None else system.features(limber, split).features
        prompt = config.prompt if (config.prompt or mapping is not None) else tokenizer.bos_token or tokenizer.eos_token
        generated = []
        for start in range(0, len(manifest), config.batch_size):
            stop = min(start + config.batch_size, len(manifest))
            batch = (torch.zeros(stop - start, 0) if features is None
                     else torch.from_numpy(np.asarray(features[start:stop])))
            generated += greedy_captions(mapping, lm, tokenizer, batch, prompt=prompt,
                                         max_new_tokens=config.max_new_tokens, device=limber.torch_device())
            context.log.info(f"captioned {stop}/{len(manifest)}")
        # Images the encoder could not read have zero features: they get no caption.
        readable = np.ones(len(manifest), bool) if mapping is None else system.features(limber, split).status == OK
        table = pd.DataFrame({"image_id": manifest["image_id"], "caption": np.where(readable, generated, "")})
        path.parent.mkdir(parents=True, exist_ok=True)
        # The COCO results format, for any external scorer; the Parquet file, written last, marks completion.
        path.with_suffix(".json").write_text(json.dumps(
            [{"image_id": i, "caption": c} for i, c in zip(table["image_id"], table["caption"])]
        ))
        table.to_parquet(path)
    table = pd.read_parquet(path)
    preview = table.assign(reference=[c[0] if len(c) else "" for c in manifest["captions"]]).head(10)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "coco_results": dg.MetadataValue.path(str(path.with_suffix(".json"))),
        "reused": reused,
        "captions": len(table),
        "empty_captions": int((table["caption"].str.strip() == "").sum()),
        "prompt": config.prompt,
        "preview": dg.MetadataValue.md(preview.to_markdown(index=False)),
    })


def _clip_scores(limber: Limber, weights: str, manifest: pd.DataFrame, candidates: list[str]) -> dict:
    """CLIP-S and RefCLIP-S, or the reason they cannot be computed here."""
    try:
        scorer = ClipScorer(weights or None, limber.torch_device())
    except ClipUnavailable as error:
        return {"unavailable": str(error)}
    images = [load_image(p)[0] for p in manifest["image_path"]]
    ok = [i for i, image in enumerate(images) if image is not None]
    image_embeddings = scorer.embed_images([images[i] for i in ok])
    candidate_embeddings = scorer.embed_texts([candidates[i] for i in ok])
    reference_embeddings = [scorer.embed_texts(list(manifest["captions"][i])) for i in ok]
    per_image = clip_s(image_embeddings, candidate_embeddings)
    return {
        "CLIP-S": float(per_image.mean()),
        "RefCLIP-S": float(ref_clip_s(per_image, candidate_embeddings, reference_embeddings).mean()),
    }


@dg.asset(partitions_def=caption_partitions, deps=[captions], group_name="evaluation", kinds={"parquet"})
def caption_metrics(context: dg.AssetExecutionContext, config: CaptionMetricsConfig, limber: Limber) -> dg.MaterializeResult:
    """Standard caption metrics of one system on one whole split (IDF over the whole split)."""
    _, dataset, split = _system_and_split(context)
    captions_path = upstream_path(context, captions)
    # Keyed by the captions (whose path holds their inputs' hash) and this asset's own config.
    path = captions_path.parent / f"{split}.metrics-{config_hash(config.model_dump())}.parquet"
    reused = path.exists()
    if not reused:
        _score_split(context, limber, config, dataset, split, captions_path, path)
    table = pd.read_parquet(path)
    scores = dict(zip(table["metric"], table["value"]))
    notes = dict(zip(table["metric"], table["note"]))
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "reused": reused,
        "n": int(table["n"].iloc[0]),
        **{k: (notes[k] or dg.MetadataValue.float(round(float(v), 4))) for k, v in scores.items()},
    })


def _score_split(context, limber: Limber, config: CaptionMetricsConfig, dataset: str, split: str, captions_path,
                 path) -> None:
    """Scores one split's captions and writes the metric rows (value NaN plus a note where absent)."""
    manifest = pd.read_parquet(limber.layout.manifest(dataset, split))
    generated = pd.read_parquet(captions_path)
    has_refs = manifest["captions"].str.len().to_numpy() > 0
    references = {i: list(c) for i, c, keep in zip(manifest["image_id"], manifest["captions"], has_refs) if keep}
    candidates = {i: c for i, c, keep in zip(generated["image_id"], generated["caption"], has_refs) if keep}
    scores = score_captions(references, candidates)
    scores.update(dataset_caption_metrics(dataset, references, candidates))
    clip = _clip_scores(limber, config.clip_weights, manifest[has_refs].reset_index(drop=True),
                        [c for c, keep in zip(generated["caption"], has_refs) if keep])
    note = clip.pop("unavailable", "")
    if note:
        context.log.warning(note)
        clip = {"CLIP-S": float("nan"), "RefCLIP-S": float("nan")}
    scores.update(clip)
    table = pd.DataFrame({
        "metric": list(scores), "value": list(scores.values()), "n": len(candidates),
        "note": [note if metric in clip and note else "" for metric in scores],
    })
    table.to_parquet(path)
