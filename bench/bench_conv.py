"""Convolution and the fused Conv-ReLU-Pool against torch.nn.functional (oneDNN on CPU, cuDNN on
CUDA; the three ops also torch.compile'd on CUDA), forward and forward+backward. Shape: the
seed's MNIST CNN conv2 (32 -> 64 channels, 5x5, padding 2, 14x14), N=64 on CPU and N=512 on CUDA
(shared/ANCHORS.md). CUDA precisions: float32 with TF32 off, TF32 (torch.backends.cudnn.allow_tf32,
which both follow) and bfloat16. Rates in TFLOP/s of the convolution (forward+backward counts
three convolutions)."""
import torch
import torch.nn.functional as torch_F

import fastnets.functional as F
from fastnets.benchmark import Case
from fastnets.benchmark import pytest_benchmark_case as bench_case  # noqa: F401  (the entry of `pytest bench/`)

BATCH = {"cpu": 64, "cuda": 512}
PRECISIONS = {"cpu": ["float32"], "cuda": ["float32", "tf32", "bfloat16"]}


def tf32(enabled: bool):
    """torch.backends.cudnn.allow_tf32 (on by default), which the CUDA float32 convolutions follow,
    set for a block and restored after it."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=enabled)


def conv2_inputs(device, precision, requires_grad):
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    x = torch.randn(BATCH[device], 32, 14, 14, device=device).to(dtype)
    weight = (torch.randn(64, 32, 5, 5, device=device) / 28).to(dtype)
    bias = torch.randn(64, device=device).to(dtype)
    tensors = [t.requires_grad_(requires_grad) for t in (x, weight, bias)]
    if requires_grad:
        tensors.append(torch.randn(BATCH[device], 64, 14, 14, device=device).to(dtype))  # grad of the conv output
    return tuple(tensors)


def three_ops(x, weight, bias):
    return torch_F.max_pool2d(torch_F.relu(torch_F.conv2d(x, weight, bias, padding=2)), 2)


def ops(device):
    fused = {"fastnets": lambda x, w, b: F.conv_relu_pool2d(x, w, b, padding=2), "torch": three_ops}
    if device == "cuda":  # where a user would compile the three ops into one graph
        fused["torch.compile"] = torch.compile(three_ops, fullgraph=True)
    return {"conv2d": {"fastnets": lambda x, w, b: F.conv2d(x, w, b, padding=2),
                       "torch": lambda x, w, b: torch_F.conv2d(x, w, b, padding=2)},
            "conv2d+relu+max_pool2d": fused}


def forward(fn):
    return lambda a: lambda: fn(*a)


def train_step(fn, pooled):
    def bind(inputs):
        x, weight, bias, grad = inputs
        if pooled:
            grad = grad[:, :, ::2, ::2].contiguous()

        def step():
            x.grad = weight.grad = bias.grad = None
            fn(x, weight, bias).backward(grad)
        return step
    return bind


def cases(device: str) -> list:
    flops = 2 * BATCH[device] * 64 * 14 * 14 * 32 * 5 * 5
    result = []
    for precision in PRECISIONS[device]:
        for op, impls in ops(device).items():
            common = dict(op=op, shape=f"conv2 N={BATCH[device]}", device=device, dtype=precision,
                          context=lambda precision=precision: tf32(precision == "tf32"))
            result += [
                Case(**common, direction="forward",
                     make_inputs=lambda precision=precision: conv2_inputs(device, precision, False),
                     impls={impl: forward(fn) for impl, fn in impls.items()}, flops=flops),
                Case(**common, direction="forward+backward",
                     make_inputs=lambda precision=precision: conv2_inputs(device, precision, True),
                     impls={impl: train_step(fn, op != "conv2d") for impl, fn in impls.items()}, flops=3 * flops),
            ]
    return result
