"""Seeded percentile-bootstrap 95% intervals over the items a metric is computed from (images,
questions).

Every metric here is a function of per-item values: a mean (CIDEr-D with the split's IDF, ROUGE-L,
CLIP-S, the easy-vqa shares, VQA accuracy) or an aggregate of per-item statistics (corpus BLEU,
METEOR). A resample draws the items with replacement and recomputes the metric on them. Paired
differences draw the same items for both systems, so what the systems share (how hard an image
is) cancels out of the interval.
"""

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


def resamples_of(n: int, count: int, seed: int) -> np.ndarray | None:
    """(count, n) item indices drawn with replacement, the same for a given (n, count, seed);
    None when no interval is asked for (count 0) or there is no item."""
    if not count or not n:
        return None
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


@dataclass(frozen=True)
class Estimate:
    """A metric's value and its 95% interval (NaN when not computed), over ``n`` items when known."""

    value: float
    low: float = float("nan")
    high: float = float("nan")
    n: int | None = None

    @classmethod
    def of(cls, value: float, spread: np.ndarray | None, n: int | None = None) -> "Estimate":
        """``value`` with the percentile interval of its resampled values ``spread``."""
        if spread is None or not np.isfinite(spread).any():
            return cls(float(value), n=n)
        tail = 100 * (1 - LEVEL) / 2
        low, high = np.nanpercentile(spread, [tail, 100 - tail])
        return cls(float(value), float(low), float(high), n)

    @classmethod
    def mean(cls, per_item, rows: np.ndarray | None) -> "Estimate":
        """The mean of per-item values, resampled by ``rows`` (from ``resamples_of``)."""
        values = np.asarray(per_item, dtype=float)
        if not len(values):
            return cls(float("nan"), n=0)
        return cls.of(values.mean(), None if rows is None else values[rows].mean(axis=1), len(values))

    def scaled(self, factor: float) -> "Estimate":
        return Estimate(self.value * factor, self.low * factor, self.high * factor, self.n)


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
