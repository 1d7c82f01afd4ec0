"""Where the time of a few CUDA cases goes, kernel by kernel (a diagnosis for `make gpu-check`,
not a benchmark): per call, the GPU's busy time, the host's time, the wall time, and the kernels
that took most of the GPU. The cases: those whose benchmarks suggest the host bounds them (dropout
forward+backward, LSTMCell, the precision experiment's step) and the widest gaps to cuDNN (the
LSTM layer in bfloat16, conv2). A wall time far above the GPU's busy time means the host (Python,
dispatch, launches) or a synchronization is the bound.

    python3 bench/profile_cuda.py            # needs a GPU
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as torch_F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's fastnets, built in place

import fastnets  # noqa: E402
import fastnets.functional as F  # noqa: E402
from fastnets import models  # noqa: E402
from fastnets._training import TrainingStep  # noqa: E402
from fastnets.quant import FixedPoint, FixedPointSGD, quantize_activations_, quantize_parameters_  # noqa: E402

CALLS = 20


def report(name, fn):
    try:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(CALLS):
                fn()
            torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(CALLS):
            fn()
        end.record()
        torch.cuda.synchronize()
    except Exception as error:  # a diagnosis reports what failed and goes on
        print(f"\n### {name}: {type(error).__name__}: {error}")
        return
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.self_device_time_total for e in kernels) / CALLS
    launches = sum(e.count for e in kernels) / CALLS
    # The host's own time: without the final synchronization's wait for the GPU.
    waits = sum(e.self_cpu_time_total for e in events if "Synchronize" in e.key)
    host_us = (events.self_cpu_time_total - waits) / CALLS
    print(f"\n### {name}: wall {start.elapsed_time(end) / CALLS * 1e3:.1f} us, GPU busy {gpu_us:.1f} us, "
          f"host {host_us:.1f} us, {launches:.1f} kernels per call")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:5]:
        print(f"  {e.self_device_time_total / CALLS:8.1f} us  x{e.count / CALLS:4.1f}  {e.key[:100]}")


def training_step(x, grad, dropout):
    def step():
        x.grad = None
        dropout(x, 0.5).backward(grad)
    return step


def main() -> int:
    if not torch.cuda.is_available():
        print("profile_cuda: no CUDA device", file=sys.stderr)
        return 2
    device = "cuda"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fastnets {fastnets.__version__}")

    x = torch.randn(64 * 2**20, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    report("dropout 64Mi forward+backward, fastnets", training_step(x, grad, F.dropout))
    report("dropout 64Mi forward+backward, torch", training_step(x, grad, torch_F.dropout))
    del x, grad

    batch, hidden = 64, 512
    inputs = torch.randn(batch, hidden, device=device)
    state = (torch.randn(batch, hidden, device=device), torch.randn(batch, hidden, device=device))
    for name, cell in (("fastnets", fastnets.nn.LSTMCell(hidden, hidden)),
                       ("torch", torch.nn.LSTMCell(hidden, hidden))):
        cell = cell.to(device)

        def forward(cell=cell):
            with torch.no_grad():
                cell(inputs, state)

        def forward_backward(cell=cell):
            h, c = cell(inputs, state)
            (h.sum() + c.sum()).backward()
        report(f"LSTMCell B{batch} H{hidden} forward, {name}", forward)
        report(f"LSTMCell B{batch} H{hidden} forward+backward, {name}", forward_backward)

    # The precision experiment's step (Gupta et al.'s MLP, batch 100): float32 and <2,14> stochastic.
    images = torch.rand(100, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (100,), device=device)
    for fmt in (None, FixedPoint(16, 14, "stochastic")):
        torch.manual_seed(0)
        model = models.gupta_mlp().to(device)
        optimizer = FixedPointSGD(model.parameters(), lr=0.01, momentum=0.9, weight=fmt, grad=fmt, state=fmt)
        if fmt is not None:
            quantize_parameters_(model, fmt)
            quantize_activations_(model, fmt, fmt, zero_outside_range=True)
        step = TrainingStep(model, optimizer, fmt)
        report(f"precision MLP step, {'float32' if fmt is None else '<2,14> stochastic'}",
               lambda step=step: step(images, labels))

    # The widest gaps to cuDNN in the benchmarks: the LSTM layer in bfloat16 and conv2 at N=512.
    torch.manual_seed(0)
    ours, theirs = fastnets.nn.LSTM(1024, 1024), torch.nn.LSTM(1024, 1024)
    theirs.load_state_dict(ours.state_dict())
    sequence = torch.randn(100, 256, 1024, device=device, dtype=torch.bfloat16, requires_grad=True)
    for name, lstm in (("fastnets", ours), ("torch", theirs)):
        lstm = lstm.to(device=device, dtype=torch.bfloat16)

        def lstm_step(lstm=lstm):
            sequence.grad = None
            lstm(sequence)[0].sum().backward()
        report(f"LSTM T100 B256 H1024 bfloat16 forward+backward, {name}", lstm_step)

    images = torch.randn(512, 32, 14, 14, device=device, dtype=torch.bfloat16)
    weight = torch.randn(64, 32, 5, 5, device=device, dtype=torch.bfloat16) / 28
    bias = torch.randn(64, device=device, dtype=torch.bfloat16)
    report("conv2 N=512 bfloat16 forward, fastnets", lambda: F.conv2d(images, weight, bias, padding=2))
    report("conv2 N=512 bfloat16 forward, torch", lambda: torch_F.conv2d(images, weight, bias, padding=2))
    report("conv2+ReLU+pool N=512 bfloat16 forward, fastnets",
           lambda: F.conv_relu_pool2d(images, weight, bias, padding=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
