"""Functional API: the ops with ``torch.nn.functional``'s argument names, checks and defaults."""
from typing import Optional

import torch
from torch import Tensor

ops = torch.ops.fastnets


def _check_probability(p: float, name: str = "p") -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability {name} has to be between 0 and 1, but got {p}")


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Zeroes each element of ``input`` with probability ``p`` and scales the rest by ``1 / (1 - p)``.

    Same semantics as :func:`torch.nn.functional.dropout`: identity when ``training`` is false,
    zeros (times the input, so NaN stays NaN) when ``p = 1``. Unlike it, the mask is never stored:
    the backward pass regenerates it from the (seed, offset) pair of the Philox stream, which is
    all that autograd saves.

    Args:
        input: tensor of any shape, float32, float64, float16 or bfloat16, on CPU or CUDA;
            non-contiguous inputs are read as if contiguous (row-major element order).
        p: probability of an element being zeroed, in [0, 1].
        training: apply dropout if true, else return ``input`` itself.
        inplace: write the result into ``input`` (the kernel still reads ``input`` once and
            writes a new tensor, which is then copied back).
        generator: a ``torch.Generator`` on the input's device; default: torch's default
            generator for that device, so ``torch.manual_seed`` reproduces the mask.

    Returns:
        A tensor of ``input``'s shape and dtype (contiguous), or ``input`` itself when
        ``inplace`` or not ``training``.

    Element ``i`` (row-major) is kept iff ``fastnets.random.uniform`` word ``i`` of the call's
    stream is ``>= p`` (see :func:`fastnets.random.dropout_mask`).
    """
    _check_probability(p)
    if not training:
        return input
    output, _ = ops.dropout(input, p, generator)
    if inplace:
        return input.copy_(output)
    return output
