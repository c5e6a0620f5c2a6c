"""What the LM "sees": each system's image tokens read out as their nearest vocabulary tokens."""

import dagster as dg

from assets.adapters import adapters
from assets.config import ReadoutConfig
from assets.datasets import manifests
from assets.image_features import image_features
from assets.inputs import Inputs, preview, stored_result
from assets.language_model import language_model
from assets.linear_map import linear_map
from assets.partitions import ON_MISSING, SHOWN, evaluation_manifests, image_system_partitions
from assets.resources import Runtime
from pipeline import config as stages
from pipeline.datasets import dataset_vqa_groups
from pipeline.readout import prompt_readout, top_tokens
from storage.artifacts import Table, keyed_table
from storage.layout import dataset_part, read_table


@dg.asset(
    partitions_def=image_system_partitions,
    deps=[
        dg.AssetDep(image_features, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(manifests, partition_mapping=evaluation_manifests([SHOWN])),
        dg.AssetDep(linear_map, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(adapters, partition_mapping=dg.AllPartitionMapping()),
        language_model,
    ],
    automation_condition=ON_MISSING,
    group_name="evaluation",
    kinds={"parquet"},
)
def image_prompt_readout(context: dg.AssetExecutionContext, config: ReadoutConfig, runtime: Runtime):
    """For a seeded sample of images, the nearest LM vocabulary tokens (cosine, input-embedding
    space) of each projected image token; where the images have word labels (easy-vqa: colour and
    shape), the share of images whose nearest tokens name their own label, against chance.

    Keyed by the part's manifest and the system's features, its map, the LM and this config."""
    system = context.partition_key
    inputs = Inputs(runtime)
    manifest = inputs.manifest(SHOWN)
    store = inputs.system_features(system, SHOWN)
    stored_map = inputs.linear_map(system)
    inputs.language_model()
    key = inputs.key(readout=config.model_dump())
    path = runtime.layout.prompt_readout(system, runtime.language_model)
    tokens_path = runtime.layout.prompt_nearest_tokens(system, runtime.language_model)

    def read_out():
        lm, tokenizer, _ = runtime.load_lm()
        shares, tokens = prompt_readout(
            stored_map.load(),
            lm,
            tokenizer,
            manifest,
            store,
            dataset_vqa_groups(dataset_part(SHOWN)[0], manifest),
            config.declared(stages.ReadoutConfig),
            resamples=config.bootstrap_resamples,
            device=runtime.torch_device(),
        )
        return Table(shares, {tokens_path: tokens})

    shares, reused = keyed_table(path, key, read_out)
    tokens = read_table(tokens_path)
    shown = top_tokens(tokens).rename("most frequent nearest tokens (rank 1)").reset_index()
    yield stored_result(
        path,
        key,
        reused,
        nearest_tokens=dg.MetadataValue.path(str(tokens_path)),
        images=int(tokens["image_id"].nunique()),
        **{
            row.metric: dg.MetadataValue.text(f"{row.value:.1f} [{row.ci_low:.1f}, {row.ci_high:.1f}]")
            for row in shares.itertuples()
        },
        top_tokens=preview(shown),
    )
