"""pipeline/devices.py: which dtype the frozen models compute in, and the map's autocast to it."""

import pytest
import torch

from pipeline.devices import autocast, compute_dtype, native_bfloat16


def test_auto_is_bfloat16_only_where_the_device_runs_it_natively():
    assert compute_dtype("cpu") == (torch.bfloat16 if native_bfloat16("cpu") else torch.float32)
    assert native_bfloat16("cuda") and compute_dtype("cuda:0") == torch.bfloat16
    assert compute_dtype("cuda", "float32") == torch.float32 and compute_dtype("cpu", "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="'half' is not one of"):
        compute_dtype("cpu", "half")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_float32_module_computes_in_the_models_dtype(dtype):
    linear = torch.nn.Linear(4, 3)
    with autocast("cpu", dtype):
        assert linear(torch.randn(2, 4)).dtype == dtype
