"""The tuned baseline per adapted backbone: the map with a LayerNorm, and adapters in the frozen LM."""

import dagster as dg

from assets.config import AdaptersConfig
from assets.datasets import manifests
from assets.execution import GPU_POOL, TRAINING_GPU_TAGS
from assets.image_features import image_features
from assets.language_model import language_model
from assets.linear_map import loss_check_spec, trained_maps
from assets.partitions import adapted_system, adapter_partitions
from assets.resources import Runtime
from pipeline.adapters import AdaptedMap, feed_forward_blocks
from pipeline.encoders import backbone_spec


@dg.asset(
    partitions_def=adapter_partitions,
    deps=[
        # A subset of the backbones: Dagster maps it onto image_features' backbone dimension only
        # through all partitions; the key holds the backbone's own features alone.
        dg.AssetDep(image_features, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(manifests, partition_mapping=dg.AllPartitionMapping()),
        language_model,
    ],
    group_name="training",
    kinds={"pytorch", "safetensors"},
    pool=GPU_POOL,
    op_tags=TRAINING_GPU_TAGS,
    check_specs=[loss_check_spec("adapters")],
)
def adapters(context: dg.AssetExecutionContext, config: AdaptersConfig, runtime: Runtime):
    """MAGMA's recipe on the cached features of one backbone (system ``{backbone}+adapters``): an
    image prefix (linear, dropout, LayerNorm) and a bottleneck adapter after each feed-forward block
    of the frozen LM, trained together with the linear map's loss, data, steps and batch."""
    backbone = context.partition_key
    spec = backbone_spec(backbone)
    yield from trained_maps(
        context,
        config,
        runtime,
        backbone,
        system=adapted_system(backbone),
        new_map=lambda lm_dim, lm: AdaptedMap(
            spec.feature_dim, lm_dim, spec.layout, config.dropout, len(feed_forward_blocks(lm)), config.reduction
        ),
    )
