"""Captions per system x captioning part, and their metrics (CIDEr-D, BLEU, METEOR, ROUGE-L, CLIP-S)."""

import functools
import json

import dagster as dg
import pandas as pd

from assets.adapters import adapters
from assets.config import CaptioningConfig, CaptionMetricsConfig
from assets.datasets import manifests
from assets.execution import GPU_POOL, GPU_TAGS
from assets.image_features import image_features
from assets.inputs import Inputs, preview, stored_result
from assets.language_model import language_model
from assets.linear_map import linear_map
from assets.partitions import CAPTIONING, ON_MISSING, SYSTEM_FEATURES, caption_partitions, evaluation_manifests
from assets.resources import Runtime
from pipeline import config as stages
from pipeline.captioning import caption_images
from pipeline.datasets import dataset_subset_metrics
from pipeline.metrics.captions import SCORING, split_caption_estimates
from pipeline.metrics.intervals import combine_runs, estimates_table, runs_table
from pipeline.metrics.table import out_of_range
from storage.artifacts import Run, Table, keyed_runs, keyed_table
from storage.feature_store import OK
from storage.layout import dataset_part, run_name

CAPTIONS_NON_EMPTY = "captions_non_empty"
METRICS_IN_RANGE = "metrics_in_range"


def _system_and_part(context) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["system"], keys["part"]


def captions_check(table: pd.DataFrame, readable: int) -> dg.AssetCheckResult:
    """Most images the encoder could read got a caption (a broken map or LM gives empty strings)."""
    empty = int((table["caption"].str.strip() == "").sum()) - (len(table) - readable)
    return dg.AssetCheckResult(
        check_name=CAPTIONS_NON_EMPTY,
        passed=bool(readable > 0 and empty <= readable / 2),
        metadata={"empty_captions": empty, "readable_images": readable},
    )


@dg.asset(
    partitions_def=caption_partitions,
    deps=[
        dg.AssetDep(image_features, partition_mapping=SYSTEM_FEATURES),
        dg.AssetDep(manifests, partition_mapping=evaluation_manifests(CAPTIONING)),
        dg.AssetDep(linear_map, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(adapters, partition_mapping=dg.AllPartitionMapping()),
        language_model,
    ],
    automation_condition=ON_MISSING,
    group_name="evaluation",
    kinds={"parquet"},
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            CAPTIONS_NON_EMPTY,
            asset="captions",
            blocking=True,
            description="at most half of the readable images got an empty caption",
        )
    ],
)
def captions(context: dg.AssetExecutionContext, config: CaptioningConfig, runtime: Runtime):
    """Greedy captions from [image tokens, prompt], one table per training seed of the system's
    map; the blind system gets the prompt alone, once.

    Each seed's table is keyed by the part's manifest, the system's features, that seed's map, the
    LM and this asset's config, so an added seed captions only itself."""
    system, part = _system_and_part(context)
    inputs = Inputs(runtime)
    manifest = inputs.manifest(part)
    store = inputs.system_features(system, part)
    inputs.language_model()
    lm = functools.cache(runtime.load_lm)  # loaded once, and only if a run is not stored

    def caption(stored_map, run: str) -> Table:
        model, tokenizer, _ = lm()
        table = caption_images(
            stored_map.load() if stored_map else None,
            model,
            tokenizer,
            manifest["image_id"].tolist(),
            store,
            config.declared(stages.CaptioningConfig),
            device=runtime.torch_device(),
            on_batch=lambda done, total: context.log.info(f"{run}: captioned {done}/{total}"),
        )
        coco = json.dumps(table[["image_id", "caption"]].to_dict("records")).encode()
        return Table(table, {runtime.layout.coco_results(system, runtime.language_model, part, run): coco})

    runs = keyed_runs(
        Run(
            run_name(seed),
            inputs.with_map(system, seed, stored_map).key(captioning=config.model_dump()),
            runtime.layout.captions(system, runtime.language_model, part, run_name(seed)),
            functools.partial(caption, stored_map, run_name(seed)),
        )
        for seed, stored_map in inputs.linear_maps(system).items()
    )
    first = runs.first
    readable = len(first) if store is None else int((store.status == OK).sum())
    references = dict(zip(manifest["image_id"], manifest["captions"], strict=True))
    shown = first.assign(reference=[c[0] if len(c) else "" for c in first["image_id"].map(references)])
    yield stored_result(
        runtime.layout.captions(system, runtime.language_model, part, min(runs.tables)).parent,
        runs.key,
        runs.reused,
        runs=len(runs.tables),
        computed_runs=runs.computed,
        captions=len(first),
        empty_captions=int(sum((t["caption"].str.strip() == "").sum() for t in runs.tables.values())),
        prompt=config.prompt,
        machine=dg.MetadataValue.json(runtime.machine()),
        preview=preview(shown),
    )
    yield captions_check(pd.concat(runs.tables.values()), readable * len(runs.tables))


def metrics_check(table: pd.DataFrame) -> dg.AssetCheckResult:
    """Every score within its range; NaN only where a note says why (e.g. no CLIP weights)."""
    bad = out_of_range(table)
    return dg.AssetCheckResult(check_name=METRICS_IN_RANGE, passed=not bad, metadata={"out_of_range": ", ".join(bad)})


@dg.asset(
    partitions_def=caption_partitions,
    deps=[captions, dg.AssetDep(manifests, partition_mapping=evaluation_manifests(CAPTIONING))],
    automation_condition=ON_MISSING,
    group_name="evaluation",
    kinds={"parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            METRICS_IN_RANGE,
            asset="caption_metrics",
            blocking=True,
            description="scores within their ranges; NaN only with a note saying why",
        )
    ],
)
def caption_metrics(context: dg.AssetExecutionContext, config: CaptionMetricsConfig, runtime: Runtime):
    """Standard caption metrics of one system on one whole part (CIDEr-D's IDF over the whole
    part): each run's (one per training seed), and their mean, spread, and 95% interval drawing
    the images and the runs."""
    system, part = _system_and_part(context)
    inputs = Inputs(runtime)
    manifest = inputs.manifest(part)
    runs = [run_name(seed) for seed in inputs.linear_maps(system)]
    generated = {
        run: inputs.table(
            f"captions[{system}|{part}|{run}]", runtime.layout.captions(system, runtime.language_model, part, run)
        )
        for run in runs
    }
    clip_weights = inputs.clip_weights(config.clip_weights)
    key = inputs.key(intervals=config.interval_settings(), scoring=SCORING)
    path = runtime.layout.caption_metrics_table(system, runtime.language_model, part)

    def score() -> pd.DataFrame:
        per_run, per_image, notes = {}, [], {}
        for run, table in generated.items():
            per_run[run], scores, notes = split_caption_estimates(
                manifest,
                table,
                functools.partial(dataset_subset_metrics, dataset_part(part)[0]),
                clip_weights,
                runtime.torch_device(),
                config.bootstrap_resamples,
                config.bootstrap_seed,
            )
            per_image.append(scores.assign(run=run))
        for note in set(notes.values()):
            context.log.warning(note)
        combined = combine_runs(per_run, config.bootstrap_resamples, config.bootstrap_seed)
        beside = {
            runtime.layout.caption_scores(system, runtime.language_model, part): pd.concat(per_image),
            runtime.layout.caption_runs(system, runtime.language_model, part): runs_table(per_run),
        }
        return Table(estimates_table(combined, notes), beside)

    table, reused = keyed_table(path, key, score)
    scores = zip(table["metric"], table["value"], table["note"], strict=True)
    yield stored_result(
        path,
        key,
        reused,
        n=int(table["n"].iloc[0]),
        runs=int(table["runs"].iloc[0]),
        **{m: (note or dg.MetadataValue.float(round(float(v), 4))) for m, v, note in scores},
    )
    yield metrics_check(table)
