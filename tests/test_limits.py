"""Limits (issue 11): CUDA tensors of more than 2^31 elements, whose indices and offsets need 64
bits (the max-pool kernels switch from 32-bit indexing there; Philox streams must not wrap).
They need a GPU with tens of gigabytes free and are skipped elsewhere."""
import pytest
import torch

import fastnets.functional as F
from harness import HAS_CUDA, binomial_bounds

ops = torch.ops.fastnets

BIG = 2**31 + 4099  # past int32, and not a multiple of a Philox block or a SIMD width


def free_gigabytes() -> float:
    return torch.cuda.mem_get_info()[0] / 2**30 if HAS_CUDA else 0.0


def needs_free_memory(gigabytes: float):
    return pytest.mark.skipif(free_gigabytes() < gigabytes,
                              reason=f"needs an NVIDIA GPU with {gigabytes:g} GB free")


pytestmark = pytest.mark.cuda


@needs_free_memory(24)
def test_dropout_past_two_to_the_31_elements():
    x = torch.ones(BIG, dtype=torch.bfloat16, device="cuda")
    torch.manual_seed(0)
    y, seed_offset = ops.dropout(x, 0.5, None)
    tail, head = y[2**31:], y[: BIG - 2**31]
    assert bool(((tail == 0) | (tail == 2)).all())  # every element past 2^31 written, kept x 2 or 0
    # An index that wrapped at 2^31 would repeat the first elements' mask.
    assert not torch.equal(tail != 0, head != 0)
    low, high = binomial_bounds(BIG, 0.5)
    assert low <= int(torch.count_nonzero(y)) <= high
    # The backward regenerates the same mask from the two saved integers.
    assert torch.equal(ops.dropout_backward(x, seed_offset, 0.5), y)


@needs_free_memory(48)
def test_max_pool_past_two_to_the_31_elements():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 2**16, 2**15 + 64, device="cuda").requires_grad_()
    assert x.numel() > 2**31
    ours = F.max_pool2d(x, 2)
    grad = torch.randn_like(ours)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    # The reference by bands of 2^14 rows (2x2 windows never straddle them): torch 2.11's own
    # max-pool backward fails with "invalid argument" on the whole tensor.
    rows = 2**14
    for top in range(0, x.shape[2], rows):
        band = x.detach()[:, :, top:top + rows].requires_grad_()
        theirs = torch.nn.functional.max_pool2d(band, 2)
        assert torch.equal(ours[:, :, top // 2:(top + rows) // 2], theirs)
        (theirs_grad,) = torch.autograd.grad(theirs, band, grad[:, :, top // 2:(top + rows) // 2])
        assert torch.equal(ours_grad[:, :, top:top + rows], theirs_grad)
