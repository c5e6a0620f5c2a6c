"""Data-parallel training on CPU with gloo: 2 processes train what 1 does, resume under another
count, and fail with the dying rank's name instead of hanging."""

import functools
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from pipeline.adapters import AdaptedMap
from pipeline.config import TrainConfig
from pipeline.distributed import TrainingJob, train_data_parallel
from pipeline.encoders import TokenLayout
from pipeline.linear_map import LinearMap
from pipeline.training import Rank, training_batches
from tests.tiny_models import tiny_lm

ROWS, DIM = 48, 16


class DyingFeatures:
    """Features whose first read by rank 1 after rank 0's first checkpoint kills rank 1's process."""

    def __init__(self, features: np.ndarray, checkpoint: Path):
        self.features, self.chunks, self.checkpoint = features, (8,), checkpoint

    def __len__(self):
        return len(self.features)

    def __getitem__(self, rows):
        if dist.is_initialized() and dist.get_rank() == 1 and self.checkpoint.exists():
            os._exit(3)  # as a rank killed by the kernel, with no Python cleanup
        return self.features[rows]


@pytest.fixture()
def job(prepared_lm, tmp_path):
    def make(directory, features=None, micro_batch_size=2, dropout=0.1, adapters=False):
        torch.manual_seed(1)
        layout = TokenLayout("pooled", 1, 2)
        if adapters:  # the tuned baseline: the map with a LayerNorm, and adapters inside the LM's 2 blocks
            linear_map = AdaptedMap(DIM, 32, layout, dropout, layers=2, reduction=4)
        else:
            linear_map = LinearMap(DIM, 32, layout, dropout=dropout)
        captions = [f"a {c} circle" for c in ("red", "blue", "teal", "gray")] * (ROWS // 4)
        default = np.random.default_rng(0).standard_normal((ROWS, 1, DIM)).astype(np.float16)
        return TrainingJob(
            linear_map=linear_map,
            load_lm=functools.partial(tiny_lm, str(prepared_lm / "checkpoint")),
            features=default if features is None else features,
            captions=captions,
            rows=np.arange(ROWS),
            config=TrainConfig(
                steps=8,
                batch_size=8,
                micro_batch_size=micro_batch_size,
                lr=5e-2,
                warmup_steps=2,
                max_caption_tokens=8,
                buffer_chunks=2,
                checkpoint_every=3,
            ),
            seed=0,
            checkpoint_dir=tmp_path / directory,
        )

    return make


def train(job, processes, stop_after=None, timeout_s=120):
    lm, tokenizer = job.load_lm("cpu")

    def on_step(step, loss):
        if step == stop_after:
            raise KeyboardInterrupt  # as if rank 0's process were stopped here

    result = train_data_parallel(job, ["cpu"] * processes, lm, tokenizer, timeout_s=timeout_s, on_step=on_step)
    return job.linear_map, result


def assert_same_training(a, b):
    """Same losses and weights up to float rounding: the ranks' partial sums are added in another
    order. Losses to 1e-5 relative. Weights: each tensor's difference under 1e-5 of its norm, and
    every weight within 1e-4 (AdamW divides by the root of the squared gradients, so a rounding
    difference in a near-zero gradient can move one weight by a visible part of a step's lr, 5e-2)."""
    (map_a, run_a), (map_b, run_b) = a, b
    assert run_a.losses == pytest.approx(run_b.losses, rel=1e-5)
    for name, value in map_a.state_dict().items():
        other = map_b.state_dict()[name]
        assert float((other - value).norm()) <= 1e-5 * float(value.norm()) + 1e-7, name
        torch.testing.assert_close(other, value, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("adapters", [False, True], ids=["linear map", "tuned baseline"])
def test_two_processes_train_the_same_map_as_one_dropout_included(job, adapters):
    one = train(job("one", adapters=adapters), 1)
    two = train(job("two", adapters=adapters), 2)
    assert one[1].samples == two[1].samples == 8 * 8  # each rank reports the whole batches
    assert_same_training(one, two)
    assert not dist.is_initialized()  # rank 0 left its process group


def test_a_run_stopped_under_two_processes_resumes_under_one_to_the_same_end(job):
    straight = train(job("straight"), 1)
    with pytest.raises(KeyboardInterrupt):
        train(job("resumed"), 2, stop_after=5)  # the last checkpoint: step 3
    resumed = train(job("resumed"), 1)
    assert resumed[1].resumed_from == 3 and resumed[1].steps_run == 5
    assert_same_training(straight, resumed)


def test_a_run_stopped_under_one_process_resumes_under_two(job):
    straight = train(job("straight"), 2)
    with pytest.raises(KeyboardInterrupt):
        train(job("resumed"), 1, stop_after=4)
    resumed = train(job("resumed"), 2)
    assert resumed[1].resumed_from == 3
    assert_same_training(straight, resumed)


def test_a_rank_that_dies_fails_the_training_naming_it(job, tmp_path):
    features = np.random.default_rng(0).standard_normal((ROWS, 1, DIM)).astype(np.float16)
    features = DyingFeatures(features, tmp_path / "dies" / "state.pt")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1 of 2 exited with code 3; .*state.pt\) is kept and a rerun resumes"):
        train(job("dies", features=features), 2, timeout_s=60)
    assert time.monotonic() - started < 60  # the dropped connection ends it, not the timeout


def test_more_processes_than_micro_batches_is_an_error_naming_the_fix():
    with pytest.raises(ValueError, match="micro_batch_size to at most 4"):
        Rank(0, 2).micro_batches(8, 8)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_the_ranks_shares_are_the_batchs_micro_batches_in_order(world):
    batch = np.arange(100, 110)  # 10 rows: micro-batches of 3, 3, 3, 1
    shares = [Rank(r, world).share(3)(batch) for r in range(world)]
    assert np.concatenate(shares).tolist() == batch.tolist()
    starts = [Rank(r, world).micro_batches(10, 3).start for r in range(world)]
    assert [s[0] for s in shares] == [batch[3 * k] for k in starts]  # each share starts a micro-batch


class CountingReads:
    def __init__(self, features, chunk_rows):
        self.features, self.chunks, self.read = features, (chunk_rows,), set()

    def __len__(self):
        return len(self.features)

    def __getitem__(self, rows):
        self.read.add(rows.start // self.chunks[0])
        return self.features[rows]


def test_a_rank_reads_only_the_chunks_of_its_rows():
    features = np.arange(256, dtype=np.float32)[:, None]
    rows = np.arange(256)
    settings = dict(batch_size=32, buffer_chunks=16, seed=0, stop=8, prefetch=False)
    whole = CountingReads(features, 8)
    together = list(training_batches(whole, rows, **settings))
    for rank in range(4):
        store = CountingReads(features, 8)
        mine = list(training_batches(store, rows, share=Rank(rank, 4).share(8), **settings))
        for (_, batch_rows, _), (_, my_rows, my_features) in zip(together, mine, strict=True):
            assert my_rows.tolist() == batch_rows[rank * 8 : (rank + 1) * 8].tolist()
            assert my_features[:, 0].tolist() == my_rows.tolist()
        needed = {int(r) // 8 for _, my_rows, _ in mine for r in my_rows}
        assert store.read == needed and len(store.read) < len(whole.read)
