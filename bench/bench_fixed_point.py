"""Fixed-point quantization <2, 14> against a pure-PyTorch formula, its torch.compile'd version
(CUDA) and QPyTorch's fixed_point_quantize (float32, when qtorch is importable). Bytes: one read
and one write per element.

And the SGD step of a network trained in fixed point (Gupta et al.'s MLP, 784-1000-1000-10,
momentum 0.9, gradients, weights and momenta rounded to <2, 14>): FixedPointSGD against
torch.optim.SGD wrapped in FixedPointOptimizer ("unfused"), QPyTorch's OptimLP around it, and
torch.optim.SGD without rounding ("torch", the float32 step). Bytes: parameters, gradients and
momenta each read and written once."""
import torch

import fastnets.functional as F
from fastnets.quant import FixedPoint, FixedPointOptimizer, FixedPointSGD
from fastnets.benchmark import Case
from fastnets.benchmark import pytest_benchmark_case as bench_case  # noqa: F401  (the entry of `pytest bench/`)

WL, FL = 16, 14  # Gupta et al.'s <2, 14>
LOW, HIGH = -(2 ** (WL - 1)), 2 ** (WL - 1) - 1
NUMEL = {"cpu": 16 * 2**20, "cuda": 64 * 2**20}
DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}

MLP_SHAPES = [(1000, 784), (1000,), (1000, 1000), (1000,), (10, 1000), (10,)]
LR, MOMENTUM = 0.01, 0.9

try:
    import qtorch.optim as qtorch_optim
    import qtorch.quant as qtorch_quant
except Exception:  # not installed, or its build at import failed
    qtorch_optim = qtorch_quant = None


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


def mlp_parameters(device):
    parameters = [torch.nn.Parameter(torch.randn(shape, device=device) * 0.05) for shape in MLP_SHAPES]
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter) * 0.01
    return tuple(parameters)


def sgd_impls(rounding):
    fmt = FixedPoint(WL, FL, rounding)
    result = {
        "fastnets": lambda a: FixedPointSGD(a, lr=LR, momentum=MOMENTUM, weight=fmt, grad=fmt, state=fmt).step,
        "unfused": lambda a: FixedPointOptimizer(torch.optim.SGD(a, lr=LR, momentum=MOMENTUM), weight=fmt, grad=fmt,
                                                 state=fmt).step,
        "torch": lambda a: torch.optim.SGD(a, lr=LR, momentum=MOMENTUM).step,
    }
    if qtorch_optim is not None:
        def quant(x):
            return qtorch_quant.fixed_point_quantize(x, WL, FL, rounding=rounding)
        result["qtorch"] = lambda a: qtorch_optim.OptimLP(torch.optim.SGD(a, lr=LR, momentum=MOMENTUM),
                                                          weight_quant=quant, grad_quant=quant,
                                                          momentum_quant=quant).step
    return result


def cases(device: str) -> list:
    result = []
    numel = sum(torch.Size(shape).numel() for shape in MLP_SHAPES)
    for rounding in ("nearest", "stochastic"):
        result.append(Case(
            op=f"fixed-point SGD step {rounding}", shape="Gupta MLP", direction="update", device=device,
            dtype="float32", make_inputs=lambda: mlp_parameters(device), impls=sgd_impls(rounding),
            bytes_moved=6 * numel * 4))
    for dtype_name in DTYPES[device]:
        dtype, numel = getattr(torch, dtype_name), NUMEL[device]
        for rounding in ("stochastic", "nearest"):
            result.append(Case(
                op=f"fixed_point_quantize {rounding}", shape=f"{numel // 2**20}Mi", direction="forward", device=device,
                dtype=dtype_name, make_inputs=lambda dtype=dtype, numel=numel: (
                    torch.randn(numel, device=device, dtype=dtype),),
                impls=impls(device, dtype_name, rounding), bytes_moved=2 * numel * dtype.itemsize))
    return result
