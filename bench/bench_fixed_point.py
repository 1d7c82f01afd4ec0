"""Fixed-point quantization <2, 14> against a pure-PyTorch formula, its torch.compile'd version
(CUDA) and QPyTorch's fixed_point_quantize (float32, when qtorch is importable). Bytes: one read
and one write per element."""
import torch

import fastnets.functional as F
from fastnets.benchmark import Case
from fastnets.benchmark import pytest_benchmark_case as bench_case  # noqa: F401  (the entry of `pytest bench/`)

WL, FL = 16, 14  # Gupta et al.'s <2, 14>
LOW, HIGH = -(2 ** (WL - 1)), 2 ** (WL - 1) - 1
NUMEL = {"cpu": 16 * 2**20, "cuda": 64 * 2**20}
DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}

try:
    import qtorch.quant as qtorch_quant
except Exception:  # not installed, or its build at import failed
    qtorch_quant = None


def torch_formula(x, rounding):
    """The usual pure-PyTorch fixed-point rounding: stochastic = floor(x * 2^fl + U[0, 1))."""
    scaled = x * 2.0**FL
    rounded = torch.floor(scaled + torch.rand_like(scaled)) if rounding == "stochastic" else torch.round(scaled)
    return rounded.clamp_(LOW, HIGH).mul_(2.0**-FL)


def impls(device, dtype_name, rounding):
    result = {
        "fastnets": lambda a: lambda: F.fixed_point_quantize(a[0], WL, FL, rounding),
        "torch": lambda a: lambda: torch_formula(a[0], rounding),
    }
    if device == "cuda":
        compiled = torch.compile(lambda x: torch_formula(x, rounding), fullgraph=True)
        result["torch.compile"] = lambda a: lambda: compiled(a[0])
    if qtorch_quant is not None and dtype_name == "float32":  # QPyTorch quantizes float32 only
        result["qtorch"] = lambda a: lambda: qtorch_quant.fixed_point_quantize(a[0], WL, FL, rounding=rounding)
    return result


def cases(device: str) -> list:
    result = []
    for dtype_name in DTYPES[device]:
        dtype, numel = getattr(torch, dtype_name), NUMEL[device]
        for rounding in ("stochastic", "nearest"):
            result.append(Case(
                op=f"fixed_point_quantize {rounding}", shape=f"{numel // 2**20}Mi", direction="forward", device=device,
                dtype=dtype_name, make_inputs=lambda dtype=dtype, numel=numel: (
                    torch.randn(numel, device=device, dtype=dtype),),
                impls=impls(device, dtype_name, rounding), bytes_moved=2 * numel * dtype.itemsize))
    return result
