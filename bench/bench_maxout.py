"""Maxout against PyTorch's unflatten + max (values and indices), forward and forward+backward,
same run. Bytes: input read once, output and the saved argmax written once (PyTorch's int64
indices count as what it writes)."""
import pytest
import torch

import fastnets.functional as F
from conftest import DEVICES, copy_case, run_case

PIECES = 4
SHAPES = {"cpu": (256, 4096), "cuda": (4096, 16384)}  # shared/ANCHORS.md's sizes
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.bfloat16]}
CASES = [(device, dtype) for device in DEVICES for dtype in DTYPES[device]]
IDS = [f"{device}-{str(dtype).replace('torch.', '')}" for device, dtype in CASES]


def torch_maxout(x):
    return x.unflatten(1, (x.size(1) // PIECES, PIECES)).max(2).values


def _bytes(x, index_bytes):
    outputs = x.numel() // PIECES
    return x.numel() * x.element_size() + outputs * (x.element_size() + index_bytes)


@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_copy(benchmark, device, dtype):
    copy_case(benchmark, device=device, dtype=dtype, shape=SHAPES[device], op="maxout")


@pytest.mark.parametrize("impl", ["fastnets", "torch"])
@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_maxout_forward(benchmark, device, dtype, impl):
    x = torch.randn(SHAPES[device], device=device, dtype=dtype)
    fn = (lambda: F.maxout(x, PIECES)) if impl == "fastnets" else (lambda: torch_maxout(x))
    run_case(benchmark, fn, device=device, op="maxout", impl=impl, dtype=dtype, numel=x.numel(),
             bytes_moved=_bytes(x, 1 if impl == "fastnets" else 8), direction="forward")


@pytest.mark.parametrize("impl", ["fastnets", "torch"])
@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_maxout_train_step(benchmark, device, dtype, impl):
    x = torch.randn(SHAPES[device], device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(x.size(0), x.size(1) // PIECES, device=device, dtype=dtype)
    maxout = (lambda t: F.maxout(t, PIECES)) if impl == "fastnets" else torch_maxout

    def step():
        x.grad = None
        maxout(x).backward(grad)

    # Forward bytes, then backward: grad_output and argmax read, grad_input written.
    index_bytes = 1 if impl == "fastnets" else 8
    backward_bytes = grad.numel() * (grad.element_size() + index_bytes) + x.numel() * x.element_size()
    run_case(benchmark, step, device=device, op="maxout", impl=impl, dtype=dtype, numel=x.numel(),
             bytes_moved=_bytes(x, index_bytes) + backward_bytes, direction="forward+backward")
