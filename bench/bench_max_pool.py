"""Max-pooling against torch.nn.functional.max_pool2d, forward and forward+backward, same run.
Bytes: input read once, output and the saved argmax written once (PyTorch's int64 indices count
as what it writes); backward: grad_output and argmax read, grad_input written."""
import pytest
import torch
import torch.nn.functional as torch_F

import fastnets.functional as F
from conftest import DEVICES, copy_case, run_case

SHAPES = {"cpu": (64, 64, 28, 28), "cuda": (256, 64, 56, 56)}  # shared/ANCHORS.md's sizes
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.bfloat16]}
CASES = [(device, dtype) for device in DEVICES for dtype in DTYPES[device]]
IDS = [f"{device}-{str(dtype).replace('torch.', '')}" for device, dtype in CASES]
WINDOWS = {"2x2": (2, 2, 0), "3x3s2": (3, 2, 1)}  # LeNet-style, and overlapping (Krizhevsky et al.)


def _forward_bytes(x, out_numel, index_bytes):
    return x.numel() * x.element_size() + out_numel * (x.element_size() + index_bytes)


@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_copy(benchmark, device, dtype):
    copy_case(benchmark, device=device, dtype=dtype, shape=SHAPES[device], op="max_pool2d 2x2")


@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("impl", ["fastnets", "torch"])
@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_max_pool2d_forward(benchmark, device, dtype, impl, window):
    kernel, stride, padding = WINDOWS[window]
    x = torch.randn(SHAPES[device], device=device, dtype=dtype)
    pool = F.max_pool2d if impl == "fastnets" else torch_F.max_pool2d
    out_numel = pool(x, kernel, stride, padding).numel()
    run_case(benchmark, lambda: pool(x, kernel, stride, padding), device=device, op=f"max_pool2d {window}",
             impl=impl, dtype=dtype, numel=x.numel(),
             bytes_moved=_forward_bytes(x, out_numel, 1 if impl == "fastnets" else 8), direction="forward")


@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("impl", ["fastnets", "torch"])
@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_max_pool2d_train_step(benchmark, device, dtype, impl, window):
    kernel, stride, padding = WINDOWS[window]
    x = torch.randn(SHAPES[device], device=device, dtype=dtype, requires_grad=True)
    pool = F.max_pool2d if impl == "fastnets" else torch_F.max_pool2d
    grad = torch.randn_like(pool(x, kernel, stride, padding))

    def step():
        x.grad = None
        pool(x, kernel, stride, padding).backward(grad)

    index_bytes = 1 if impl == "fastnets" else 8
    backward_bytes = grad.numel() * (grad.element_size() + index_bytes) + x.numel() * x.element_size()
    run_case(benchmark, step, device=device, op=f"max_pool2d {window}", impl=impl, dtype=dtype, numel=x.numel(),
             bytes_moved=_forward_bytes(x, grad.numel(), index_bytes) + backward_bytes, direction="forward+backward")
