"""Dropout against torch.nn.functional.dropout (and torch.compile'd dropout on CUDA).

Directions: forward; backward (the op autograd runs: fastnets regenerates the mask from two
integers, PyTorch reads its saved bool mask); forward+backward through autograd. Bytes: one read
and one write of the tensor per pass (masks not counted).
"""
import torch
import torch.nn.functional as torch_F

import fastnets.functional as F
from fastnets.benchmark import Case, training_step
from fastnets.benchmark import pytest_benchmark_case as bench_case  # noqa: F401  (the entry of `pytest bench/`)

P = 0.5
NUMEL = {"cpu": 16 * 2**20, "cuda": 64 * 2**20}  # shared/ANCHORS.md's sizes
DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}


def forward_impls(device):
    impls = {"fastnets": lambda a: lambda: F.dropout(a[0], P), "torch": lambda a: lambda: torch_F.dropout(a[0], P)}
    if device == "cuda":
        compiled = torch.compile(lambda x: torch_F.dropout(x, P), fullgraph=True)
        impls["torch.compile"] = lambda a: lambda: compiled(a[0])
    return impls


def bind_fastnets_backward(inputs):
    grad, = inputs
    _, seed_offset = torch.ops.fastnets.dropout(grad, P, None)
    return lambda: torch.ops.fastnets.dropout_backward(grad, seed_offset, P)


def bind_torch_backward(inputs):
    grad, = inputs
    _, mask = torch.native_dropout(grad, P, True)
    return lambda: torch.ops.aten.native_dropout_backward(grad, mask, 1.0 / (1.0 - P))


def cases(device: str) -> list:
    result = []
    for dtype_name in DTYPES[device]:
        dtype, numel = getattr(torch, dtype_name), NUMEL[device]
        nbytes = numel * dtype.itemsize
        tensor = lambda dtype=dtype, numel=numel: torch.randn(numel, device=device, dtype=dtype)  # noqa: E731
        common = dict(op="dropout", shape=f"{numel // 2**20}Mi", device=device, dtype=dtype_name)
        result += [
            Case(**common, direction="forward", make_inputs=lambda t=tensor: (t(),), impls=forward_impls(device),
                 bytes_moved=2 * nbytes),
            Case(**common, direction="backward", make_inputs=lambda t=tensor: (t(),),
                 impls={"fastnets": bind_fastnets_backward, "torch": bind_torch_backward}, bytes_moved=2 * nbytes),
            Case(**common, direction="forward+backward",
                 make_inputs=lambda t=tensor: (t().requires_grad_(), t()),
                 impls={"fastnets": training_step(lambda x: F.dropout(x, P)),
                        "torch": training_step(lambda x: torch_F.dropout(x, P))},
                 bytes_moved=4 * nbytes),
        ]
    return result
