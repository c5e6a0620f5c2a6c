"""Lookups in the Dagster instance: the latest materialization of an asset partition and its path."""

import dagster as dg

from storage.layout import storage_path


def latest_materialization(instance: dg.DagsterInstance, asset, partition_key: str | None):
    """The latest materialization record of one asset partition, or None."""
    key = asset.key if hasattr(asset, "key") else dg.AssetKey(asset)
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[str(partition_key)] if partition_key else None),
        limit=1, ascending=False,
    ).records
    return records[0] if records else None


def upstream_path(context: dg.AssetExecutionContext, asset, partition_key: str | None = None):
    """The ``path`` recorded by the latest materialization of an upstream asset partition."""
    partition_key = partition_key if partition_key is not None else context.partition_key
    record = latest_materialization(context.instance, asset, partition_key)
    if record is None:
        raise FileNotFoundError(f"{asset if isinstance(asset, str) else asset.key.to_user_string()}[{partition_key}] "
                                "is not materialized yet: materialize it first")
    return storage_path(record.asset_materialization.metadata["path"].value)
