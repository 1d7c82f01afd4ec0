"""RBM sampling and contrastive divergence against the same steps in plain PyTorch
(``torch.bernoulli(torch.sigmoid(F.linear(...)))``; for CD-1, ``fastnets.models.TorchRBM``),
shared/ANCHORS.md's reference.

Directions: a Gibbs step v -> h -> v (two GEMMs, two sampled layers); a CD-1 gradient
(``RBM.contrastive_divergence``: the positive and negative phases, the gradients of W and both
biases, and the reconstruction error; five GEMMs). FLOPs count the GEMMs only.
"""
import torch
import torch.nn.functional as torch_F

import fastnets
from fastnets.benchmark import Case
from fastnets.models import TorchRBM
from fastnets.benchmark import pytest_benchmark_case as bench_case  # noqa: F401  (the entry of `pytest bench/`)

SHAPES = {"cpu": [(128, 784, 500)], "cuda": [(128, 784, 500), (1024, 784, 4096)]}
DTYPES = {"cpu": ["float32"], "cuda": ["float32"]}


def make_inputs(batch, n_visible, n_hidden, device, dtype):
    def make():
        g = torch.Generator().manual_seed(0)
        rbm = fastnets.nn.RBM(n_visible, n_hidden, device=device, dtype=dtype)
        with torch.no_grad():
            rbm.weight.copy_(torch.randn(n_hidden, n_visible, generator=g) * 0.05)
            rbm.hidden_bias.copy_(torch.randn(n_hidden, generator=g) * 0.1)
        data = (torch.rand(batch, n_visible, generator=g) < 0.3).to(device=device, dtype=dtype)
        return rbm, data

    return make


def bind_fastnets_gibbs(inputs):
    rbm, v = inputs
    return lambda: rbm.sample_v(rbm.sample_h(v)[1])[1]


def bind_torch_gibbs(inputs):
    rbm, v = inputs
    w, b, c = rbm.weight.detach(), rbm.visible_bias.detach(), rbm.hidden_bias.detach()

    def step():
        h = torch.bernoulli(torch.sigmoid(torch_F.linear(v, w, c)))
        return torch.bernoulli(torch.sigmoid(torch_F.linear(h, w.t(), b)))

    return step


def bind_fastnets_cd1(inputs):
    rbm, v = inputs

    def step():
        for parameter in rbm.parameters():
            parameter.grad = None
        return rbm.contrastive_divergence(v)

    return step


def bind_torch_cd1(inputs):
    rbm, v = inputs
    reference = TorchRBM(rbm.n_visible, rbm.n_hidden).to(device=v.device, dtype=v.dtype)
    reference.load_state_dict(rbm.state_dict())

    def step():
        for parameter in reference.parameters():
            parameter.grad = None
        return reference.contrastive_divergence(v)

    return step


def cases(device: str) -> list:
    result = []
    for dtype_name in DTYPES[device]:
        for batch, n_visible, n_hidden in SHAPES[device]:
            gemm = 2 * batch * n_visible * n_hidden
            common = dict(op="rbm", shape=f"B{batch} {n_visible}x{n_hidden}", device=device, dtype=dtype_name,
                          make_inputs=make_inputs(batch, n_visible, n_hidden, device, getattr(torch, dtype_name)))
            result += [
                Case(**common, direction="gibbs v->h->v",
                     impls={"fastnets": bind_fastnets_gibbs, "torch": bind_torch_gibbs}, flops=2 * gemm),
                Case(**common, direction="CD-1 gradient",
                     impls={"fastnets": bind_fastnets_cd1, "torch": bind_torch_cd1}, flops=5 * gemm),
            ]
    return result
