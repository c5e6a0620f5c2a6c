"""Frozen image features per backbone x dataset part, streamed into Zarr and resumable."""

import dagster as dg
import numpy as np

from assets.config import PROFILE, ExtractionConfig
from assets.datasets import manifests
from assets.execution import GPU_POOL, GPU_TAGS
from assets.inputs import Inputs, stored_result
from assets.partitions import feature_partitions
from assets.resources import Runtime
from pipeline.encoders import backbone_spec, create_backbone
from pipeline.image_features import extract_image_features
from storage import FeatureArray

FEATURES_VALID = "features_valid"


def feature_checks(features: FeatureArray, manifest_ids: list[str]) -> dg.AssetCheckResult:
    """Finite values (as recorded per row when each chunk was written), one row per manifest image,
    ids in manifest order, every row finished."""
    ids_aligned = len(features.ids) == len(manifest_ids) and bool((features.ids == np.asarray(manifest_ids)).all())
    nonfinite_rows = int((~features.finite).sum())
    complete = features.is_complete()
    return dg.AssetCheckResult(
        check_name=FEATURES_VALID,
        passed=ids_aligned and nonfinite_rows == 0 and complete,
        metadata={
            "ids_aligned": ids_aligned,
            "finite": nonfinite_rows == 0,
            "nonfinite_rows": nonfinite_rows,
            "complete": complete,
            "rows": len(features.ids),
        },
    )


@dg.asset(
    partitions_def=feature_partitions,
    deps=[manifests],
    group_name="features",
    kinds={"pytorch", "zarr"},
    check_specs=[
        dg.AssetCheckSpec(
            FEATURES_VALID,
            asset="image_features",
            blocking=True,
            description="finite, one row per manifest image in its order, every chunk done",
        )
    ],
    # A newly registered part (a new CC3M shard) is extracted as soon as its manifest exists.
    automation_condition=dg.AutomationCondition.eager(),
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
)
def image_features(context: dg.AssetExecutionContext, config: ExtractionConfig, runtime: Runtime):
    """One frozen backbone's features for every image of one part (float16, one Zarr array).

    Keyed by the manifest, the resolved encoder spec (library and version, model and tag, layer,
    layout, pooling, preprocessing, and the weights' fingerprint or random seed) and
    the dtype it computes in: features stored under another key are computed again; under the same
    key only unfinished chunks.
    """
    keys = context.partition_key.keys_by_dimension
    backbone_name, part = keys["backbone"], keys["part"]
    inputs = Inputs(runtime)
    manifest = inputs.manifest(part)
    spec = backbone_spec(backbone_name)
    key = inputs.key(encoder=spec.fingerprint(), precision=str(runtime.compute_dtype()))
    path = runtime.layout.image_features(backbone_name, part)
    store = FeatureArray.open(
        str(path), manifest["image_id"].tolist(), spec.layout.positions, spec.feature_dim, config.chunk_rows, key
    )
    pending = len(store.pending_chunks())
    context.log.info(f"{backbone_name} on {part}: {pending} of {store.num_chunks()} chunks to compute")
    stats = None
    if pending:
        backbone = create_backbone(backbone_name, runtime.torch_device())
        stats = extract_image_features(
            backbone,
            manifest["image_path"].tolist(),
            store,
            device=runtime.torch_device(),
            batch_size=config.batch_size,
            workers=config.workers,
            dtype=runtime.compute_dtype(),
            on_chunk=lambda done, total: context.log.info(f"chunk {done}/{total}"),
        )
    skipped = store.skipped
    yield stored_result(
        path,
        key,
        pending == 0,
        rows=len(manifest),
        shape=str(tuple(store.features.shape)),
        dtype=str(store.features.dtype),
        layer=spec.layer,
        weights=spec.weights_source(),
        resolves_to=spec.encoder.canonical,
        chunks_computed=stats.chunks_computed if stats else 0,
        chunks_reused=store.num_chunks() - pending,
        images_per_second=round(stats.images_per_second, 2) if stats else 0.0,
        skipped_images=len(skipped),
        machine=dg.MetadataValue.json(runtime.machine()),
        skip_reasons=dg.MetadataValue.json(
            {str(k): v for k, v in list(skipped.items())[: PROFILE["reporting"]["listed_skips"]]}
        ),
    )
    yield feature_checks(store, manifest["image_id"].tolist())
