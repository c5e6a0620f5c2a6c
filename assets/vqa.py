"""Few-shot VQA per system x shots (0, 1, 2, 4), and its official-style accuracy."""

import dagster as dg
import numpy as np
import pandas as pd

from assets.config import VqaConfig
from assets.execution import GPU_POOL, GPU_TAGS
from assets.partitions import VQA_EVAL, VQA_SUPPORT, vqa_partitions
from assets.records import upstream_path
from assets.resources import Limber
from assets.systems import SYSTEM_INPUTS, System
from pipeline.image_features import ChunkedRows
from pipeline.metrics.vqa import vqa_accuracy
from pipeline.vqa import (
    SHOTS,
    answer_questions,
    draw_support,
    flatten_questions,
    pool_questions,
    sample_questions,
    support_pool,
)
from storage import config_hash
from storage.layout import read_table, write_table

ACCURACY_IN_RANGE = "accuracy_in_range"


@dg.asset(
    partitions_def=vqa_partitions,
    deps=SYSTEM_INPUTS,
    group_name="evaluation",
    kinds={"parquet"},
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
)
def vqa_answers(context: dg.AssetExecutionContext, config: VqaConfig, limber: Limber) -> dg.MaterializeResult:
    """Answers to a fixed subset of evaluation questions, with n solved support examples in the prompt."""
    keys = context.partition_key.keys_by_dimension
    shots, system = int(keys["shots"]), System.resolve(context, keys["system"])
    inputs = config_hash({"linear_map": system.linear_map_hash, "vqa": config.model_dump()})
    path = limber.layout.evaluation("vqa_answers", system.name, limber.language_model, inputs, f"{shots}-shot")
    reused = path.exists()
    if not reused:
        questions = sample_questions(
            flatten_questions(read_table(limber.layout.manifest(VQA_EVAL))), config.questions, config.seed
        )
        support_manifest = read_table(limber.layout.manifest(VQA_SUPPORT))
        # Solved examples come from a fixed pool of support images, the same for every system.
        pool = support_pool(len(support_manifest), config.support_images, config.seed)
        train_questions = pool_questions(flatten_questions(support_manifest), pool)
        support = draw_support(train_questions, len(questions), max(SHOTS), config.seed)
        device = limber.torch_device()
        lm, tokenizer, _ = limber.load_lm()
        mapping = system.linear_map(limber)
        features = support_features = None
        if mapping is not None:
            features = system.features(limber, VQA_EVAL).features
            if shots:
                support_store = system.features(limber, VQA_SUPPORT).features
                support_features = ChunkedRows(support_store)[np.arange(pool.start, pool.stop)]
        answers = answer_questions(
            lm, tokenizer, questions, train_questions, support, shots=shots, batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens, linear_map=mapping, features=features,
            support_features=support_features, device=device,
            on_batch=lambda done, total: context.log.info(f"answered {done}/{total}"),
        )
        columns = ["question_id", "image_id", "question", "answers", "answer_type", "prediction"]
        write_table(questions.assign(prediction=answers)[columns], path)
    table = read_table(path)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "reused": reused,
        "questions": len(table),
        "preview": dg.MetadataValue.md(table.head(10).astype(str).to_markdown(index=False)),
    })


@dg.asset(
    partitions_def=vqa_partitions,
    deps=[vqa_answers],
    group_name="evaluation",
    kinds={"parquet"},
    check_specs=[dg.AssetCheckSpec(ACCURACY_IN_RANGE, asset="vqa_metrics", blocking=True,
                                   description="every accuracy a number in [0, 100] over at least one question")],
)
def vqa_metrics(context: dg.AssetExecutionContext):
    """VQA accuracy (official evaluator's rules), overall and per answer type, x100.

    easy-vqa has one answer per question; it is scored as ten identical ground-truth answers.
    """
    answers_path = upstream_path(context, vqa_answers)
    table = read_table(answers_path)
    gt = {q: list(a) * (10 if len(a) == 1 else 1) for q, a in zip(table["question_id"], table["answers"])}
    report = vqa_accuracy(dict(zip(table["question_id"], table["prediction"])), gt,
                          dict(zip(table["question_id"], table["answer_type"])))
    rows = [{"metric": "VQA accuracy", "value": report["overall"], "n": len(table), "note": ""}] + [
        {"metric": f"VQA accuracy ({t})", "value": v, "n": int((table["answer_type"] == t).sum()), "note": ""}
        for t, v in sorted(report["perAnswerType"].items())
    ]
    path = answers_path.with_suffix(".metrics.parquet")
    write_table(pd.DataFrame(rows), path)
    yield dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "n": len(table),
        **{r["metric"]: dg.MetadataValue.float(r["value"]) for r in rows},
    })
    values = np.array([r["value"] for r in rows], dtype=float)
    yield dg.AssetCheckResult(
        check_name=ACCURACY_IN_RANGE,
        passed=bool(len(table) > 0 and np.isfinite(values).all() and ((values >= 0) & (values <= 100)).all()),
        metadata={"questions": len(table), "min": float(np.nanmin(values)), "max": float(np.nanmax(values))},
    )
