"""Fixed-point formats, the quantizer autograd function, and integer storage."""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from fastnets import functional as F

ops = torch.ops.fastnets

ROUNDINGS = ("nearest", "stochastic")


def _check_fl(fl: int, wl: int = 1) -> None:
    """The kernels' bounds: 2^fl, 2^-fl and the largest value must be finite, normal doubles."""
    low = max(-1022, wl - 1024)
    if not isinstance(fl, int) or not low <= fl <= 1022:
        raise ValueError(f"fl (fraction bits) must be an int in [{low}, 1022] for wl = {wl}, got {fl!r}")


@dataclass(frozen=True)
class FixedPoint:
    """A fixed-point format <IL, FL> = <wl - fl, fl> and how to round to it.

    Args:
        wl: word length in bits, sign bit included, in [1, 53].
        fl: fraction bits (grid step ``eps = 2^-fl``; zero or negative for coarser grids).
        rounding: ``"nearest"`` (ties to even) or ``"stochastic"``.
        clamp: saturate to the range ``[min, max]``.
        symmetric: drop the most negative code, so that ``min = -max``.

    Calling the format rounds a tensor: ``FixedPoint(8, 4)(x)``, with a straight-through gradient.
    """

    wl: int
    fl: int
    rounding: str = "stochastic"
    clamp: bool = True
    symmetric: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.wl, int) or not 1 <= self.wl <= 53:
            raise ValueError(f"wl (word length, sign bit included) must be an int in [1, 53], got {self.wl!r}")
        _check_fl(self.fl, self.wl)
        if self.rounding not in ROUNDINGS:
            raise ValueError(f'rounding must be "nearest" or "stochastic", got {self.rounding!r}')

    @property
    def il(self) -> int:
        """Integer bits, sign bit included."""
        return self.wl - self.fl

    @property
    def eps(self) -> float:
        """The grid step 2^-fl."""
        return 2.0 ** -self.fl

    @property
    def max(self) -> float:
        """The largest value, (2^(wl-1) - 1) * eps."""
        return (2 ** (self.wl - 1) - 1) * self.eps

    @property
    def min(self) -> float:
        """The smallest value, -2^(wl-1) * eps (symmetric: -max)."""
        return -self.max if self.symmetric else -(2 ** (self.wl - 1)) * self.eps

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return F.fixed_point_quantize(x, self.wl, self.fl, self.rounding, self.clamp, self.symmetric, generator)

    def _round(self, x: Tensor) -> Tensor:
        # The op itself, without the Python layers of F.fixed_point_quantize (for _Quantize, which
        # pays them once per layer and step); its straight-through gradient is the op's.
        return ops.fixed_point_quantize(x, self.wl, self.fl, self.rounding, self.clamp, self.symmetric, None)[0]

    def quantize_(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Rounds ``x`` in place (not differentiable) and returns it."""
        return F.fixed_point_quantize_(x, self.wl, self.fl, self.rounding, self.clamp, self.symmetric, generator)


class _Quantize(torch.autograd.Function):
    # forward(ctx, ...) rather than forward + setup_context: the latter costs about 14 us more
    # per call, which a training step pays once per quantized layer.
    @staticmethod
    def forward(ctx, x, forward_format, backward_format, zero_outside_range):
        ctx.backward_format = backward_format
        ctx.zero_outside_range = zero_outside_range and forward_format is not None and forward_format.clamp
        if ctx.zero_outside_range:
            # min <= x <= max, compared exactly, kept as a 1-byte mask, in one pass of the op
            # (two torch comparisons and an and made quantize() of 100 x 1000 float32 values
            # take 77 us instead of 35).
            f = forward_format
            ctx.save_for_backward(ops.fixed_point_in_range(x, f.wl, f.fl, f.symmetric))
        if forward_format is None:
            return x.clone()
        return forward_format._round(x)

    @staticmethod
    def backward(ctx, grad):
        f = ctx.backward_format
        if ctx.zero_outside_range:
            (inside,) = ctx.saved_tensors
            if f is None:
                return grad * inside, None, None, None
            # Masked and rounded in one pass.
            return ops.fixed_point_quantize_masked(grad, inside, f.wl, f.fl, f.rounding, f.clamp, f.symmetric)[0], \
                None, None, None
        return (grad if f is None else f._round(grad)), None, None, None


def quantize(
    x: Tensor,
    forward: Optional[FixedPoint] = None,
    backward: Optional[FixedPoint] = None,
    zero_outside_range: bool = False,
) -> Tensor:
    """Rounds ``x`` to ``forward`` and, in the backward pass, its gradient to ``backward``.

    Either format may be None (no rounding in that direction). With ``zero_outside_range`` the
    gradient is zeroed where ``x`` lay outside ``forward``'s range (where the forward
    saturated); otherwise it passes straight through. Any shape; float32, float64, float16 or
    bfloat16.
    """
    return _Quantize.apply(x, forward, backward, zero_outside_range)


def to_fixed(
    x: Tensor,
    wl: int,
    fl: int,
    rounding: str = "nearest",
    symmetric: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """The integer codes of ``x`` in the format <wl - fl, fl>, saturated: ``x ~ code * 2^-fl``.

    Returns a tensor of ``x``'s shape in int8, int16 or int32, the smallest that holds ``wl``
    bits (``wl`` in [1, 32]); NaN, which has no code, gives 0. Not differentiable.
    """
    codes, _ = ops.fixed_point_to_codes(x.detach(), wl, fl, rounding, symmetric, generator)
    return codes


def from_fixed(codes: Tensor, fl: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The values ``code * 2^-fl`` of integer codes, in ``dtype``: exact wherever ``dtype`` holds
    them, so ``from_fixed(to_fixed(x, wl, fl), fl, x.dtype)`` is ``x`` for ``x`` on the grid."""
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float64, float16 or bfloat16, got {dtype}")
    _check_fl(fl)
    values = codes.to(torch.float64) * 2.0 ** -fl  # exact: codes have at most 32 bits
    return values.to(torch.float32).to(dtype) if dtype != torch.float64 else values


@torch.no_grad()
def quantize_parameters_(module: torch.nn.Module, format: FixedPoint,
                         generator: Optional[torch.Generator] = None) -> torch.nn.Module:
    """Rounds every parameter of ``module`` to ``format`` in place, so that its weights are
    held in fixed point (FixedPointOptimizer keeps them there). Returns ``module``."""
    for parameter in module.parameters():
        format.quantize_(parameter, generator)
    return module


def quantize_activations_(module: torch.nn.Module, forward: Optional[FixedPoint],
                          backward: Optional[FixedPoint] = None, zero_outside_range: bool = False,
                          layer_types: Tuple[type, ...] = (torch.nn.Linear, torch.nn.Conv2d)) -> list:
    """Rounds the output of every ``layer_types`` submodule of ``module`` (its dot products,
    accumulated in floating point, are rounded once) to ``forward``, and the gradient flowing
    back into that output to ``backward`` (zeroed where the output saturated, with
    ``zero_outside_range``; see :func:`quantize`), through forward hooks: the model's structure
    and state_dict keys stay as they are. Returns the hooks' handles (``handle.remove()`` undoes
    it).
    """
    for name, value in (("forward", forward), ("backward", backward)):
        if value is not None and not isinstance(value, FixedPoint):
            raise TypeError(f"{name} must be a FixedPoint or None, got {type(value).__name__}")

    def hook(_module, _inputs, output):
        return quantize(output, forward, backward, zero_outside_range)

    return [layer.register_forward_hook(hook) for layer in module.modules() if isinstance(layer, layer_types)]


__all__ = ["FixedPoint", "quantize", "to_fixed", "from_fixed", "quantize_parameters_", "quantize_activations_"]
