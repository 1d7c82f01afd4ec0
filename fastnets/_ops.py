"""Fake (meta) implementations and autograd formulas of the dispatcher ops in ``csrc/``.

Every backward is itself a registered op, so autograd, ``torch.compile`` and ``opcheck`` see
only dispatcher ops.
"""
import torch

ops = torch.ops.fastnets


# ---- random -------------------------------------------------------------------------------

@torch.library.register_fake("fastnets::philox_bits")
def _philox_bits_fake(seed_offset, numel):
    return seed_offset.new_empty(numel)


# ---- dropout ------------------------------------------------------------------------------

@torch.library.register_fake("fastnets::dropout")
def _dropout_fake(input, p, generator=None):
    output = torch.empty_like(input, memory_format=torch.contiguous_format)
    return output, input.new_empty(2, dtype=torch.int64)


@torch.library.register_fake("fastnets::dropout_backward")
def _dropout_backward_fake(grad_output, seed_offset, p):
    return torch.empty_like(grad_output, memory_format=torch.contiguous_format)


def _dropout_setup_context(ctx, inputs, output):
    _, p, _ = inputs
    _, seed_offset = output
    ctx.save_for_backward(seed_offset)  # two integers: the whole saved state
    ctx.p = p


def _dropout_backward(ctx, grad_output, _grad_seed_offset):
    (seed_offset,) = ctx.saved_tensors
    return ops.dropout_backward(grad_output, seed_offset, ctx.p), None, None


torch.library.register_autograd("fastnets::dropout", _dropout_backward, setup_context=_dropout_setup_context)


def _dropout_backward_setup_context(ctx, inputs, output):
    _, seed_offset, p = inputs
    ctx.save_for_backward(seed_offset)
    ctx.p = p


def _dropout_backward_backward(ctx, grad):
    # dropout_backward is linear in grad_output with the same mask: its own derivative.
    (seed_offset,) = ctx.saved_tensors
    return ops.dropout_backward(grad, seed_offset, ctx.p), None, None


torch.library.register_autograd(
    "fastnets::dropout_backward", _dropout_backward_backward, setup_context=_dropout_backward_setup_context
)


# ---- fixed-point quantization -------------------------------------------------------------

_CODE_DTYPES = ((8, torch.int8), (16, torch.int16), (32, torch.int32))


def fixed_point_code_dtype(wl: int) -> torch.dtype:
    """The smallest integer dtype that holds wl-bit codes (as the kernel picks it)."""
    for bits, dtype in _CODE_DTYPES:
        if wl <= bits:
            return dtype
    raise ValueError(f"wl must be in [1, 32] for integer codes, got {wl}")


@torch.library.register_fake("fastnets::fixed_point_quantize")
def _fixed_point_quantize_fake(input, wl, fl, rounding="stochastic", clamp=True, symmetric=False, generator=None):
    output = torch.empty_like(input, memory_format=torch.contiguous_format)
    return output, input.new_empty(2, dtype=torch.int64)


@torch.library.register_fake("fastnets::fixed_point_to_codes")
def _fixed_point_to_codes_fake(input, wl, fl, rounding="nearest", symmetric=False, generator=None):
    codes = input.new_empty(input.shape, dtype=fixed_point_code_dtype(wl))
    return codes, input.new_empty(2, dtype=torch.int64)


def _straight_through(ctx, grad_output, _grad_seed_offset):
    # The rounding's derivative is taken as 1 (Gupta et al. 2015): the gradient passes unchanged.
    return grad_output, None, None, None, None, None, None


torch.library.register_autograd("fastnets::fixed_point_quantize", _straight_through)
