"""LiMBeR's method, free of Dagster: encoders, LM, linear map, training, decoding, metrics, readers."""

import os


def load_metrics(storage_root: str | os.PathLike | None = None):
    """The tidy metric table as a pandas DataFrame: one row per (system, dataset, split, task,
    metric, shots), with the system's backbone and LM beside it.

    Reads ``{storage_root}/metrics/metrics.parquet``; the root (a folder or an fsspec URL such as
    ``s3://bucket/prefix``) defaults to ``$LIMBER_STORAGE`` or ``data``.
    """
    from pipeline import settings
    from storage import StorageLayout
    from storage.layout import read_table

    path = StorageLayout.at(storage_root or settings.storage_root()).metrics_table()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist yet: materialize the metric_tables asset (make demo)")
    return read_table(path)
