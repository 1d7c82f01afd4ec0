"""The LSTM cell and layer against torch.nn.LSTMCell / torch.nn.LSTM with the same weights (oneDNN
on CPU, cuDNN on CUDA), forward (inference, no autograd graph) and forward+backward (the gradients
of the input and every parameter). Shapes: shared/ANCHORS.md's, batch 64 and hidden = input = 512
(the layer over 50 steps on CPU, 100 on CUDA, where also batch 256 and hidden 1024). FLOPs: 2 x
batch x 8 x H^2 per step (the two GEMMs); forward+backward counts three times that.

CUDA float32 comes in three settings: "float32" with TF32 off everywhere; "tf32" with it on
everywhere; "float32 defaults" as PyTorch starts, where torch.backends.cudnn.allow_tf32 is on and
torch.backends.cuda.matmul.allow_tf32 off. nn.LSTM (cuDNN) and fastnets.nn.LSTM follow the first
switch, nn.LSTMCell and fastnets.nn.LSTMCell the second.

Also fastnets' CPU GEMM (fastnets::matmul, the layer's) against torch.mm on the layer's shapes.
"""
import contextlib

import torch

import fastnets
from fastnets.benchmark import Case
from fastnets.benchmark import pytest_benchmark_case as bench_case  # noqa: F401  (the entry of `pytest bench/`)

LAYERS = {"cpu": [(50, 64, 512, "float32")],
          "cuda": [(100, 64, 512, precision) for precision in ("float32", "tf32", "float32 defaults")]
          + [(100, 256, 1024, precision) for precision in ("float32", "tf32", "float32 defaults", "bfloat16")]}
CELLS = {"cpu": [(64, 512, "float32")], "cuda": [(64, 512, "float32")]}


@contextlib.contextmanager
def tf32(precision):
    """The TF32 switches of a precision label, set for a block and restored after it."""
    if precision not in ("float32", "tf32"):
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=precision == "tf32"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def dtype_of(precision):
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def make_modules(kind, hidden, device, dtype):
    torch.manual_seed(0)
    reference = getattr(torch.nn, kind)(hidden, hidden).to(device=device, dtype=dtype)
    ours = getattr(fastnets.nn, kind)(hidden, hidden).to(device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    return {"fastnets": ours, "torch": reference}


def inputs(shape, hidden, device, dtype, requires_grad):
    def make():
        x = torch.randn(*shape, hidden, device=device, dtype=dtype).requires_grad_(requires_grad)
        states = tuple(torch.randn(*shape[-1:], hidden, device=device, dtype=dtype) for _ in range(2))
        return x, states
    return make


def forward(module, cell):
    def bind(inputs):
        x, states = inputs

        def call():
            with torch.no_grad():
                return module(x, states if cell else None)
        return call
    return bind


def forward_backward(module, cell):
    def bind(inputs):
        x, states = inputs

        def step():
            x.grad = None
            module.zero_grad(set_to_none=True)
            out = module(x, states if cell else None)
            (out[0].sum() + out[1].sum() if cell else out[0].sum()).backward()
        return step
    return bind


def cases(device: str) -> list:
    result = []
    for batch, hidden, dtype_name in CELLS[device]:
        dtype = dtype_of(dtype_name)
        modules = make_modules("LSTMCell", hidden, device, dtype)
        flops = 2 * batch * 8 * hidden * hidden
        common = dict(op="lstm_cell", shape=f"B{batch} H{hidden}", device=device, dtype=dtype_name)
        result += [
            Case(**common, direction="forward", make_inputs=inputs((batch,), hidden, device, dtype, False),
                 impls={name: forward(m, True) for name, m in modules.items()}, flops=flops),
            Case(**common, direction="forward+backward", make_inputs=inputs((batch,), hidden, device, dtype, True),
                 impls={name: forward_backward(m, True) for name, m in modules.items()}, flops=3 * flops),
        ]
    for steps, batch, hidden, dtype_name in LAYERS[device]:
        dtype = dtype_of(dtype_name)
        modules = make_modules("LSTM", hidden, device, dtype)
        flops = steps * 2 * batch * 8 * hidden * hidden
        common = dict(op="lstm", shape=f"T{steps} B{batch} H{hidden}", device=device, dtype=dtype_name,
                      context=lambda precision=dtype_name: tf32(precision))
        result += [
            Case(**common, direction="forward", make_inputs=inputs((steps, batch), hidden, device, dtype, False),
                 impls={name: forward(m, False) for name, m in modules.items()}, flops=flops),
            Case(**common, direction="forward+backward",
                 make_inputs=inputs((steps, batch), hidden, device, dtype, True),
                 impls={name: forward_backward(m, False) for name, m in modules.items()}, flops=3 * flops),
        ]
    if device == "cpu":
        for m, k, n in ((3200, 512, 2048), (64, 512, 2048)):
            result.append(Case(
                op="matmul", shape=f"{m}x{k}x{n}", direction="forward", device=device, dtype="float32",
                make_inputs=lambda m=m, k=k, n=n: (torch.randn(m, k), torch.randn(k, n)),
                impls={"fastnets": lambda a: lambda: torch.ops.fastnets.matmul(*a),
                       "torch": lambda a: lambda: torch.mm(*a)}, flops=2 * m * k * n))
    return result
