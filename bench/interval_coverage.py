"""Coverage of the 95% intervals by simulation: how often each holds the true value.

- Images: 60 images of 1 to 9 questions each, sharing the image's difficulty (a logit offset with
  standard deviation 1.5). The cluster bootstrap (images drawn with all their questions, as
  ``pipeline.metrics.vqa`` draws them) against resampling questions as if independent.
- Runs: a metric whose runs (training seeds) differ by a seed effect of standard deviation 3 points,
  on 200 images of standard deviation 20 (1.4 points of image noise): the interval drawing images
  and runs (``combine_runs``), for 1, 3 and 5 runs. With few runs the percentile bootstrap sees
  less of the seed spread than there is, so the interval covers less than 95% (the truth here is
  the mean over all seeds).

    python bench/interval_coverage.py [--simulations 400]
"""

import argparse

import numpy as np

from pipeline.metrics.intervals import Estimate, combine_runs, resamples_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=400)
    parser.add_argument("--resamples", type=int, default=400)
    args = parser.parse_args()
    rng, simulations, resamples = np.random.default_rng(0), args.simulations, args.resamples
    images = 60
    truth = 100 * np.mean(1 / (1 + np.exp(-rng.normal(0, 1.5, 2_000_000))))
    clustered = independent = 0
    for _ in range(simulations):
        counts = rng.integers(1, 10, images)
        p = 1 / (1 + np.exp(-rng.normal(0, 1.5, images)))
        right = 100.0 * (rng.random(counts.sum()) < np.repeat(p, counts))
        draws = int(rng.integers(0, 2**31))
        by_image = Estimate.mean(right, resamples_of(images, resamples, draws), np.repeat(np.arange(images), counts))
        by_question = Estimate.mean(right, resamples_of(len(right), resamples, draws))
        clustered += by_image.low <= truth <= by_image.high
        independent += by_question.low <= truth <= by_question.high
    standard_error = np.sqrt(0.95 * 0.05 / simulations)
    print(f"{simulations} simulations, 95% intervals (+-{1.96 * standard_error:.3f} from simulation alone)")
    print(f"images, resampled with their questions: coverage {clustered / simulations:.3f}")
    print(f"questions, resampled as if independent: coverage {independent / simulations:.3f}")
    for runs in (1, 3, 5):
        covered = 0
        for _ in range(simulations):
            base = rng.normal(50, 20, 200)
            rows = resamples_of(200, resamples, int(rng.integers(0, 2**31)))
            per_run = {f"seed-{k}": {"m": Estimate.mean(base + rng.normal(0, 3), rows)} for k in range(runs)}
            estimate = combine_runs(per_run, resamples, int(rng.integers(0, 2**31)))["m"]
            covered += estimate.low <= 50 <= estimate.high
        print(f"{runs} run(s), seed spread 3 points, image noise 1.4: coverage {covered / simulations:.3f}")


if __name__ == "__main__":
    main()
