"""The Philox4x32-10 stream that every fastnets random op draws from, exposed for exact references.

Word ``i`` of the stream ``(seed, offset)`` is word ``i % 4`` of Philox4x32-10 with key
``(lo32(seed), hi32(seed))`` and counter ``(lo32(offset), hi32(offset), lo32(i // 4), hi32(i // 4))``
(``csrc/common/philox.h``). It depends on nothing else, so CPU and CUDA draw the same numbers,
whatever the thread count or launch configuration.

A random op call draws its ``(seed, offset)`` from torch's generator for the device (CUDA: the
generator's seed, and its Philox offset / 4 for a step of 4 that the call reserves; CPU: a fresh
64-bit seed from the Mersenne Twister, offset 0) and returns it as an int64 tensor
``seed_offset`` of shape [2].
"""
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

ops = torch.ops.fastnets

_U64 = (1 << 64) - 1


def _as_int64(value: int) -> int:
    """A 64-bit unsigned value in the int64 (two's complement) form the ops store."""
    value &= _U64
    return value - (1 << 64) if value >= 1 << 63 else value


def seed_offset_tensor(seed: int, offset: int, device: Union[str, torch.device, None] = None) -> Tensor:
    """The int64 tensor [seed, offset] the ops take and return (values taken modulo 2^64)."""
    return torch.tensor([_as_int64(seed), _as_int64(offset)], dtype=torch.int64, device=device)


def unpack_seed_offset(seed_offset: Tensor) -> Tuple[int, int]:
    """(seed, offset) as unsigned Python ints from a ``seed_offset`` tensor."""
    seed, offset = seed_offset.tolist()
    return seed & _U64, offset & _U64


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for size in shape:
        n *= int(size)
    return n


def philox_bits(
    shape: Sequence[int], seed: int, offset: int, device: Union[str, torch.device, None] = None, first: int = 0
) -> Tensor:
    """Words ``first`` .. ``first + numel - 1`` of the stream, in row-major order: int64 tensor of
    ``shape``, values in [0, 2^32). ``first`` (default 0) skips ahead without computing the words
    before it, e.g. to the words of a tensor's last elements."""
    shape = tuple(int(s) for s in shape)
    words = ops.philox_bits(seed_offset_tensor(seed, offset, device), _numel(shape), int(first))
    return words.reshape(shape)


def uniform(
    shape: Sequence[int],
    seed: int,
    offset: int,
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device, None] = None,
) -> Tensor:
    """Uniform numbers in [0, 1) from the stream, exactly: ``word * 2^-32`` in float64, or the
    word's top 24 bits, ``(word >> 8) * 2^-24``, in float32."""
    words = philox_bits(shape, seed, offset, device)
    if dtype == torch.float64:
        return words.to(torch.float64) * 2.0**-32
    if dtype == torch.float32:
        return ((words >> 8).to(torch.float64) * 2.0**-24).to(torch.float32)
    raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")


def dropout_mask(
    shape: Sequence[int], p: float, seed: int, offset: int, device: Union[str, torch.device, None] = None
) -> Tensor:
    """The keep mask of a dropout call with stream (seed, offset): ``uniform >= p`` (bool tensor)."""
    return uniform(shape, seed, offset, torch.float64, device) >= p


def rbm_bernoulli(mean: Tensor, seed: int, offset: int) -> Tensor:
    """The Bernoulli sample an ``rbm_sample`` call with stream (seed, offset) draws from the means it
    returned: ``1.0`` where ``uniform < mean``, in ``mean``'s dtype (float32 uniforms for float32,
    float16 and bfloat16 means, float64 for float64). Exactly equal to the op's sample."""
    dtype = torch.float64 if mean.dtype == torch.float64 else torch.float32
    u = uniform(mean.shape, seed, offset, dtype, mean.device)
    return (u < mean.to(dtype)).to(mean.dtype)


def rbm_normal(
    shape: Sequence[int],
    seed: int,
    offset: int,
    uniform_dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device, None] = None,
) -> Tensor:
    """The N(0, 1) noise of a Gaussian ``rbm_sample`` call with stream (seed, offset), in float64:
    ``sqrt(-2 ln u1) cos(2 pi u2)``, u1 = 1 - uniform from word ``i`` (never 0), u2 = uniform from
    word ``4 ceil(n / 4) + i``. ``uniform_dtype`` float64 takes the 32-bit uniforms of a float64
    call, float32 the 24-bit ones of float32, float16 and bfloat16 calls. The kernel evaluates ln
    and cos by its own polynomials (the same on CPU and CUDA) in its dtype, so this agrees to
    rounding, not bit for bit."""
    if uniform_dtype not in (torch.float64, torch.float32):
        raise ValueError(f"uniform_dtype must be torch.float64 or torch.float32, got {uniform_dtype}")
    shape = tuple(int(s) for s in shape)
    n = _numel(shape)
    second = 4 * ((n + 3) // 4)
    words = ops.philox_bits(seed_offset_tensor(seed, offset, device), second + n)
    step = 2.0**-32
    if uniform_dtype == torch.float32:
        words, step = words >> 8, 2.0**-24
    words = words.to(torch.float64)
    u1 = 1 - words[:n] * step
    u2 = words[second:] * step
    return (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).reshape(shape)


__all__ = ["seed_offset_tensor", "unpack_seed_offset", "philox_bits", "uniform", "dropout_mask", "rbm_bernoulli",
           "rbm_normal"]
