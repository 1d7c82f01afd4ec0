"""Functional API: the ops with ``torch.nn.functional``'s argument names, checks and defaults."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from fastnets._ops import max_pool2d_winners

ops = torch.ops.fastnets


def _check_probability(p: float, name: str = "p") -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability {name} has to be between 0 and 1, but got {p}")


def fixed_point_quantize(
    input: Tensor,
    wl: int,
    fl: int,
    rounding: str = "stochastic",
    clamp: bool = True,
    symmetric: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Rounds ``input`` to the fixed-point format <IL, FL> = <wl - fl, fl> (Gupta et al. 2015).

    Values on the grid are ``k * 2^-fl`` for integer codes ``k`` in ``[-2^(wl-1), 2^(wl-1) - 1]``
    (``symmetric``: from ``-(2^(wl-1) - 1)``). The argument names are QPyTorch's
    (``qtorch.quant.fixed_point_quantize``), so its callers can switch by keyword.

    Args:
        input: tensor of any shape; float32, float64, float16 or bfloat16; CPU or CUDA.
        wl: word length in bits, sign bit included, in [1, 53].
        fl: fraction bits; zero or negative for integer and coarser grids. The grid step
            ``2^-fl``, ``2^fl`` and the largest value must be finite doubles.
        rounding: ``"nearest"`` (ties to even) or ``"stochastic"``: round up with probability
            equal to the fractional part (resolution 2^-32), so that E[output] = input within
            the range. The random numbers come from the Philox stream of
            :mod:`fastnets.random`, word ``i`` for element ``i`` (row-major).
        clamp: saturate values outside the range (+-inf included) to its ends; NaN stays NaN.
        symmetric: drop the most negative code, so the range is symmetric.
        generator: for stochastic rounding; default: torch's generator for the device.

    Returns:
        A contiguous tensor of ``input``'s shape and dtype. The rounding is exact in float64; for
        float32, float16 and bfloat16 the result is then cast (16-bit dtypes through float32) and
        is on the grid only where the dtype can hold the grid's values (always for formats no
        finer than the dtype; not for, e.g., wl = 16 in bfloat16).

    The gradient is straight-through: it passes unchanged (see :func:`fastnets.quant.quantize`
    to round it too or to zero it outside the range).
    """
    output, _ = ops.fixed_point_quantize(input, wl, fl, rounding, clamp, symmetric, generator)
    return output


def fixed_point_quantize_(
    input: Tensor,
    wl: int,
    fl: int,
    rounding: str = "stochastic",
    clamp: bool = True,
    symmetric: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """:func:`fixed_point_quantize` in place: ``input`` is rounded where it lies (contiguous
    tensors in one pass, without allocating) and returned; the same random numbers are drawn.
    Not differentiable: for weights, gradients and optimizer state, under ``torch.no_grad()``.
    """
    if input.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("fixed_point_quantize_ is not differentiable: call it under torch.no_grad() "
                           "(or use fixed_point_quantize)")
    ops.fixed_point_quantize_(input, wl, fl, rounding, clamp, symmetric, generator)
    return input


def maxout(input: Tensor, pieces: int, dim: int = 1) -> Tensor:
    """Maxout (Goodfellow et al. 2013): the max over groups of ``pieces`` consecutive entries of ``dim``.

    ``input`` of size ``C * pieces`` along ``dim`` gives an output of size ``C`` there:
    ``output[..., c, ...] = max_k input[..., c * pieces + k, ...]``, equal to
    ``input.unflatten(dim, (C, pieces)).max(dim + 1).values``, NaN included (a NaN wins) and the
    first maximum taking the gradient on ties. Works for (N, F) activations and (N, C, H, W)
    feature maps alike; float32, float64, float16, bfloat16; CPU and CUDA.

    The backward pass keeps the winning piece in one byte per output.
    """
    output, _ = ops.maxout(input, pieces, dim)
    return output


def _pair(value, name: str) -> List[int]:
    if isinstance(value, int):
        return [value, value]
    values = list(value)
    if len(values) == 1:
        return values * 2
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return values


def _max_pool2d_indices(argmax: Tensor, width: int, kernel_size, stride, padding, dilation) -> Tensor:
    """PyTorch's flat indices h * W + w from the positions in the window."""
    h, w = max_pool2d_winners(argmax, kernel_size, stride, padding, dilation)
    return h * width + w


def max_pool2d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """2-D max-pooling with :func:`torch.nn.functional.max_pool2d`'s arguments and results.

    Args:
        input: (N, C, H, W) or (C, H, W); float32, float64, float16 or bfloat16; contiguous or
            channels_last (kept in the output); CPU or CUDA.
        kernel_size, stride (default: kernel_size), padding, dilation: ints or (h, w) pairs.
            Windows may overlap (e.g. 3x3 with stride 2, Krizhevsky et al. 2012).
        ceil_mode: ceil instead of floor in the output size (no window starts in the padding).
        return_indices: also return PyTorch's int64 flat indices ``h * W + w`` of the maxima,
            which :class:`torch.nn.MaxUnpool2d` takes.

    Same values, indices and gradients as PyTorch: a value wins if it is greater or NaN (the
    last NaN of a window wins, else the first maximum). The backward pass keeps the winner's
    position in its window, one byte per output for windows of up to 256 elements.
    """
    kernel = _pair(kernel_size, "kernel_size")
    strides = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, "stride")
    pads, dilations = _pair(padding, "padding"), _pair(dilation, "dilation")
    output, argmax = ops.max_pool2d(input, kernel, strides, pads, dilations, ceil_mode)
    if return_indices:
        return output, _max_pool2d_indices(argmax, input.shape[-1], kernel, strides, pads, dilations)
    return output


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


def _conv_padding(input: Tensor, weight: Tensor, padding, stride: List[int], dilation: List[int]):
    """Symmetric padding for the kernels, and the input with any extra right/bottom padding
    that padding="same" needs for even kernels (as PyTorch pads it)."""
    if not isinstance(padding, str):
        return input, _pair(padding, "padding")
    if padding == "valid":
        return input, [0, 0]
    if padding != "same":
        raise ValueError(f"padding must be 'valid', 'same', an int or a pair of ints, got {padding!r}")
    if stride != [1, 1]:
        raise ValueError("padding='same' is not supported for strided convolutions")
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[-2:])]
    left = [t // 2 for t in total]
    extra = [t - 2 * lo for t, lo in zip(total, left)]
    if any(extra):
        input = torch.nn.functional.pad(input, [0, extra[1], 0, extra[0]])
    return input, left


def _conv_arguments(input: Tensor, weight: Tensor, stride, padding, dilation):
    if input.dim() not in (3, 4):
        raise ValueError(f"input must be (N, C, H, W) or (C, H, W), got shape {tuple(input.shape)}")
    batched = input.dim() == 4
    x = input if batched else input.unsqueeze(0)
    strides, dilations = _pair(stride, "stride"), _pair(dilation, "dilation")
    x, pads = _conv_padding(x, weight, padding, strides, dilations)
    return x, strides, pads, dilations, batched


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution with :func:`torch.nn.functional.conv2d`'s arguments and results.

    Args:
        input: (N, C_in, H, W) or (C_in, H, W); float32, float64, float16 or bfloat16; CPU or CUDA.
        weight: (C_out, C_in / groups, kH, kW), same dtype and device.
        bias: (C_out,) or None.
        stride, dilation: int or (h, w) pair.
        padding: int, (h, w) pair, "valid" or "same" (stride 1; even kernels get the extra
            row/column at the bottom/right, as in PyTorch). Zero padding.
        groups: input and output channels split into this many independent convolutions.

    Returns:
        (N, C_out, H_out, W_out) (or unbatched), contiguous, in input's dtype; accumulation in
        float32 (float64 for float64 inputs), rounded once.
    """
    x, strides, pads, dilations, batched = _conv_arguments(input, weight, stride, padding, dilation)
    output = ops.conv2d(x, weight, bias, strides, pads, dilations, groups)
    return output if batched else output.squeeze(0)


def conv_relu_pool2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    pool_kernel=2,
    pool_stride=None,
) -> Tensor:
    """``max_pool2d(relu(conv2d(input, weight, bias, ...)), pool_kernel, pool_stride)`` in one pass.

    The convolution arguments are :func:`conv2d`'s. The pooling has no padding and floor mode
    (every window lies inside the convolution's output); ``pool_stride`` defaults to
    ``pool_kernel``; windows have at most 128 positions. Values and gradients are those of the
    three PyTorch ops (ties and NaN included) in float32 and float64; in float16 and bfloat16 the
    pooling compares the float32 pre-activations, which PyTorch rounds first, so a winner (and
    with it the gradient's position) may differ where rounding makes values tie. Only the pooled
    output and one byte per pooled output (the winner and whether its ReLU was active) are
    written, and backward needs no convolution output.

    Shape: (N, C_in, H, W) -> (N, C_out, H_pool, W_pool) (or unbatched).
    """
    x, strides, pads, dilations, batched = _conv_arguments(input, weight, stride, padding, dilation)
    kernel = _pair(pool_kernel, "pool_kernel")
    pool_strides = kernel if pool_stride is None else _pair(pool_stride, "pool_stride")
    output, _ = ops.conv_relu_pool2d(x, weight, bias, strides, pads, dilations, groups, kernel, pool_strides)
    return output if batched else output.squeeze(0)


RBM_UNITS = ("bernoulli", "gaussian")


def check_rbm_unit(unit: str, name: str = "unit") -> None:
    if unit not in RBM_UNITS:
        raise ValueError(f'{name} must be "bernoulli" or "gaussian", got {unit!r}')


def rbm_sample(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    unit: str = "bernoulli",
    sample: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """One layer of RBM units given the states of the other layer: their means and a sample.

    The total input ``a = input @ weight.T + bias`` (as :func:`torch.nn.functional.linear`, one
    GEMM) is followed by one fused pass that writes the means, ``sigmoid(a)`` for ``"bernoulli"``
    units or ``a`` for ``"gaussian"`` units (unit variance), and draws every unit from the Philox
    stream: ``1.0`` iff ``u < mean`` for Bernoulli units, ``a + z`` with ``z ~ N(0, 1)`` (Box-Muller)
    for Gaussian ones. For an RBM with weights ``W`` of shape (hidden, visible): hidden given
    visible is ``rbm_sample(v, W, b_hidden)``, visible given hidden ``rbm_sample(h, W.t(), b_visible)``
    (a transposed view; nothing is copied).

    Args:
        input: (batch, in_features) or (in_features,), float32, float64, float16 or bfloat16.
        weight: (out_features, in_features), same dtype and device.
        bias: (out_features,) or None.
        unit: ``"bernoulli"`` or ``"gaussian"``.
        sample: draw samples; if false only the means are computed (no random numbers drawn).
        generator: a ``torch.Generator`` on the input's device; default: torch's default one.

    Returns:
        ``(mean, sample)``, both (batch, out_features) (or (out_features,)) in input's dtype;
        ``sample`` is None when ``sample`` is false. Gradients flow through ``mean`` only.

    Element ``i`` (row-major) of a Bernoulli sample is ``fastnets.random.uniform`` word ``i`` of
    the call's stream ``< mean[i]`` (float32 uniforms for float32/float16/bfloat16, float64 for
    float64): see :func:`fastnets.random.rbm_bernoulli` and :func:`fastnets.random.rbm_normal`.
    """
    check_rbm_unit(unit)
    batched = input.dim() != 1
    mean, samples, _ = ops.rbm_sample(input if batched else input.unsqueeze(0), weight, bias, unit, sample, generator)
    if not batched:
        mean, samples = mean.squeeze(0), samples.squeeze(0) if sample else samples
    return mean, samples if sample else None


def rbm_sample_units(
    total_input: Tensor, unit: str = "bernoulli", sample: bool = True, generator: Optional[torch.Generator] = None
) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`rbm_sample` for units whose total input is already known (any shape): the fused pass
    alone (means and samples, the same stream contract), without the GEMM.

    Returns:
        ``(mean, sample)`` of ``total_input``'s shape and dtype (contiguous); ``sample`` is None
        when ``sample`` is false. Gradients flow through ``mean`` only.
    """
    check_rbm_unit(unit)
    mean, samples, _ = ops.rbm_sample_units(total_input, unit, sample, generator)
    return mean, samples if sample else None


def lstm_cell(
    input: Tensor,
    hx: Tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """One step of an LSTM cell, as :class:`torch.nn.LSTMCell` computes it (gates i, f, g, o).

    The gates' pre-activations are two GEMMs accumulated into one buffer (BLAS or fastnets' tiled
    GEMM on CPU, cuBLAS on CUDA); adding the biases, the activations and the state update are one
    fused pass, and the backward is one fused pass and the GEMMs. Besides the inputs and weights,
    autograd keeps the activated gates, c' and h' (no pre-activations). On CUDA, float32 GEMMs run
    in TF32 when ``torch.backends.cuda.matmul.allow_tf32`` allows it, as torch.nn.LSTMCell's do.

    Args:
        input: (batch, input_size) or (input_size,), float32, float64, float16 or bfloat16.
        hx: (h, c), each (batch, hidden_size) (or (hidden_size,) for an unbatched input).
        w_ih: (4 * hidden_size, input_size).
        w_hh: (4 * hidden_size, hidden_size).
        b_ih, b_hh: (4 * hidden_size,) or None.

    Returns:
        (h', c'), each of h's shape.
    """
    h, c = hx
    batched = input.dim() != 1
    if not batched:
        input, h, c = input.unsqueeze(0), h.unsqueeze(0), c.unsqueeze(0)
    # cudnn_tf32=False: float32 on CUDA in TF32 as torch.nn.LSTMCell's GEMMs (torch.mm's setting)
    _, h_new, c_new, _, _ = ops.lstm_layer(input.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh, False, False)
    return (h_new, c_new) if batched else (h_new.squeeze(0), c_new.squeeze(0))


def lstm_layer(
    input: Tensor,
    hx: Tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    reverse: bool = False,
    batch_sizes: Optional[Tensor] = None,
) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One LSTM layer in one direction over a whole sequence (or packed sequences of several lengths).

    One GEMM projects the inputs of all time steps; then each step accumulates the recurrent GEMM
    into its gates and runs the fused pointwise kernel. Backward through time: per step the fused
    pointwise backward and one GEMM; after the loop one GEMM for the input gradient and one for
    both weight gradients (each skipped when not needed). On CUDA, float32 GEMMs run in TF32 when
    ``torch.backends.cudnn.allow_tf32`` allows it (and cuDNN is enabled; else as
    ``torch.backends.cuda.matmul.allow_tf32`` says), as torch.nn.LSTM's do; in deterministic mode,
    and in a build without the direct cuBLAS calls, they go through ``torch.mm`` and its setting.

    Args:
        input: (time, batch, input_size); with ``batch_sizes``, packed rows (sum(batch_sizes),
            input_size) as a :class:`torch.nn.utils.rnn.PackedSequence`'s ``data``.
        hx: (h0, c0), each (batch, hidden_size) (batch = batch_sizes[0] when packed).
        w_ih, w_hh, b_ih, b_hh: as in :func:`lstm_cell`.
        reverse: run from the last time step to the first (the backward direction of a
            bidirectional LSTM); the output stays in time order.
        batch_sizes: a PackedSequence's ``batch_sizes`` (int64, on the CPU): step t has the
            first batch_sizes[t] sequences (sorted longest first); each sequence starts from its
            row of h0 and c0 at its first step (reverse: at its last).

    Returns:
        output (time, batch, hidden_size) (packed: (sum(batch_sizes), hidden_size)): h of every
        step; and (h_n, c_n): each sequence's state after its last step.
    """
    output, h_n, c_n, _, _ = ops.lstm_layer(input, hx[0], hx[1], w_ih, w_hh, b_ih, b_hh, reverse, True,
                                            batch_sizes)
    return output, (h_n, c_n)
