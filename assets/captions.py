"""Captions per system x eval split, and their metrics (CIDEr-D, BLEU, METEOR, ROUGE-L, CLIP-S)."""

import json

import dagster as dg
import numpy as np
import pandas as pd

from assets.config import CaptioningConfig, CaptionMetricsConfig
from assets.execution import GPU_POOL, GPU_TAGS
from assets.partitions import caption_partitions, dataset_part
from assets.records import upstream_path
from assets.resources import Limber
from assets.systems import SYSTEM_INPUTS, System
from pipeline.captioning import caption_rows
from pipeline.datasets import dataset_caption_metrics
from pipeline.metrics.captions import caption_metrics as score_captions
from pipeline.metrics.clip_score import ClipScorer, ClipUnavailable, clip_scores
from storage import config_hash
from storage.feature_store import OK
from storage.layout import read_table, write_table

CAPTIONS_NON_EMPTY = "captions_non_empty"
METRICS_IN_RANGE = "metrics_in_range"
# Valid ranges of the scores as reported (BLEU/METEOR/ROUGE-L in [0, 1], CIDEr-D x10, CLIP-S x2.5).
METRIC_RANGES = {"CIDEr-D": (0.0, 10.0), "CLIP-S": (0.0, 2.5), "RefCLIP-S": (0.0, 2.5)}


def _system_and_part(context) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["system"], keys["split"]


def _captions_path(limber: Limber, system: System, config: CaptioningConfig, part: str):
    inputs = config_hash({"linear_map": system.linear_map_hash, "captioning": config.model_dump(), "split": part})
    return limber.layout.evaluation("captions", system.name, limber.language_model, inputs, part)


def captions_check(table: pd.DataFrame, readable: np.ndarray) -> dg.AssetCheckResult:
    """Most images the encoder could read got a caption (a broken map or LM gives empty strings)."""
    empty = int((table["caption"].str.strip() == "")[readable].sum())
    return dg.AssetCheckResult(
        check_name=CAPTIONS_NON_EMPTY,
        passed=bool(readable.sum() > 0 and empty <= readable.sum() / 2),
        metadata={"empty_captions": empty, "readable_images": int(readable.sum())},
    )


@dg.asset(
    partitions_def=caption_partitions,
    deps=SYSTEM_INPUTS,
    group_name="evaluation",
    kinds={"parquet"},
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    check_specs=[dg.AssetCheckSpec(CAPTIONS_NON_EMPTY, asset="captions", blocking=True,
                                   description="at most half of the readable images got an empty caption")],
)
def captions(context: dg.AssetExecutionContext, config: CaptioningConfig, limber: Limber):
    """Greedy captions from [image tokens, prompt]; the blind system gets the prompt alone."""
    name, part = _system_and_part(context)
    system = System.resolve(context, name)
    path = _captions_path(limber, system, config, part)
    manifest = read_table(limber.layout.manifest(part))
    store = None if system.linear_map_dir is None else system.features(limber, part)
    # Images the encoder could not read have zero features: they get no caption.
    readable = np.ones(len(manifest), bool) if store is None else store.status == OK
    reused = path.exists()
    if not reused:
        lm, tokenizer, _ = limber.load_lm()
        generated = np.full(len(manifest), "", dtype=object)
        rows = np.flatnonzero(readable)
        generated[rows] = caption_rows(
            system.linear_map(limber), lm, tokenizer, None if store is None else store.features, rows,
            prompt=config.prompt, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
            device=limber.torch_device(), on_batch=lambda done, total: context.log.info(f"captioned {done}/{total}"),
        )
        table = pd.DataFrame({"image_id": manifest["image_id"], "caption": generated.astype(str)})
        path.parent.mkdir(parents=True, exist_ok=True)
        # The COCO results format, for any external scorer; the Parquet file, written last, marks completion.
        path.with_suffix(".json").write_text(json.dumps(
            [{"image_id": i, "caption": c} for i, c in zip(table["image_id"], table["caption"])]
        ))
        write_table(table, path)
    table = read_table(path)
    preview = table.assign(reference=[c[0] if len(c) else "" for c in manifest["captions"]]).head(10)
    yield dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "coco_results": dg.MetadataValue.path(str(path.with_suffix(".json"))),
        "reused": reused,
        "captions": len(table),
        "empty_captions": int((table["caption"].str.strip() == "").sum()),
        "prompt": config.prompt,
        "preview": dg.MetadataValue.md(preview.to_markdown(index=False)),
    })
    yield captions_check(table, readable)


def _clip_scores(limber: Limber, weights: str, manifest: pd.DataFrame, candidates: list[str]) -> dict:
    """CLIP-S and RefCLIP-S, or the reason they cannot be computed here."""
    try:
        scorer = ClipScorer(weights or None, limber.torch_device())
    except ClipUnavailable as error:
        return {"unavailable": str(error)}
    return clip_scores(scorer, manifest["image_path"].tolist(), candidates, [list(c) for c in manifest["captions"]])


def _in_range(metric: str, value: float) -> bool:
    """'CIDEr-D (in-domain)' has CIDEr-D's range; percentages '... (%)' lie in [0, 100]."""
    low, high = (0.0, 100.0) if metric.endswith("(%)") else METRIC_RANGES.get(metric.split(" (")[0], (0.0, 1.0))
    return low <= value <= high


def metrics_check(table: pd.DataFrame) -> dg.AssetCheckResult:
    """Every score within its range; NaN only where a note says why (e.g. no CLIP weights)."""
    bad = [metric for metric, value, note in zip(table["metric"], table["value"], table["note"])
           if (np.isnan(value) and not note) or (not np.isnan(value) and not _in_range(metric, value))]
    return dg.AssetCheckResult(check_name=METRICS_IN_RANGE, passed=not bad, metadata={"out_of_range": ", ".join(bad)})


@dg.asset(
    partitions_def=caption_partitions,
    deps=[captions],
    group_name="evaluation",
    kinds={"parquet"},
    check_specs=[dg.AssetCheckSpec(METRICS_IN_RANGE, asset="caption_metrics", blocking=True,
                                   description="scores within their ranges; NaN only with a note saying why")],
)
def caption_metrics(context: dg.AssetExecutionContext, config: CaptionMetricsConfig, limber: Limber):
    """Standard caption metrics of one system on one whole split (IDF over the whole split)."""
    _, part = _system_and_part(context)
    captions_path = upstream_path(context, captions)
    # Keyed by the captions (whose path holds their inputs' hash) and this asset's own config.
    path = captions_path.parent / f"{dataset_part(part)[1]}.metrics-{config_hash(config.model_dump())}.parquet"
    reused = path.exists()
    if not reused:
        _score_split(context, limber, config, part, captions_path, path)
    table = read_table(path)
    scores = dict(zip(table["metric"], table["value"]))
    notes = dict(zip(table["metric"], table["note"]))
    yield dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "reused": reused,
        "n": int(table["n"].iloc[0]),
        **{k: (notes[k] or dg.MetadataValue.float(round(float(v), 4))) for k, v in scores.items()},
    })
    yield metrics_check(table)


def _score_split(context, limber: Limber, config: CaptionMetricsConfig, part: str, captions_path, path) -> None:
    """Scores one split's captions and writes the metric rows (value NaN plus a note where absent)."""
    manifest = read_table(limber.layout.manifest(part))
    generated = read_table(captions_path)
    has_refs = manifest["captions"].str.len().to_numpy() > 0
    references = {i: list(c) for i, c, keep in zip(manifest["image_id"], manifest["captions"], has_refs) if keep}
    candidates = {i: c for i, c, keep in zip(generated["image_id"], generated["caption"], has_refs) if keep}
    scores = score_captions(references, candidates)
    scores.update(dataset_caption_metrics(dataset_part(part)[0], manifest, references, candidates))
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
    write_table(table, path)
