"""Maxout: values, argmax and gradients exactly equal to PyTorch's unflatten + max, NaN and
ties, every dim, gradcheck, opcheck, torch.compile, threads, errors, modules."""
import pytest
import torch

import fastnets
import fastnets.functional as F
from harness import TRAINING_DTYPES, check_compiles, check_cpu_cuda_identical, check_opcheck, check_same_for_threads, cuda_only

ops = torch.ops.fastnets

# (shape, pieces, dim): activations, feature maps, odd sizes, every dim, one piece, many pieces.
CASES = [((256, 64), 4, 1), ((3, 12, 5, 7), 3, 1), ((6, 10), 2, 0), ((2, 3, 20), 5, -1), ((4, 9, 3), 9, 1),
         ((7,), 7, 0), ((5, 6), 1, 1), ((2, 512, 3), 256, 1), ((3, 0, 4), 2, 2), ((0, 8), 4, 1), ((2, 4, 0), 2, 1)]


def reference(x, pieces, dim):
    dim = dim % x.dim()
    groups = x.size(dim) // pieces
    return x.unflatten(dim, (groups, pieces)).max(dim + 1)


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("shape,pieces,dim", CASES)
def test_forward_and_backward_equal_pytorch(device, dtype, shape, pieces, dim):
    x = torch.randn(shape, device=device).to(dtype)
    if x.numel():
        x.view(-1)[::7] = x.view(-1)[1::7].max()  # ties: the first maximum must win
    out, argmax = ops.maxout(x, pieces, dim)
    expected = reference(x, pieces, dim)
    assert argmax.dtype == torch.uint8
    assert torch.equal(out, expected.values) and torch.equal(argmax.long(), expected.indices)
    leaf, reference_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(out.shape, device=device).to(dtype)
    F.maxout(leaf, pieces, dim).backward(grad)
    reference(reference_leaf, pieces, dim).values.backward(grad)
    assert torch.equal(leaf.grad, reference_leaf.grad)


def test_nan_wins_first_nan_kept(device):
    nan = float("nan")
    x = torch.tensor([[1.0, nan, 3.0, nan], [nan, 2.0, 5.0, 1.0], [-float("inf")] * 4, [2.0, 2.0, 1.0, 2.0]],
                     device=device)
    out, argmax = ops.maxout(x, 4, 1)
    expected = reference(x, 4, 1)
    torch.testing.assert_close(out, expected.values, rtol=0, atol=0, equal_nan=True)
    assert argmax.tolist() == [[1], [0], [0], [0]] == expected.indices.tolist()


def test_non_contiguous_input(device):
    base = torch.randn(12, 40, device=device)
    for x in (base.t(), base[:, ::2]):
        out, argmax = ops.maxout(x, 2, 1)
        assert torch.equal(out, reference(x, 2, 1).values)


def test_gradcheck(device):
    x = torch.randn(3, 8, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.maxout(t, 4, 1), (x,))
    y = torch.randn(6, 9, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.maxout(t, 3, -1), (y,))
    assert torch.autograd.gradgradcheck(lambda t: F.maxout(t, 4, 1), (x,))
    assert torch.autograd.gradgradcheck(lambda t: F.maxout(t, 3, -1), (y,))


def test_opcheck(device):
    x = torch.randn(4, 12, 3, device=device, requires_grad=True)
    check_opcheck(ops.maxout.default, (x, 3, 1))
    out, argmax = ops.maxout(x.detach(), 3, 1)
    check_opcheck(ops.maxout_backward.default, (torch.randn_like(out), argmax, 3, 1))


def test_torch_compile_fullgraph(device):
    x = torch.randn(8, 12, 5, device=device)
    check_compiles(lambda t: F.maxout(t, 4, 1) * 2, x)
    layer = fastnets.nn.MaxoutLinear(5, 3, 2).to(device)
    check_compiles(layer, x)


def test_same_for_threads():
    x = torch.randn(64, 256, 9)
    check_same_for_threads(lambda: F.maxout(x, 4, 1))
    check_same_for_threads(lambda: F.maxout(x.transpose(1, 2).contiguous(), 4, -1))


def test_modules():
    layer = fastnets.nn.MaxoutLinear(6, 4, 3)
    assert layer.weight.shape == (12, 6) and layer.bias.shape == (12,)
    x = torch.randn(5, 6)
    linear = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert torch.equal(layer(x), linear.view(5, 4, 3).max(-1).values)
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert fastnets.nn.MaxoutLinear(6, 4, 3, bias=False).bias is None
    module = fastnets.nn.Maxout(2, dim=1)
    assert torch.equal(module(x), reference(x, 2, 1).values)
    assert "pieces=2" in repr(module)


def test_bad_arguments_are_named(device):
    x = torch.randn(4, 6, device=device)
    with pytest.raises(RuntimeError, match=r"pieces \(4\) must divide input.size\(1\) = 6"):
        F.maxout(x, 4)
    for pieces in (0, -1, 257):
        with pytest.raises(RuntimeError, match="pieces must be in"):
            F.maxout(x, pieces)
    with pytest.raises(IndexError, match="[Dd]imension out of range"):
        F.maxout(x, 2, dim=2)
    with pytest.raises(RuntimeError, match="at least one dimension"):
        F.maxout(torch.tensor(1.0, device=device), 1, 0)
    with pytest.raises(RuntimeError, match="input must be float32"):
        F.maxout(torch.ones(4, 6, dtype=torch.int64, device=device), 2)
    out, argmax = ops.maxout(x, 2, 1)
    with pytest.raises(RuntimeError, match="argmax must be a uint8 tensor"):
        ops.maxout_backward(out, argmax.long(), 2, 1)
    with pytest.raises(ValueError, match="pieces"):
        fastnets.nn.Maxout(0)


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
def test_cpu_cuda_identical(dtype):
    x = torch.randn(64, 96, 9).to(dtype)
    for pieces, dim in ((4, 1), (3, -1), (2, 0)):
        check_cpu_cuda_identical(lambda device: ops.maxout(x.to(device), pieces, dim)[0])
        check_cpu_cuda_identical(lambda device: ops.maxout(x.to(device), pieces, dim)[1])
        out, argmax = ops.maxout(x, pieces, dim)
        grad = torch.randn_like(out)
        check_cpu_cuda_identical(lambda device: ops.maxout_backward(grad.to(device), argmax.to(device), pieces, dim))
