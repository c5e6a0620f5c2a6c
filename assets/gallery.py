"""The gallery: a fixed sample of evaluation images with every system's outputs, in the UI."""

import dagster as dg
import pandas as pd

from assets.captions import captions
from assets.config import GalleryConfig
from assets.datasets import manifests
from assets.inputs import Inputs, MissingInput, stored_result
from assets.partitions import SHOWN, VQA_EVAL, evaluation_manifests, registered, system_partitions
from assets.resources import Runtime
from assets.vqa import vqa_answers
from pipeline.gallery import caption_samples, gallery_pngs, vqa_samples
from pipeline.plots import markdown_image
from pipeline.vqa import SHOTS
from storage.artifacts import Table, keyed_table
from storage.layout import read_table, run_name, stored_key, stored_runs


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
def caption_gallery(context: dg.AssetExecutionContext, config: GalleryConfig, runtime: Runtime):
    """A seeded sample of images of the shown part, each with its references and every system's
    caption; and of VQA questions, each with every system's answer at each shot count. As PNGs in
    this asset's metadata, and as a tidy table (task, image_id, question, system, shots, text).

    Shows the systems whose outputs are stored; keyed by those outputs and this config."""
    inputs, layout, lm = Inputs(runtime), runtime.layout, runtime.language_model
    # Only the keys are read here: the tables are loaded when the gallery is redrawn.
    inputs.manifest(SHOWN, read=False)
    inputs.manifest(VQA_EVAL, read=False)
    systems = registered(context.instance, system_partitions)
    # Each system's first run (its first training seed, first few-shot trial) is shown.
    captioned, answered = {}, {}
    for system in systems:
        try:
            run = run_name(next(iter(Inputs(runtime).linear_maps(system))))
        except MissingInput:
            continue
        if stored_key(layout.captions(system, lm, SHOWN, run)) is not None:
            captioned[system] = layout.captions(system, lm, SHOWN, run)
        for shots in SHOTS:
            runs = stored_runs(layout.vqa_answer_runs(system, lm, shots))
            if runs:
                answered[system, shots] = layout.vqa_answers(system, lm, shots, runs[0])
    for system, table in captioned.items():
        inputs.table(f"captions[{system}|{SHOWN}]", table, read=False)
    for (system, shots), table in answered.items():
        inputs.table(f"vqa_answers[{system}|{shots}]", table, read=False)
    key = inputs.key(gallery=config.model_dump())
    path = layout.gallery_table(lm)

    def show():
        shown, asked = read_table(layout.manifest(SHOWN)), read_table(layout.manifest(VQA_EVAL))
        gallery = pd.concat(
            [
                caption_samples(shown, {s: read_table(p) for s, p in captioned.items()}, config.images, config.seed),
                vqa_samples({k: read_table(p) for k, p in answered.items()}, config.questions, config.seed),
            ],
            ignore_index=True,
        )
        paths = {row.image_id: row.image_path for manifest in (shown, asked) for row in manifest.itertuples()}
        pngs = gallery_pngs(gallery, paths)
        return Table(gallery, {layout.gallery(lm, task): png for task, png in pngs.items()})

    gallery, reused = keyed_table(path, key, show)
    pictures = {
        f"{task}_gallery": dg.MetadataValue.md(markdown_image(layout.gallery(lm, task).read_bytes(), task))
        for task in gallery["task"].unique()
    }
    return stored_result(path, key, reused, systems=len(captioned), vqa_partitions=len(answered), **pictures)
