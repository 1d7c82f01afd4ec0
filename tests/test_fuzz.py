"""Fuzzing against the references (issue 11): hypothesis draws shapes, strides and arguments and
each op's values and gradients must match PyTorch's (float64), or both must refuse the
arguments. 200 examples per op by default (derandomized: CI sees the same ones every run);
FASTNETS_FUZZ=N draws N fresh random examples per op instead."""
import os

import pytest
import torch
import torch.nn.functional as torch_F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastnets.functional as F  # noqa: E402
from fastnets import random as frandom  # noqa: E402

EXAMPLES = int(os.environ.get("FASTNETS_FUZZ", "0")) or 200
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="FASTNETS_FUZZ" not in os.environ,
                database=None, print_blob=True)


def values(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def layout(t, kind):
    """The same values as given, transposed in memory, or strided (every other element of a
    wider tensor); differentiable, so a leaf's gradient flows back through it."""
    if kind == 1 and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == 2 and t.dim() >= 1:
        return torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]
    return t


def same_results(ours, reference, tensors, kind=0, compare_grads=lambda expected: True):
    """Both refuse the arguments (RuntimeError/ValueError), or values and gradients agree. The
    first tensor reaches the ops in layout ``kind``."""
    leaves = [[t.detach().clone().requires_grad_() for t in tensors] for _ in range(2)]
    arguments = [[layout(ts[0], kind), *ts[1:]] for ts in leaves]
    try:
        expected = reference(*arguments[1])
    except (RuntimeError, ValueError):
        with pytest.raises((RuntimeError, ValueError)):
            ours(*arguments[0])
        return
    out = ours(*arguments[0])
    torch.testing.assert_close(out, expected)
    if out.numel() and compare_grads(expected):
        grad = values(out.shape, 99)
        out.backward(grad)
        expected.backward(grad)
        for mine, theirs in zip(leaves[0], leaves[1]):
            torch.testing.assert_close(mine.grad, theirs.grad)


@FUZZ
@given(n=st.integers(1, 3), groups=st.integers(1, 3),
       per_group_in=st.integers(1, 3) | st.integers(16, 37), per_group_out=st.integers(1, 3) | st.integers(5, 20),
       h=st.integers(1, 11), w=st.integers(1, 11), kh=st.integers(1, 4),
       kw=st.integers(1, 4), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), bias=st.booleans(), kind=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_conv2d(n, groups, per_group_in, per_group_out, h, w, kh, kw, stride, padding, dilation, bias, kind, seed):
    """A few channels a group, or many (grad_weight by channels, with partial tiles)."""
    x = values((n, groups * per_group_in, h, w), seed)
    weight = values((groups * per_group_out, per_group_in, kh, kw), seed + 1)
    tensors = [x, weight] + ([values((groups * per_group_out,), seed + 2)] if bias else [])
    arguments = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def call(conv):
        return lambda x, weight, *b: conv(x, weight, b[0] if b else None, **arguments)

    same_results(call(F.conv2d), call(torch_F.conv2d), tensors, kind)


@FUZZ
@given(n=st.integers(1, 2), c=st.integers(1, 4) | st.integers(16, 20), h=st.integers(2, 12), w=st.integers(2, 12),
       k=st.integers(1, 3),
       pool=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pool_stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), padding=st.integers(0, 1), kind=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_conv_relu_pool2d(n, c, h, w, k, pool, pool_stride, padding, kind, seed):
    """16+ channels and a pool of several outputs per window: the CPU's weight gradient by winners."""
    tensors = [values((n, c, h, w), seed), values((3, c, k, k), seed + 1), values((3,), seed + 2)]
    conv_h, conv_w = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    assume(conv_h >= pool[0] and conv_w >= pool[1])  # the fused layer has no padding or ceil mode to pool less

    def ours(x, weight, bias):
        return F.conv_relu_pool2d(x, weight, bias, 1, padding, 1, 1, pool, pool_stride)

    def reference(x, weight, bias):
        return torch_F.max_pool2d(torch_F.relu(torch_F.conv2d(x, weight, bias, padding=padding)), pool, pool_stride)

    same_results(ours, reference, tensors, kind)


@FUZZ
@given(n=st.integers(0, 2), c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12),
       kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)), stride=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), ceil_mode=st.booleans(), unbatched=st.booleans(),
       kind=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_max_pool2d(n, c, h, w, kernel, stride, padding, dilation, ceil_mode, unbatched, kind, seed):
    x = values((c, h, w) if unbatched else (n, c, h, w), seed)
    arguments = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    # A window wholly in the padding gives -inf; PyTorch then sends its gradient to an element
    # outside the window, fastnets nowhere (see test_max_pool.py): gradients compared without such windows.
    same_results(lambda t: F.max_pool2d(t, **arguments), lambda t: torch_F.max_pool2d(t, **arguments), [x], kind,
                 compare_grads=lambda expected: bool(torch.isfinite(expected).all()))


@FUZZ
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), pieces=st.integers(1, 4), dim=st.integers(-4, 3),
       kind=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_maxout(shape, pieces, dim, kind, seed):
    assume(-len(shape) <= dim < len(shape))
    shape[dim] *= pieces
    x = values(shape, seed)

    def reference(t):  # max's first index takes a tie's gradient, as fastnets' winner does
        d = dim % t.dim()
        return t.unflatten(d, (t.size(d) // pieces, pieces)).max(d + 1).values

    same_results(lambda t: F.maxout(t, pieces, dim), reference, [x], kind)


@FUZZ
# Up to 1,331 elements: past the CPU's SIMD groups (256 words on AVX-512) and chunk ends.
@given(shape=st.lists(st.integers(0, 11), min_size=0, max_size=3), wl=st.integers(2, 24), fl=st.integers(-4, 20),
       clamp=st.booleans(), symmetric=st.booleans(), scale=st.sampled_from([1e-3, 1.0, 1e3]), kind=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_fixed_point_quantize_nearest(shape, wl, fl, clamp, symmetric, scale, kind, seed):
    x = layout(values(shape, seed) * scale, kind)
    low = -(2 ** (wl - 1)) + (1 if symmetric else 0)
    high = 2 ** (wl - 1) - 1
    code = torch.round(x * 2.0**fl)
    expected = (code.clamp(low, high) if clamp else code) * 2.0**-fl
    out = F.fixed_point_quantize(x, wl, fl, "nearest", clamp, symmetric)
    assert torch.equal(out, expected)
    in_place = x.clone()
    F.fixed_point_quantize_(in_place, wl, fl, "nearest", clamp, symmetric)
    assert torch.equal(in_place, expected)


@FUZZ
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=4), p=st.floats(0, 1), kind=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_dropout_is_its_stream(shape, p, kind, seed):
    """Forward and backward equal x * mask / (1 - p) for the mask of the call's Philox stream,
    read in row-major order whatever the layout."""
    x = values(shape, seed)
    out, seed_offset = torch.ops.fastnets.dropout(layout(x, kind), p, None)
    mask = frandom.dropout_mask(x.shape, p, *frandom.unpack_seed_offset(seed_offset))
    multiplier = torch.where(mask, torch.tensor(1.0 / (1.0 - p) if p < 1 else 0.0, dtype=torch.float64), 0.0)
    assert torch.equal(out, x * multiplier)
    grad = values(shape, seed + 1)
    back = torch.ops.fastnets.dropout_backward(layout(grad, kind), seed_offset, p)
    assert torch.equal(back, grad * multiplier)


@FUZZ
# Up to 1,331 elements: past the CPU's SIMD groups (256 words on AVX-512) and chunk ends.
@given(shape=st.lists(st.integers(0, 11), min_size=0, max_size=3), wl=st.integers(2, 24), fl=st.integers(-4, 20),
       symmetric=st.booleans(), scale=st.sampled_from([1e-3, 1.0, 1e3]), kind=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_stochastic_rounding_is_its_stream(shape, wl, fl, symmetric, scale, kind, seed):
    """Round up iff the element's Philox word * 2^-32 < the fraction left, then saturate: exact
    in float64, in row-major order whatever the layout (the in-place op draws the same)."""
    x = values(shape, seed) * scale
    scaled = x * 2.0**fl
    down = torch.floor(scaled)

    def expected(seed_offset):
        words = frandom.philox_bits(x.shape, *frandom.unpack_seed_offset(seed_offset)).double()
        code = down + (words < torch.ceil(scaled * 2.0**32) - down * 2.0**32).double()
        return code.clamp(-(2 ** (wl - 1)) + (1 if symmetric else 0), 2 ** (wl - 1) - 1) * 2.0**-fl

    out, seed_offset = torch.ops.fastnets.fixed_point_quantize(layout(x, kind), wl, fl, "stochastic", True,
                                                               symmetric, None)
    assert torch.equal(out, expected(seed_offset))
    in_place = layout(x.clone(), kind)
    seed_offset = torch.ops.fastnets.fixed_point_quantize_(in_place, wl, fl, "stochastic", True, symmetric, None)
    assert torch.equal(in_place, expected(seed_offset))


@FUZZ
@given(n=st.integers(1, 3), c=st.integers(1, 20), k=st.integers(1, 20), h=st.integers(1, 13), w=st.integers(1, 19),
       kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)), stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       padding=st.tuples(st.integers(0, 3), st.integers(0, 3)), fused=st.booleans(), kind=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_float32_convolutions_on_odd_tiles(n, c, k, h, w, kernel, stride, padding, fused, kind, seed):
    """The float32 kernels (their own SIMD tiles and edges, not float64's) against a float64
    reference: indexing at a tile's edge would be off by O(1), rounding is within 1e-4."""
    x, weight, bias = values((n, c, h, w), seed), values((k, c, *kernel), seed + 1), values((k,), seed + 2)
    out_h, out_w = [(size + 2 * pad - kern) // step + 1 for size, pad, kern, step in
                    zip((h, w), padding, kernel, stride)]
    assume(out_h >= 1 and out_w >= 1 and (not fused or (out_h >= 2 and out_w >= 2)))

    def run(conv, pool, t, wt, b):
        out = conv(t, wt, b, stride, padding)
        return pool(torch_F.relu(out), 2) if pool else out

    if fused:
        ours = F.conv_relu_pool2d(layout(x.float(), kind), weight.float(), bias.float(), stride, padding)
        expected = run(torch_F.conv2d, torch_F.max_pool2d, x, weight, bias)
    else:
        ours = F.conv2d(layout(x.float(), kind), weight.float(), bias.float(), stride, padding)
        expected = run(torch_F.conv2d, None, x, weight, bias)
    torch.testing.assert_close(ours, expected.float(), rtol=1e-4, atol=1e-4)


@FUZZ
@given(batch=st.integers(0, 9), n_in=st.integers(0, 40), n_out=st.integers(0, 40), bias=st.booleans(),
       unit=st.sampled_from(["bernoulli", "gaussian"]), scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]),
       kind=st.integers(0, 2), seed=st.integers(0, 2**31 - 1))
def test_rbm_sample_means_and_stream(batch, n_in, n_out, bias, unit, scale, kind, seed):
    x, w = values((batch, n_in), seed) * scale, values((n_out, n_in), seed + 1)
    b = values((n_out,), seed + 2) if bias else None
    tensors = [x, w] + ([b] if bias else [])

    def ours(x, w, b=None):
        return F.rbm_sample(x, w, b, unit, sample=False)[0]

    def reference(x, w, b=None):
        total = torch_F.linear(x, w, b)
        return torch.sigmoid(total) if unit == "bernoulli" else total

    same_results(ours, reference, tensors, kind)
    # the samples: Bernoulli exactly from the stream, Gaussian to rounding
    mean, sample, seed_offset = torch.ops.fastnets.rbm_sample(layout(x, kind), w, b, unit)
    stream = frandom.unpack_seed_offset(seed_offset)
    if unit == "bernoulli":
        assert torch.equal(sample, frandom.rbm_bernoulli(mean, *stream))
    else:
        torch.testing.assert_close(sample, mean + frandom.rbm_normal(mean.shape, *stream), rtol=1e-13, atol=1e-13)


@FUZZ
@given(steps=st.integers(1, 6), batch=st.integers(1, 5), n_in=st.integers(1, 9), hidden=st.integers(1, 9),
       bias=st.booleans(), reverse=st.booleans(), kind=st.integers(0, 2), seed=st.integers(0, 2**31 - 1))
def test_lstm_layer(steps, batch, n_in, hidden, bias, reverse, kind, seed):
    """Output, final states and every gradient against torch.lstm (a reversed layer: on the
    time-flipped sequence)."""
    x, h0, c0 = values((steps, batch, n_in), seed), values((batch, hidden), seed + 1), values((batch, hidden), seed + 2)
    w_ih, w_hh = values((4 * hidden, n_in), seed + 3) / 2, values((4 * hidden, hidden), seed + 4) / 2
    b_ih, b_hh = values((4 * hidden,), seed + 5), values((4 * hidden,), seed + 6)
    tensors = [x, h0, c0, w_ih, w_hh] + ([b_ih, b_hh] if bias else [])

    def ours(x, h0, c0, w_ih, w_hh, *biases):
        output, (h_n, c_n) = F.lstm_layer(x, (h0, c0), w_ih, w_hh, *(biases or (None, None)), reverse=reverse)
        return torch.cat([output.flatten(), h_n.flatten(), c_n.flatten()])

    def reference(x, h0, c0, w_ih, w_hh, *biases):
        sequence = x.flip(0) if reverse else x
        output, h_n, c_n = torch.lstm(sequence, (h0[None], c0[None]), [w_ih, w_hh, *biases], bias, 1, 0.0, False,
                                      False, False)
        output = output.flip(0) if reverse else output
        return torch.cat([output.flatten(), h_n.flatten(), c_n.flatten()])

    same_results(ours, reference, tensors, kind)


@FUZZ
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5), n_in=st.integers(1, 6),
       hidden=st.integers(1, 6), bias=st.booleans(), reverse=st.booleans(), kind=st.integers(0, 2),
       seed=st.integers(0, 2**31 - 1))
def test_lstm_layer_packed(lengths, n_in, hidden, bias, reverse, kind, seed):
    """Packed sequences (a PackedSequence's data and batch_sizes) against torch.lstm's packed
    form: output, final states and every gradient (a reversed layer: the second direction of a
    bidirectional one with the same weights)."""
    lengths = sorted(lengths, reverse=True)
    batch_sizes = torch.tensor([sum(length > t for length in lengths) for t in range(lengths[0])])
    batch = len(lengths)
    x = values((sum(lengths), n_in), seed)
    h0, c0 = values((batch, hidden), seed + 1), values((batch, hidden), seed + 2)
    w_ih, w_hh = values((4 * hidden, n_in), seed + 3) / 2, values((4 * hidden, hidden), seed + 4) / 2
    b_ih, b_hh = values((4 * hidden,), seed + 5), values((4 * hidden,), seed + 6)
    tensors = [x, h0, c0, w_ih, w_hh] + ([b_ih, b_hh] if bias else [])

    def ours(x, h0, c0, w_ih, w_hh, *biases):
        output, (h_n, c_n) = F.lstm_layer(x, (h0, c0), w_ih, w_hh, *(biases or (None, None)), reverse=reverse,
                                          batch_sizes=batch_sizes)
        return torch.cat([output.flatten(), h_n.flatten(), c_n.flatten()])

    def reference(x, h0, c0, w_ih, w_hh, *biases):
        directions = 2 if reverse else 1
        states = (h0[None].expand(directions, -1, -1), c0[None].expand(directions, -1, -1))
        output, h_n, c_n = torch.lstm(x, batch_sizes, states, [w_ih, w_hh, *biases] * directions, bias, 1, 0.0,
                                      False, reverse)
        return torch.cat([output[:, -hidden:].flatten(), h_n[-1].flatten(), c_n[-1].flatten()])

    same_results(ours, reference, tensors, kind)


@FUZZ
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=3), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       dampening=st.sampled_from([0.0, 0.3]), weight_decay=st.sampled_from([0.0, 1e-3, 0.1]),
       nesterov=st.booleans(), maximize=st.booleans(), lr=st.sampled_from([0.0, 1e-3, 0.1, 2.5]),
       fmt=st.sampled_from([None, (16, 14), (8, 4), (6, -1), (30, 20)]), steps=st.integers(1, 3),
       kind=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_fixed_point_sgd_step(shape, momentum, dampening, weight_decay, nesterov, maximize, lr, fmt, steps, kind, seed):
    """fixed_point_sgd_ (through FixedPointSGD) against torch.optim.SGD's step with each
    round-to-nearest done as in the formula: bit for bit in float64, on any layout of the
    gradient, or both refuse the options."""
    from fastnets.quant import FixedPoint, FixedPointSGD

    def rounded(t):
        if fmt is None:
            return t
        wl, fl = fmt
        return torch.round(t * 2.0**fl).clamp(-(2 ** (wl - 1)), 2 ** (wl - 1) - 1) * 2.0**-fl

    options = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                   maximize=maximize)
    ours = torch.nn.Parameter(layout(values(shape, seed), (kind + 1) % 3))
    theirs = torch.nn.Parameter(values(shape, seed))
    try:
        reference = torch.optim.SGD([theirs], **options)
    except ValueError:
        with pytest.raises(ValueError):
            FixedPointSGD([ours], **options)
        return
    format = None if fmt is None else FixedPoint(*fmt, "nearest")
    optimizer = FixedPointSGD([ours], **options, weight=format, grad=format, state=format)
    for step in range(steps):
        grad = values(shape, seed + 1 + step)
        ours.grad = layout(grad.clone(), kind)
        theirs.grad = rounded(grad)
        optimizer.step()
        reference.step()
        with torch.no_grad():
            theirs.copy_(rounded(theirs))
            if momentum:
                buffer = reference.state[theirs]["momentum_buffer"]
                buffer.copy_(rounded(buffer))
        assert torch.equal(ours.detach(), theirs.detach())
        assert torch.equal(ours.grad, theirs.grad)
        if momentum:
            assert torch.equal(optimizer.state[ours]["momentum_buffer"], reference.state[theirs]["momentum_buffer"])


@FUZZ
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=3), wl=st.integers(2, 24), fl=st.integers(-4, 20),
       kind=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_fixed_point_quantize_masked(shape, wl, fl, kind, seed):
    """The rounding where the mask holds and +0 elsewhere, on any layout of input and mask."""
    x = values(shape, seed) * 2.0 ** (wl - 1 - fl)
    mask = values(shape, seed + 1) > 0
    code = torch.round(x * 2.0**fl).clamp(-(2 ** (wl - 1)), 2 ** (wl - 1) - 1)
    expected = torch.where(mask, code * 2.0**-fl, torch.zeros((), dtype=torch.float64))
    out, _ = torch.ops.fastnets.fixed_point_quantize_masked(layout(x, kind), layout(mask, kind), wl, fl, "nearest",
                                                            True, False, None)
    assert torch.equal(out, expected) and not torch.signbit(out[~mask]).any()


@FUZZ
@given(m=st.integers(0, 70) | st.integers(500, 560), k=st.integers(0, 40) | st.integers(505, 530),
       n=st.integers(0, 70), kind_a=st.integers(0, 2), kind_b=st.integers(0, 2), seed=st.integers(0, 2**31 - 1))
def test_matmul(m, k, n, kind_a, kind_b, seed):
    """fastnets' CPU GEMM (the LSTM layer's) against the float64 product: both operands in any
    layout (a contiguous B with whole panels is read in place, others are packed), tall A (row
    chunks) and depths past one depth block; float32 within the error bound of a sum of k
    products, gamma_(k+1) |A| |B|, rather than within 3x torch.mm's error: on one column of depth
    505 (a matrix-vector product for torch.mm) its error was 5.7 times smaller than ours."""
    a, b = values((m, k), seed), values((k, n), seed + 1)
    torch.testing.assert_close(torch.ops.fastnets.matmul(layout(a, kind_a), layout(b, kind_b)), a @ b,
                               rtol=1e-12, atol=1e-11)
    a32, b32 = a.float(), b.float()
    exact = a32.double() @ b32.double()
    unit = (k + 1) * 2.0**-24
    bound = unit / (1 - unit) * (a32.double().abs() @ b32.double().abs())
    ours = torch.ops.fastnets.matmul(layout(a32, kind_a), layout(b32, kind_b)).double()
    assert ((ours - exact).abs() <= bound).all()
