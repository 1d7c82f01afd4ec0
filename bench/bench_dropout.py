"""Dropout against torch.nn.functional.dropout (and torch.compile'd dropout on CUDA), same run.

Cases per device and dtype: copy (the bandwidth ceiling), forward, backward (the op autograd
runs: fastnets regenerates the mask, PyTorch reads its saved bool mask), and a training step
(forward + backward through autograd).
"""
import pytest
import torch
import torch.nn.functional as torch_F

import fastnets.functional as F
from conftest import DEVICES, NUMEL, copy_case, run_case

P = 0.5
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.bfloat16]}
CASES = [(device, dtype) for device in DEVICES for dtype in DTYPES[device]]
IDS = [f"{device}-{str(dtype).replace('torch.', '')}" for device, dtype in CASES]


def _inputs(device, dtype):
    numel = NUMEL[device]
    x = torch.randn(numel, device=device, dtype=dtype)
    return x, numel, numel * x.element_size()


@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_copy(benchmark, device, dtype):
    copy_case(benchmark, device=device, dtype=dtype, shape=(NUMEL[device],), op="dropout")


def _forward_impls(device):
    impls = {"fastnets": lambda x: F.dropout(x, P), "torch": lambda x: torch_F.dropout(x, P)}
    if device == "cuda":
        impls["torch.compile"] = torch.compile(lambda x: torch_F.dropout(x, P), fullgraph=True)
    return impls


@pytest.mark.parametrize("impl", ["fastnets", "torch", "torch.compile"])
@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_dropout_forward(benchmark, device, dtype, impl):
    impls = _forward_impls(device)
    if impl not in impls:
        pytest.skip(f"{impl} is benchmarked on CUDA only")
    x, numel, nbytes = _inputs(device, dtype)
    fn = impls[impl]
    run_case(benchmark, lambda: fn(x), device=device, op="dropout", impl=impl, dtype=dtype,
             numel=numel, bytes_moved=2 * nbytes, direction="forward")


@pytest.mark.parametrize("impl", ["fastnets", "torch"])
@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_dropout_backward(benchmark, device, dtype, impl):
    grad, numel, nbytes = _inputs(device, dtype)
    if impl == "fastnets":
        _, seed_offset = torch.ops.fastnets.dropout(grad, P, None)
        fn = lambda: torch.ops.fastnets.dropout_backward(grad, seed_offset, P)  # noqa: E731
    else:
        _, mask = torch.native_dropout(grad, P, True)
        fn = lambda: torch.ops.aten.native_dropout_backward(grad, mask, 1.0 / (1.0 - P))  # noqa: E731
    run_case(benchmark, fn, device=device, op="dropout", impl=impl, dtype=dtype,
             numel=numel, bytes_moved=2 * nbytes, direction="backward")


@pytest.mark.parametrize("impl", ["fastnets", "torch"])
@pytest.mark.parametrize("device,dtype", CASES, ids=IDS)
def bench_dropout_train_step(benchmark, device, dtype, impl):
    x, numel, nbytes = _inputs(device, dtype)
    x.requires_grad_(True)
    grad = torch.randn_like(x)
    dropout = F.dropout if impl == "fastnets" else torch_F.dropout

    def step():
        x.grad = None
        dropout(x, P).backward(grad)

    run_case(benchmark, step, device=device, op="dropout", impl=impl, dtype=dtype,
             numel=numel, bytes_moved=4 * nbytes, direction="forward+backward")
