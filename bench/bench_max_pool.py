"""Max-pooling against torch.nn.functional.max_pool2d, forward and forward+backward. Bytes: input
read once, output and the saved argmax written once (PyTorch's int64 indices count as what it
writes); backward: grad_output and argmax read, grad_input written."""
import math

import torch
import torch.nn.functional as torch_F

import fastnets.functional as F
from fastnets.benchmark import Case, training_step
from fastnets.benchmark import pytest_benchmark_case as bench_case  # noqa: F401  (the entry of `pytest bench/`)

SHAPES = {"cpu": (64, 64, 28, 28), "cuda": (256, 64, 56, 56)}  # shared/ANCHORS.md's sizes
DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}
WINDOWS = {"2x2": (2, 2, 0), "3x3s2": (3, 2, 1)}  # LeNet-style, and overlapping (Krizhevsky et al.)
INDEX_BYTES = {"fastnets": 1, "torch": 8}
POOLS = {"fastnets": F.max_pool2d, "torch": torch_F.max_pool2d}


def pooled_shape(shape, kernel, stride, padding):
    n, c, h, w = shape
    return (n, c, *((size + 2 * padding - kernel) // stride + 1 for size in (h, w)))


def forward(pool, window):
    return lambda a: lambda: pool(a[0], *window)


def cases(device: str) -> list:
    result = []
    shape = SHAPES[device]
    for dtype_name in DTYPES[device]:
        dtype = getattr(torch, dtype_name)
        size = dtype.itemsize
        for label, window in WINDOWS.items():
            inputs, outputs = math.prod(shape), math.prod(pooled_shape(shape, *window))
            forward_bytes = {impl: inputs * size + outputs * (size + index) for impl, index in INDEX_BYTES.items()}
            backward_bytes = {impl: outputs * (size + index) + inputs * size for impl, index in INDEX_BYTES.items()}
            common = dict(op=f"max_pool2d {label}", shape="x".join(map(str, shape)), device=device, dtype=dtype_name)
            result += [
                Case(**common, direction="forward", make_inputs=lambda dtype=dtype: (
                    torch.randn(shape, device=device, dtype=dtype),),
                    impls={impl: forward(pool, window) for impl, pool in POOLS.items()}, bytes_moved=forward_bytes),
                Case(**common, direction="forward+backward", make_inputs=lambda dtype=dtype, window=window: (
                    torch.randn(shape, device=device, dtype=dtype, requires_grad=True),
                    torch.randn(pooled_shape(shape, *window), device=device, dtype=dtype)),
                    impls={impl: training_step(lambda x, pool=pool, window=window: pool(x, *window))
                           for impl, pool in POOLS.items()},
                    bytes_moved={impl: forward_bytes[impl] + backward_bytes[impl] for impl in POOLS}),
            ]
    return result
