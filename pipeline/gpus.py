"""Which GPUs a step computes on: leases on the machine's GPUs, so steps running side by side in
separate processes each get their own.

A lease is an exclusive ``fcntl.flock`` on one file per GPU (``gpu-{index}.lock``) in a folder
local to the machine. The kernel drops a process's locks when it exits, however it exits, so a
step that fails or is killed gives its GPUs back without any cleanup of its own. Several GPUs are
taken all at once or not at all (under ``leases.lock``), and a process asking again first gives
back what it holds, so two steps each waiting for more GPUs can never hold part of them forever.
"""

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline import settings


def gpu_count() -> int:
    """The GPUs this machine offers to steps: ``LIMBER_GPUS`` when set, else the CUDA devices torch
    sees (which ``CUDA_VISIBLE_DEVICES`` or a Kubernetes pod's GPU request already narrows)."""
    configured = settings.gpus()
    return torch.cuda.device_count() if configured is None else configured


@dataclass
class GpuLeases:
    """Exclusive leases on ``count`` GPUs (indices 0 .. count-1), recorded in ``directory``."""

    directory: Path
    count: int
    poll_seconds: float = 1.0
    _held: dict[int, int] = field(default_factory=dict)  # GPU index -> open lock file descriptor

    def __post_init__(self):
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def held(self) -> list[int]:
        return sorted(self._held)

    def acquire(
        self, gpus: int, timeout: float | None = None, on_wait: Callable[[str], None] | None = None
    ) -> list[int]:
        """Leases ``gpus`` GPUs, waiting until that many are free; returns their indices. Gives back
        whatever this object held first. Raises ``TimeoutError`` after ``timeout`` seconds (None:
        wait as long as it takes) and ``ValueError`` if the machine has fewer than ``gpus``."""
        if not 1 <= gpus <= self.count:
            raise ValueError(
                f"a step asked for {gpus} GPUs and this machine offers {self.count} (LIMBER_GPUS, or the CUDA "
                "devices torch sees): lower training.processes, or run where that many GPUs are"
            )
        self.release()
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while True:
            taken = self._try(gpus)
            if taken:
                return taken
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no {gpus} of the {self.count} GPUs came free within {timeout:.0f} s")
            if on_wait and not waited:
                on_wait(f"waiting for {gpus} of the {self.count} GPUs to come free (other steps hold them)")
            waited = True
            time.sleep(self.poll_seconds)

    def _try(self, gpus: int) -> list[int]:
        with open(self.directory / "leases.lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # one process at a time takes GPUs: all of them or none
            for index in range(self.count):
                if len(self._held) == gpus:
                    break
                descriptor = os.open(self.directory / f"gpu-{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(descriptor)
                    continue
                self._held[index] = descriptor
            if len(self._held) < gpus:
                self.release()
            return self.held

    def release(self) -> None:
        for descriptor in self._held.values():
            os.close(descriptor)  # closing the only descriptor drops its flock
        self._held.clear()
