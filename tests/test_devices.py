"""pipeline/devices.py: which dtype the frozen models compute in (on a CPU, as measured on it), the
measurement's cache, and the map's autocast to it; pipeline/machine.py: the machine record."""

import json

import pytest
import torch

from pipeline import devices
from pipeline.devices import CACHE_FILE, autocast, compute_dtype, cpu_precision, measure_cpu_precision
from pipeline.machine import machine_record


@pytest.fixture()
def timed(monkeypatch, tmp_path):
    """A CPU with native bfloat16 whose timings are what the test sets (``timed.ms = (float32,
    bfloat16)``), each timing counted; the cache in a fresh folder (``timed.cache``)."""

    class Timed:
        ms, calls, cache = (10.0, 5.0), 0, tmp_path / "cache"

        def time_block(self, *args, **kwargs):
            self.calls += 1
            return self.ms

    fake = Timed()
    monkeypatch.setattr(devices, "time_block", fake.time_block)
    monkeypatch.setattr(devices, "native_bfloat16", lambda device: True)
    monkeypatch.setattr(devices, "_unwritten", {})
    monkeypatch.setenv("LIMBER_CACHE", str(fake.cache))
    return fake


@pytest.mark.parametrize(
    ("ms", "chosen"),
    [((10.0, 5.0), torch.bfloat16), ((10.0, 9.5), torch.float32), ((10.0, 14.0), torch.float32)],
)
def test_auto_on_a_cpu_follows_the_measurement(timed, ms, chosen):
    timed.ms = ms  # bfloat16 twice as fast; within the 0.9 margin; slower
    assert compute_dtype("cpu") == chosen
    measured = cpu_precision()
    assert measured["float32_ms"] == ms[0] and measured["bfloat16_ms"] == ms[1]
    assert measured["chosen"] == str(chosen).removeprefix("torch.")


def test_the_measurement_is_cached_per_cpu_torch_and_threads(timed, monkeypatch):
    assert compute_dtype("cpu") == torch.bfloat16 and compute_dtype("cpu") == torch.bfloat16
    assert timed.calls == 1
    assert (timed.cache / CACHE_FILE).exists()  # under LIMBER_CACHE
    machine = devices.cpu_name, torch.__version__, torch.get_num_threads
    timed.ms = (10.0, 20.0)
    monkeypatch.setattr(devices, "cpu_name", lambda: "Another CPU")
    assert compute_dtype("cpu") == torch.float32 and timed.calls == 2
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert compute_dtype("cpu") == torch.float32 and timed.calls == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    assert compute_dtype("cpu") == torch.float32 and timed.calls == 4
    assert len(json.loads((timed.cache / CACHE_FILE).read_text())) == 4  # one entry each, none overwritten
    # The first machine again: its entry is still there.
    names = ((devices, "cpu_name"), (torch, "__version__"), (torch, "get_num_threads"))
    for (target, name), value in zip(names, machine, strict=True):
        monkeypatch.setattr(target, name, value)
    assert compute_dtype("cpu") == torch.bfloat16 and timed.calls == 4


def test_an_explicit_cache_dir_is_used_and_expanded(timed, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    compute_dtype("cpu", cache_dir="~/limber")
    assert (tmp_path / "home" / "limber" / CACHE_FILE).exists() and not timed.cache.exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"a": 1}', ""])
def test_an_unreadable_cache_is_measured_again(timed, content):
    timed.cache.mkdir()
    (timed.cache / CACHE_FILE).write_text(content)
    assert compute_dtype("cpu") == torch.bfloat16 and timed.calls == 1
    assert cpu_precision()["chosen"] == "bfloat16" and timed.calls == 1  # and rewritten
    assert not list(timed.cache.glob("*.tmp"))  # no temporary file left


def test_a_cache_entry_without_a_choice_is_measured_again(timed):
    compute_dtype("cpu")
    path = timed.cache / CACHE_FILE
    path.write_text(json.dumps({entry: {"float32_ms": 1.0} for entry in json.loads(path.read_text())}))
    assert compute_dtype("cpu") == torch.bfloat16 and timed.calls == 2


def test_an_unwritable_cache_measures_once_per_process(timed):
    timed.cache.write_text("a file where the folder should be")
    with pytest.warns(UserWarning, match="not cached"):
        assert compute_dtype("cpu") == torch.bfloat16
    assert compute_dtype("cpu") == torch.bfloat16 and timed.calls == 1


def test_explicit_precisions_and_cuda_are_not_measured(timed):
    assert compute_dtype("cpu", "float32") == torch.float32 and compute_dtype("cpu", "bfloat16") == torch.bfloat16
    assert compute_dtype("cuda") == torch.bfloat16 and compute_dtype("cuda:0") == torch.bfloat16
    assert compute_dtype("cuda", "float32") == torch.float32
    assert timed.calls == 0 and not timed.cache.exists()
    with pytest.raises(ValueError, match="'half' is not one of"):
        compute_dtype("cpu", "half")


def test_a_cpu_without_native_bfloat16_is_float32_unmeasured(timed, monkeypatch):
    monkeypatch.setattr(devices, "native_bfloat16", lambda device: False)
    assert compute_dtype("cpu") == torch.float32
    assert cpu_precision()["chosen"] == "float32" and timed.calls == 0 and not timed.cache.exists()


def test_the_limber_resource_records_its_machine(timed, monkeypatch):
    from assets.resources import Runtime

    runtime = Runtime(device="cpu", cache_dir=str(timed.cache))
    record = runtime.machine()
    assert record["precision"] == "bfloat16" and record["precision_measured"]["chosen"] == "bfloat16"
    assert record["processor"] == devices.cpu_name() and record["torch"] == torch.__version__
    assert timed.calls == 1
    assert "precision_measured" not in Runtime(device="cpu", precision="float32").machine()
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    cuda = Runtime(device="cuda", cache_dir=str(timed.cache)).machine()
    assert cuda["processor"] == "NVIDIA H200" and cuda["precision"] == "bfloat16" and timed.calls == 1


def test_machine_record():
    record = machine_record("cpu")
    assert record["device"] == "cpu" and record["processor"]
    assert {"torch", "transformers", "timm", "open_clip", "python", "threads"} <= set(record)
    assert all(record[library] for library in ("torch", "transformers", "timm", "open_clip"))


def test_a_real_measurement_is_sane():
    """Un-monkeypatched, and short: one warm-up, three repeats."""
    threads = torch.get_num_threads()
    measured = measure_cpu_precision(warmup=1, repeats=3)
    assert measured["float32_ms"] > 0 and measured["bfloat16_ms"] > 0
    assert measured["chosen"] in ("bfloat16", "float32") and measured["cpu"] and measured["torch"] == torch.__version__
    # Timed on one thread; the process's own count (the key's) is left as it was.
    assert measured["measured_threads"] == 1 and measured["threads"] == threads == torch.get_num_threads()


def test_the_measurement_leaves_the_global_seed_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    devices.time_block(warmup=0, repeats=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_float32_module_computes_in_the_models_dtype(dtype):
    linear = torch.nn.Linear(4, 3)
    with autocast("cpu", dtype):
        assert linear(torch.randn(2, 4)).dtype == dtype
