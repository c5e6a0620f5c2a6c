"""Few-shot VQA per system x shots (0, 1, 2, 4), and its official-style accuracy."""

import functools

import dagster as dg
import numpy as np
import pandas as pd

from assets.adapters import adapters
from assets.config import IntervalConfig, VqaConfig
from assets.datasets import manifests
from assets.execution import GPU_POOL, GPU_TAGS
from assets.image_features import image_features
from assets.inputs import Inputs, preview, stored_result
from assets.language_model import language_model
from assets.linear_map import linear_map
from assets.partitions import ON_MISSING, SYSTEM_FEATURES, VQA_EVAL, VQA_SUPPORT, evaluation_manifests, vqa_partitions
from assets.resources import Runtime
from pipeline import config as stages
from pipeline.datasets import dataset_vqa_groups
from pipeline.metrics.intervals import combine_runs, estimates_table, runs_table
from pipeline.metrics.vqa import vqa_estimates
from pipeline.vqa import PROTOCOL, evaluate_vqa
from storage.artifacts import Run, Table, keyed_runs, keyed_table
from storage.layout import dataset_part, run_name

ACCURACY_IN_RANGE = "accuracy_in_range"


def _system_and_shots(context) -> tuple[str, int]:
    keys = context.partition_key.keys_by_dimension
    return keys["system"], int(keys["shots"])


@dg.asset(
    partitions_def=vqa_partitions,
    deps=[
        dg.AssetDep(image_features, partition_mapping=SYSTEM_FEATURES),
        dg.AssetDep(manifests, partition_mapping=evaluation_manifests([VQA_EVAL, VQA_SUPPORT])),
        dg.AssetDep(linear_map, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(adapters, partition_mapping=dg.AllPartitionMapping()),
        language_model,
    ],
    automation_condition=ON_MISSING,
    group_name="evaluation",
    kinds={"parquet"},
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
)
def vqa_answers(context: dg.AssetExecutionContext, config: VqaConfig, runtime: Runtime) -> dg.MaterializeResult:
    """Answers to a fixed subset of evaluation questions, with n solved support examples in the
    prompt: open-ended, and among a closed vocabulary when ``closed_vocabulary`` is not 0. One
    table per run: a training seed of the system's map paired with a few-shot trial (one draw of
    solved examples per trial seed; ``VqaConfig.runs``); at 0 shots one per training seed.

    Each run's table is keyed by the eval manifest and features, the support manifest (n > 0, or a
    closed vocabulary) and features (n > 0), that seed's map, the LM, this asset's config and its
    trial seed, so an added seed or trial answers only itself."""
    system, shots = _system_and_shots(context)
    inputs = Inputs(runtime)
    manifest = inputs.manifest(VQA_EVAL)
    store = inputs.system_features(system, VQA_EVAL)
    support_manifest = inputs.manifest(VQA_SUPPORT) if shots or config.closed_vocabulary else None
    support_store = inputs.system_features(system, VQA_SUPPORT) if shots else None
    inputs.language_model()
    lm = functools.cache(runtime.load_lm)  # loaded once, and only if a run is not stored

    def answer(stored_map, trial: int | None, run: str) -> pd.DataFrame:
        model, tokenizer, _ = lm()
        return evaluate_vqa(
            model,
            tokenizer,
            manifest,
            support_manifest,
            config.declared(stages.VqaConfig),
            shots=shots,
            trial_seed=trial,
            linear_map=stored_map.load() if stored_map else None,
            store=store,
            support_store=support_store,
            device=runtime.torch_device(),
            on_batch=lambda done, total: context.log.info(f"{run}: answered {done}/{total}"),
        )

    maps = inputs.linear_maps(system)
    runs = keyed_runs(
        (
            Run(
                run_name(seed, trial),
                inputs.with_map(system, seed, maps[seed]).key(
                    vqa=config.answer_settings(trial), shots=shots, protocol=PROTOCOL
                ),
                runtime.layout.vqa_answers(system, runtime.language_model, shots, run_name(seed, trial)),
                functools.partial(answer, maps[seed], trial, run_name(seed, trial)),
            )
            for seed, trial in config.runs(list(maps), shots)
        ),
        index=runtime.layout.vqa_answer_runs(system, runtime.language_model, shots),
    )
    return stored_result(
        runtime.layout.vqa_answers(system, runtime.language_model, shots, min(runs.tables)).parent,
        runs.key,
        runs.reused,
        runs=len(runs.tables),
        computed_runs=runs.computed,
        questions=len(runs.first),
        machine=dg.MetadataValue.json(runtime.machine()),
        preview=preview(runs.first),
    )


@dg.asset(
    partitions_def=vqa_partitions,
    deps=[vqa_answers, dg.AssetDep(manifests, partition_mapping=evaluation_manifests([VQA_EVAL]))],
    automation_condition=ON_MISSING,
    group_name="evaluation",
    kinds={"parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            ACCURACY_IN_RANGE,
            asset="vqa_metrics",
            blocking=True,
            description="every accuracy a number in [0, 100] over at least one question",
        )
    ],
)
def vqa_metrics(context: dg.AssetExecutionContext, config: IntervalConfig, runtime: Runtime):
    """VQA accuracy (official evaluator's rules), overall and per answer type, x100: each run's,
    and their mean, spread, and 95% interval drawing the images (each with all its questions) and
    the runs; the same for the closed-vocabulary answers, when asked for; and over the dataset's
    image groups (easy-vqa: each colour and shape)."""
    system, shots = _system_and_shots(context)
    inputs = Inputs(runtime)
    answers = {
        run: inputs.table(
            f"vqa_answers[{system}|{shots}|{run}]",
            runtime.layout.vqa_answers(system, runtime.language_model, shots, run),
        )
        for run in inputs.runs(
            runtime.layout.vqa_answer_runs(system, runtime.language_model, shots), f"vqa_answers[{system}|{shots}]"
        )
    }
    groups = dataset_vqa_groups(dataset_part(VQA_EVAL)[0], inputs.manifest(VQA_EVAL))
    key = inputs.key(intervals=config.interval_settings())
    path = runtime.layout.vqa_metrics_table(system, runtime.language_model, shots)

    def score() -> pd.DataFrame:
        per_run, per_question = {}, []
        for run, table in answers.items():
            per_run[run], scores = vqa_estimates(table, config.bootstrap_resamples, config.bootstrap_seed, groups)
            per_question.append(scores.assign(run=run))
        combined = combine_runs(per_run, config.bootstrap_resamples, config.bootstrap_seed)
        beside = {
            runtime.layout.vqa_scores(system, runtime.language_model, shots): pd.concat(per_question),
            runtime.layout.vqa_runs(system, runtime.language_model, shots): runs_table(per_run),
        }
        return Table(estimates_table(combined), beside)

    table, reused = keyed_table(path, key, score)
    accuracies = zip(table["metric"], table["value"], strict=True)
    questions = len(next(iter(answers.values())))
    yield stored_result(
        path,
        key,
        reused,
        n=questions,
        runs=len(answers),
        **{m: dg.MetadataValue.float(float(v)) for m, v in accuracies},
    )
    values = table["value"].to_numpy(dtype=float)
    yield dg.AssetCheckResult(
        check_name=ACCURACY_IN_RANGE,
        passed=bool(questions > 0 and np.isfinite(values).all() and ((values >= 0) & (values <= 100)).all()),
        metadata={"questions": questions, "min": float(np.nanmin(values)), "max": float(np.nanmax(values))},
    )
