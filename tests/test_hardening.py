"""Bad and unusual input, table-driven across the ops (issue 11, first part): every layout a user
may pass (contiguous, channels_last, transposed, sliced, empty batch) gives the reference's
values and gradients, and every malformed input (wrong dtype, wrong rank) raises a
RuntimeError, ValueError or TypeError that names the argument: never a crash, never a silently
wrong result."""
from dataclasses import dataclass
from typing import Callable, Sequence

import pytest
import torch
import torch.nn.functional as torch_F

import fastnets.functional as F
from fastnets import quant
from harness import DEVICES


def three_ops(x, w, b):
    return torch_F.max_pool2d(torch_F.relu(torch_F.conv2d(x, w, b, padding=1)), 2)


def fixed_point_reference(x):
    return torch.clamp(torch.round(x.double() * 16), -128, 127).div(16).to(x.dtype)


def quantize_with_range_mask(x):
    """quant.quantize with stochastic rounding both ways and the gradient zeroed where x
    saturated (fixed_point_in_range, then fixed_point_quantize_masked in backward), from a
    fresh seed: a second call draws the same words."""
    torch.manual_seed(3)
    fmt = quant.FixedPoint(8, 4, rounding="stochastic")
    return quant.quantize(x, fmt, fmt, zero_outside_range=True)


def torch_lstm(x, h, c, w_ih, w_hh, b):
    """torch's one-layer LSTM output; for no time steps (which it refuses) an empty one. In
    training mode, since cuDNN's backward refuses any other; cuDNN also wants contiguous tensors
    (the layouts are ours to handle, not the reference's)."""
    if x.shape[0] == 0:
        return x.new_empty(0, x.shape[1], h.shape[1])
    states = (h[None].contiguous(), c[None].contiguous())
    weights = [t.contiguous() for t in (w_ih, w_hh, b, b)]
    return torch.lstm(x.contiguous(), states, weights, True, 1, 0.0, True, False, False)[0]


@dataclass
class Op:
    """An op under test: ``ours(*tensors)`` against ``reference(*tensors)``; ``shapes`` of its
    tensor arguments (the first is the input, batch first), their names, and the input ranks
    it refuses."""

    ours: Callable
    reference: Callable
    shapes: Sequence[tuple]
    names: Sequence[str]
    bad_ranks: Sequence[int] = (1, 5)
    differentiable: bool = True


OPS = {
    "conv2d": Op(lambda x, w, b: F.conv2d(x, w, b, padding=1), lambda x, w, b: torch_F.conv2d(x, w, b, padding=1),
                 [(2, 3, 7, 6), (4, 3, 3, 3), (4,)], ["input", "weight", "bias"], bad_ranks=(1, 2, 5)),
    "conv_relu_pool2d": Op(lambda x, w, b: F.conv_relu_pool2d(x, w, b, padding=1), three_ops,
                           [(2, 3, 8, 6), (4, 3, 3, 3), (4,)], ["input", "weight", "bias"], bad_ranks=(1, 2, 5)),
    "max_pool2d": Op(lambda x: F.max_pool2d(x, 2), lambda x: torch_F.max_pool2d(x, 2), [(2, 3, 7, 6)], ["input"],
                     bad_ranks=(1, 2, 5)),
    "maxout": Op(lambda x: F.maxout(x, 2), lambda x: x.unflatten(1, (x.size(1) // 2, 2)).max(2).values, [(3, 6, 5, 4)],
                 ["input"], bad_ranks=(0,)),
    # The same stream on a contiguous copy: dropout reads any layout in row-major order.
    "dropout": Op(lambda x: F.dropout(x, 0.5, generator=torch.Generator(x.device.type).manual_seed(11)),
                  lambda x: F.dropout(x.contiguous(), 0.5, generator=torch.Generator(x.device.type).manual_seed(11)),
                  [(3, 6, 5, 4)], ["input"], bad_ranks=()),
    "fixed_point_quantize": Op(lambda x: F.fixed_point_quantize(x, 8, 4, "nearest"), fixed_point_reference,
                               [(3, 6, 5, 4)], ["input"], bad_ranks=(), differentiable=False),
    # The same words, rounding and mask on a contiguous copy.
    "quant.quantize (range mask)": Op(quantize_with_range_mask, lambda x: quantize_with_range_mask(x.contiguous()),
                                      [(3, 6, 5, 4)], ["input"], bad_ranks=()),
    "matmul": Op(torch.ops.fastnets.matmul, torch.mm, [(5, 7), (7, 4)], [r"\ba\b", r"\bb\b"], bad_ranks=(1, 3),
                 differentiable=False),
    "rbm_sample": Op(lambda x, w, b: F.rbm_sample(x, w, b, sample=False)[0],
                     lambda x, w, b: torch.sigmoid(torch_F.linear(x, w, b)), [(5, 7), (4, 7), (4,)],
                     ["input", "weight", "bias"], bad_ranks=(0, 3)),
    # Samples from one stream (an explicit generator): the reference is the same call on contiguous copies.
    "rbm_sample (samples)": Op(
        lambda x, w, b: F.rbm_sample(x, w, b, "gaussian", generator=torch.Generator(x.device.type).manual_seed(5))[1],
        lambda x, w, b: F.rbm_sample(x.contiguous(), w.contiguous(), b, "gaussian",
                                     generator=torch.Generator(x.device.type).manual_seed(5))[1],
        [(5, 7), (4, 7), (4,)], ["input", "weight", "bias"], bad_ranks=(0, 3), differentiable=False),
    "rbm_sample_units": Op(lambda a: F.rbm_sample_units(a, sample=False)[0], torch.sigmoid, [(3, 6, 5, 4)],
                           ["total_input"], bad_ranks=()),
    "lstm_layer": Op(lambda x, h, c, w_ih, w_hh, b: F.lstm_layer(x, (h, c), w_ih, w_hh, b, b)[0],
                     lambda x, h, c, w_ih, w_hh, b: torch_lstm(x, h, c, w_ih, w_hh, b),
                     [(4, 3, 5), (3, 6), (3, 6), (24, 5), (24, 6), (24,)], ["input", "h0", "c0", "w_ih", "w_hh", "b"],
                     bad_ranks=(2, 4)),
}


def make(op: Op, device: str, batch: int = None, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    tensors = []
    for i, shape in enumerate(op.shapes):
        if i == 0 and batch is not None:
            shape = (batch, *shape[1:])
        tensors.append(torch.randn(shape, generator=gen, dtype=torch.float64).mul(3).to(device=device, dtype=dtype))
    return tensors


LAYOUTS = {
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t,
    "transposed": lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() >= 2 else t,
    "sliced": lambda t: torch.cat([t, t], dim=-1)[..., ::2] if t.dim() >= 2 else t,
}


def outputs_and_grads(fn, tensors, differentiable):
    leaves = [t.detach().clone().requires_grad_(differentiable) for t in tensors]
    # The layouts are applied after clone (which keeps strides): the op sees them as given.
    out = fn(*leaves)
    grads = []
    if differentiable and out.numel():
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape))
        grads = [leaf.grad for leaf in leaves]
    return out.detach(), grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(OPS))
def test_every_layout_gives_the_reference(name, layout, device):
    op = OPS[name]
    tensors = [LAYOUTS[layout](t) for t in make(op, device)]
    ours, our_grads = outputs_and_grads(op.ours, tensors, op.differentiable)
    expected, expected_grads = outputs_and_grads(op.reference, tensors, op.differentiable)
    torch.testing.assert_close(ours, expected)
    for mine, theirs in zip(our_grads, expected_grads):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_an_empty_batch_gives_an_empty_result(name, device):
    op = OPS[name]
    tensors = make(op, device, batch=0)
    ours, our_grads = outputs_and_grads(op.ours, tensors, op.differentiable)
    expected, _ = outputs_and_grads(op.reference, tensors, op.differentiable)
    assert ours.shape == expected.shape and ours.dtype == expected.dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_of", [0, 1, 2])
@pytest.mark.parametrize("name", ["conv2d", "conv_relu_pool2d", "rbm_sample"])
def test_any_one_argument_requiring_grad(name, grad_of, device):
    op = OPS[name]
    tensors = make(op, device)
    results = []
    for fn in (op.ours, op.reference):
        leaves = [t.clone().requires_grad_(i == grad_of) for i, t in enumerate(tensors)]
        fn(*leaves).sum().backward()
        results.append([leaf.grad for leaf in leaves])
    for mine, theirs in zip(*results):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            torch.testing.assert_close(mine, theirs)


BAD_DTYPES = [torch.int32, torch.int64, torch.bool, torch.complex64]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
@pytest.mark.parametrize("name", list(OPS))
def test_a_wrong_dtype_is_named(name, dtype, device):
    op = OPS[name]
    for position, arg_name in enumerate(op.names):
        tensors = make(op, device, dtype=torch.float32)
        tensors[position] = tensors[position].to(dtype)
        with pytest.raises((RuntimeError, ValueError, TypeError), match=arg_name):
            op.ours(*tensors)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [name for name, op in OPS.items() if op.bad_ranks])
def test_a_wrong_rank_is_named(name, device):
    op = OPS[name]
    for rank in op.bad_ranks:
        tensors = make(op, device, dtype=torch.float32)
        tensors[0] = torch.zeros((3,) * rank, device=device)
        with pytest.raises((RuntimeError, ValueError, TypeError), match=op.names[0]):
            op.ours(*tensors)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes_are_named(device):
    x, w, b = make(OPS["conv2d"], device, dtype=torch.float32)
    for args, name in (((x.double(), w, b), "weight|input"), ((x, w.double(), b), "weight"),
                       ((x, w, b.double()), "bias")):
        for fn in (OPS["conv2d"].ours, OPS["conv_relu_pool2d"].ours):
            with pytest.raises((RuntimeError, ValueError), match=name):
                fn(*args)


def test_in_place_rounding_of_aliasing_views():
    base = torch.randn(6, 8, dtype=torch.float64) * 5
    expected = fixed_point_reference(base)
    a, b = base[:3], base[3:]  # two views of one storage, rounded one after the other
    F.fixed_point_quantize_(a, 8, 4, "nearest")
    F.fixed_point_quantize_(b.t(), 8, 4, "nearest")
    assert torch.equal(base, expected)
