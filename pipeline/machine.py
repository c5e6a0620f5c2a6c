"""The machine a run computes on, recorded with its results: the processor and the versions of the
libraries that compute. Results differ in their last bits between CPUs (their bfloat16 and matmul
kernels) and between library versions, so a result can be traced to where it was made.
"""

import importlib.metadata
import platform

import torch

# Recorded name -> distribution name (torch's own version string, which also names its build: +cpu, +cu130).
LIBRARIES = {"transformers": "transformers", "timm": "timm", "open_clip": "open_clip_torch"}


def cpu_name() -> str:
    """The CPU's model name: /proc/cpuinfo's ``model name`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def library_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_record(device: str = "cpu") -> dict:
    """The processor that computes on ``device`` (the GPU's name on CUDA, else the CPU's), the CPU
    threads torch uses, the library versions and Python's."""
    kind = torch.device(device).type
    processor = torch.cuda.get_device_name(torch.device(device)) if kind == "cuda" else cpu_name()
    return {
        "device": kind,
        "processor": processor,
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        **{name: library_version(distribution) for name, distribution in LIBRARIES.items()},
        "python": platform.python_version(),
    }
