"""The Dagster code location: every asset, the resource, jobs, schedules, sensors and the executor."""

import dagster as dg

from assets import automation
from assets.adapters import adapters
from assets.captions import caption_metrics, captions
from assets.datasets import manifests
from assets.execution import executor
from assets.gallery import caption_gallery
from assets.image_features import image_features
from assets.language_model import language_model
from assets.linear_map import linear_map
from assets.metric_tables import metric_tables, rankings
from assets.readout import image_prompt_readout
from assets.resources import Runtime
from assets.vqa import vqa_answers, vqa_metrics

ALL_ASSETS = [
    manifests,
    image_features,
    language_model,
    linear_map,
    adapters,
    captions,
    caption_metrics,
    vqa_answers,
    vqa_metrics,
    image_prompt_readout,
    metric_tables,
    rankings,
    caption_gallery,
]

# One job per asset (a Dagster job spans one partitions definition), plus the evaluation jobs the
# schedules run.
ASSET_JOBS = [dg.define_asset_job(f"{asset.key.to_user_string()}_job", selection=[asset]) for asset in ALL_ASSETS]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=ASSET_JOBS + automation.JOBS,
    schedules=automation.SCHEDULES,
    sensors=automation.SENSORS,
    resources={"runtime": Runtime()},
    executor=executor(),
)
