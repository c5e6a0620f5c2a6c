"""Few-shot VQA per system x shots (0, 1, 2, 4), and its official-style accuracy."""

import dagster as dg
import numpy as np
import pandas as pd

from assets.adapters import adapters
from assets.config import IntervalConfig, VqaConfig
from assets.datasets import manifests
from assets.execution import GPU_POOL, GPU_TAGS
from assets.image_features import image_features
from assets.inputs import Inputs, preview, stored_result, stored_table
from assets.language_model import language_model
from assets.linear_map import linear_map
from assets.partitions import ON_MISSING, SYSTEM_FEATURES, VQA_EVAL, VQA_SUPPORT, evaluation_manifests, vqa_partitions
from assets.resources import Limber
from pipeline.datasets import dataset_vqa_groups
from pipeline.metrics.vqa import answers_accuracy
from pipeline.vqa import PROTOCOL, evaluate_vqa
from storage.layout import dataset_part, write_table

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
def vqa_answers(context: dg.AssetExecutionContext, config: VqaConfig, limber: Limber) -> dg.MaterializeResult:
    """Answers to a fixed subset of evaluation questions, with n solved support examples in the
    prompt: open-ended, and among a closed vocabulary when ``closed_vocabulary`` is not 0.

    Keyed by the eval manifest and features, the support manifest (n > 0, or a closed vocabulary)
    and features (n > 0), the system's map, the LM and this asset's config."""
    system, shots = _system_and_shots(context)
    inputs = Inputs(limber)
    manifest = inputs.manifest(VQA_EVAL)
    store = inputs.system_features(system, VQA_EVAL)
    support_manifest = inputs.manifest(VQA_SUPPORT) if shots or config.closed_vocabulary else None
    support_store = inputs.system_features(system, VQA_SUPPORT) if shots else None
    stored_map = inputs.linear_map(system)
    inputs.language_model()
    key = inputs.key(vqa=config.model_dump(), shots=shots, protocol=PROTOCOL)
    path = limber.layout.vqa_answers(system, limber.language_model, shots)

    def answer() -> pd.DataFrame:
        lm, tokenizer, _ = limber.load_lm()
        return evaluate_vqa(
            lm,
            tokenizer,
            manifest,
            support_manifest,
            shots=shots,
            questions=config.questions,
            seed=config.seed,
            support_images=config.support_images,
            closed_vocabulary=config.closed_vocabulary,
            linear_map=stored_map.load() if stored_map else None,
            store=store,
            support_store=support_store,
            batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens,
            device=limber.torch_device(),
            on_batch=lambda done, total: context.log.info(f"answered {done}/{total}"),
        )

    table, reused = stored_table(path, key, answer)
    return stored_result(path, key, reused, questions=len(table), preview=preview(table))


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
def vqa_metrics(context: dg.AssetExecutionContext, config: IntervalConfig, limber: Limber):
    """VQA accuracy (official evaluator's rules), overall and per answer type, x100, with 95%
    intervals over the questions; the same for the closed-vocabulary answers, when asked for; and
    over the dataset's image groups (easy-vqa: each colour and shape)."""
    system, shots = _system_and_shots(context)
    inputs = Inputs(limber)
    answers = inputs.table(
        f"vqa_answers[{system}|{shots}]", limber.layout.vqa_answers(system, limber.language_model, shots)
    )
    groups = dataset_vqa_groups(dataset_part(VQA_EVAL)[0], inputs.manifest(VQA_EVAL))
    key = inputs.key(intervals=config.interval_settings())
    path = limber.layout.vqa_metrics(system, limber.language_model, shots)

    def score() -> pd.DataFrame:
        table, per_question = answers_accuracy(answers, config.bootstrap_resamples, config.bootstrap_seed, groups)
        write_table(per_question, limber.layout.vqa_scores(system, limber.language_model, shots), key)
        return table  # the metrics, written last by stored_table

    table, reused = stored_table(path, key, score)
    accuracies = zip(table["metric"], table["value"], strict=True)
    yield stored_result(
        path, key, reused, n=len(answers), **{m: dg.MetadataValue.float(float(v)) for m, v in accuracies}
    )
    values = table["value"].to_numpy(dtype=float)
    yield dg.AssetCheckResult(
        check_name=ACCURACY_IN_RANGE,
        passed=bool(len(answers) > 0 and np.isfinite(values).all() and ((values >= 0) & (values <= 100)).all()),
        metadata={"questions": len(answers), "min": float(np.nanmin(values)), "max": float(np.nanmax(values))},
    )
