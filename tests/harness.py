"""The shared test harness: what every fastnets op is checked with.

- DEVICES: "cpu", and "cuda" marked `cuda`, skipped cleanly where no GPU is present.
- assert_close_to_reference: a low-precision result against a float64 reference, passing when
  its error is at most about twice that of PyTorch's own computation in the same dtype.
- check_opcheck: torch.library.opcheck (schema, fake tensor, autograd registration, AOT dispatch).
- check_compiles: torch.compile(fullgraph=True) runs without a graph break and matches eager
  (random ops: with the same seed before each).
- check_same_for_threads: bit-identical CPU results with 1 and 2 threads.
- check_cpu_cuda_identical: bit-identical results on CPU and CUDA.
- binomial_bounds: an acceptance interval for statistical tests of random ops.
"""
import math
from typing import Callable, Optional, Sequence

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, cuda_only])]

TRAINING_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Shapes with odd sizes, a scalar, empty tensors and sizes that are not multiples of any SIMD
# width or of the 4 words of a Philox block.
ODD_SHAPES: Sequence[tuple] = [(), (0,), (1,), (3,), (7, 0), (5, 3), (129, 33), (2, 3, 5, 7), (100_003,)]


def max_abs_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    if actual.numel() == 0:
        return 0.0
    return (actual.double() - reference.double()).abs().max().item()


def assert_close_to_reference(
    actual: torch.Tensor,
    reference: torch.Tensor,
    baseline: Optional[torch.Tensor] = None,
    factor: float = 2.0,
) -> None:
    """actual vs a float64 reference. With a baseline (the same computation done by PyTorch in
    actual's dtype), the error may be at most `factor` times the baseline's error, plus one ulp
    of the reference's magnitude; without one, the dtype's default tolerances apply."""
    assert actual.shape == reference.shape, f"shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    if baseline is None:
        torch.testing.assert_close(actual, reference.to(actual.dtype), equal_nan=True)
        return
    error = max_abs_error(actual, reference)
    allowed = factor * max_abs_error(baseline, reference)
    if reference.numel():
        allowed += torch.finfo(actual.dtype).eps * reference.abs().max().item()
    assert error <= allowed, f"error {error:.3g} > {allowed:.3g} ({factor} x PyTorch's own error in {actual.dtype})"


def check_opcheck(op, args: tuple, kwargs: Optional[dict] = None) -> None:
    """torch.library.opcheck: every test it has must pass."""
    results = torch.library.opcheck(op, args, kwargs or {})
    failed = {name: result for name, result in results.items() if result != "SUCCESS"}
    assert not failed, failed


def check_compiles(fn: Callable, *args, seed: Optional[int] = None, **kwargs):
    """fn under torch.compile(fullgraph=True) (which raises on any graph break) equals eager fn.
    Random ops get torch.manual_seed(seed) before each run. Returns the compiled result."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    if seed is not None:
        torch.manual_seed(seed)
    expected = fn(*args, **kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    actual = compiled(*args, **kwargs)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)
    return actual


def check_same_for_threads(fn: Callable[[], torch.Tensor]) -> None:
    """fn() gives bit-identical results with 1 and 2 CPU threads (fn must fix its own seed)."""
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(fn())
    assert torch.equal(results[0], results[1]), "CPU result depends on the thread count"


def check_cpu_cuda_identical(fn: Callable[[str], torch.Tensor]) -> None:
    """fn(device) gives bit-identical results on CPU and CUDA."""
    cpu, cuda = fn("cpu"), fn("cuda").cpu()
    assert cpu.dtype == cuda.dtype and cpu.shape == cuda.shape
    as_bytes = lambda t: t.reshape(-1).view(torch.uint8) if t.numel() else t  # noqa: E731  (NaN payloads too)
    assert torch.equal(as_bytes(cpu), as_bytes(cuda)), "CPU and CUDA differ"


def binomial_bounds(n: int, p: float, sigmas: float = 6.0) -> tuple:
    """An interval that holds n Bernoulli(p) successes except with probability about 1e-9."""
    mean, std = n * p, math.sqrt(n * p * (1 - p))
    return mean - sigmas * std, mean + sigmas * std
