"""What runs without a person: the new-data sensor, nightly re-evaluation, and declarative automation.

- ``backbone_sweep``: registers the backbones the profile, the sweep file (``LIMBER_SWEEP``) and
  the UI name, with the systems on them, once each resolves (a name that does not is reported,
  not registered); running by default, since it only registers partitions. The evaluation assets
  materialize missing partitions on their own (``AutomationCondition.on_missing``), so with the
  ``automation`` sensor on, a new name's features, map, evaluations and table rows follow, and
  nothing already stored runs again.
- ``new_data``: registers the dataset parts that appeared in the raw-data folder (a new CC3M shard,
  a new evaluation file) as dynamic partitions and requests their manifests; ``image_features``
  is eager, so each new manifest then gets its features, and nothing else is recomputed.
- ``caption_evaluation_schedule`` / ``vqa_evaluation_schedule``: nightly by default
  (``LIMBER_EVAL_CRON``), one run per evaluation partition whose inputs are stored. The run key is
  the key of those inputs (``assets/inputs.py``), so a repeated tick (or a night with nothing new)
  requests nothing twice; a retrained map or re-extracted features give a new key and a new run.
"""

import dagster as dg

from assets.captions import caption_metrics, captions
from assets.inputs import Inputs, MissingInput
from assets.partitions import (
    VQA_EVAL,
    VQA_SUPPORT,
    caption_partitions,
    register_backbones,
    register_dataset_parts,
    resolvable,
    vqa_partitions,
    wanted_backbones,
)
from assets.resources import Runtime
from assets.vqa import vqa_answers, vqa_metrics
from pipeline import settings

caption_evaluation_job = dg.define_asset_job(
    "caption_evaluation",
    selection=[captions, caption_metrics],
    partitions_def=caption_partitions,
    description="captions and their metrics for one system on one evaluation split",
)
vqa_evaluation_job = dg.define_asset_job(
    "vqa_evaluation",
    selection=[vqa_answers, vqa_metrics],
    partitions_def=vqa_partitions,
    description="few-shot VQA answers and accuracy for one system at one shot count",
)


@dg.sensor(job_name="manifests_job", minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED)
def new_data(context: dg.SensorEvaluationContext, runtime: Runtime) -> dg.SensorResult:
    """Registers new dataset parts found under the raw-data folder and reads their manifests."""
    new = register_dataset_parts(context.instance, runtime.data_root)
    if new:
        context.log.info(f"new dataset parts: {new}")
    return dg.SensorResult(run_requests=[dg.RunRequest(partition_key=k, run_key=f"manifest:{k}") for k in new])


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def backbone_sweep(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Registers each backbone of the profile, the sweep file and the UI, with its systems."""
    good, bad = resolvable(wanted_backbones(context.instance))
    new = register_backbones(context.instance, good)
    for name, problem in bad.items():
        context.log.error(f"backbone {name!r} not registered: {problem}")
    if new:
        context.log.info(f"new backbones: {new}")
    return dg.SkipReason(
        f"{len(new)} new backbone(s) registered{': ' + ', '.join(new) if new else ''}; "
        f"{len(bad)} name(s) that do not resolve{': ' + ', '.join(bad) if bad else ''}"
    )


def _inputs_key(runtime: Runtime, system: str, parts: list[str]) -> str | None:
    """The key of what an evaluation of ``system`` on ``parts`` reads, or None if one is not stored yet."""
    inputs = Inputs(runtime)
    try:
        inputs.language_model()
        for seed, stored in inputs.linear_maps(system).items():
            inputs.read.update(inputs.with_map(system, seed, stored).read)
        for part in parts:
            inputs.manifest(part, read=False)
            inputs.system_features(system, part)
    except MissingInput:
        return None
    return inputs.key()


def _evaluation_requests(instance, runtime: Runtime, partitions_def, parts_of) -> list[dg.RunRequest]:
    requests = []
    for key in partitions_def.get_partition_keys(dynamic_partitions_store=instance):
        inputs_key = _inputs_key(runtime, key.keys_by_dimension["system"], parts_of(key))
        if inputs_key is not None:
            requests.append(dg.RunRequest(partition_key=key, run_key=f"{key}@{inputs_key}"))
    return requests


@dg.schedule(
    job=caption_evaluation_job,
    cron_schedule=settings.evaluation_cron(),
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def caption_evaluation_schedule(context: dg.ScheduleEvaluationContext, runtime: Runtime):
    """Captions and caption metrics for every system x captioning part whose inputs exist."""
    requests = _evaluation_requests(
        context.instance, runtime, caption_partitions, lambda key: [key.keys_by_dimension["part"]]
    )
    return requests or dg.SkipReason("no system has its features, map and manifests materialized yet")


@dg.schedule(
    job=vqa_evaluation_job, cron_schedule=settings.evaluation_cron(), default_status=dg.DefaultScheduleStatus.STOPPED
)
def vqa_evaluation_schedule(context: dg.ScheduleEvaluationContext, runtime: Runtime):
    """Few-shot VQA for every system x shot count whose inputs exist."""
    requests = _evaluation_requests(context.instance, runtime, vqa_partitions, lambda key: [VQA_EVAL, VQA_SUPPORT])
    return requests or dg.SkipReason("no system has its features, map and manifests materialized yet")


automation = dg.AutomationConditionSensorDefinition(
    "automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="extracts features of new parts and backbones, trains and evaluates new backbones, "
    "and rebuilds metric_tables after evaluations",
)

JOBS = [caption_evaluation_job, vqa_evaluation_job]
SCHEDULES = [caption_evaluation_schedule, vqa_evaluation_schedule]
SENSORS = [backbone_sweep, new_data, automation]
