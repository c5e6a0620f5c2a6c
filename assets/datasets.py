"""Dataset manifests: one Parquet table per dataset part (image id, path, captions, questions)."""

import dagster as dg
import pandas as pd

from assets.config import DatasetConfig
from assets.inputs import preview, stored_result
from assets.partitions import part_partitions
from assets.resources import Runtime
from pipeline.datasets import read_manifest, reader
from storage.artifacts import Table, keyed_table
from storage.layout import dataset_part, table_key

MANIFEST_VALID = "manifest_valid"


@dg.asset(
    partitions_def=part_partitions,
    group_name="datasets",
    kinds={"parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            MANIFEST_VALID,
            asset="manifests",
            blocking=True,
            description="unique ids, at least one image, every image has a path",
        )
    ],
)
def manifests(context: dg.AssetExecutionContext, config: DatasetConfig, runtime: Runtime):
    """The images of one dataset part, with their reference captions and questions.

    Records a reader cannot use (malformed, duplicate, dangling) are skipped, counted here and
    listed with their file and reason in ``<part>.skipped.parquet`` beside the manifest. The
    manifest's key is a hash of its content: an unchanged manifest is not written again, and
    everything downstream of it is reused.
    """
    dataset, part = dataset_part(context.partition_key)
    options = {name: getattr(config, name) for name in reader(dataset).OPTIONS}
    result = read_manifest(dataset, part, root=runtime.data_root, **options)
    manifest = result.manifest.head(config.max_images) if config.max_images else result.manifest
    path = runtime.layout.manifest(context.partition_key)
    skipped = pd.DataFrame(result.skipped, columns=["source", "record", "reason"])
    key = table_key(manifest)
    skipped_path = runtime.layout.skipped_records(context.partition_key)
    _, reused = keyed_table(path, key, lambda: Table(manifest, {skipped_path: skipped}), read=False)
    if len(skipped):
        context.log.warning(f"{len(skipped)} records skipped; first: {skipped.iloc[0].to_dict()}")
    yield stored_result(
        path,
        key,
        reused,
        images=len(manifest),
        questions=int(manifest["questions"].str.len().sum()),
        images_without_caption=int((manifest["captions"].str.len() == 0).sum()),
        skipped_records=len(skipped),
        skip_reasons=dg.MetadataValue.json(
            skipped["reason"].str.split(":").str[0].value_counts().to_dict() if len(skipped) else {}
        ),
        preview=preview(manifest[["image_id", "captions"]]),
    )
    yield dg.AssetCheckResult(
        check_name=MANIFEST_VALID,
        passed=bool(len(manifest) > 0 and manifest["image_id"].is_unique and (manifest["image_path"] != "").all()),
        metadata={"images": len(manifest), "unique_ids": bool(manifest["image_id"].is_unique)},
    )
