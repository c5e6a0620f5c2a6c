"""Seeded percentile-bootstrap 95% intervals over the units a metric's uncertainty comes from:
the images (with all of an image's questions together) and, where there are several, the runs
(training seeds, few-shot trials).

Every metric here is a function of per-item values: a mean (CIDEr-D with the split's IDF, ROUGE-L,
CLIP-S, the easy-vqa shares, VQA accuracy) or an aggregate of per-item statistics (corpus BLEU,
METEOR). A resample draws the images with replacement and recomputes the metric on them; VQA's
questions are resampled by image (a cluster bootstrap), since an image's questions share the image
and its solved examples and are not independent. A system with several runs is the mean of its
runs' metrics; a resample also draws the runs with replacement, so the interval covers the spread
of training and of the few-shot examples as well as that of the images. Paired differences draw
the same images and the same runs for both systems, so what the systems share (how hard an image
is, which solved examples were shown) cancels out of the interval.
"""

from dataclasses import dataclass, field

import numpy as np

LEVEL = 0.95


def resamples_of(n: int, count: int, seed: int) -> np.ndarray | None:
    """(count, n) item (or image) indices drawn with replacement, the same for a given (n, count,
    seed); None when no interval is asked for (count 0) or there is no item."""
    if not count or not n:
        return None
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


def run_resamples(runs: int, count: int, seed: int) -> np.ndarray | None:
    """(count, runs) run indices drawn with replacement: drawn apart from the images (their own
    stream of the seed), and the same for two systems with as many runs, so paired differences
    draw the same seeds and trials for both."""
    if not count or not runs:
        return None
    return np.random.default_rng([seed, 1]).integers(0, runs, size=(count, runs))


@dataclass(frozen=True)
class Estimate:
    """A metric's value and its 95% interval (NaN when not computed), over ``n`` items when known.

    Over several runs (``runs`` > 1) the value is the mean of the runs' values, and ``std``, ``min``
    and ``max`` their spread. ``spread`` keeps the resampled values the interval was read from, so
    runs and differences drawn from the same resamples can be combined."""

    value: float
    low: float = float("nan")
    high: float = float("nan")
    n: int | None = None
    runs: int = 1
    std: float = float("nan")
    min: float = float("nan")
    max: float = float("nan")
    spread: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, value: float, spread: np.ndarray | None, n: int | None = None, **runs) -> "Estimate":
        """``value`` with the percentile interval of its resampled values ``spread``."""
        if spread is None or not np.isfinite(spread).any():
            return cls(float(value), n=n, **runs)
        tail = 100 * (1 - LEVEL) / 2
        low, high = np.nanpercentile(spread, [tail, 100 - tail])
        return cls(float(value), float(low), float(high), n, spread=np.asarray(spread, dtype=float), **runs)

    @classmethod
    def mean(cls, per_item, rows: np.ndarray | None, clusters=None) -> "Estimate":
        """The mean of per-item values, resampled by ``rows`` (from ``resamples_of``). With
        ``clusters`` (each item's cluster, 0 to C - 1, C = ``rows.shape[1]``: the image a question
        is about) ``rows`` draws clusters, and a resample's mean is over all items of the clusters
        drawn (the ratio estimator of the cluster bootstrap)."""
        values = np.asarray(per_item, dtype=float)
        if not len(values):
            return cls(float("nan"), n=0)
        if rows is None:
            return cls.of(values.mean(), None, len(values))
        if clusters is None:
            return cls.of(values.mean(), values[rows].mean(axis=1), len(values))
        clusters = np.asarray(clusters, dtype=np.int64)
        if len(np.unique(clusters)) < 2:  # one image: its questions say nothing of another image's
            return cls.of(values.mean(), None, len(values))
        sums = np.bincount(clusters, weights=values, minlength=rows.shape[1])
        counts = np.bincount(clusters, minlength=rows.shape[1]).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):  # a resample without the subset's images
            spread = sums[rows].sum(axis=1) / counts[rows].sum(axis=1)
        return cls.of(values.mean(), spread, len(values))

    @classmethod
    def over_runs(cls, estimates: list["Estimate"], run_rows: np.ndarray | None) -> "Estimate":
        """The mean of several runs' estimates (each resampled from the same image draws), with the
        runs drawn by ``run_rows`` (from ``run_resamples``) in each resample, and their spread."""
        values = np.array([e.value for e in estimates], dtype=float)
        spreads = [e.spread for e in estimates]
        spread = None
        if run_rows is not None and all(s is not None for s in spreads):
            by_run = np.stack(spreads)  # (runs, resamples)
            spread = np.nanmean(by_run[run_rows, np.arange(by_run.shape[1])[:, None]], axis=1)
        several = len(values) > 1
        return cls.of(
            float(values.mean()),
            spread,
            estimates[0].n,
            runs=len(values),
            std=float(values.std(ddof=1)) if several else float("nan"),
            min=float(values.min()),
            max=float(values.max()),
        )

    def minus(self, other: "Estimate") -> "Estimate":
        """The paired difference: both estimates must be resampled from the same draws."""
        spread = None if self.spread is None or other.spread is None else self.spread - other.spread
        return Estimate.of(self.value - other.value, spread, self.n)

    def scaled(self, factor: float) -> "Estimate":
        spread = None if self.spread is None else self.spread * factor
        return Estimate(
            self.value * factor, self.low * factor, self.high * factor, self.n,
            self.runs, self.std * factor, self.min * factor, self.max * factor, spread,
        )  # fmt: skip


def combine_runs(per_run: dict[str, dict[str, "Estimate"]], resamples: int, seed: int) -> dict[str, "Estimate"]:
    """Each metric over several runs (``{run: {metric: Estimate}}``, every run resampled from the
    same image draws): the mean of the runs, its interval drawing the runs too, and their spread.
    A metric some run lacks is left out."""
    runs = sorted(per_run)
    run_rows = run_resamples(len(runs), resamples, seed)
    metrics = [m for m in per_run[runs[0]] if all(m in per_run[r] for r in runs)] if runs else []
    return {m: Estimate.over_runs([per_run[r][m] for r in runs], run_rows) for m in metrics}


def runs_table(per_run: dict[str, dict[str, "Estimate"]]):
    """Each run's value of each metric: rows ``(run, metric, value)``, the points behind a mean."""
    import pandas as pd

    rows = [
        {"run": run, "metric": metric, "value": estimate.value}
        for run, by_metric in per_run.items()
        for metric, estimate in by_metric.items()
    ]
    return pd.DataFrame(rows, columns=["run", "metric", "value"])


ESTIMATE_COLUMNS = ["metric", "value", "ci_low", "ci_high", "n", "runs", "std", "min", "max", "note"]


def estimates_table(estimates: dict[str, "Estimate"], notes: dict[str, str] | None = None, n: int = 0):
    """Rows ``ESTIMATE_COLUMNS`` of estimates by metric; ``n`` where an estimate does not count its
    own items, a note (why a value is NaN) by metric."""
    import pandas as pd

    notes = notes or {}
    rows = [
        {"metric": metric, "value": e.value, "ci_low": e.low, "ci_high": e.high, "n": n if e.n is None else e.n}
        | {"runs": e.runs, "std": e.std, "min": e.min, "max": e.max, "note": notes.get(metric, "")}
        for metric, e in estimates.items()
    ]
    return pd.DataFrame(rows, columns=ESTIMATE_COLUMNS)


def bleu_from_stats(stats: np.ndarray, order: int) -> np.ndarray:
    """Corpus BLEU-``order`` as pycocoevalcap's BleuScorer computes it, from summed statistics:
    ``stats`` (..., 10) holds testlen, reflen, guess_1..4, correct_1..4."""
    tiny, small = 1e-15, 1e-9
    testlen, reflen = stats[..., 0], stats[..., 1]
    guess, correct = stats[..., 2:6], stats[..., 6:10]
    bleu = np.prod((correct[..., :order] + tiny) / (guess[..., :order] + small), axis=-1) ** (1.0 / order)
    ratio = (testlen + tiny) / (reflen + small)
    return np.where(ratio < 1, bleu * np.exp(1 - 1 / np.maximum(ratio, tiny)), bleu)


# METEOR 1.5's parameters for English ("-l en", default task) and its four matcher stages' weights
# (exact, stem, synonym, paraphrase): meteor_from_stats reproduces the jar's scores from its
# statistics (tests/test_caption_metrics.py), so resamples need no Java round trip.
METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA, METEOR_DELTA = 0.85, 0.20, 0.60, 0.75
METEOR_STAGE_WEIGHTS = np.array([1.0, 0.6, 0.8, 0.6])


def meteor_segment_stats(stats: np.ndarray) -> np.ndarray:
    """Per-segment statistics as the jar sums them into a corpus score: a segment matched whole in
    one chunk adds no chunk (so a split of perfect captions has no fragmentation penalty)."""
    stats = np.array(stats, dtype=float)
    whole = (stats[:, 21] == stats[:, 0]) & (stats[:, 22] == stats[:, 1]) & (stats[:, 20] == 1)
    stats[whole, 20] = 0
    return stats


def meteor_from_stats(stats: np.ndarray) -> np.ndarray:
    """METEOR from (summed) alignment statistics as the jar's ``SCORE`` lines give them (..., 23):
    test and reference length, their function words, then per stage the content and function
    matches of test and reference, then chunks and the test and reference words matched (summed
    through ``meteor_segment_stats``)."""
    stats = np.asarray(stats, dtype=float)
    delta = METEOR_DELTA
    test_len, ref_len, test_function, ref_function = (stats[..., i] for i in range(4))
    stages = stats[..., 4:20].reshape(*stats.shape[:-1], 4, 4)
    test_matched = (METEOR_STAGE_WEIGHTS * (delta * stages[..., 0] + (1 - delta) * stages[..., 2])).sum(-1)
    ref_matched = (METEOR_STAGE_WEIGHTS * (delta * stages[..., 1] + (1 - delta) * stages[..., 3])).sum(-1)
    chunks, test_words, ref_words = stats[..., 20], stats[..., 21], stats[..., 22]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = test_matched / (delta * (test_len - test_function) + (1 - delta) * test_function)
        recall = ref_matched / (delta * (ref_len - ref_function) + (1 - delta) * ref_function)
        f_mean = precision * recall / (METEOR_ALPHA * precision + (1 - METEOR_ALPHA) * recall)
        whole = (test_words == test_len) & (ref_words == ref_len) & (chunks == 1)
        fragmentation = np.where(whole, 0.0, chunks / ((test_words + ref_words) / 2))
        score = f_mean * (1 - METEOR_GAMMA * fragmentation**METEOR_BETA)
    return np.where(np.isfinite(score), score, 0.0)  # no match at all: 0, as the jar says
