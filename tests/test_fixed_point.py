"""Fixed-point quantization: exact against float64 references (nearest) and references built
from the Philox stream (stochastic), grid and range, unbiasedness, special values, integer
storage, autograd, opcheck, torch.compile, threads, errors, and the training tools."""
import math

import pytest
import torch

import fastnets
import fastnets.functional as F
from fastnets import random as frandom
from fastnets.quant import FixedPoint, FixedPointOptimizer, from_fixed, quantize, quantize_parameters_, to_fixed
from harness import (ODD_SHAPES, TRAINING_DTYPES, binomial_bounds, check_compiles, check_opcheck,
                     check_same_for_threads, cuda_only)

ops = torch.ops.fastnets

# (wl, fl): Gupta et al.'s <2, 14>, byte formats, integer and coarser grids, one bit, wide words.
FORMATS = [(16, 14), (8, 4), (4, 0), (6, -2), (1, 0), (24, 10), (32, 16), (53, 30)]


def code_range(wl, symmetric):
    half = 2 ** (wl - 1)
    return (1 - half if symmetric else -half), half - 1


def reference(x, wl, fl, rounding, clamp=True, symmetric=False, seed_offset=None):
    """The formula of fastnets.functional.fixed_point_quantize in float64, then cast as the op
    casts (16-bit dtypes through float32)."""
    scaled = x.double() * 2.0**fl
    if rounding == "nearest":
        code = torch.round(scaled)  # half to even
    else:
        seed, offset = frandom.unpack_seed_offset(seed_offset)
        words = frandom.philox_bits(x.shape, seed, offset, device=x.device).double()
        down = torch.floor(scaled)
        # Up iff word * 2^-32 < scaled - down, in exact arithmetic (inf: NaN, never up).
        code = down + (words < torch.ceil(scaled * 2.0**32) - down * 2.0**32).double()
    if clamp:
        low, high = code_range(wl, symmetric)
        code = torch.clamp(code, low, high)  # NaN stays NaN
    value = code * 2.0**-fl
    return value if x.dtype == torch.float64 else value.float().to(x.dtype)


def wide_input(shape, device, dtype, wl, fl):
    """Values across the format's range and beyond it, off the grid."""
    span = 2.0 ** (wl - 1 - fl)
    return ((torch.rand(shape, device=device, dtype=torch.float64) * 2.4 - 1.2) * span).to(dtype)


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("wl,fl", FORMATS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_equals_reference(device, dtype, wl, fl, rounding):
    x = wide_input((1031,), device, dtype, wl, fl)
    for clamp, symmetric in ((True, False), (True, True), (False, False)):
        out, seed_offset = ops.fixed_point_quantize(x, wl, fl, rounding, clamp, symmetric, None)
        assert out.dtype == x.dtype and out.shape == x.shape
        expected = reference(x, wl, fl, rounding, clamp, symmetric, seed_offset)
        torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_odd_shapes_and_non_contiguous(device, shape):
    x = torch.randn(shape, device=device) * 3
    for rounding in ("nearest", "stochastic"):
        out, seed_offset = ops.fixed_point_quantize(x, 8, 4, rounding, True, False, None)
        torch.testing.assert_close(out, reference(x, 8, 4, rounding, seed_offset=seed_offset), rtol=0, atol=0)
    base = torch.randn(40, 30, device=device)
    for view in (base.t(), base[::3, 1::2]):
        out, seed_offset = ops.fixed_point_quantize(view, 8, 5, "stochastic", True, False, None)
        torch.testing.assert_close(out, reference(view.contiguous(), 8, 5, "stochastic", seed_offset=seed_offset),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("wl,fl", [(16, 14), (8, 4), (6, -2), (24, 10)])
def test_outputs_lie_on_the_grid_inside_the_range(device, dtype, wl, fl):
    x = wide_input((10_000,), device, dtype, wl, fl)
    for symmetric in (False, True):
        out = F.fixed_point_quantize(x, wl, fl, "stochastic", symmetric=symmetric)
        codes = out.double() * 2.0**fl
        assert torch.equal(codes, torch.round(codes))
        low, high = code_range(wl, symmetric)
        assert codes.min().item() >= low and codes.max().item() <= high
        assert codes.min().item() == low and codes.max().item() == high  # the input saturates


def test_nearest_ties_to_even(device):
    eps = 2.0**-4
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 0.51], device=device, dtype=torch.float64) * eps
    out = F.fixed_point_quantize(x, 8, 4, "nearest")
    assert (out / eps).tolist() == [0, 2, 2, 0, -2, -2, 0, 1]


def test_special_values(device):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30], device=device)
    for rounding in ("nearest", "stochastic"):
        out = F.fixed_point_quantize(x, 8, 4, rounding)
        assert out[0].isnan()
        assert out[1:].tolist() == [127 / 16, -128 / 16, 127 / 16, -128 / 16]
        unclamped = F.fixed_point_quantize(x, 8, 4, rounding, clamp=False)
        assert unclamped[0].isnan() and unclamped[1:3].tolist() == [float("inf"), -float("inf")]


@pytest.mark.parametrize("value", [0.3, -1.13, 2.0 / 3.0, 0.015625 + 2**-12])
def test_stochastic_rounding_is_unbiased(device, value):
    n, fl = 1_000_000, 4
    x = torch.full((n,), value, device=device, dtype=torch.float64)
    out = F.fixed_point_quantize(x, 8, fl, "stochastic")
    eps = 2.0**-fl
    frac = value / eps - math.floor(value / eps)
    ups = (out > math.floor(value / eps) * eps).sum().item()
    low, high = binomial_bounds(n, frac)
    assert low <= ups <= high, "P(round up) must be the fractional part"
    assert set(out.unique().tolist()) <= {math.floor(value / eps) * eps, math.ceil(value / eps) * eps}
    std_of_mean = eps * math.sqrt(frac * (1 - frac) / n)
    assert abs(out.mean().item() - value) <= 6 * std_of_mean


def test_stochastic_decision_is_exact_just_below_zero():
    """For x * 2^fl in (-1, 0), x * 2^fl - floor(x * 2^fl) = 1 + x * 2^fl can round in float64;
    the decision must not. Elements are built from the words the call will draw (a generator
    seeded alike gives the same stream): word w gets x = -(2^32 - w) * 2^-32 + 2^-60, so that
    word * 2^-32 < frac by 2^-60 exactly, and every one of them must round up (to 0)."""
    n = 1 << 16
    _, seed_offset = ops.fixed_point_quantize(torch.zeros(n, dtype=torch.float64), 8, 0, "stochastic", True, False,
                                              torch.Generator().manual_seed(21))
    words = frandom.philox_bits((n,), *frandom.unpack_seed_offset(seed_offset))
    chosen = words > 2**32 - 2**20  # x then needs at most 41 bits: exact in float64
    assert chosen.sum() > 0
    x = torch.where(chosen, -(2**32 - words).double() * 2.0**-32 + 2.0**-60, torch.full((n,), 0.5, dtype=torch.float64))
    out, again = ops.fixed_point_quantize(x, 8, 0, "stochastic", True, False, torch.Generator().manual_seed(21))
    assert torch.equal(again, seed_offset)
    assert torch.equal(out[chosen], torch.zeros(int(chosen.sum()), dtype=torch.float64))
    # The same element one ulp of 2^-32 lower rounds down.
    lower = torch.where(chosen, x - 2.0**-60 - 2.0**-32, x)
    out, _ = ops.fixed_point_quantize(lower, 8, 0, "stochastic", True, False, torch.Generator().manual_seed(21))
    assert torch.equal(out[chosen], torch.full((int(chosen.sum()),), -1.0, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("wl,fl", [(16, 14), (25, 0), (25, 24), (12, 100), (8, 101), (26, 14)])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_every_exponent(device, dtype, wl, fl, rounding):
    """Float32 and 16-bit inputs round in float arithmetic where the format allows (saturating,
    fl in [0, 100], wl <= 25; the last two formats do not): values of every exponent of the
    dtype, subnormals, the largest and the special values must give the float64 formula's bits."""
    info = torch.finfo(dtype)
    low, high = math.floor(math.log2(info.smallest_normal)) - info.bits, math.ceil(math.log2(info.max))
    exponents = torch.arange(low, high).repeat_interleave(16).double()
    mantissas = 1 + torch.rand(len(exponents), dtype=torch.float64)
    signs = torch.where(torch.rand(len(exponents)) < 0.5, -1.0, 1.0).double()
    x = (signs * mantissas * 2.0**exponents).to(dtype)
    specials = torch.tensor([0.0, -0.0, info.max, -info.max, info.tiny, float("inf"), -float("inf"), float("nan")])
    x = torch.cat([x, specials.to(dtype)]).to(device)
    for clamp in (True, False):
        out, seed_offset = ops.fixed_point_quantize(x, wl, fl, rounding, clamp, False, None)
        torch.testing.assert_close(out, reference(x, wl, fl, rounding, clamp, False, seed_offset), rtol=0, atol=0,
                                   equal_nan=True)


def test_stochastic_decision_is_exact_just_below_zero_in_float32():
    """The float arithmetic's case of x * 2^fl in (-1, 0): with fl = 0 and word w, x = -(2^32 -
    w) * 2^-32 has frac * 2^32 = w exactly, so it rounds down (to -1); one step of 2^-32 higher
    it rounds up (to 0). Words above 2^32 - 2^20 keep x within float32's 24 bits."""
    n = 1 << 16
    _, seed_offset = ops.fixed_point_quantize(torch.zeros(n), 8, 0, "stochastic", True, False,
                                              torch.Generator().manual_seed(22))
    words = frandom.philox_bits((n,), *frandom.unpack_seed_offset(seed_offset))
    chosen = words > 2**32 - 2**20
    assert chosen.sum() > 0
    for step, expected in ((0, -1.0), (1, 0.0)):
        x = torch.where(chosen, -(2**32 - words - step).double() * 2.0**-32, torch.full((n,), 0.5, dtype=torch.float64))
        assert torch.equal(x.float().double(), x)
        out, _ = ops.fixed_point_quantize(x.float(), 8, 0, "stochastic", True, False, torch.Generator().manual_seed(22))
        assert torch.equal(out[chosen], torch.full((int(chosen.sum()),), expected))


@pytest.mark.parametrize("whole", [0.0, 1.0, 5.0, -2.0, -6.0])
def test_stochastic_decision_is_exact_in_float32(whole):
    """Away from (-1, 0): with fl = 0 and word w, x = whole + w * 2^-32 has frac * 2^32 = w, so
    word < frac * 2^32 fails and it rounds down; 2^12 * 2^-32 higher it rounds up, as much lower
    down again. Words that are multiples of 2^12 keep x within float32's 24 bits."""
    n = 1 << 18
    _, seed_offset = ops.fixed_point_quantize(torch.zeros(n), 8, 0, "stochastic", True, False,
                                              torch.Generator().manual_seed(23))
    words = frandom.philox_bits((n,), *frandom.unpack_seed_offset(seed_offset))
    chosen = (words % 2**12 == 0) & (words >= 2**12) & (words < 2**32 - 2**12)
    assert chosen.sum() > 0
    for shift, up in ((0, False), (2**12, True), (-(2**12), False)):
        x = torch.where(chosen, whole + (words + shift).double() * 2.0**-32, torch.full((n,), 0.5, dtype=torch.float64))
        assert torch.equal(x.float().double(), x)
        out, _ = ops.fixed_point_quantize(x.float(), 8, 0, "stochastic", True, False, torch.Generator().manual_seed(23))
        assert torch.equal(out[chosen], torch.full((int(chosen.sum()),), whole + up))


def test_stochastic_draws_and_reproduces(device):
    x = torch.full((1000,), 0.3, device=device)
    torch.manual_seed(0)
    a, b = F.fixed_point_quantize(x, 8, 4), F.fixed_point_quantize(x, 8, 4)
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    assert torch.equal(F.fixed_point_quantize(x, 8, 4), a)
    g1, g2 = torch.Generator(device).manual_seed(5), torch.Generator(device).manual_seed(5)
    assert torch.equal(F.fixed_point_quantize(x, 8, 4, generator=g1), F.fixed_point_quantize(x, 8, 4, generator=g2))


def test_nearest_draws_nothing(device):
    x = torch.randn(100, device=device)
    torch.manual_seed(3)
    state = torch.random.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    _, seed_offset = ops.fixed_point_quantize(x, 8, 4, "nearest", True, False, None)
    assert seed_offset.tolist() == [0, 0]
    after = torch.random.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    assert torch.equal(state, after)


@pytest.mark.parametrize("wl,dtype", [(1, torch.int8), (8, torch.int8), (9, torch.int16), (16, torch.int16),
                                      (17, torch.int32), (32, torch.int32)])
def test_to_fixed_codes_and_round_trip(device, wl, dtype):
    fl = wl // 2
    x = wide_input((5000,), device, torch.float64, wl, fl)
    for rounding in ("nearest", "stochastic"):
        codes = to_fixed(x, wl, fl, rounding)
        assert codes.dtype == dtype
        low, high = code_range(wl, False)
        assert codes.min().item() >= low and codes.max().item() <= high
    codes = to_fixed(x, wl, fl, "nearest")
    assert codes.min().item() == low and codes.max().item() == high  # the input saturates
    values = from_fixed(codes, fl, torch.float64)
    torch.testing.assert_close(values, F.fixed_point_quantize(x, wl, fl, "nearest"), rtol=0, atol=0)
    assert torch.equal(to_fixed(values, wl, fl), codes)  # exact round trip on the grid
    assert torch.equal(from_fixed(to_fixed(values, wl, fl), fl, torch.float64), values)


def test_to_fixed_stochastic_matches_quantize(device):
    x = torch.randn(3000, device=device)
    codes, seed_offset = ops.fixed_point_to_codes(x, 12, 6, "stochastic", True, None)
    expected = reference(x, 12, 6, "stochastic", True, True, seed_offset)
    torch.testing.assert_close(from_fixed(codes, 6, torch.float32), expected, rtol=0, atol=0)
    nan_code = to_fixed(torch.tensor([float("nan")], device=device), 8, 4)
    assert nan_code.item() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs_on_representable_grids(device, dtype):
    # <2, 6> fits both 16-bit mantissas: outputs are exactly on the grid.
    x = torch.randn(4096, device=device).to(dtype)
    out = F.fixed_point_quantize(x, 8, 6, "stochastic")
    codes = out.double() * 64
    assert torch.equal(codes, torch.round(codes))


def test_same_for_threads():
    x = torch.randn(300_007) * 4
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    check_same_for_threads(lambda: F.fixed_point_quantize(x, 8, 4, "stochastic", generator=g()))
    check_same_for_threads(lambda: F.fixed_point_quantize(x, 12, 7, "nearest"))
    check_same_for_threads(lambda: to_fixed(x, 16, 10, "stochastic", generator=g()))


def test_straight_through_gradient(device):
    x = torch.randn(100, device=device, requires_grad=True)
    F.fixed_point_quantize(x, 4, 1).backward(torch.arange(100.0, device=device))
    assert torch.equal(x.grad, torch.arange(100.0, device=device))


def test_gradient_rounding_and_range_zeroing(device):
    forward, backward = FixedPoint(4, 2, "nearest"), FixedPoint(6, 3, "nearest")
    x = torch.tensor([0.1, 1.0, 1.9, -2.5, 3.0], device=device, requires_grad=True)
    grad = torch.tensor([0.07, 0.3, -100.0, 1.0, 0.5], device=device)
    quantize(x, forward, backward).backward(grad)
    torch.testing.assert_close(x.grad, backward(grad), rtol=0, atol=0)
    x.grad = None
    quantize(x, forward, backward, zero_outside_range=True).backward(grad)
    inside = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], device=device)  # range [-2, 1.75]
    torch.testing.assert_close(x.grad, backward(grad * inside), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("wl,fl,symmetric", [(4, 2, False), (16, 14, True), (12, -3, False), (40, 30, False)])
def test_in_range_compares_exactly(device, dtype, wl, fl, symmetric):
    """fixed_point_in_range against min <= x <= max in float64, on values around both ends of the
    range (one ulp of x's dtype inside and outside, where the dtype holds them), special values
    and random ones; (16, 14) and (40, 30) have ends that bfloat16 or float16 cannot hold."""
    format = FixedPoint(wl, fl, "nearest", symmetric=symmetric)
    ends = torch.tensor([format.min, format.max], dtype=torch.float64).to(dtype)
    around = torch.cat([ends, torch.nextafter(ends, ends + 1), torch.nextafter(ends, ends - 1)])
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")], dtype=dtype)
    values = torch.cat([around, special, wide_input((1000,), "cpu", dtype, wl, fl)]).to(device)
    inside = ops.fixed_point_in_range(values, wl, fl, symmetric)
    exact = values.double()
    assert inside.dtype == torch.bool and torch.equal(inside, (exact >= format.min) & (exact <= format.max))
    strided = torch.stack([values, values], 1)[:, 0]  # the same values, every other one of the storage
    assert torch.equal(ops.fixed_point_in_range(strided, wl, fl, symmetric), inside)


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("fl", [-1, -30, 0])
def test_in_range_with_an_end_at_zero(device, dtype, fl):
    """wl = 1: max = 0 (symmetric: min = -0 too). The smallest subnormals lie outside, although
    x * 2^fl would underflow to 0 for fl < 0 (found by review)."""
    tiny = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps  # the smallest subnormal
    values = torch.tensor([tiny, -tiny, 0.0, -0.0, 1.0, -1.0, -(2.0 ** -fl)], dtype=torch.float64).to(dtype)
    values = values.to(device)
    for symmetric in (False, True):
        format = FixedPoint(1, fl, "nearest", symmetric=symmetric)
        exact = values.double()
        expected = (exact >= format.min) & (exact <= format.max)
        assert torch.equal(ops.fixed_point_in_range(values, 1, fl, symmetric), expected)


def test_in_range_checks_and_opcheck(device):
    x = torch.randn(6, 7, device=device)
    check_opcheck(ops.fixed_point_in_range.default, (x, 8, 4, False))
    check_opcheck(ops.fixed_point_in_range.default, (x.half(), 16, 14, True))
    with pytest.raises(RuntimeError, match="input must be float32"):
        ops.fixed_point_in_range(torch.ones(3, dtype=torch.int32, device=device), 8, 4)
    with pytest.raises(RuntimeError, match="wl"):
        ops.fixed_point_in_range(x, 0, 4)


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("wl,fl", [(16, 14), (8, 4), (24, 10)])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_quantize_masked_equals_reference(device, dtype, wl, fl, rounding):
    """fixed_point_quantize_masked: the reference rounding (the same stream) where the mask is
    true and +0 where it is false, NaN and infinities included; on an odd size (vector loops and
    their tail) and on non-contiguous input and mask."""
    x = wide_input((1031,), device, dtype, wl, fl)
    x[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], dtype=dtype)
    mask = torch.rand(1031, device=device) < 0.7
    mask[:4] = torch.tensor([False, False, True, False])
    for clamp, symmetric in ((True, False), (False, True)):
        out, seed_offset = ops.fixed_point_quantize_masked(x, mask, wl, fl, rounding, clamp, symmetric, None)
        expected = torch.where(mask, reference(x, wl, fl, rounding, clamp, symmetric, seed_offset),
                               torch.zeros((), dtype=dtype, device=device))
        assert out.dtype == dtype and torch.equal(out, expected)
        assert not torch.signbit(out[~mask]).any()
    strided_x, strided_mask = torch.stack([x, x], 1)[:, 0], torch.stack([mask, mask], 1)[:, 1]
    out, seed_offset = ops.fixed_point_quantize_masked(strided_x, strided_mask, wl, fl, rounding, True, False, None)
    expected = torch.where(mask, reference(x, wl, fl, rounding, True, False, seed_offset),
                           torch.zeros((), dtype=dtype, device=device))
    assert torch.equal(out, expected)


def test_quantize_masked_draws_as_quantize(device):
    """The masked op draws the numbers of fixed_point_quantize: the same seed gives its results
    wherever the mask is true."""
    x = torch.randn(4099, device=device)
    mask = torch.rand(4099, device=device) < 0.5
    torch.manual_seed(3)
    masked, _ = ops.fixed_point_quantize_masked(x, mask, 8, 4, "stochastic", True, False, None)
    torch.manual_seed(3)
    plain, _ = ops.fixed_point_quantize(x, 8, 4, "stochastic", True, False, None)
    assert torch.equal(masked, torch.where(mask, plain, torch.zeros((), device=device)))


def test_quantize_masked_checks_and_opcheck(device):
    x = torch.randn(6, 7, device=device)
    mask = torch.rand(6, 7, device=device) < 0.5
    check_opcheck(ops.fixed_point_quantize_masked.default, (x, mask, 8, 4, "nearest", True, False, None))
    check_opcheck(ops.fixed_point_quantize_masked.default, (x.bfloat16(), mask, 16, 14, "stochastic", True, True, None))
    with pytest.raises(RuntimeError, match="mask must be a bool tensor"):
        ops.fixed_point_quantize_masked(x, mask.float(), 8, 4)
    with pytest.raises(RuntimeError, match="mask must have input's size"):
        ops.fixed_point_quantize_masked(x, mask[:, :3], 8, 4)
    with pytest.raises(RuntimeError, match="input must be float32"):
        ops.fixed_point_quantize_masked(x.int(), mask, 8, 4)
    with pytest.raises(RuntimeError, match="rounding"):
        ops.fixed_point_quantize_masked(x, mask, 8, 4, "up")
    if device == "cuda":
        with pytest.raises(RuntimeError, match="mask must be on input's device"):
            ops.fixed_point_quantize_masked(x, mask.cpu(), 8, 4)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_range_zeroing_with_a_rounded_gradient(device, rounding):
    """quantize(zero_outside_range=True) with a gradient format: the gradient rounded where x
    lay inside the forward range, 0 where it saturated (the backward's one masked pass, exactly
    as the mask then the rounding would give it, the same numbers drawn)."""
    forward, backward = FixedPoint(6, 4, "nearest"), FixedPoint(10, 6, rounding)
    x = (torch.randn(2001, device=device) * 2).requires_grad_()
    grad = torch.randn(2001, device=device)
    torch.manual_seed(11)
    quantize(x, forward, backward, zero_outside_range=True).backward(grad)
    inside = (x.detach() >= forward.min) & (x.detach() <= forward.max)
    assert 0 < inside.sum() < 2001
    torch.manual_seed(11)
    expected = torch.where(inside, backward(grad), torch.zeros((), device=device))
    assert torch.equal(x.grad, expected)


def test_second_derivative_through_range_zeroing():
    """quantize's backward (masked and rounded in one op) is itself differentiable: straight
    through where x lay inside the range, 0 outside."""
    forward, backward = FixedPoint(6, 4, "nearest"), FixedPoint(10, 6, "nearest")
    x = (torch.randn(500, dtype=torch.float64) * 2).requires_grad_()
    grad_output = torch.randn(500, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(quantize(x, forward, backward, zero_outside_range=True), x, grad_output,
                                    create_graph=True)
    grad_x.sum().backward()
    inside = (x.detach() >= forward.min) & (x.detach() <= forward.max)
    assert torch.equal(grad_output.grad, inside.double())


def test_gradcheck(device):
    # A grid far finer than gradcheck's perturbation: the straight-through Jacobian (the
    # identity) is then what finite differences see too, on both paths.
    fine = FixedPoint(53, 48, "stochastic")
    x = torch.rand(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.fixed_point_quantize(t, 53, 48, "stochastic"), (x,))
    assert torch.autograd.gradcheck(lambda t: quantize(t, fine, FixedPoint(53, 40, "nearest")), (x,))


def test_opcheck(device):
    x = torch.randn(6, 7, device=device, requires_grad=True)
    for rounding in ("nearest", "stochastic"):
        check_opcheck(ops.fixed_point_quantize.default, (x, 8, 4, rounding, True, False, None))
        check_opcheck(ops.fixed_point_to_codes.default, (x.detach(), 12, 6, rounding, True, None))
    check_opcheck(ops.fixed_point_quantize.default, (x.detach().bfloat16(), 16, 14, "stochastic", False, True, None))


def test_torch_compile_fullgraph(device):
    x = torch.randn(65, 3, device=device)
    check_compiles(lambda t: F.fixed_point_quantize(t, 8, 4, "stochastic") + 1, x, seed=1)
    module = fastnets.nn.FixedPointQuantizer(FixedPoint(8, 4), FixedPoint(8, 6, "nearest"), zero_outside_range=True)
    check_compiles(module, x, seed=2)

    def step(t, compiled):
        leaf = t.clone().requires_grad_()
        fn = (lambda v: (module(v) ** 2).sum())
        fn = torch.compile(fn, fullgraph=True) if compiled else fn
        torch.manual_seed(4)
        fn(leaf).backward()
        return leaf.grad

    torch._dynamo.reset()
    torch.testing.assert_close(step(x, True), step(x, False), rtol=0, atol=0)


def test_bad_arguments_are_named(device):
    x = torch.randn(10, device=device)
    for wl in (0, 54, -3):
        with pytest.raises(RuntimeError, match="wl"):
            F.fixed_point_quantize(x, wl, 2)
        with pytest.raises(ValueError, match="wl"):
            FixedPoint(wl, 2)
    for fl in (2000, -1100):
        with pytest.raises(RuntimeError, match="fl"):
            F.fixed_point_quantize(x, 8, fl)
    with pytest.raises(RuntimeError, match="rounding"):
        F.fixed_point_quantize(x, 8, 4, "up")
    with pytest.raises(ValueError, match="rounding"):
        FixedPoint(8, 4, "up")
    with pytest.raises(RuntimeError, match="input must be float32"):
        F.fixed_point_quantize(torch.ones(3, dtype=torch.int32, device=device), 8, 4)
    with pytest.raises(RuntimeError, match="wl must be in \\[1, 32\\]"):
        to_fixed(x, 33, 4)
    with pytest.raises(ValueError, match="codes"):
        from_fixed(x, 4)
    with pytest.raises(TypeError, match="forward"):
        fastnets.nn.FixedPointQuantizer(forward=(8, 4))
    with pytest.raises(TypeError, match="optimizer"):
        FixedPointOptimizer([torch.zeros(1)])


def _on_grid(tensor, format):
    codes = tensor.double() / format.eps
    return torch.equal(codes, torch.round(codes)) and format.min <= tensor.min() and tensor.max() <= format.max


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_optimizer_keeps_weights_grads_and_state_in_fixed_point(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    weight, grad = FixedPoint(16, 12), FixedPoint(16, 14)
    state = {"momentum_buffer": FixedPoint(16, 14)} if name == "sgd" else \
        {"exp_avg": FixedPoint(16, 14), "exp_avg_sq": FixedPoint(16, 16, symmetric=True)}
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if name == "sgd" else \
        torch.optim.Adam(model.parameters(), lr=0.01)
    optimizer = FixedPointOptimizer(inner, weight=weight, grad=grad, state=state)
    quantize_parameters_(model, weight)
    x = torch.randn(64, 8)
    y = x[:, :1] * 0.5 - x[:, 1:2] * 0.25
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        for parameter in model.parameters():
            assert _on_grid(parameter, weight) and _on_grid(parameter.grad, grad)
            for key, format in state.items():
                assert _on_grid(optimizer.state[parameter][key], format)
    assert losses[-1] < 0.5 * losses[0], "training in fixed point must still learn"
    if name == "adam":
        assert optimizer.state[model[0].weight]["step"].item() == 30  # the counter is left alone


def test_optimizer_closure_gets_rounded_gradients():
    parameter = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    grad = FixedPoint(8, 2, "nearest")
    seen = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            loss = closure()
            seen.append(parameter.grad.clone())
            return loss

    optimizer = FixedPointOptimizer(Recorder([parameter], lr=0.1), grad=grad)

    def closure():
        optimizer.zero_grad()
        loss = (parameter * torch.tensor([0.3, 0.1])).sum()
        loss.backward()
        return loss

    optimizer = FixedPointOptimizer(Recorder([parameter], lr=0.1), grad=grad, weight=FixedPoint(8, 3, "nearest"))
    optimizer.step(closure)
    assert seen[0].tolist() == [0.25, 0.0]
    assert parameter.tolist() == [1.0, -2.0]  # 1 - 0.1 * 0.25 = 0.975 rounds back to 1 on the 1/8 grid


def test_optimizer_single_state_format_rounds_momenta_only():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    format = FixedPoint(8, 4, "nearest")
    for inner, keys in ((torch.optim.SGD([weight], lr=0.1, momentum=0.9), ["momentum_buffer"]),
                        (torch.optim.NAdam([weight], lr=0.1), ["exp_avg", "exp_avg_sq"])):
        optimizer = FixedPointOptimizer(inner, state=format)
        for _ in range(3):
            optimizer.zero_grad()
            (weight**2).sum().backward()
            optimizer.step()
        state = optimizer.state[weight]
        for key in keys:
            assert _on_grid(state[key], format)
        if "mu_product" in state:  # a scalar of the algorithm, not a moment: left alone
            assert not _on_grid(state["mu_product"].reshape(1), format)
            assert state["step"].item() == 3


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
def test_cpu_cuda_identical(dtype):
    full = wide_input((1_000_003,), "cpu", dtype, 16, 10)
    for x in (full, full[1:], full[3:]):  # aligned, and unaligned storage (the kernels' scalar path)
        nearest_cpu = F.fixed_point_quantize(x, 16, 10, "nearest")
        assert torch.equal(F.fixed_point_quantize(x.cuda(), 16, 10, "nearest").cpu(), nearest_cpu)
        for wl, fl in ((8, 4), (20, 10)):  # int8 and int32 codes
            assert torch.equal(to_fixed(x.cuda(), wl, fl).cpu(), to_fixed(x, wl, fl))
        # Stochastic: the CUDA result equals the reference of its stream, which the CPU kernel
        # matches exactly for any stream (test_equals_reference): the two agree bit for bit.
        out, seed_offset = ops.fixed_point_quantize(x.cuda(), 16, 10, "stochastic", True, False, None)
        assert torch.equal(out.cpu(), reference(x, 16, 10, "stochastic", True, False, seed_offset.cpu()))
        codes, seed_offset = ops.fixed_point_to_codes(x.cuda(), 12, 6, "stochastic", False, None)
        expected = reference(x, 12, 6, "stochastic", True, False, seed_offset.cpu())
        # expected is rounded to dtype once (bfloat16 holds 8 of the codes' 12 bits): so are the codes.
        assert torch.equal(from_fixed(codes.cpu(), 6, torch.float64).to(dtype), expected)


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_in_place_equals_out_of_place(device, dtype, rounding):
    x = wide_input((37, 29), device, dtype, 12, 6)
    for select in (lambda t: t, lambda t: t.t(), lambda t: t[:, 1:]):  # contiguous, then through a copy
        expected = F.fixed_point_quantize(select(x), 12, 6, rounding, generator=torch.Generator(device).manual_seed(4))
        base = x.clone()
        view = select(base)
        assert F.fixed_point_quantize_(view, 12, 6, rounding, generator=torch.Generator(device).manual_seed(4)) is view
        assert torch.equal(view, expected)
        if view.numel() < x.numel():
            assert torch.equal(base[:, 0], x[:, 0])  # outside the view: untouched
    seed_offset = ops.fixed_point_quantize_(x.clone(), 8, 4, "stochastic", True, False, None)
    assert seed_offset.dtype == torch.int64 and seed_offset.shape == (2,)


def test_in_place_refuses_autograd_and_passes_opcheck(device):
    w = torch.randn(8, 5, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        F.fixed_point_quantize_(w, 8, 4)
    with torch.no_grad():
        assert F.fixed_point_quantize_(w, 8, 4, "nearest") is w
    assert torch.equal(w.detach() * 16, (w.detach() * 16).round())
    for rounding in ("nearest", "stochastic"):
        check_opcheck(ops.fixed_point_quantize_.default, (torch.randn(6, 7, device=device), 8, 4, rounding, True, False,
                                                          None))
    with pytest.raises(RuntimeError, match="self must be float32"):
        ops.fixed_point_quantize_(torch.zeros(3, dtype=torch.int32, device=device), 8, 4)

    def step(t):
        fastnets.functional.fixed_point_quantize_(t, 8, 4, "nearest")
        return t * 2

    check_compiles(step, torch.randn(5, 6, device=device))
