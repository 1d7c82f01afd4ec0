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
