"""Convolution and the fused Conv-ReLU-Pool layer: values and gradients against
torch.nn.functional (float64 tight, lower precisions against PyTorch's own error), gradcheck,
opcheck, torch.compile, threads, errors, the modules and the fusing helper."""
import pytest
import torch
import torch.nn.functional as torch_F
from torch import nn

import fastnets.functional as F
import fastnets.nn as fnn
from harness import (DEVICES, TRAINING_DTYPES, assert_close_to_reference, check_compiles, check_opcheck,
                     check_same_for_threads, cuda_only)

ops = torch.ops.fastnets

# (N, C, H, W, out_channels, kernel, stride, padding, dilation, groups): odd sizes, every argument.
GEOMETRIES = [
    (2, 3, 9, 11, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (3, 4, 10, 7, 6, (3, 2), (2, 1), (0, 1), (1, 2), 2),
    (1, 1, 5, 5, 3, (5, 5), (1, 1), (0, 0), (1, 1), 1),
    (2, 6, 13, 13, 9, (4, 4), (3, 2), (2, 1), (2, 1), 3),
    (2, 8, 6, 6, 8, (3, 3), (1, 1), (1, 1), (1, 1), 8),  # depthwise
    (3, 5, 12, 12, 17, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (2, 32, 14, 14, 64, (5, 5), (1, 1), (2, 2), (1, 1), 1),  # the MNIST CNN's conv2
    (1, 2, 3, 30, 5, (2, 7), (1, 3), (1, 3), (1, 1), 1),
    (2, 4, 9, 10, 6, (3, 2), (1, 1), (2, 1), (2, 3), 2),  # stride 1 with dilation and groups
    (1, 3, 5, 6, 2, (1, 1), (1, 1), (2, 1), (1, 1), 1),  # padding wider than the kernel
    # wide padding, many channels per group: forward and grad_input by output positions (partial
    # tiles of positions and of channels, float32 and float64), like the MNIST CNN's conv2
    (2, 40, 9, 11, 40, (3, 7), (1, 1), (2, 6), (2, 2), 2),
    # the same with kernel rows skipped where they read only padding rows: (4, 6) in part (grad_input
    # by positions too), (6, 6) whole output rows that read no input row (their tiles sum nothing)
    (2, 40, 9, 11, 40, (3, 7), (1, 1), (4, 6), (2, 2), 2),
    (2, 40, 9, 11, 40, (3, 7), (1, 1), (6, 6), (2, 2), 2),
    # by positions with output rows wider than a tile (runs of 10, 10 and 9 positions)
    (1, 32, 4, 29, 32, (5, 5), (1, 1), (2, 2), (1, 1), 1),
    # by positions with output rows narrower than 8 (runs of 5) and a partial tile of channels
    (2, 32, 6, 5, 24, (5, 5), (1, 1), (2, 2), (1, 1), 1),
    # by positions with column stride 2 (grad_input by col2im): square, with dilation, groups and
    # uneven padding, and with row stride 3
    (2, 32, 14, 14, 64, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    (2, 40, 11, 12, 64, (3, 3), (1, 2), (2, 1), (2, 1), 2),
    (2, 48, 13, 31, 64, (3, 5), (3, 2), (1, 2), (1, 2), 2),
    # grad_weight by input channels with partial tiles of input channels (37 and 21: not a multiple
    # of any instruction set's vector, float32 or float64) and of output channels, strided and
    # dilated, and with groups (18 channels a group)
    (2, 37, 7, 9, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 21, 9, 8, 6, (3, 2), (2, 1), (1, 1), (2, 1), 1),
    (2, 36, 7, 9, 12, (3, 3), (2, 1), (1, 1), (1, 2), 2),
]


def make(geometry, dtype=torch.float64, device="cpu", seed=0):
    n, c, h, w, k, kernel, _, _, _, groups = geometry
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(k, c // groups, *kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(k, generator=gen, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (x, weight, bias)]


def arguments(geometry):
    return geometry[6], geometry[7], geometry[8], geometry[9]


def grads_of(fn, *tensors, grad_output=None):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(grad_output if grad_output is not None else torch.ones_like(out))
    return out.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_matches_pytorch_float64(device, geometry, with_bias):
    x, weight, bias = make(geometry, device=device)
    stride, padding, dilation, groups = arguments(geometry)
    tensors = (x, weight, bias) if with_bias else (x, weight)
    expected = torch_F.conv2d(x, weight, bias if with_bias else None, stride, padding, dilation, groups)
    grad = torch.randn_like(expected)
    out, grads = grads_of(lambda *t: F.conv2d(*t, stride=stride, padding=padding, dilation=dilation, groups=groups),
                          *tensors, grad_output=grad)
    ref_out, ref_grads = grads_of(lambda *t: torch_F.conv2d(*t, stride=stride, padding=padding, dilation=dilation,
                                                            groups=groups), *tensors, grad_output=grad)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("geometry", [GEOMETRIES[i] for i in (0, 1, 6, 10, 13, 18)])
def test_conv2d_lower_precision_within_pytorch_error(device, dtype, geometry):
    x, weight, bias = make(geometry, device=device)
    stride, padding, dilation, groups = arguments(geometry)
    grad = torch.randn(torch_F.conv2d(x, weight, bias, stride, padding, dilation, groups).shape, device=device,
                       dtype=torch.float64)
    run = lambda fn, *t: grads_of(lambda *u: fn(*u, stride=stride, padding=padding, dilation=dilation,  # noqa: E731
                                                groups=groups), *t, grad_output=grad.to(t[0].dtype))
    low = [t.to(dtype) for t in (x, weight, bias)]
    with tf32(False):  # float32 in full precision on both sides (TF32: the next test)
        out, grads = run(F.conv2d, *low)
        baseline, baseline_grads = run(torch_F.conv2d, *low)
    reference, reference_grads = run(torch_F.conv2d, *[t.to(dtype).double() for t in (x, weight, bias)])
    assert out.dtype == dtype
    assert_close_to_reference(out, reference, baseline=baseline)
    for ours, exact, theirs in zip(grads, reference_grads, baseline_grads):
        assert_close_to_reference(ours, exact, baseline=theirs)


def tf32(enabled: bool):
    """torch.backends.cudnn.allow_tf32 (on by default), which the CUDA float32 convolutions follow,
    set for a block and restored after it."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=enabled)


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[1], GEOMETRIES[6]])
def test_conv2d_tf32_within_its_rounding_bound(geometry):
    """With TF32 on, the float32 inner products round their factors to 10 mantissa bits: each
    output (and gradient) may err by about 2**-10 of the sum of its products' magnitudes."""
    x, weight, bias = make(geometry, device="cuda")
    stride, padding, dilation, groups = arguments(geometry)
    grad = torch.randn(torch_F.conv2d(x, weight, bias, stride, padding, dilation, groups).shape, device="cuda",
                       dtype=torch.float64)
    run = lambda fn, g, *t: grads_of(lambda *u: fn(*u, stride=stride, padding=padding,  # noqa: E731
                                                   dilation=dilation, groups=groups), *t, grad_output=g)
    low = [t.float() for t in (x, weight, bias)]
    with tf32(True):
        out, grads = run(F.conv2d, grad.float(), *low)
    reference, reference_grads = run(torch_F.conv2d, grad, *[t.double() for t in low])
    # The same sums over the magnitudes of their terms.
    magnitude, magnitude_grads = run(torch_F.conv2d, grad.abs(), *[t.double().abs() for t in low])
    for ours, exact, size in zip([out, *grads], [reference, *reference_grads], [magnitude, *magnitude_grads]):
        error = (ours.double() - exact).abs()
        assert (error <= 2**-9 * size + 1e-6).all(), f"TF32 error {error.max().item():.3g} beyond its bound"


def three_ops(x, weight, bias, stride, padding, dilation, groups, pool_kernel, pool_stride):
    conv = torch_F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return torch_F.max_pool2d(torch_F.relu(conv), pool_kernel, pool_stride)


POOLS = [((2, 2), None), ((3, 3), (2, 2)), ((2, 3), (1, 2)), ((1, 1), (1, 1)), ((3, 2), (3, 2))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("geometry", [GEOMETRIES[i] for i in (0, 1, 3, 6, 8, 9, 10, 15, 16)])
@pytest.mark.parametrize("pool_kernel,pool_stride", POOLS)
def test_fused_matches_three_ops_float64(device, geometry, pool_kernel, pool_stride):
    x, weight, bias = make(geometry, device=device)
    stride, padding, dilation, groups = arguments(geometry)
    conv_shape = torch_F.conv2d(x, weight, None, stride, padding, dilation, groups).shape
    if conv_shape[2] < pool_kernel[0] or conv_shape[3] < pool_kernel[1]:
        pytest.skip("pooling window larger than the convolution output")
    pool_args = (pool_kernel, pool_stride if pool_stride is not None else pool_kernel)
    expected = three_ops(x, weight, bias, stride, padding, dilation, groups, *pool_args)
    grad = torch.randn_like(expected)
    out, grads = grads_of(lambda *t: F.conv_relu_pool2d(*t, stride, padding, dilation, groups, pool_kernel,
                                                        pool_stride), x, weight, bias, grad_output=grad)
    ref_out, ref_grads = grads_of(lambda *t: three_ops(*t, stride, padding, dilation, groups, *pool_args),
                                  x, weight, bias, grad_output=grad)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-11)


# The CPU's weight and bias gradients by the pool's winners (16+ input channels per group, a pool
# of several outputs per window): stride, dilation, groups, a channel count with a scalar tail,
# overlapping windows.
WINNER_CASES = [
    ((2, 16, 11, 13, 8, (3, 3), (2, 1), (1, 2), (1, 2), 1), (2, 2), None),
    ((3, 36, 9, 8, 4, (2, 3), (1, 2), (1, 1), (2, 1), 2), (3, 2), (2, 1)),
    ((2, 32, 14, 14, 64, (5, 5), (1, 1), (2, 2), (1, 1), 1), (3, 3), (2, 2)),
]


@pytest.mark.parametrize("geometry,pool_kernel,pool_stride", WINNER_CASES)
@pytest.mark.parametrize("needs", [(True, True, True), (False, True, True), (True, False, True), (False, True, False),
                                   (True, False, False)])
def test_fused_weight_gradient_by_winners(geometry, pool_kernel, pool_stride, needs):
    """Every combination of the gradients asked for: float64 against the three ops; float32,
    float16 and bfloat16 within twice PyTorch's error in that dtype; an empty batch gives the
    three ops' (zero) gradients."""
    x, weight, bias = make(geometry)
    stride, padding, dilation, groups = arguments(geometry)
    pool_args = (pool_kernel, pool_stride if pool_stride is not None else pool_kernel)

    def fused(*t):
        return F.conv_relu_pool2d(*t, stride, padding, dilation, groups, pool_kernel, pool_stride)

    def reference(*t):
        return three_ops(*t, stride, padding, dilation, groups, *pool_args)

    def grads(fn, dtype, batch=None):
        values = [x[:batch], weight, bias]
        leaves = [t.detach().to(dtype).clone().requires_grad_(need) for t, need in zip(values, needs)]
        out = fn(*leaves)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape))
        return [leaf.grad for leaf in leaves]

    exact = grads(reference, torch.float64)
    assert [g is None for g in exact] == [not need for need in needs]
    for ours, expected in zip(grads(fused, torch.float64), exact):
        assert (ours is None) == (expected is None)
        if ours is not None:
            torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-11)
    for ours, baseline, expected in zip(grads(fused, torch.float32), grads(reference, torch.float32), exact):
        if ours is not None:
            assert_close_to_reference(ours, expected, baseline)
    for dtype in (torch.float16, torch.bfloat16):
        for ours, baseline, expected in zip(grads(fused, dtype), grads(reference, dtype), exact):
            if ours is not None:
                assert_close_to_reference(ours, expected, baseline)
    for ours, expected in zip(grads(fused, torch.float64, batch=0), grads(reference, torch.float64, batch=0)):
        if ours is not None:
            assert ours.shape == expected.shape and torch.equal(ours, expected)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weight_or_gradient_with_nan_or_inf_spreads_as_in_pytorch(bad):
    """The CPU GEMMs by output positions (and grad_weight) skip the products with the zero padding,
    zeros only for finite factors: an inf or NaN weight (grad_output for the
    weight gradient) must still make NaN of the outputs (weight gradients) whose dense sums take
    0 x it, as torch's float64 convolution does: the MNIST conv2 shape, which goes by positions."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 14, 14, generator=gen, dtype=torch.float64)
    weight = torch.randn(64, 32, 5, 5, generator=gen, dtype=torch.float64)
    grad_output = torch.randn(2, 64, 14, 14, generator=gen, dtype=torch.float64)
    weight[0, 0, 0, 2] = bad  # kernel row 0: reads only padding for output rows 0 and 1
    grad_output[1, 0, 0, 5] = bad  # output row 0: taken by kernel rows 0 and 1 at padding rows
    expected = torch_F.conv2d(x, weight, padding=2)
    assert expected[0, 0, :2].isnan().all()
    torch.testing.assert_close(F.conv2d(x, weight, padding=2), expected, equal_nan=True)
    pooled = torch_F.max_pool2d(torch_F.relu(expected), 2)
    torch.testing.assert_close(F.conv_relu_pool2d(x, weight, None, padding=2), pooled, equal_nan=True)
    weight[0, 0, 0, 2] = 1.0
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    torch_F.conv2d(*leaves, padding=2).backward(grad_output)
    grad_weight = ops.conv2d_backward(grad_output, x, weight, [1, 1], [2, 2], [1, 1], 1, [False, True, False])[1]
    assert leaves[1].grad[0, :, :2].isnan().all()
    torch.testing.assert_close(grad_weight, leaves[1].grad, rtol=1e-12, atol=1e-11, equal_nan=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("geometry", [GEOMETRIES[6], GEOMETRIES[0]])  # grad_input by positions, by channels
def test_input_gradient_of_a_weight_with_nan_or_inf_as_in_pytorch(bad, geometry):
    """PyTorch's CPU backward forms grad_input as col2im(W^T dy): an inf or NaN weight reaches only
    the inputs it reads, never through the gradient's zero padding. The flipped convolution by
    positions leaves those products out; by channels it would form them, and gives way to col2im."""
    x, weight, _ = make(geometry)
    weight[0, 0, 0, 0] = bad
    stride, padding, dilation, groups = [list(a) if isinstance(a, tuple) else a for a in arguments(geometry)]
    out = torch_F.conv2d(x, weight, None, stride, padding, dilation, groups)
    grad_output = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = torch.ops.aten.convolution_backward(grad_output, x, weight, None, stride, padding, dilation, False,
                                                   [0, 0], groups, [True, False, False])[0]
    assert not expected.isfinite().all() and expected.isfinite().any()
    ours = ops.conv2d_backward(grad_output, x, weight, stride, padding, dilation, groups, [True, False, False])[0]
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-11, equal_nan=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("geometry", [GEOMETRIES[i] for i in (15, 16, 17)])
def test_strided_nan_or_inf_spreads_as_in_pytorch(bad, geometry):
    """Strided layers by positions (the forward) and by channels or by taps (grad_weight) leave out the products
    with the zero padding only for finite factors: with an inf or NaN weight, or gradient for
    grad_weight, every product is taken, as in torch's float64 convolution; grad_input (col2im)
    never forms them, with torch's backward alike."""
    x, weight, _ = make(geometry)
    stride, padding, dilation, groups = [list(a) if isinstance(a, tuple) else a for a in arguments(geometry)]
    weight[0, 0, 0, 0] = bad  # reads the top-left padding for the first output row and column
    expected = torch_F.conv2d(x, weight, None, stride, padding, dilation, groups)
    assert not expected.isfinite().all()
    torch.testing.assert_close(F.conv2d(x, weight, None, stride, padding, dilation, groups), expected, rtol=1e-12,
                               atol=1e-11, equal_nan=True)
    grad_output = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def both(mask, index):
        theirs = torch.ops.aten.convolution_backward(grad_output, x, weight, None, stride, padding, dilation, False,
                                                     [0, 0], groups, mask)[index]
        ours = ops.conv2d_backward(grad_output, x, weight, stride, padding, dilation, groups, mask)[index]
        assert not theirs.isfinite().all()
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-11, equal_nan=True)

    both([True, False, False], 0)
    weight[0, 0, 0, 0] = 1.0
    grad_output[1, 0, 0, 0] = bad  # output (0, 0): its taps at the top-left read padding
    both([False, True, False], 1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fused_gradients_of_an_input_with_nan_or_inf(bad):
    """Where the input holds NaN or inf, the gradients' zeros times it are NaN, in PyTorch's
    three ops as in the fused layer (which then sums the weight gradient densely)."""
    geometry, pool_kernel, pool_stride = WINNER_CASES[0]
    x, weight, bias = make(geometry)
    x[0, 3, 4, 5] = bad
    stride, padding, dilation, groups = arguments(geometry)
    out, grads = grads_of(lambda *t: F.conv_relu_pool2d(*t, stride, padding, dilation, groups, pool_kernel,
                                                        pool_stride), x, weight, bias)
    ref_out, ref_grads = grads_of(lambda *t: three_ops(*t, stride, padding, dilation, groups, pool_kernel,
                                                       pool_kernel), x, weight, bias)
    torch.testing.assert_close(out, ref_out, equal_nan=True)
    assert ref_grads[1].isnan().any()
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-11, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
def test_fused_ties_and_inactive_windows(device, dtype):
    """Negative pre-activations everywhere: relu gives ties of zeros (the first wins), every
    winner is inactive (argmax high bit) and no gradient flows; one positive value wins its window."""
    x = torch.ones(1, 1, 4, 4, device=device, dtype=dtype)
    weight = torch.ones(2, 1, 1, 1, device=device, dtype=dtype)
    bias = torch.tensor([-2.0, -2.0], device=device, dtype=dtype)
    x[0, 0, 3, 2] = 5.0
    out, argmax = ops.conv_relu_pool2d(x, weight, bias, [1, 1], [0, 0], [1, 1], 1, [2, 2], [2, 2])
    expected = torch.zeros(1, 2, 2, 2, dtype=dtype)
    expected[0, :, 1, 1] = 3.0
    assert torch.equal(out.cpu(), expected)
    codes = torch.full((1, 2, 2, 2), 0x80, dtype=torch.uint8)
    codes[0, :, 1, 1] = 2  # (i, j) = (1, 0) in the window: active
    assert torch.equal(argmax.cpu(), codes)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    F.conv_relu_pool2d(*leaves).sum().backward()
    assert leaves[2].grad.tolist() == [1.0, 1.0] and leaves[0].grad[0, 0, 3, 2].item() == 2.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_lower_precision_within_pytorch_error(device, dtype):
    geometry = GEOMETRIES[6]
    x, weight, bias = make(geometry, device=device)
    stride, padding, dilation, groups = arguments(geometry)
    low = [t.to(dtype) for t in (x, weight, bias)]
    with tf32(False):
        out = F.conv_relu_pool2d(*low, stride, padding, dilation, groups)
        baseline = three_ops(*low, stride, padding, dilation, groups, (2, 2), (2, 2))
    reference = three_ops(*[t.double() for t in low], stride, padding, dilation, groups, (2, 2), (2, 2))
    assert_close_to_reference(out, reference, baseline=baseline)


def test_gradcheck_float64():
    x, weight, bias = make((2, 4, 7, 6, 4, (3, 2), (2, 1), (1, 1), (1, 2), 2))
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    assert torch.autograd.gradcheck(lambda *t: F.conv2d(*t, stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
                                    leaves)
    x, weight, bias = make((2, 3, 8, 9, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1), seed=3)
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    assert torch.autograd.gradcheck(lambda *t: F.conv_relu_pool2d(*t, 1, 1, 1, 1, (3, 2), (2, 2)), leaves)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, weight, bias = make(GEOMETRIES[1], dtype=torch.float32, device=device)
    stride, padding, dilation, groups = [list(a) if isinstance(a, tuple) else a for a in arguments(GEOMETRIES[1])]
    for t in (x, weight, bias):
        t.requires_grad_()
    check_opcheck(ops.conv2d.default, (x, weight, bias, stride, padding, dilation, groups))
    check_opcheck(ops.conv2d.default, (x, weight, None, stride, padding, dilation, groups))
    out = ops.conv2d(x, weight, bias, stride, padding, dilation, groups)
    check_opcheck(ops.conv2d_backward.default,
                  (torch.randn_like(out), x.detach(), weight.detach(), stride, padding, dilation, groups,
                   [True, False, True]))
    pooled, argmax = ops.conv_relu_pool2d(x, weight, bias, stride, padding, dilation, groups, [2, 2], [2, 1])
    check_opcheck(ops.conv_relu_pool2d.default,
                  (x, weight, bias, stride, padding, dilation, groups, [2, 2], [2, 1]))
    check_opcheck(ops.conv_relu_pool2d_backward.default,
                  (torch.randn_like(pooled), argmax, x.detach(), weight.detach(), stride, padding, dilation, groups,
                   [2, 2], [2, 1], [True, True, True]))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    x, weight, bias = make(GEOMETRIES[0], dtype=torch.float32, device=device)
    second = torch.randn(5, 4, 2, 2, device=device)

    def step(x, weight, bias):
        return F.conv_relu_pool2d(F.conv2d(x, weight, bias, padding=1), second, padding="same")

    check_compiles(step, x, weight, bias)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    compiled = torch.compile(lambda *t: step(*t).square().sum(), fullgraph=True)
    compiled(*leaves).backward()
    expected = grads_of(lambda *t: step(*t).square().sum(), x, weight, bias)[1]
    for ours, theirs in zip([t.grad for t in leaves], expected):
        torch.testing.assert_close(ours, theirs)


def test_cpu_results_independent_of_threads():
    x, weight, bias = make(GEOMETRIES[6], dtype=torch.float32, seed=5)
    x = x.repeat(9, 1, 1, 1)  # 18 images: more than one weight-gradient chunk per thread
    for fn in (lambda *t: F.conv2d(*t, padding=2), lambda *t: F.conv_relu_pool2d(*t, padding=2)):
        def run():
            out, grads = grads_of(fn, x, weight, bias)
            return torch.cat([out.flatten()] + [g.flatten() for g in grads])
        threads = torch.get_num_threads()
        try:
            check_same_for_threads(run)
        finally:
            torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.randn(0, 3, 8, 8, device=device)
    weight, bias = torch.randn(4, 3, 3, 3, device=device), torch.randn(4, device=device)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = F.conv2d(*leaves, padding=1)
    assert out.shape == (0, 4, 8, 8)
    out.sum().backward()
    assert torch.equal(leaves[1].grad, torch.zeros_like(weight)) and torch.equal(leaves[2].grad, torch.zeros_like(bias))
    assert F.conv_relu_pool2d(x, weight, bias, padding=1).shape == (0, 4, 4, 4)


@pytest.mark.parametrize("padding", ["same", "valid", 0, (2, 1)])
@pytest.mark.parametrize("kernel", [(3, 3), (4, 2)])
def test_padding_strings_and_unbatched_input(padding, kernel):
    x, weight, bias = make((1, 3, 9, 8, 5, kernel, 1, 0, 1, 1))
    expected = torch_F.conv2d(x[0], weight, bias, padding=padding, dilation=(1, 2))
    torch.testing.assert_close(F.conv2d(x[0], weight, bias, padding=padding, dilation=(1, 2)), expected)


@pytest.mark.parametrize("call,message", [
    (lambda: F.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 2, 3, 3)), "weight must have shape"),
    (lambda: F.conv2d(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 5, 5)), "larger than the padded input"),
    (lambda: F.conv2d(torch.randn(3, 4), torch.randn(4, 3, 1, 1)), "input must be"),
    (lambda: ops.conv2d(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 1), None), "weight must be 4-D"),
    (lambda: F.conv2d(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 1, 1, dtype=torch.float64)),
     "weight must have input's dtype"),
    (lambda: F.conv2d(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 1, 1), torch.randn(3)), "bias must have shape"),
    (lambda: F.conv2d(torch.randn(1, 3, 4, 4), torch.randn(4, 1, 1, 1), groups=3), "divisible by groups"),
    (lambda: F.conv2d(torch.randn(1, 4, 4, 4), torch.randn(6, 2, 1, 1), groups=0), "groups must be at least 1"),
    (lambda: F.conv2d(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 1, 1), stride=0), "stride must be at least 1"),
    (lambda: F.conv2d(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 1, 1), padding="full"), "padding must be"),
    (lambda: F.conv2d(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 1, 1), stride=2, padding="same"), "strided"),
    (lambda: F.conv2d(torch.randint(0, 3, (1, 3, 4, 4)), torch.randint(0, 3, (4, 3, 1, 1))), "input must be float32"),
    (lambda: F.conv_relu_pool2d(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 3, 3), pool_kernel=3), "pool_kernel"),
    (lambda: F.conv_relu_pool2d(torch.randn(1, 3, 40, 40), torch.randn(4, 3, 1, 1), pool_kernel=12), "at most 128"),
    (lambda: ops.conv_relu_pool2d_backward(torch.randn(1, 4, 2, 2), torch.zeros(1, 4, 2, 2, dtype=torch.int32),
                                           torch.randn(1, 3, 4, 4), torch.randn(4, 3, 1, 1), [1, 1], [0, 0], [1, 1], 1,
                                           [2, 2], [2, 2], [True, True, True]), "argmax must be a uint8"),
    (lambda: ops.conv_relu_pool2d_backward(torch.randn(1, 4, 2, 2), torch.full((1, 4, 2, 2), 0x7F, dtype=torch.uint8),
                                           torch.randn(1, 3, 4, 4), torch.randn(4, 3, 1, 1), [1, 1], [0, 0], [1, 1], 1,
                                           [2, 2], [2, 2], [True, True, True]), "not a position"),
    (lambda: ops.conv2d_backward(torch.randn(1, 4, 3, 3), torch.randn(1, 3, 4, 4), torch.randn(4, 3, 1, 1), [1, 1],
                                 [0, 0], [1, 1], 1, [True, True, True]), "grad_output must have shape"),
])
def test_bad_input_raises_a_clear_error(call, message):
    with pytest.raises((RuntimeError, ValueError), match=message):
        call()


def test_conv2d_module_is_a_drop_in():
    torch.manual_seed(7)
    reference = nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1), groups=2)
    torch.manual_seed(7)
    ours = fnn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1), groups=2)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for a, b in zip(ours.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)  # same initialization
    x = torch.randn(3, 4, 9, 10)
    torch.testing.assert_close(ours(x), reference(x))
    for mode in ("reflect", "replicate", "circular"):
        reference = nn.Conv2d(3, 5, 3, padding="same", padding_mode=mode, bias=False)
        ours = fnn.Conv2d(3, 5, 3, padding="same", padding_mode=mode, bias=False)
        ours.load_state_dict(reference.state_dict())
        torch.testing.assert_close(ours(x[:, :3]), reference(x[:, :3]))


def test_conv_relu_pool_module_loads_a_conv2d_and_the_fusing_helper():
    model = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                          nn.Conv2d(16, 4, 1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                          nn.Flatten())
    x = torch.randn(5, 1, 28, 28)
    expected = model(x)
    state = model.state_dict()
    fnn.fuse_conv_relu_pool(model)
    assert isinstance(model[0], fnn.ConvReLUPool2d) and isinstance(model[3], fnn.ConvReLUPool2d)
    assert isinstance(model[6], nn.Conv2d) and not isinstance(model[6], fnn.ConvReLUPool2d)  # ceil_mode: kept
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(model(x), expected)
    norm = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(1, 2, 3)), nn.ReLU(), nn.MaxPool2d(2))
    assert not isinstance(fnn.fuse_conv_relu_pool(norm)[0], fnn.ConvReLUPool2d)  # parametrized: kept
    layer = fnn.ConvReLUPool2d(1, 8, 5, padding=2, pool_kernel=2)
    layer.load_state_dict(nn.Conv2d(1, 8, 5, padding=2).state_dict())
    conv = nn.Conv2d(1, 8, 5, padding=2)
    conv.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), torch_F.max_pool2d(torch.relu(conv(x)), 2))


# The index math only the CUDA kernels call, exposed by fastnets._C for these tests.
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_cuda_index_math_matches_unfold(geometry):
    from fastnets import _C
    n, c, h, w, k, kernel, stride, padding, dilation, groups = geometry
    cg = c // groups
    out_h = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    values = [cg, h, w, *kernel, *stride, *padding, *dilation, out_h, out_w]
    x = torch.arange(1, cg * h * w + 1, dtype=torch.float64).view(1, cg, h, w)
    patches = torch_F.unfold(x, kernel, dilation, padding, stride)[0]  # (cg * kh * kw, out_h * out_w), 0 = padding
    offsets = torch.tensor(_C._conv_input_offsets(values)).view(patches.shape)
    assert torch.equal(torch.where(offsets >= 0, offsets + 1, 0).double(), patches)
    positions = torch.tensor(_C._conv_output_positions(values)).view(*kernel, h, w)
    for r in range(kernel[0]):
        for s in range(kernel[1]):
            q = r * kernel[1] + s
            for p in range(out_h * out_w):  # every output reading (ih, iw) through (r, s) is found, and only those
                read = offsets[q, p].item()
                if read >= 0:
                    assert positions[r, s, read // w, read % w].item() == p
            assert (positions[r, s] >= 0).sum().item() == (offsets[q] >= 0).sum().item()


@pytest.mark.parametrize("pool_kernel,pool_stride",
                         [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 3), (1, 2)), ((3, 2), (3, 2))])
def test_cuda_pool_gradient_gather_matches_scatter(pool_kernel, pool_stride):
    from fastnets import _C
    conv_h, conv_w = 9, 8
    out_h, out_w = (conv_h - pool_kernel[0]) // pool_stride[0] + 1, (conv_w - pool_kernel[1]) // pool_stride[1] + 1
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(out_h * out_w, generator=gen, dtype=torch.float64)
    taps = pool_kernel[0] * pool_kernel[1]
    inactive = (torch.rand(out_h * out_w, generator=gen) < 0.3) * 0x80
    argmax = torch.randint(0, taps, (out_h * out_w,), generator=gen) | inactive
    gathered = _C._relu_max_pool_conv_grad(grad.tolist(), argmax.tolist(), [*pool_kernel, *pool_stride, out_h, out_w],
                                           conv_h, conv_w)
    expected = torch.zeros(conv_h, conv_w, dtype=torch.float64)
    for o in range(out_h * out_w):  # scatter in row-major order of the pooled outputs
        a = argmax[o].item()
        if a & 0x80:
            continue
        ph, pw = divmod(o, out_w)
        expected[ph * pool_stride[0] + a // pool_kernel[1], pw * pool_stride[1] + a % pool_kernel[1]] += grad[o]
    assert torch.equal(torch.tensor(gathered, dtype=torch.float64).view(conv_h, conv_w), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_padding_wider_than_the_kernel_reach(device):
    """Kept from fuzzing: with padding wider than the kernel's reach (1x1 kernel, padding (1, 2)),
    the output rows are wider than the padded input rows; the last row's right columns were read
    past the end of its channel (stale memory, or the next channel: its bias shows)."""
    for channels, kernel, padding, dilation in ((2, (1, 1), (1, 2), (1, 1)), (3, (2, 2), (3, 3), (1, 1)),
                                                (1, (1, 3), (0, 4), (1, 1)), (2, (2, 2), (1, 3), (1, 2))):
        x = torch.randn(2, channels, 2, 6, dtype=torch.float64, device=device)
        weight = torch.randn(3, channels, *kernel, dtype=torch.float64, device=device)
        bias = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, device=device)
        expected = torch_F.conv2d(x, weight, bias, padding=padding, dilation=dilation)
        torch.testing.assert_close(F.conv2d(x, weight, bias, padding=padding, dilation=dilation), expected)
        if expected.shape[-2] >= 2 and expected.shape[-1] >= 2:
            fused = F.conv_relu_pool2d(x, weight, bias, 1, padding, dilation, 1)
            torch.testing.assert_close(fused, torch_F.max_pool2d(torch_F.relu(expected), 2))
