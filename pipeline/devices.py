"""The dtype the frozen models compute in on a device.

``auto``: bfloat16 on CUDA. On a CPU, bfloat16 only where it is measured faster than float32 on
that machine, else float32: a CPU's reporting AVX512-BF16 or AMX does not say it (on an Intel Xeon
without AMX the demo took 25 min in bfloat16 against 9 in float32). The measurement
(``measure_cpu_precision``: a SmolLM2-135M-sized transformer block on one thread, float32 against
bfloat16 autocast, about 1 s) runs once per CPU model, torch version and torch thread count, and is
cached in ``precision.json`` under the cache directory (``LIMBER_CACHE``); ``cpu_precision``
returns it. A CPU without native bfloat16 is not measured: float32.

Features are stored as float16 either way; the dtype is part of the key of every result computed
through a frozen model, so results of the two are never mixed."""

import fcntl
import json
import os
import statistics
import tempfile
import time
import warnings
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline import settings
from pipeline.machine import cpu_name

PRECISIONS = ("auto", "bfloat16", "float32")
CACHE_FILE = "precision.json"
# bfloat16 only at under 0.9x float32's time: it rounds differently (results then differ from
# float32's and between CPUs), worth it for a clear gain only, and a difference within a shared
# machine's timing noise must not decide it.
BFLOAT16_MARGIN = 0.9
# The workload: one transformer block at SmolLM2-135M's width (the demo's LM), on a batch of 16
# sequences of 64 tokens.
WIDTH, HEADS, MLP_WIDTH, BATCH, TOKENS = 576, 9, 1536, 16, 64
# Timed on one thread: bfloat16 instructions change the speed of a core, and one thread keeps that
# ratio when other processes load the machine (the executor's other steps start at the same time).
# On the 2-core AMD EPYC, bfloat16's time over float32's was about 0.35 unloaded; under a load of 3-4
# it stayed 0.29-0.38 on one thread but rose to 0.5-1.03 on two, where OpenMP's threads wait on each
# other: a loaded first measurement would have cached float32 there for good.
MEASURED_THREADS = 1

# Measurements that could not be written to the cache (an unwritable cache directory): kept for
# this process, so it measures once.
_unwritten: dict[tuple[str, str], dict] = {}


def native_bfloat16(device: str) -> bool:
    """Whether the device has bfloat16 instructions (CUDA; a CPU with AVX512-BF16 or AMX). On a CPU
    that does not make it faster: see ``cpu_precision``."""
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    cpu = torch.cpu
    return kind == "cpu" and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def compute_dtype(device: str, precision: str = "auto", cache_dir: str | None = None) -> torch.dtype:
    """``precision``'s dtype; for ``auto`` see the module's docstring. ``cache_dir``: where a CPU's
    measurement is cached (``settings.cache_dir()`` by default)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision != "auto":
        return getattr(torch, precision)
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16
    if kind == "cpu":
        return getattr(torch, cpu_precision(cache_dir)["chosen"])
    return torch.float32  # another backend (mps, ...): not measured


def autocast(device: str, dtype: torch.dtype) -> AbstractContextManager:
    """Float32 modules (an encoder, the linear map) computing in ``dtype`` on ``device``."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def machine_key() -> dict:
    """What a CPU measurement holds for: the CPU model, the torch version, torch's thread count."""
    return {"cpu": cpu_name(), "torch": str(torch.__version__), "threads": torch.get_num_threads()}


def cpu_precision(cache_dir: str | None = None) -> dict:
    """This machine's measurement (``measure_cpu_precision``'s dict): from the cache when this CPU
    model, torch version and thread count were measured before, else measured now and cached."""
    key = machine_key()
    if not native_bfloat16("cpu"):
        return {**key, "native_bfloat16": False, "float32_ms": None, "bfloat16_ms": None, "chosen": "float32"}
    path = Path(cache_dir or settings.cache_dir()).expanduser() / CACHE_FILE
    entry = f"{key['cpu']} | torch {key['torch']} | {key['threads']} threads"
    if (found := _cached(path, entry)) is not None:
        return found
    with _measuring(path):
        # Another process may have measured while this one waited for the lock.
        if (found := _cached(path, entry)) is not None:
            return found
        measured = measure_cpu_precision()
        try:
            _write_cache(path, {**_read_cache(path), entry: measured})
        except OSError as error:
            warnings.warn(f"precision measurement not cached ({error}): this process keeps it", stacklevel=2)
            _unwritten[(str(path), entry)] = measured
    return measured


def measure_cpu_precision(
    warmup: int = 2, repeats: int = 7, budget_s: float = 1.0, threads: int = MEASURED_THREADS
) -> dict:
    """Times the workload (``time_block``) in float32 and in bfloat16 on this CPU, now (no cache):
    ``{cpu, torch, threads, measured_threads, native_bfloat16, float32_ms, bfloat16_ms, chosen}``,
    the times being medians over the repeats on ``threads`` threads (``threads``: the process's own
    count, part of the cache's key). ``chosen``: bfloat16 where the CPU has it natively and it takes
    under ``BFLOAT16_MARGIN`` of float32's time."""
    float32_ms, bfloat16_ms = time_block(warmup, repeats, budget_s, threads)
    native = native_bfloat16("cpu")
    faster = native and bfloat16_ms < BFLOAT16_MARGIN * float32_ms
    return {
        **machine_key(),
        "measured_threads": threads,
        "native_bfloat16": native,
        "float32_ms": round(float32_ms, 2),
        "bfloat16_ms": round(bfloat16_ms, 2),
        "chosen": "bfloat16" if faster else "float32",
    }


class _Block(torch.nn.Module):
    """A pre-norm transformer block (attention and MLP), as the LM's; the encoders' forwards are
    matmul-bound too."""

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(WIDTH), torch.nn.LayerNorm(WIDTH)
        self.qkv, self.out = torch.nn.Linear(WIDTH, 3 * WIDTH), torch.nn.Linear(WIDTH, WIDTH)
        self.up, self.down = torch.nn.Linear(WIDTH, MLP_WIDTH), torch.nn.Linear(MLP_WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, tokens, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, tokens, WIDTH))
        return x + self.down(F.silu(self.up(self.norm2(x))))


def time_block(
    warmup: int = 2, repeats: int = 7, budget_s: float = 1.0, threads: int = MEASURED_THREADS
) -> tuple[float, float]:
    """(float32, bfloat16) median milliseconds of one forward of ``_Block`` on (16, 64, 576) on
    ``threads`` threads, the bfloat16 one under CPU autocast as the encoders run. Float32 and
    bfloat16 alternate, so both see the same machine load; timed repeats stop early (at least 3)
    once ``budget_s`` is spent."""
    with torch.random.fork_rng(devices=[]):  # the random weights leave the caller's seed alone
        torch.manual_seed(0)
        block = _Block().eval()
        x = torch.randn(BATCH, TOKENS, WIDTH)

    def forward_ms(bfloat16: bool) -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            start = time.perf_counter()
            block(x)
            return (time.perf_counter() - start) * 1e3

    own_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            forward_ms(False)
            forward_ms(True)
        times: dict[bool, list[float]] = {False: [], True: []}
        start = time.perf_counter()
        for repeat in range(repeats):
            for bfloat16 in (False, True) if repeat % 2 == 0 else (True, False):
                times[bfloat16].append(forward_ms(bfloat16))
            if repeat + 1 >= min(3, repeats) and time.perf_counter() - start > budget_s:
                break
    finally:
        torch.set_num_threads(own_threads)
    return statistics.median(times[False]), statistics.median(times[True])


def _cached(path: Path, entry: str) -> dict | None:
    found = _read_cache(path).get(entry) or _unwritten.get((str(path), entry))
    return found if isinstance(found, dict) and found.get("chosen") in ("bfloat16", "float32") else None


def _read_cache(path: Path) -> dict:
    """The cache's entries; none when it is missing or unreadable (then measured again and rewritten)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict) -> None:
    # A whole new file renamed over the old: a reader sees the old file or the new one, never a
    # partial write.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(entries, file, indent=2, sort_keys=True)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from other users sharing the cache
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def _measuring(path: Path):
    """Held while measuring: processes starting together (the executor's steps) measure one at a
    time, so the second reads the first's result instead of timing under its load. Without a
    writable cache directory, no lock."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "w")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
