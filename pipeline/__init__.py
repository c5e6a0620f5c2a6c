"""LiMBeR's method, free of Dagster: encoders, LM, linear map, training, decoding, metrics, readers."""

import os


def load_metrics(storage_root: str | os.PathLike | None = None):
    """The tidy metric table as a pandas DataFrame: one row per (system, dataset, split, task,
    metric, shots), with the system's backbone and LM beside it: ``value`` is the mean over the
    system's runs (training seeds x few-shot trials), ``runs``, ``std``, ``min`` and ``max`` their
    number and spread, ``ci_low``/``ci_high`` a 95% interval drawing the images and the runs.

    Reads ``{storage_root}/metrics/metrics.parquet``; the root (a folder or an fsspec URL such as
    ``s3://bucket/prefix``) defaults to ``$LIMBER_STORAGE`` or ``data``.
    """
    return _read_metrics_file("metrics_table", storage_root)


def load_differences(storage_root: str | os.PathLike | None = None):
    """Paired differences as a pandas DataFrame: each system's score minus a baseline's (blind, and
    each random-init encoder) on the same images or questions, with a paired bootstrap 95% interval
    (the same images, each with all its questions, and the same runs drawn for both).

    Columns: system, baseline, task, dataset, split, metric, shots, difference, ci_low, ci_high, n.
    Metrics that are means over items are included (CIDEr-D, ROUGE-L, CLIP-S, RefCLIP-S, the
    easy-vqa shares, VQA accuracy); corpus BLEU and METEOR have intervals in ``load_metrics`` only.
    Reads ``{storage_root}/metrics/differences.parquet`` (root as for ``load_metrics``).
    """
    return _read_metrics_file("differences_table", storage_root)


def load_rankings(storage_root: str | os.PathLike | None = None):
    """The systems in order as a pandas DataFrame, per (task, dataset, split, metric, shots) of the
    comparison's metrics: ``rank`` (1 is best), shared by systems the data cannot order (the 95%
    interval of their paired difference, drawing the same images and runs, contains 0), ``tied``
    and ``tied_with``, beside each system's mean, interval and number of runs.

    Reads ``{storage_root}/metrics/rankings.parquet`` (root as for ``load_metrics``).
    """
    return _read_metrics_file("rankings_table", storage_root)


def load_runs(storage_root: str | os.PathLike | None = None):
    """Every run's value of every metric (a run: one training seed's map, one few-shot trial), the
    points behind each mean of ``load_metrics``. Columns: system, dataset, split, task, metric,
    shots, run, value. Reads ``{storage_root}/metrics/runs.parquet``."""
    return _read_metrics_file("metric_runs_table", storage_root)


def _read_metrics_file(name: str, storage_root):
    from pipeline import settings
    from storage import StorageLayout
    from storage.layout import read_table

    path = getattr(StorageLayout.at(storage_root or settings.storage_root()), name)()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist yet: materialize metric_tables and rankings (make demo)")
    return read_table(path)
