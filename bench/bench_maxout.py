"""Maxout (4 pieces) against PyTorch's unflatten + max (values and indices; also
torch.compile'd on CUDA), forward and forward+backward. Bytes: input read once, output and the
saved argmax written once (PyTorch's int64 indices count as what it writes); backward:
grad_output and argmax read, grad_input written."""
import math

import torch

import fastnets.functional as F
from fastnets.benchmark import Case, training_step
from fastnets.benchmark import pytest_benchmark_case as bench_case  # noqa: F401  (the entry of `pytest bench/`)

PIECES = 4
SHAPES = {"cpu": (256, 4096), "cuda": (4096, 16384)}  # shared/ANCHORS.md's sizes
DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}
INDEX_BYTES = {"fastnets": 1, "torch": 8, "torch.compile": 8}


def torch_maxout(x):
    return x.unflatten(1, (x.size(1) // PIECES, PIECES)).max(2).values


def maxouts(device):
    result = {"fastnets": lambda x: F.maxout(x, PIECES), "torch": torch_maxout}
    if device == "cuda":
        result["torch.compile"] = torch.compile(torch_maxout, fullgraph=True)
    return result


def forward(maxout):
    return lambda inputs: lambda: maxout(inputs[0])


def cases(device: str) -> list:
    result = []
    shape = SHAPES[device]
    for dtype_name in DTYPES[device]:
        dtype = getattr(torch, dtype_name)
        size, inputs = dtype.itemsize, math.prod(shape)
        outputs = inputs // PIECES
        forward_bytes = {impl: inputs * size + outputs * (size + index) for impl, index in INDEX_BYTES.items()}
        backward_bytes = {impl: outputs * (size + index) + inputs * size for impl, index in INDEX_BYTES.items()}
        common = dict(op="maxout", shape="x".join(map(str, shape)), device=device, dtype=dtype_name)
        result += [
            Case(**common, direction="forward",
                 make_inputs=lambda dtype=dtype: (torch.randn(shape, device=device, dtype=dtype),),
                 impls={impl: forward(fn) for impl, fn in maxouts(device).items()},
                 bytes_moved=forward_bytes),
            Case(**common, direction="forward+backward",
                 make_inputs=lambda dtype=dtype: (
                     torch.randn(shape, device=device, dtype=dtype, requires_grad=True),
                     torch.randn(shape[0], shape[1] // PIECES, device=device, dtype=dtype)),
                 impls={impl: training_step(fn) for impl, fn in maxouts(device).items()},
                 bytes_moved={impl: forward_bytes[impl] + backward_bytes[impl] for impl in INDEX_BYTES}),
        ]
    return result
