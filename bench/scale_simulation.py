"""How the paper profile's bookkeeping grows with CC3M's size, simulated on a synthetic store.

    python bench/scale_simulation.py [--rows 100000 1000000] [--shard-rows 10000] [--json out.json]

For each size, builds a synthetic feature store of that many rows (feature dim 8, float16) across
shards of ``--shard-rows`` rows, in the Zarr layout ``image_features`` writes, and the matching
empty CC3M shard files under a raw-data root; then times, on the paper profile:

- ``training_set``: ``pipeline.training.training_set`` on every shard (each store joined to its
  manifest by id, the trainable rows found), what ``linear_map`` does before its first step;
- ``batch_plan``: grouping the rows by chunk and drawing one epoch of batches (paid again on resume);
- ``register_parts``: discovering the shards and registering them as dynamic partitions;
- ``sensor_tick``: one ``new_data`` sensor tick after one more shard appears.

Prints each step's time per size and its growth ratio beside the rows ratio: linear growth gives a
ratio near the rows ratio. These are measured ratios, printed, not assertions.
"""

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ["LIMBER_PROFILE"] = "paper"  # the profile is read when the Definitions load

import dagster as dg  # noqa: E402

from assets.automation import new_data  # noqa: E402
from assets.partitions import register_dataset_parts, registered_parts  # noqa: E402
from assets.resources import Runtime  # noqa: E402
from pipeline.training import batch_plan, training_set  # noqa: E402
from storage.feature_store import FeatureArray  # noqa: E402

DIM, CHUNK_ROWS, BATCH, BUFFER_CHUNKS = 8, 1024, 2048, 16


def build(root: Path, rows: int, shard_rows: int) -> list[Path]:
    """Synthetic shards: features, ids and status written chunk by chunk, 1 row in 50 unreadable."""
    stores = []
    rng = np.random.default_rng(0)
    for shard, start in enumerate(range(0, rows, shard_rows)):
        count = min(shard_rows, rows - start)
        path = root / "features" / f"{shard:05d}.zarr"
        store = FeatureArray.open(str(path), [f"{start + i:09d}" for i in range(count)], 1, DIM, CHUNK_ROWS)
        for chunk in range(store.num_chunks()):
            part = store.chunk_slice(chunk)
            skipped = {r: "corrupt image" for r in range(part.start, part.stop) if (start + r) % 50 == 0}
            store.write_chunk(chunk, rng.standard_normal((part.stop - part.start, 1, DIM)), skipped)
        (root / "datasets" / "cc3m" / "train").mkdir(parents=True, exist_ok=True)
        (root / "datasets" / "cc3m" / "train" / f"{shard:05d}.tar").touch()
        stores.append(path)
    return stores


def timed(fn, repeats: int = 3):
    """(best time of ``repeats`` calls, the last call's value): the least disturbed measurement."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value


def measure(rows: int, shard_rows: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_s, paths = timed(lambda: build(root, rows, shard_rows), repeats=1)

        stores = [FeatureArray.read(str(p)) for p in paths]
        manifests = [
            pd.DataFrame({"image_id": store.ids, "captions": [["a photo"]] * len(store.ids)}) for store in stores
        ]

        def read_training_set():
            stores = [FeatureArray.read(str(p)) for p in paths]
            features, _, trainable = training_set(list(zip(stores, manifests, strict=True)))
            return features, trainable

        training_s, (features, trainable) = timed(read_training_set)
        epoch = len(trainable) // BATCH
        plan_s, _ = timed(
            lambda: sum(
                1 for _ in itertools.islice(batch_plan(trainable, CHUNK_ROWS, BATCH, BUFFER_CHUNKS, seed=0), epoch)
            )
        )
        data_root = str(root / "datasets")

        instances = []

        def register():
            instances.append(dg.DagsterInstance.ephemeral())
            return instances[-1], register_dataset_parts(instances[-1], data_root)

        register_s, (instance, new) = timed(register)
        new_shard = root / "datasets" / "cc3m" / "train" / f"{len(paths):05d}.tar"

        def tick():
            new_shard.touch()
            instance.delete_dynamic_partition("dataset_parts", f"cc3m.train.{len(paths):05d}")
            context = dg.build_sensor_context(instance=instance, resources={"runtime": Runtime(data_root=data_root)})
            started = time.perf_counter()
            result = new_data(context)
            return time.perf_counter() - started, result

        ticks = [tick() for _ in range(3)]
        tick_s, result = min(t for t, _ in ticks), ticks[-1][1]
        assert len(new) == len(paths) and len(result.run_requests) == 1
        assert len(registered_parts(instance, "cc3m.train")) == len(paths) + 1
        for used in instances:
            used.dispose()
        return {
            "rows": rows,
            "shards": len(paths),
            "trainable_rows": int(len(trainable)),
            "batches": epoch,
            "build_s": build_s,
            "training_set_s": training_s,
            "batch_plan_s": plan_s,
            "register_parts_s": register_s,
            "sensor_tick_s": tick_s,
        }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args(argv)
    results = [measure(rows, args.shard_rows) for rows in args.rows]
    steps = ["training_set_s", "batch_plan_s", "register_parts_s", "sensor_tick_s"]
    sizes = " | ".join(f"{r['rows']:,} rows ({r['shards']} shards)" for r in results)
    print(f"| step | {sizes} | growth (rows x{results[-1]['rows'] / results[0]['rows']:g}) |")
    print(f"|---|{'---|' * len(results)}---|")
    for step in steps:
        times = [r[step] for r in results]
        print(f"| {step[:-2]} | {' | '.join(f'{t:.3f} s' for t in times)} | x{times[-1] / times[0]:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
