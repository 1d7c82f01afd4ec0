"""Shared pieces of the benchmark suites: devices, sizes and a timer that is fair on CUDA.

Every suite times fastnets and its reference in the same run and records, per case, the bytes
it moves (read + written, useful data only: a reference's saved mask is not counted) so that
bench/summary.py can print GB/s, the ratio to the reference and the fraction of copy bandwidth.
"""
import pytest
import torch

import fastnets  # noqa: F401  (registers the ops)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Element counts: big enough to leave the caches (a 64M float32 tensor is 256 MB, five times an
# H100's L2); the CPU size matches the reference figures in shared/ANCHORS.md.
NUMEL = {"cpu": 16 * 2**20, "cuda": 64 * 2**20}

# Rounds per case: the CPU references take hundreds of milliseconds a call.
ROUNDS = {"cpu": 7, "cuda": 30}
INNER_CUDA = 10  # calls per timed round on CUDA, then one synchronize


def run_case(benchmark, fn, *, device, op, impl, dtype, numel, bytes_moved, direction, rounds=None, flops=None,
             dtype_label=None):
    """Times fn() and records what summary.py needs. On CUDA a round is INNER_CUDA calls and a
    synchronize, so launch overhead overlaps and the per-call time is the round's / INNER_CUDA.
    Compute-bound cases give `flops` (per call): the summary then reports GFLOP/s."""
    inner = INNER_CUDA if device == "cuda" else 1

    def round_():
        for _ in range(inner):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(
        suite=benchmark.fullname.split("::")[0], op=op, impl=impl, device=device,
        dtype=dtype_label or str(dtype).replace("torch.", ""), numel=numel, bytes=bytes_moved, flops=flops, calls_per_round=inner, direction=direction,
        device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu",
    )
    benchmark.pedantic(round_, rounds=rounds or ROUNDS[device], warmup_rounds=1)


def copy_case(benchmark, *, device, dtype, shape, op):
    """The bandwidth ceiling of a suite: out.copy_(x) for x of `shape`, timed like its cases."""
    x = torch.randn(shape, device=device, dtype=dtype)
    out = torch.empty_like(x)
    run_case(benchmark, lambda: out.copy_(x), device=device, op=op, impl="copy", dtype=dtype, numel=x.numel(),
             bytes_moved=2 * x.numel() * x.element_size(), direction="forward")


@pytest.fixture(autouse=True)
def _free_cuda_memory():
    yield
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
