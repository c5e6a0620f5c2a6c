"""The gallery: a fixed sample of evaluation images with every system's outputs, in the UI."""

import dagster as dg
import pandas as pd

from assets.captions import captions
from assets.config import GalleryConfig
from assets.datasets import manifests
from assets.inputs import Inputs, stored_result, stored_table
from assets.partitions import SHOWN, SYSTEMS, VQA_EVAL, evaluation_manifests
from assets.resources import Limber
from assets.vqa import vqa_answers
from pipeline.gallery import caption_samples, gallery_pngs, vqa_samples
from pipeline.plots import markdown_image
from pipeline.vqa import SHOTS
from storage.layout import stored_key, write_bytes


@dg.asset(
    deps=[
        dg.AssetDep(captions, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(vqa_answers, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(manifests, partition_mapping=evaluation_manifests([SHOWN, VQA_EVAL])),
    ],
    group_name="reporting",
    kinds={"parquet", "png"},
    # Redrawn after any evaluation finishes, as metric_tables is, even while some systems are missing.
    automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
)
def caption_gallery(context: dg.AssetExecutionContext, config: GalleryConfig, limber: Limber):
    """A seeded sample of images of the shown part, each with its references and every system's
    caption; and of VQA questions, each with every system's answer at each shot count. As PNGs in
    this asset's metadata, and as a tidy table (task, image_id, question, system, shots, text).

    Shows the systems whose outputs are stored; keyed by those outputs and this config."""
    inputs = Inputs(limber)
    lm = limber.language_model
    shown, asked = inputs.manifest(SHOWN), inputs.manifest(VQA_EVAL)
    captioned = {
        system: inputs.table(f"captions[{system}|{SHOWN}]", limber.layout.captions(system, lm, SHOWN))
        for system in SYSTEMS
        if stored_key(limber.layout.captions(system, lm, SHOWN)) is not None
    }
    answered = {
        (system, shots): inputs.table(f"vqa_answers[{system}|{shots}]", limber.layout.vqa_answers(system, lm, shots))
        for system in SYSTEMS
        for shots in SHOTS
        if stored_key(limber.layout.vqa_answers(system, lm, shots)) is not None
    }
    key = inputs.key(gallery=config.model_dump())
    path = limber.layout.gallery_table(lm)

    def show():
        gallery = pd.concat(
            [
                caption_samples(shown, captioned, config.images, config.seed),
                vqa_samples(answered, config.questions, config.seed),
            ],
            ignore_index=True,
        )
        paths = {row.image_id: row.image_path for manifest in (shown, asked) for row in manifest.itertuples()}
        for task, png in gallery_pngs(gallery, paths).items():
            write_bytes(limber.layout.gallery(lm, task), png)
        return gallery  # written last by stored_table

    gallery, reused = stored_table(path, key, show)
    pictures = {
        f"{task}_gallery": dg.MetadataValue.md(markdown_image(limber.layout.gallery(lm, task).read_bytes(), task))
        for task in gallery["task"].unique()
    }
    return stored_result(path, key, reused, systems=len(captioned), vqa_partitions=len(answered), **pictures)
