"""The dtype the frozen models compute in on a device.

``auto``: bfloat16 where the device computes it natively (CUDA; a CPU with AVX512-BF16 or AMX,
where the demo's LM and encoder run about 2x float32), float32 elsewhere, where bfloat16 would be
emulated and slower. Features are stored as float16 either way; the dtype is part of the key of
every result computed through a frozen model, so results of the two are never mixed.
"""

from contextlib import AbstractContextManager

import torch

PRECISIONS = ("auto", "bfloat16", "float32")


def native_bfloat16(device: str) -> bool:
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    cpu = torch.cpu
    return kind == "cpu" and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def compute_dtype(device: str, precision: str = "auto") -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return getattr(torch, precision)


def autocast(device: str, dtype: torch.dtype) -> AbstractContextManager:
    """Float32 modules (an encoder, the linear map) computing in ``dtype`` on ``device``."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
