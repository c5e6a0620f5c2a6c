"""Data-parallel training of one map: one process per device, each with its own frozen LM.

The calling process is rank 0: it keeps its callbacks (logging, checkpoint uploads) and returns
the trained map. ``torch.multiprocessing`` starts ranks 1 .. N-1 (spawned: a fresh interpreter,
as CUDA requires). They meet through a file rendezvous and sum gradients with ``gloo`` on CPUs and
``nccl`` on GPUs (``pipeline.training.Rank``). The gradients are summed by hand rather than by
``DistributedDataParallel``: the trained part is one small matrix whose gradients accumulate over
micro-batches weighted by the whole batch's token count, which one all-reduce a step covers.

A rank that dies ends the training with an error naming it: the others' next all-reduce fails
when its connection drops, and at the latest after ``timeout_s``. Checkpoints are rank 0's and do
not depend on the process count, so a rerun resumes under any count.
"""

import datetime
import io
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException

from pipeline.config import TrainConfig
from pipeline.linear_map import LinearMap
from pipeline.training import Rank, TrainingResult, train_linear_map


@dataclass
class TrainingJob:
    """What every rank trains, picklable (sent to each spawned rank): the untrained map, how to
    load the frozen LM on a device, the cached features and captions, and ``train_linear_map``'s
    config, seed and checkpoint folder."""

    linear_map: LinearMap
    load_lm: Callable[[str], tuple]  # device -> (lm, tokenizer, ...)
    features: object
    captions: list[str]
    rows: np.ndarray
    config: TrainConfig
    seed: int
    checkpoint_dir: Path

    def __getstate__(self) -> dict:
        # The map goes to each rank as bytes, a copy: torch.multiprocessing would otherwise send its
        # tensors as shared memory, and every rank's optimizer would update rank 0's weights.
        buffer = io.BytesIO()
        torch.save(self.linear_map, buffer)
        return {**self.__dict__, "linear_map": buffer.getvalue()}

    def __setstate__(self, state: dict) -> None:
        # weights_only=False: the bytes come from this job's own rank 0, not from storage.
        state["linear_map"] = torch.load(io.BytesIO(state["linear_map"]), weights_only=False)
        self.__dict__.update(state)

    def train(self, lm, tokenizer, device: str, rank: Rank, **callbacks) -> TrainingResult:
        return train_linear_map(
            self.linear_map,
            lm,
            tokenizer,
            self.features,
            self.captions,
            self.rows,
            self.config,
            seed=self.seed,
            checkpoint_dir=self.checkpoint_dir,
            device=device,
            rank=rank,
            **callbacks,
        )


def train_data_parallel(
    job: TrainingJob,
    devices: list[str],
    lm,
    tokenizer,
    *,
    timeout_s: float = 600,
    on_step: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[], None] | None = None,
) -> TrainingResult:
    """Trains ``job.linear_map`` in place on ``len(devices)`` processes, rank r on ``devices[r]``;
    ``lm`` and ``tokenizer`` are rank 0's, already on ``devices[0]``. One device: no process is
    started and nothing is different from ``train_linear_map``."""
    callbacks = {"on_step": on_step, "on_checkpoint": on_checkpoint}
    world = len(devices)
    if world == 1:
        return job.train(lm, tokenizer, devices[0], Rank(), **callbacks)
    # Enough micro-batches to share out, checked before any process starts.
    Rank(0, world).micro_batches(job.config.batch_size, job.config.micro_batch_size or job.config.batch_size)
    with tempfile.TemporaryDirectory(prefix="limber-rendezvous-") as folder:
        rendezvous = str(Path(folder) / "store")
        ranks = mp.start_processes(
            _spawned_rank,
            args=(job, devices, rendezvous, timeout_s),
            nprocs=world - 1,
            join=False,
            start_method="spawn",
        )
        threads = torch.get_num_threads()
        try:
            join_group(0, devices, rendezvous, timeout_s)
            result = job.train(lm, tokenizer, devices[0], Rank(0, world), **callbacks)
            # Every rank ends with rank 0's last all-reduce; join returns each time one exits.
            deadline = time.monotonic() + timeout_s
            while not ranks.join(timeout=max(0.0, deadline - time.monotonic())):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"a training rank did not exit within {timeout_s:.0f} s of rank 0's end")
            return result
        except RuntimeError as error:  # joining, or an all-reduce, fails when another rank is gone
            # Checked before rank 0 leaves the group: its leaving would fail the others too.
            failure = _rank_failure(ranks, world, job)
            if failure is None:
                raise  # rank 0's own error
            raise failure from error
        finally:  # on rank 0's own error (or an interruption) the others are stopped here
            for process in ranks.processes:
                if process.is_alive():
                    process.kill()
                process.join()
            if dist.is_initialized():
                dist.destroy_process_group()
            torch.set_num_threads(threads)


def join_group(rank: int, devices: list[str], rendezvous: str, timeout_s: float) -> None:
    """Joins the process group of ``len(devices)`` ranks as ``rank``, on its device; ranks that
    share one CPU split its cores."""
    device = torch.device(devices[rank])
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(devices)))
    else:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=len(devices),
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def _spawned_rank(index: int, job: TrainingJob, devices: list[str], rendezvous: str, timeout_s: float) -> None:
    rank = index + 1  # rank 0 is the calling process
    lm, tokenizer = job.load_lm(devices[rank])[:2]
    join_group(rank, devices, rendezvous, timeout_s)
    job.train(lm, tokenizer, devices[rank], Rank(rank, len(devices)))
    dist.destroy_process_group()


def _rank_failure(ranks: mp.ProcessContext, world: int, job: TrainingJob) -> RuntimeError | None:
    """The error naming the spawned rank that failed, and that a rerun resumes; None if none failed."""
    try:
        ranks.join(timeout=2)  # a failed spawned rank is reported here, and the rest are terminated
        return None
    except ProcessException as error:
        rank = f"rank {error.error_index + 1} of {world}"
        if isinstance(error, ProcessExitedException):
            how = f"was killed by {error.signal_name}" if error.signal_name else f"exited with code {error.exit_code}"
            failure = f"{rank} {how}"
        else:
            failure = f"{rank} raised:\n{error}"
    checkpoint = Path(job.checkpoint_dir) / "state.pt"
    resume = (
        f"the last checkpoint ({checkpoint}) is kept and a rerun resumes from it, under any process count"
        if checkpoint.exists()
        else "no checkpoint was written yet"
    )
    return RuntimeError(f"data-parallel training on {world} processes failed: {failure}; {resume}")
