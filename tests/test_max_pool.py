"""Max-pooling: values, PyTorch indices and gradients exactly equal to torch.nn.functional's over
every argument combination and layout, NaN and ties, gradcheck, opcheck, torch.compile, threads,
errors, and the module."""
import itertools
import random

import pytest
import torch
import torch.nn.functional as torch_F

import fastnets
import fastnets.functional as F
from harness import TRAINING_DTYPES, assert_close_to_reference, check_compiles, check_cpu_cuda_identical, check_opcheck, check_same_for_threads, cuda_only

ops = torch.ops.fastnets

KERNELS = [1, 2, 3, (2, 3), (4, 1)]
STRIDES = [None, 1, 2, (1, 2), 3]
PADDINGS = [0, 1, (1, 0)]
DILATIONS = [1, 2, (1, 2)]


def _half(value):
    return (value, value) if isinstance(value, int) else value


def valid(kernel, padding, dilation, stride, ceil_mode, height, width):
    """Whether PyTorch accepts the combination (padding at most half the kernel, output >= 1)."""
    k, p, d = _half(kernel), _half(padding), _half(dilation)
    s = k if stride is None else _half(stride)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        return False
    for size, kk, pp, dd, ss in ((height, k[0], p[0], d[0], s[0]), (width, k[1], p[1], d[1], s[1])):
        if (size + 2 * pp - dd * (kk - 1) - 1 + (ss - 1 if ceil_mode else 0)) // ss + 1 < 1:
            return False
    return True


COMBINATIONS = [c for c in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS, (False, True))
                if valid(c[0], c[2], c[3], c[1], c[4], 9, 8)]


def compare_with_pytorch(x, kernel, stride, padding, dilation, ceil_mode, exact_grad=True):
    out, indices = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    expected, expected_indices = torch_F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, True)
    assert torch.equal(out, expected) and torch.equal(indices, expected_indices)
    assert out.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(memory_format=torch.channels_last)
    leaf, reference_leaf = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    grad = torch.randn(out.shape, device=x.device).to(x.dtype)
    F.max_pool2d(leaf, kernel, stride, padding, dilation, ceil_mode).backward(grad)
    torch_F.max_pool2d(reference_leaf, kernel, stride, padding, dilation, ceil_mode).backward(grad)
    if exact_grad:
        assert torch.equal(leaf.grad, reference_leaf.grad)
    else:  # 16-bit overlapping windows: fastnets sums in float32 and rounds once
        exact = torch.zeros(x.shape, dtype=torch.float64, device=x.device).view(*x.shape[:-2], -1)
        exact.scatter_add_(-1, expected_indices.flatten(-2), grad.double().flatten(-2))
        assert_close_to_reference(leaf.grad, exact.view(x.shape), baseline=reference_leaf.grad)


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", COMBINATIONS)
def test_every_argument_combination(device, kernel, stride, padding, dilation, ceil_mode):
    x = torch.randn(2, 3, 9, 8, device=device, dtype=torch.float64)
    compare_with_pytorch(x, kernel, stride, padding, dilation, ceil_mode)
    compare_with_pytorch(x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, dilation, ceil_mode)
    compare_with_pytorch(x[0], kernel, stride, padding, dilation, ceil_mode)  # (C, H, W)


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_random_shapes(device, dtype, seed):
    rng = random.Random(seed)
    for _ in range(6):
        kernel, stride, padding, dilation, ceil_mode = rng.choice(COMBINATIONS)
        shape = (rng.randint(1, 3), rng.randint(1, 5), rng.randint(9, 23), rng.randint(8, 21))
        x = torch.randn(shape, device=device).to(dtype)
        if rng.random() < 0.5:
            x = x.contiguous(memory_format=torch.channels_last)
        k, s = _half(kernel), _half(kernel if stride is None else stride)
        d = _half(dilation)
        overlapping = s[0] < d[0] * (k[0] - 1) + 1 or s[1] < d[1] * (k[1] - 1) + 1
        exact = dtype in (torch.float32, torch.float64) or not overlapping
        compare_with_pytorch(x, kernel, stride, padding, dilation, ceil_mode, exact_grad=exact)


@pytest.mark.parametrize("height,width", [(1, 1), (2, 3), (5, 2), (3, 7)])
def test_inputs_smaller_than_the_windows(device, height, width):
    x = torch.randn(2, 3, height, width, device=device, dtype=torch.float64)
    for combination in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS, (False, True)):
        kernel, stride, padding, dilation, ceil_mode = combination
        if not valid(kernel, padding, dilation, stride, ceil_mode, height, width):
            continue
        expected, indices = torch_F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, True)
        k, d = _half(kernel), _half(dilation)
        s, p = _half(kernel if stride is None else stride), _half(padding)
        # PyTorch points a window with no tap inside the input outside it (and its CPU backward
        # then writes to a neighbour); fastnets drops that window's gradient.
        rows = [any(0 <= o * s[0] - p[0] + i * d[0] < height for i in range(k[0])) for o in range(expected.shape[-2])]
        cols = [any(0 <= o * s[1] - p[1] + j * d[1] < width for j in range(k[1])) for o in range(expected.shape[-1])]
        has_tap = torch.tensor(rows).view(-1, 1) & torch.tensor(cols).view(1, -1)
        if bool(has_tap.all()):
            compare_with_pytorch(x, kernel, stride, padding, dilation, ceil_mode)
            compare_with_pytorch(x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, dilation,
                                 ceil_mode)
        else:
            out = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
            assert torch.equal(out, expected)
            leaf = x.clone().requires_grad_()
            F.max_pool2d(leaf, kernel, stride, padding, dilation, ceil_mode).sum().backward()
            assert leaf.grad.sum().item() == int(has_tap.sum()) * x.shape[0] * x.shape[1]


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
def test_backward_layouts_agree_bit_for_bit(device, dtype):
    """Contiguous planes scatter-add in output order, channels_last gathers (as CUDA does): both
    sum in float32 in the same order, so 16-bit gradients of overlapping windows agree too."""
    x = torch.randn(2, 6, 17, 19, device=device).to(dtype)
    for kernel, stride, padding, dilation in ((3, 2, 1, 1), (3, 1, 1, 1), ((2, 3), 1, (1, 0), (2, 1))):
        arguments = [list(_half(kernel)), list(_half(stride)), list(_half(padding)), list(_half(dilation)), True]
        out, argmax = ops.max_pool2d(x, *arguments)
        grad = torch.randn_like(out)
        contiguous = ops.max_pool2d_backward(grad, argmax, list(x.shape), *arguments)
        channels_last = ops.max_pool2d_backward(grad.contiguous(memory_format=torch.channels_last),
                                                argmax.contiguous(memory_format=torch.channels_last),
                                                list(x.shape), *arguments)
        assert channels_last.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(contiguous.view(torch.uint8) if dtype != torch.float64 else contiguous,
                           channels_last.contiguous().view(torch.uint8) if dtype != torch.float64 else channels_last)


def test_window_entirely_outside_the_input(device):
    x = torch.randn(2, 2, 3, 2, device=device)
    out, argmax = ops.max_pool2d(x, [1, 2], [1, 4], [0, 1], [1, 3], False)
    assert out.shape == (2, 2, 3, 1) and (out == -float("inf")).all()  # its taps: the padding, and past the edge
    for layout in (torch.contiguous_format, torch.channels_last):
        grad = ops.max_pool2d_backward(torch.ones_like(out).contiguous(memory_format=layout),
                                       argmax.contiguous(memory_format=layout), list(x.shape), [1, 2], [1, 4],
                                       [0, 1], [1, 3], False)
        assert torch.equal(grad, torch.zeros_like(x))  # the gradient has nowhere to go


def test_nan_ties_and_minus_infinity_follow_pytorch(device):
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[[[1.0, nan, 2.0, 2.0], [nan, 0.0, 2.0, 1.0], [-inf, -inf, 3.0, 3.0], [-inf, -inf, 3.0, 1.0]]]],
                     device=device)
    out, indices = F.max_pool2d(x, 2, return_indices=True)
    expected, expected_indices = torch_F.max_pool2d(x, 2, return_indices=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(indices, expected_indices)
    assert indices.flatten().tolist() == [4, 2, 8, 10]  # the last NaN; the first 2; first -inf; the first 3


def test_max_unpool_takes_the_indices(device):
    x = torch.randn(2, 4, 8, 8, device=device)
    out, indices = F.max_pool2d(x, 2, return_indices=True)
    unpooled = torch.nn.MaxUnpool2d(2)(out, indices)
    expected = torch.nn.MaxUnpool2d(2)(*torch_F.max_pool2d(x, 2, return_indices=True))
    assert torch.equal(unpooled, expected)


def test_large_windows_keep_int32_positions(device):
    x = torch.randn(1, 2, 40, 40, device=device)
    out, argmax = ops.max_pool2d(x, [17, 17], [5, 5], [0, 0], [1, 1], False)
    assert argmax.dtype == torch.int32
    compare_with_pytorch(x, 17, 5, 0, 1, False)
    assert ops.max_pool2d(x, [16, 16], [5, 5], [0, 0], [1, 1], False)[1].dtype == torch.uint8


def test_gradcheck(device):
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True), (x,))
    assert torch.autograd.gradcheck(lambda t: F.max_pool2d(t, (2, 3), 1, dilation=(2, 1)), (x,))
    assert torch.autograd.gradgradcheck(lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True), (x,))
    channels_last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: F.max_pool2d(t, 2), (channels_last,))


def test_opcheck(device):
    x = torch.randn(2, 3, 9, 10, device=device, requires_grad=True)
    for sample in (x, x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(), x[0].detach()):
        check_opcheck(ops.max_pool2d.default, (sample, [3, 3], [2, 2], [1, 1], [1, 1], True))
    out, argmax = ops.max_pool2d(x.detach(), [2, 2], [2, 2], [0, 0], [1, 1], False)
    check_opcheck(ops.max_pool2d_backward.default, (torch.randn_like(out), argmax, list(x.shape), [2, 2], [2, 2],
                                                    [0, 0], [1, 1], False))


def test_torch_compile_fullgraph(device):
    x = torch.randn(2, 3, 12, 12, device=device)
    check_compiles(lambda t: F.max_pool2d(t, 3, 2, 1) + 1, x)
    check_compiles(fastnets.nn.MaxPool2d(2), x.contiguous(memory_format=torch.channels_last))


def test_same_for_threads():
    x = torch.randn(8, 16, 31, 29)
    check_same_for_threads(lambda: F.max_pool2d(x, 3, 2, 1))
    check_same_for_threads(lambda: F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, 2, 1))
    out, argmax = ops.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    grad = torch.randn_like(out)
    check_same_for_threads(lambda: ops.max_pool2d_backward(grad, argmax, list(x.shape), [3, 3], [2, 2], [1, 1], [1, 1], False))


def test_module_is_a_drop_in():
    ours, theirs = fastnets.nn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    assert isinstance(ours, torch.nn.MaxPool2d) and repr(ours) == repr(theirs)
    x = torch.randn(2, 3, 11, 11)
    assert torch.equal(ours(x), theirs(x))
    with_indices = fastnets.nn.MaxPool2d(2, return_indices=True)
    assert torch.equal(with_indices(x)[1], torch.nn.MaxPool2d(2, return_indices=True)(x)[1])


def test_bad_arguments_are_named(device):
    x = torch.randn(1, 2, 6, 6, device=device)
    with pytest.raises(RuntimeError, match="kernel_size must be at least 1"):
        F.max_pool2d(x, 0)
    with pytest.raises(RuntimeError, match="stride must be at least 1"):
        F.max_pool2d(x, 2, stride=0)
    with pytest.raises(RuntimeError, match="dilation must be at least 1"):
        F.max_pool2d(x, 2, dilation=0)
    with pytest.raises(RuntimeError, match="padding should be at most half of kernel_size"):
        F.max_pool2d(x, 2, padding=2)
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        F.max_pool2d(x, 7)
    # A window of 2^32 positions (over a tiny input thanks to the padding) has no int32 argmax.
    with pytest.raises(RuntimeError, match=r"kernel_size must have at most 2\^31 - 1 positions"):
        F.max_pool2d(torch.randn(1, 1, 1, 1, device=device), 65536, padding=32768)
    with pytest.raises(RuntimeError, match=r"input must be \(N, C, H, W\) or \(C, H, W\)"):
        F.max_pool2d(torch.randn(6, 6, device=device), 2)
    with pytest.raises(RuntimeError, match="input must be float32"):
        F.max_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int32, device=device), 2)
    with pytest.raises(ValueError, match="kernel_size"):
        F.max_pool2d(x, (2, 2, 2))
    out, argmax = ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="argmax must be a"):
        ops.max_pool2d_backward(out, argmax.long(), [1, 2, 6, 6], [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="do not match the output size"):
        ops.max_pool2d_backward(out, argmax, [1, 2, 9, 9], [2, 2], [2, 2], [0, 0], [1, 1], False)


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
def test_cpu_cuda_identical(dtype):
    x = torch.randn(4, 8, 29, 30).to(dtype)
    for kernel, stride, padding, dilation, ceil_mode in ((2, 2, 0, 1, False), (3, 2, 1, 1, True),
                                                         ((2, 3), 1, (1, 0), (2, 1), True), (3, 3, 1, 2, False)):
        arguments = [list(_half(kernel)), list(_half(stride)), list(_half(padding)), list(_half(dilation)), ceil_mode]
        for xl in (x, x.contiguous(memory_format=torch.channels_last), x[0]):
            for part in (0, 1):
                check_cpu_cuda_identical(lambda device: ops.max_pool2d(xl.to(device), *arguments)[part])
            out, argmax = ops.max_pool2d(xl, *arguments)
            grad = torch.randn_like(out)
            check_cpu_cuda_identical(lambda device: ops.max_pool2d_backward(
                grad.to(device), argmax.to(device), list(xl.shape), *arguments))
