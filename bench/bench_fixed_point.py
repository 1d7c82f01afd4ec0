"""Fixed-point quantization against a pure-PyTorch formula, its torch.compile'd version (CUDA)
and QPyTorch's fixed_point_quantize (when qtorch is importable), same run. Bytes: one read and
one write per element."""
import pytest
import torch

import fastnets.functional as F
from conftest import DEVICES, NUMEL, copy_case, run_case

WL, FL = 16, 14  # Gupta et al.'s <2, 14>
LOW, HIGH = -(2 ** (WL - 1)), 2 ** (WL - 1) - 1
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.bfloat16]}
CASES = [(device, dtype) for device in DEVICES for dtype in DTYPES[device]]
IDS = [f"{device}-{str(dtype).replace('torch.', '')}" for device, dtype in CASES]

try:
    import qtorch.quant as qtorch_quant
except Exception:  # not installed, or its build at import failed
    qtorch_quant = None


def torch_formula(x, rounding):
    """The usual pure-PyTorch fixed-point rounding: stochastic = floor(x * 2^fl + U[0, 1))."""
    scaled = x * 2.0**FL
    rounded = torch.floor(scaled + torch.rand_like(scaled)) if rounding == "stochastic" else torch.round(scaled)
    return rounded.clamp_(LOW, HIGH).mul_(2.0**-FL)


def _impls(device, rounding):
    impls = {
        "fastnets": lambda x: F.fixed_point_quantize(x, WL, FL, rounding),
        "torch": lambda x: torch_formula(x, rounding),
    }
    if device == "cuda":
        impls["torch.compile"] = torch.compile(lambda x: torch_formula(x, rounding), fullgraph=True)
    if qtorch_quant is not None:
        impls["qtorch"] = lambda x: qtorch_quant.fixed_point_quantize(x, WL, FL, rounding=rounding)
    return impls


@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_copy(benchmark, device, dtype):
    copy_case(benchmark, device=device, dtype=dtype, shape=(NUMEL[device],), op="fixed_point_quantize")


@pytest.mark.parametrize("impl", ["fastnets", "torch", "torch.compile", "qtorch"])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_fixed_point_quantize(benchmark, device, dtype, rounding, impl):
    impls = _impls(device, rounding)
    if impl not in impls:
        pytest.skip(f"{impl} is not available here")
    if impl == "qtorch" and dtype != torch.float32:
        pytest.skip("QPyTorch quantizes float32 only")
    x = torch.randn(NUMEL[device], device=device, dtype=dtype)
    fn = impls[impl]
    run_case(benchmark, lambda: fn(x), device=device, op=f"fixed_point_quantize {rounding}", impl=impl,
             dtype=dtype, numel=x.numel(), bytes_moved=2 * x.numel() * x.element_size(), direction="forward")
