"""Convolution and the fused Conv-ReLU-Pool against torch.nn.functional (oneDNN on CPU, cuDNN on
CUDA), forward and forward+backward, same run. Shape: the seed's MNIST CNN conv2 (32 -> 64
channels, 5x5, padding 2, 14x14), N=64 on CPU and N=512 on CUDA (shared/ANCHORS.md). CUDA
precisions: float32 with TF32 off, TF32 (torch.backends.cudnn.allow_tf32, which both follow) and
bfloat16."""
import contextlib

import pytest
import torch
import torch.nn.functional as torch_F

import fastnets.functional as F
from conftest import DEVICES, run_case

BATCH = {"cpu": 64, "cuda": 512}
ROUNDS = {"cpu": 30, "cuda": None}  # CPU calls take milliseconds: more rounds steady the median
PRECISIONS = {"cpu": ["float32"], "cuda": ["float32", "tf32", "bfloat16"]}
CASES = [(device, precision) for device in DEVICES for precision in PRECISIONS[device]]
IDS = [f"{device}-{precision}" for device, precision in CASES]


@contextlib.contextmanager
def tf32(enabled):
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def conv2_inputs(device, precision, requires_grad=False):
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(BATCH[device], 32, 14, 14, device=device, generator=gen).to(dtype)
    weight = (torch.randn(64, 32, 5, 5, device=device, generator=gen) / 28).to(dtype)
    bias = torch.randn(64, device=device, generator=gen).to(dtype)
    return [t.requires_grad_(requires_grad) for t in (x, weight, bias)], dtype


def conv_flops(device):
    return 2 * BATCH[device] * 64 * 14 * 14 * 32 * 5 * 5


def three_ops(x, weight, bias):
    return torch_F.max_pool2d(torch_F.relu(torch_F.conv2d(x, weight, bias, padding=2)), 2)


IMPLS = {
    "conv2d": {"fastnets": lambda x, w, b: F.conv2d(x, w, b, padding=2),
               "torch": lambda x, w, b: torch_F.conv2d(x, w, b, padding=2)},
    "conv2d+relu+max_pool2d": {"fastnets": lambda x, w, b: F.conv_relu_pool2d(x, w, b, padding=2),
                               "torch": three_ops},
}


@pytest.mark.parametrize("op", list(IMPLS))
@pytest.mark.parametrize("impl", ["fastnets", "torch"])
@pytest.mark.parametrize("device,precision", CASES, ids=IDS)
def bench_conv_forward(benchmark, device, precision, impl, op):
    (x, weight, bias), dtype = conv2_inputs(device, precision)
    fn = IMPLS[op][impl]
    with tf32(precision == "tf32"):
        out = fn(x, weight, bias)
        run_case(benchmark, lambda: fn(x, weight, bias), device=device, op=f"{op} conv2 N={BATCH[device]}", impl=impl,
                 dtype=dtype, dtype_label=precision, numel=x.numel(), flops=conv_flops(device),
                 bytes_moved=(x.numel() + weight.numel() + out.numel()) * x.element_size(), direction="forward",
                 rounds=ROUNDS[device])


@pytest.mark.parametrize("op", list(IMPLS))
@pytest.mark.parametrize("impl", ["fastnets", "torch"])
@pytest.mark.parametrize("device,precision", CASES, ids=IDS)
def bench_conv_train_step(benchmark, device, precision, impl, op):
    (x, weight, bias), dtype = conv2_inputs(device, precision, requires_grad=True)
    fn = IMPLS[op][impl]
    with tf32(precision == "tf32"):
        grad = torch.randn_like(fn(x, weight, bias))

        def step():
            x.grad = weight.grad = bias.grad = None
            fn(x, weight, bias).backward(grad)

        run_case(benchmark, step, device=device, op=f"{op} conv2 N={BATCH[device]}", impl=impl, dtype=dtype,
                 dtype_label=precision, numel=x.numel(), flops=3 * conv_flops(device),
                 bytes_moved=2 * (x.numel() + weight.numel()) * x.element_size(), direction="forward+backward",
                 rounds=ROUNDS[device])
