"""Dataset manifests: one Parquet table per split (image id, path, captions, questions)."""

import dagster as dg

from assets.config import DatasetConfig
from assets.partitions import dataset_split, split_partitions
from assets.resources import Limber
from pipeline.datasets import read_manifest


@dg.asset(partitions_def=split_partitions, group_name="datasets", kinds={"parquet"})
def manifests(context: dg.AssetExecutionContext, config: DatasetConfig, limber: Limber) -> dg.MaterializeResult:
    """The images of one dataset split, with their reference captions and questions."""
    dataset, split = dataset_split(context.partition_key)
    manifest = read_manifest(dataset, split, val_size=config.val_size, seed=config.seed)
    if config.max_images:
        manifest = manifest.head(config.max_images)
    path = limber.layout.manifest(dataset, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(path)
    without_caption = int((manifest["captions"].str.len() == 0).sum())
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "images": len(manifest),
            "questions": int(manifest["questions"].str.len().sum()),
            "images_without_caption": without_caption,
            "preview": dg.MetadataValue.md(
                manifest[["image_id", "captions"]].head(10).astype(str).to_markdown(index=False)
            ),
        }
    )
