"""LiMBeR's method, free of Dagster: encoders, LM, linear map, training, decoding, metrics, readers."""

import os
from pathlib import Path


def load_metrics(storage_root: str | os.PathLike | None = None):
    """The tidy metric table as a pandas DataFrame (one row per backbone, split, task, metric, shots).

    Reads ``{storage_root}/metrics/metrics.parquet``; the root defaults to ``$LIMBER_STORAGE`` or ``data``.
    """
    import pandas as pd

    from storage import StorageLayout

    root = Path(storage_root or os.environ.get("LIMBER_STORAGE", "data")).absolute()
    path = StorageLayout(root).metrics_table()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist yet: materialize the metric_tables asset (make demo)")
    return pd.read_parquet(path)
