"""Few-shot VQA per system x shots (0, 1, 2, 4), and its official-style accuracy."""

import dagster as dg
import pandas as pd

from assets.config import VqaConfig
from assets.partitions import DATASET, vqa_partitions
from assets.resources import Limber
from assets.systems import SYSTEM_INPUTS, System, load_lm, upstream_path
from pipeline.metrics.vqa import vqa_accuracy
from pipeline.vqa import SHOTS, answer_questions, draw_support, flatten_questions, sample_questions
from storage import config_hash

EVAL_SPLIT, SUPPORT_SPLIT = "test", "train"


@dg.asset(
    partitions_def=vqa_partitions,
    deps=SYSTEM_INPUTS,
    group_name="evaluation",
    kinds={"parquet"},
)
def vqa_answers(context: dg.AssetExecutionContext, config: VqaConfig, limber: Limber) -> dg.MaterializeResult:
    """Answers to a fixed subset of test questions, with n solved train examples in the prompt."""
    keys = context.partition_key.keys_by_dimension
    shots, system = int(keys["shots"]), System.resolve(context, keys["system"])
    inputs = config_hash({"linear_map": system.linear_map_hash, "vqa": config.model_dump()})
    path = limber.layout.evaluation("vqa_answers", system.name, limber.language_model, inputs, f"{shots}-shot")
    reused = path.exists()
    if not reused:
        questions = sample_questions(
            flatten_questions(pd.read_parquet(limber.layout.manifest(DATASET, EVAL_SPLIT))), config.questions, config.seed
        )
        train_questions = flatten_questions(pd.read_parquet(limber.layout.manifest(DATASET, SUPPORT_SPLIT)))
        # Drawn from the seed alone: every system answers with the same solved examples.
        support = draw_support(train_questions, len(questions), max(SHOTS), config.seed)
        device = limber.torch_device()
        lm, tokenizer, _ = load_lm(limber)
        support_rows = train_questions["row"].to_numpy()[support[:, :shots].ravel()]
        answers = answer_questions(
            lm, tokenizer, questions,
            system.image_tokens(limber, EVAL_SPLIT, questions["row"].to_numpy(), device),
            train_questions, system.image_tokens(limber, SUPPORT_SPLIT, support_rows, device) if shots else None,
            support, shots=shots, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
            on_batch=lambda done, total: context.log.info(f"answered {done}/{total}"),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        questions.assign(prediction=answers)[
            ["question_id", "image_id", "question", "answers", "answer_type", "prediction"]
        ].to_parquet(path)
    table = pd.read_parquet(path)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "reused": reused,
        "questions": len(table),
        "preview": dg.MetadataValue.md(table.head(10).astype(str).to_markdown(index=False)),
    })


@dg.asset(partitions_def=vqa_partitions, deps=[vqa_answers], group_name="evaluation", kinds={"parquet"})
def vqa_metrics(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """VQA accuracy (official evaluator's rules), overall and per answer type, x100.

    easy-vqa has one answer per question; it is scored as ten identical ground-truth answers.
    """
    answers_path = upstream_path(context, vqa_answers)
    table = pd.read_parquet(answers_path)
    gt = {q: list(a) * (10 if len(a) == 1 else 1) for q, a in zip(table["question_id"], table["answers"])}
    report = vqa_accuracy(dict(zip(table["question_id"], table["prediction"])), gt,
                          dict(zip(table["question_id"], table["answer_type"])))
    rows = [{"metric": "VQA accuracy", "value": report["overall"], "n": len(table), "note": ""}] + [
        {"metric": f"VQA accuracy ({t})", "value": v, "n": int((table["answer_type"] == t).sum()), "note": ""}
        for t, v in sorted(report["perAnswerType"].items())
    ]
    path = answers_path.with_suffix(".metrics.parquet")
    pd.DataFrame(rows).to_parquet(path)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "n": len(table),
        **{r["metric"]: dg.MetadataValue.float(r["value"]) for r in rows},
    })
