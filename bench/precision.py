"""The CPU precision measurement behind ``precision: auto``, taken now on this machine (not cached).

    python bench/precision.py [--repeats 7] [--warmup 2] [--budget 1.0] [--threads 1]

Prints ``pipeline.devices.measure_cpu_precision``'s dict as JSON: the CPU model, torch version and
torch thread count it holds for, whether the CPU has native bfloat16, the median milliseconds of
one SmolLM2-135M-sized transformer block forward on (16, 64, 576) in float32 and under bfloat16
autocast on ``--threads`` threads (the pipeline's: 1), and the dtype ``auto`` picks from them.
The pipeline caches its own measurement under ``LIMBER_CACHE`` (``precision.json``); this script
neither reads nor writes it.
"""

import argparse
import json

from pipeline.devices import MEASURED_THREADS, measure_cpu_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed forwards per dtype (median taken)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per dtype first")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds after which repeats stop (at least 3)")
    parser.add_argument(
        "--threads", type=int, default=MEASURED_THREADS, help="threads timed on (the pipeline's measurement: 1)"
    )
    args = parser.parse_args()
    print(json.dumps(measure_cpu_precision(args.warmup, args.repeats, args.budget, args.threads), indent=2))


if __name__ == "__main__":
    main()
