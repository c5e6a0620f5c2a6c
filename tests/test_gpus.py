"""GPU leases on fake GPUs (no CUDA needed): steps side by side get distinct GPUs, and a step that
fails or is killed gives its GPUs back."""

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from assets.resources import Runtime
from pipeline.gpus import GpuLeases, gpu_count

PROCESSES = multiprocessing.get_context("fork")  # fast to start; the children use no threads


def _hold(directory: str, count: int, gpus: int, seconds: float, log: str) -> None:
    leases = GpuLeases(Path(directory), count, poll_seconds=0.05)
    held = leases.acquire(gpus, timeout=60)
    start = time.monotonic()
    time.sleep(seconds)
    Path(log).write_text(json.dumps({"gpus": held, "start": start, "end": time.monotonic()}))


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


@pytest.mark.parametrize("count, gpus", [(2, 1), (4, 2), (1, 1)])
def test_steps_side_by_side_hold_distinct_gpus_and_no_more_than_there_are(tmp_path, count, gpus):
    logs = [tmp_path / f"step-{k}.json" for k in range(4)]
    steps = [PROCESSES.Process(target=_hold, args=(tmp_path / "leases", count, gpus, 0.4, str(log))) for log in logs]
    for step in steps:
        step.start()
    for step in steps:
        step.join(60)
        assert step.exitcode == 0
    held = [json.loads(log.read_text()) for log in logs]
    assert all(len(h["gpus"]) == gpus and set(h["gpus"]) <= set(range(count)) for h in held)
    for i, a in enumerate(held):
        for b in held[i + 1 :]:
            if _overlap(a, b):
                assert not set(a["gpus"]) & set(b["gpus"]), (a, b)
    # at any step's start, the steps running hold no more GPUs than the machine has
    for a in held:
        running = [b for b in held if b["start"] <= a["start"] < b["end"]]
        assert sum(len(b["gpus"]) for b in running) <= count


def test_a_killed_step_gives_its_gpus_back(tmp_path):
    step = PROCESSES.Process(target=_hold, args=(tmp_path / "leases", 2, 2, 600, str(tmp_path / "never.json")))
    step.start()
    leases = GpuLeases(tmp_path / "leases", 2, poll_seconds=0.05)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the step holds both GPUs
        try:
            leases.acquire(1, timeout=0)
            leases.release()
        except TimeoutError:
            break
        time.sleep(0.05)
    with pytest.raises(TimeoutError, match="no 1 of the 2 GPUs came free"):
        leases.acquire(1, timeout=0.2)
    os.kill(step.pid, signal.SIGKILL)
    step.join()
    assert leases.acquire(2, timeout=10) == [0, 1]


def _fail_on_gpus(cache_dir: str) -> None:
    Runtime(device="cuda", cache_dir=cache_dir).torch_devices(2)
    raise RuntimeError("the step fails")


def test_a_failed_step_gives_its_gpus_back(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMBER_GPUS", "2")
    step = PROCESSES.Process(target=_fail_on_gpus, args=(str(tmp_path),))  # a step process, as the executor runs it
    step.start()
    step.join(60)
    assert step.exitcode == 1
    runtime = Runtime(device="cuda", cache_dir=str(tmp_path))
    assert runtime.torch_devices(2) == ["cuda:0", "cuda:1"]
    # the step's metadata names the GPUs it used
    monkeypatch.setattr("assets.resources.machine_record", lambda device: {"device": device})
    assert runtime.machine()["devices"] == ["cuda:0", "cuda:1"]


def test_a_step_asking_again_trades_its_lease_and_zero_asks_for_all(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMBER_GPUS", "3")
    runtime = Runtime(device="cuda", cache_dir=str(tmp_path))
    assert runtime.torch_device() == "cuda:0"
    assert runtime.torch_devices(0) == ["cuda:0", "cuda:1", "cuda:2"]
    assert runtime.torch_device() == "cuda:0"  # still holds all three
    assert runtime.torch_devices(1) == ["cuda:0"]
    with pytest.raises(ValueError, match="asked for 4 GPUs and this machine offers 3.*training.processes"):
        runtime.torch_devices(4)


def test_a_cpu_is_not_leased_and_a_named_gpu_is_taken_as_named(tmp_path):
    assert Runtime(device="cpu", cache_dir=str(tmp_path)).torch_devices(2) == ["cpu", "cpu"]
    assert Runtime(device="cuda:3", cache_dir=str(tmp_path)).torch_device() == "cuda:3"


def test_the_gpu_count_is_the_setting_else_what_torch_sees(monkeypatch):
    import torch

    monkeypatch.setenv("LIMBER_GPUS", "8")
    assert gpu_count() == 8
    monkeypatch.delenv("LIMBER_GPUS")
    assert gpu_count() == torch.cuda.device_count()
    monkeypatch.setenv("LIMBER_GPUS", "eight")
    with pytest.raises(ValueError, match="LIMBER_GPUS='eight' is not a GPU count"):
        gpu_count()
