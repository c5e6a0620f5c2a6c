"""pipeline/metrics/intervals.py: intervals over the right unit (images, with all their questions;
runs) and the coverage they claim."""

import numpy as np
import pandas as pd
import pytest

from pipeline.metrics.intervals import Estimate, combine_runs, resamples_of, run_resamples
from pipeline.metrics.vqa import vqa_estimates


def correlated_answers(rng, images: int, per_image: int, image_sd: float, accuracy: float = 0.5) -> pd.DataFrame:
    """A VQA answers table whose questions share their image's difficulty (a logit offset with
    standard deviation ``image_sd``): right or wrong together more often than independent ones."""
    logit = np.log(accuracy / (1 - accuracy)) + rng.normal(0, image_sd, images)
    p = 1 / (1 + np.exp(-np.repeat(logit, per_image)))
    right = rng.random(images * per_image) < p
    return pd.DataFrame(
        {
            "question_id": np.arange(images * per_image),
            "image_id": np.repeat(np.arange(images), per_image),
            "prediction": np.where(right, "yes", "no"),
            "answers": [["yes"]] * (images * per_image),
            "answer_type": "yes/no",
        }
    )


def width(estimate: Estimate) -> float:
    return estimate.high - estimate.low


def test_questions_of_one_image_are_resampled_together_so_the_interval_widens():
    answers = correlated_answers(np.random.default_rng(0), images=100, per_image=8, image_sd=2.0)
    estimates, per_question = vqa_estimates(answers, resamples=1000, seed=0)
    clustered = estimates["VQA accuracy"]
    per_question_interval = Estimate.mean(per_question["accuracy"], resamples_of(len(per_question), 1000, 0))
    assert clustered.value == pytest.approx(per_question_interval.value, abs=0.01)
    # Eight correlated questions per image carry far less than eight questions' information.
    assert width(clustered) > 1.5 * width(per_question_interval)
    # Independent questions (one per image): the two agree within the bootstrap's noise.
    single = correlated_answers(np.random.default_rng(1), images=800, per_image=1, image_sd=2.0)
    estimates, per_question = vqa_estimates(single, resamples=1000, seed=0)
    plain = Estimate.mean(per_question["accuracy"], resamples_of(len(per_question), 1000, 0))
    assert width(estimates["VQA accuracy"]) == pytest.approx(width(plain), rel=0.15)


def test_the_clustered_interval_covers_the_true_accuracy_95_percent_of_the_time():
    """400 simulated evaluations (60 images of 1 to 9 correlated questions each): the percentile
    bootstrap's interval holds the population accuracy in 95% of them, within three binomial standard
    errors of 400 draws (+-3.3 points). Resampling questions instead misses far more often."""
    rng = np.random.default_rng(0)
    simulations, images, resamples = 400, 60, 400
    image_sd, base = 1.5, 0.0
    # The population accuracy, by simulation of a very large set of images (mean of p per image,
    # weighted by each image's number of questions, which is independent of p).
    truth = 100 * np.mean(1 / (1 + np.exp(-(base + rng.normal(0, image_sd, 2_000_000)))))
    covered = naive_covered = 0
    for _ in range(simulations):
        counts = rng.integers(1, 10, images)
        p = 1 / (1 + np.exp(-(base + rng.normal(0, image_sd, images))))
        right = rng.random(counts.sum()) < np.repeat(p, counts)
        clusters = np.repeat(np.arange(images), counts)
        draws = rng.integers(0, 2**31)
        clustered = Estimate.mean(100.0 * right, resamples_of(images, resamples, draws), clusters)
        naive = Estimate.mean(100.0 * right, resamples_of(len(right), resamples, draws))
        covered += clustered.low <= truth <= clustered.high
        naive_covered += naive.low <= truth <= naive.high
    assert abs(covered / simulations - 0.95) < 3 * np.sqrt(0.95 * 0.05 / simulations)
    assert naive_covered / simulations < 0.85


def test_runs_are_averaged_and_their_spread_widens_the_interval():
    images, resamples = 200, 1000
    rng = np.random.default_rng(0)
    base = rng.normal(50, 10, images)
    rows = resamples_of(images, resamples, 0)

    def runs(offsets):
        return {f"seed-{k}": {"m": Estimate.mean(base + offset, rows)} for k, offset in enumerate(offsets)}

    steady = combine_runs(runs([0.0, 0.0, 0.0]), resamples, 0)["m"]
    spread = combine_runs(runs([-6.0, 0.0, 6.0]), resamples, 0)["m"]
    assert steady.value == pytest.approx(spread.value) == pytest.approx(base.mean())
    assert (spread.runs, spread.std, spread.min, spread.max) == (3, pytest.approx(6.0), spread.min, spread.max)
    assert spread.max - spread.min == pytest.approx(12.0)
    assert width(spread) > 2 * width(steady)
    assert np.isnan(combine_runs(runs([0.0]), resamples, 0)["m"].std)  # one run: no spread to report


def test_paired_runs_draw_the_same_seeds_for_both_systems():
    # Two systems with as many runs draw the same run indices; the difference of identical
    # systems is then exactly 0 in every resample.
    assert np.array_equal(run_resamples(3, 50, 7), run_resamples(3, 50, 7))
    rows = resamples_of(100, 200, 0)
    values = np.random.default_rng(0).normal(0, 1, (3, 100))
    per_run = {f"seed-{k}": {"m": Estimate.mean(values[k], rows)} for k in range(3)}
    a = combine_runs(per_run, 200, 0)["m"]
    b = combine_runs(per_run, 200, 0)["m"]
    difference = a.minus(b)
    assert difference.value == 0 and difference.low == difference.high == 0
