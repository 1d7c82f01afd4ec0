"""Fake (meta) implementations and autograd formulas of the dispatcher ops in ``csrc/``.

Every backward is itself a registered op, so autograd, ``torch.compile`` and ``opcheck`` see
only dispatcher ops.
"""
import torch
from torch._prims_common import suggest_memory_format

ops = torch.ops.fastnets


# ---- random -------------------------------------------------------------------------------

@torch.library.register_fake("fastnets::philox_bits")
def _philox_bits_fake(seed_offset, numel, first=0):
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


@torch.library.register_fake("fastnets::fixed_point_quantize_")
def _fixed_point_quantize_inplace_fake(self, wl, fl, rounding="stochastic", clamp=True, symmetric=False,
                                       generator=None):
    return self.new_empty(2, dtype=torch.int64)


@torch.library.register_fake("fastnets::fixed_point_quantize_masked")
def _fixed_point_quantize_masked_fake(input, mask, wl, fl, rounding="stochastic", clamp=True, symmetric=False,
                                      generator=None):
    torch._check(mask.dtype == torch.bool, lambda: f"mask must be a bool tensor, got {mask.dtype}")
    torch._check(mask.shape == input.shape, lambda: f"mask must have input's size {input.shape}, got {mask.shape}")
    output = torch.empty_like(input, memory_format=torch.contiguous_format)
    return output, input.new_empty(2, dtype=torch.int64)


def _masked_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _masked_straight_through(ctx, grad_output, _grad_seed_offset):
    # Straight through where the mask holds, 0 elsewhere (as the forward).
    (mask,) = ctx.saved_tensors
    return grad_output * mask, None, None, None, None, None, None, None


torch.library.register_autograd("fastnets::fixed_point_quantize_masked", _masked_straight_through,
                                setup_context=_masked_setup_context)


@torch.library.register_fake("fastnets::fixed_point_sgd_")
def _fixed_point_sgd_fake(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                          nesterov=False, maximize=False, first_step=False, grad_format=(), weight_format=(),
                          state_format=(), generator=None):
    return param.new_empty((3, 2), dtype=torch.int64)


@torch.library.register_fake("fastnets::fixed_point_to_codes")
def _fixed_point_to_codes_fake(input, wl, fl, rounding="nearest", symmetric=False, generator=None):
    codes = input.new_empty(input.shape, dtype=fixed_point_code_dtype(wl))
    return codes, input.new_empty(2, dtype=torch.int64)


def _straight_through(ctx, grad_output, _grad_seed_offset):
    # The rounding's derivative is taken as 1 (Gupta et al. 2015): the gradient passes unchanged.
    return grad_output, None, None, None, None, None, None


torch.library.register_autograd("fastnets::fixed_point_quantize", _straight_through)


@torch.library.register_fake("fastnets::fixed_point_in_range")
def _fixed_point_in_range_fake(input, wl, fl, symmetric=False):
    return input.new_empty(input.shape, dtype=torch.bool)


# ---- maxout -------------------------------------------------------------------------------

def _maxout_output_shape(shape, pieces, dim):
    sizes = list(shape)
    torch._check(len(sizes) > 0, lambda: "input must have at least one dimension, got a scalar")
    torch._check(1 <= pieces <= 256, lambda: f"pieces must be in [1, 256], got {pieces}")
    dim = dim % len(sizes)
    torch._check(sizes[dim] % pieces == 0, lambda: f"pieces ({pieces}) must divide input.size({dim}) = {sizes[dim]}")
    sizes[dim] = sizes[dim] // pieces
    return sizes, dim


@torch.library.register_fake("fastnets::maxout")
def _maxout_fake(input, pieces, dim=1):
    sizes, _ = _maxout_output_shape(input.shape, pieces, dim)
    return input.new_empty(sizes), input.new_empty(sizes, dtype=torch.uint8)


@torch.library.register_fake("fastnets::maxout_backward")
def _maxout_backward_fake(grad_output, argmax, pieces, dim=1):
    sizes = list(grad_output.shape)
    dim = dim % len(sizes)
    sizes[dim] = sizes[dim] * pieces
    return grad_output.new_empty(sizes)


def _maxout_setup_context(ctx, inputs, output):
    _, pieces, dim = inputs
    _, argmax = output
    ctx.save_for_backward(argmax)  # one byte per output
    ctx.pieces, ctx.dim = pieces, dim


def _maxout_backward(ctx, grad_output, _grad_argmax):
    (argmax,) = ctx.saved_tensors
    return ops.maxout_backward(grad_output, argmax, ctx.pieces, ctx.dim), None, None


torch.library.register_autograd("fastnets::maxout", _maxout_backward, setup_context=_maxout_setup_context)


def _maxout_backward_setup_context(ctx, inputs, output):
    _, argmax, pieces, dim = inputs
    ctx.save_for_backward(argmax)
    ctx.pieces, ctx.dim = pieces, dim


def _maxout_backward_backward(ctx, grad):
    # maxout_backward routes grad_output to the winners: its derivative picks them back.
    (argmax,) = ctx.saved_tensors
    dim = ctx.dim % grad.dim()
    groups = grad.shape[dim] // ctx.pieces
    winners = argmax.long().unsqueeze(dim + 1)
    return grad.unflatten(dim, (groups, ctx.pieces)).gather(dim + 1, winners).squeeze(dim + 1), None, None, None


torch.library.register_autograd("fastnets::maxout_backward", _maxout_backward_backward,
                                setup_context=_maxout_backward_setup_context)


# ---- max-pooling --------------------------------------------------------------------------

def _pool_output_size(size, kernel, stride, pad, dilation, ceil_mode):
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@torch.library.register_fake("fastnets::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    torch._check(input.dim() in (3, 4), lambda: f"input must be (N, C, H, W) or (C, H, W), got {input.dim()} dims")
    out_h = _pool_output_size(input.shape[-2], kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    out_w = _pool_output_size(input.shape[-1], kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    four_d = input if input.dim() == 4 else input.unsqueeze(0)
    format = suggest_memory_format(four_d)  # as the kernels choose it
    output = four_d.new_empty((four_d.shape[0], four_d.shape[1], out_h, out_w)).contiguous(memory_format=format)
    argmax_dtype = torch.uint8 if kernel_size[0] * kernel_size[1] <= 256 else torch.int32
    argmax = torch.empty_like(output, dtype=argmax_dtype)
    if input.dim() == 3:
        return output.squeeze(0), argmax.squeeze(0)
    return output, argmax


@torch.library.register_fake("fastnets::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, argmax, input_size, kernel_size, stride, padding=(0, 0),
                              dilation=(1, 1), ceil_mode=False):
    four_d = argmax if argmax.dim() == 4 else argmax.unsqueeze(0)
    format = suggest_memory_format(four_d)
    grad = grad_output.new_empty((four_d.shape[0], four_d.shape[1], input_size[-2], input_size[-1]))
    grad = grad.contiguous(memory_format=format)
    return grad if grad_output.dim() == 4 else grad.squeeze(0)


def _max_pool2d_setup_context(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode = inputs
    _, argmax = output
    ctx.save_for_backward(argmax)  # one byte per output for windows of up to 256 elements
    ctx.input_size = input.shape
    ctx.arguments = (kernel_size, stride, padding, dilation, ceil_mode)


def _max_pool2d_backward(ctx, grad_output, _grad_argmax):
    (argmax,) = ctx.saved_tensors
    grad = ops.max_pool2d_backward(grad_output, argmax, ctx.input_size, *ctx.arguments)
    return grad, None, None, None, None, None


torch.library.register_autograd("fastnets::max_pool2d", _max_pool2d_backward, setup_context=_max_pool2d_setup_context)


def max_pool2d_winners(argmax, kernel_size, stride, padding, dilation):
    """Input row and column (h, w) of each output's winner, from its position in the window.
    A window with no tap inside the input gives a position outside it, as PyTorch's index does."""
    position = argmax.long()
    i, j = position // kernel_size[1], position % kernel_size[1]
    oh = torch.arange(argmax.shape[-2], device=argmax.device).view(-1, 1)
    ow = torch.arange(argmax.shape[-1], device=argmax.device)
    return oh * stride[0] - padding[0] + i * dilation[0], ow * stride[1] - padding[1] + j * dilation[1]


def _max_pool2d_backward_setup_context(ctx, inputs, output):
    _, argmax, _, kernel_size, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(argmax)
    ctx.arguments = (kernel_size, stride, padding, dilation)


def _max_pool2d_backward_backward(ctx, grad):
    # max_pool2d_backward routes grad_output to the winners: its derivative picks them back.
    (argmax,) = ctx.saved_tensors
    h, w = max_pool2d_winners(argmax, *ctx.arguments)
    height, width = grad.shape[-2:]
    inside = (h >= 0) & (h < height) & (w >= 0) & (w < width)
    flat = h.clamp(0, height - 1) * width + w.clamp(0, width - 1)
    picked = grad.flatten(-2).gather(-1, flat.flatten(-2)).view(argmax.shape) * inside
    return picked, None, None, None, None, None, None, None


torch.library.register_autograd("fastnets::max_pool2d_backward", _max_pool2d_backward_backward,
                                setup_context=_max_pool2d_backward_setup_context)


# ---- convolution and the fused Conv-ReLU-Pool --------------------------------------------

def _conv_output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv2d_output_shape(input, weight, stride, padding, dilation):
    torch._check(input.dim() == 4, lambda: f"input must be 4-D (N, C, H, W), got {input.dim()} dims")
    torch._check(weight.dim() == 4, lambda: f"weight must be 4-D, got {weight.dim()} dims")
    out_h = _conv_output_size(input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = _conv_output_size(input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    return input.shape[0], weight.shape[0], out_h, out_w


@torch.library.register_fake("fastnets::conv2d")
def _conv2d_fake(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return input.new_empty(_conv2d_output_shape(input, weight, stride, padding, dilation))


@torch.library.register_fake("fastnets::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    grad_input = input.new_empty(input.shape) if output_mask[0] else input.new_empty(0)
    grad_weight = input.new_empty(weight.shape) if output_mask[1] else input.new_empty(0)
    grad_bias = input.new_empty(weight.shape[0]) if output_mask[2] else input.new_empty(0)
    return grad_input, grad_weight, grad_bias


def _conv_grads(grads, output_mask):
    return tuple(g if needed else None for g, needed in zip(grads, output_mask))


def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.arguments = (stride, padding, dilation, groups)


def _conv2d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    grads = ops.conv2d_backward(grad_output, input, weight, *ctx.arguments, mask)
    return (*_conv_grads(grads, mask), None, None, None, None)


torch.library.register_autograd("fastnets::conv2d", _conv2d_backward, setup_context=_conv2d_setup_context)


@torch.library.register_fake("fastnets::conv_relu_pool2d")
def _conv_relu_pool2d_fake(input, weight, bias, stride, padding, dilation, groups, pool_kernel, pool_stride):
    batch, channels, out_h, out_w = _conv2d_output_shape(input, weight, stride, padding, dilation)
    pooled = (batch, channels, (out_h - pool_kernel[0]) // pool_stride[0] + 1,
              (out_w - pool_kernel[1]) // pool_stride[1] + 1)
    return input.new_empty(pooled), input.new_empty(pooled, dtype=torch.uint8)


@torch.library.register_fake("fastnets::conv_relu_pool2d_backward")
def _conv_relu_pool2d_backward_fake(grad_output, argmax, input, weight, stride, padding, dilation, groups,
                                    pool_kernel, pool_stride, output_mask):
    return _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask)


def _conv_relu_pool2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, pool_kernel, pool_stride = inputs
    _, argmax = output
    ctx.save_for_backward(input, weight, argmax)  # no convolution output: a byte per pooled output
    ctx.has_bias = bias is not None
    ctx.arguments = (stride, padding, dilation, groups, pool_kernel, pool_stride)


def _conv_relu_pool2d_backward(ctx, grad_output, _grad_argmax):
    input, weight, argmax = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    grads = ops.conv_relu_pool2d_backward(grad_output, argmax, input, weight, *ctx.arguments, mask)
    return (*_conv_grads(grads, mask), None, None, None, None, None, None)


torch.library.register_autograd("fastnets::conv_relu_pool2d", _conv_relu_pool2d_backward,
                                setup_context=_conv_relu_pool2d_setup_context)


# ---- RBM unit sampling --------------------------------------------------------------------

@torch.library.register_fake("fastnets::rbm_sample")
def _rbm_sample_fake(input, weight, bias=None, unit="bernoulli", sample=True, generator=None, seed_offset=None):
    torch._check(input.dim() == 2, lambda: f"input must be 2-D (batch, in_features), got {input.dim()}-D")
    torch._check(weight.dim() == 2, lambda: f"weight must be 2-D (out_features, in_features), got {weight.dim()}-D")
    torch._check(weight.shape[1] == input.shape[1],
                 lambda: f"weight must have in_features = input.size(1) = {input.shape[1]} columns")
    mean = input.new_empty(input.shape[0], weight.shape[0])
    samples = input.new_empty(mean.shape if sample else (0,))
    return mean, samples, input.new_empty(2, dtype=torch.int64)


def _rbm_sample_setup_context(ctx, inputs, output):
    input, weight, bias, unit = inputs[:4]
    mean, _, _ = output
    ctx.unit = unit
    ctx.has_bias = bias is not None
    ctx.save_for_backward(input, weight, mean if unit == "bernoulli" else None)


def _rbm_grad_total_input(unit, grad_mean, mean):
    # The mean is sigmoid(a) (Bernoulli units) or a itself (Gaussian); samples are not differentiable.
    return grad_mean if unit == "gaussian" else grad_mean * mean * (1 - mean)


def _rbm_sample_backward(ctx, grad_mean, _grad_sample, _grad_seed_offset):
    input, weight, mean = ctx.saved_tensors
    grad_total = _rbm_grad_total_input(ctx.unit, grad_mean, mean)
    grad_input = grad_total @ weight if ctx.needs_input_grad[0] else None
    grad_weight = grad_total.t() @ input if ctx.needs_input_grad[1] else None
    grad_bias = grad_total.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return grad_input, grad_weight, grad_bias, None, None, None, None


torch.library.register_autograd("fastnets::rbm_sample", _rbm_sample_backward, setup_context=_rbm_sample_setup_context)


@torch.library.register_fake("fastnets::rbm_sample_units")
def _rbm_sample_units_fake(total_input, unit="bernoulli", sample=True, generator=None, seed_offset=None):
    mean = torch.empty_like(total_input, memory_format=torch.contiguous_format)
    samples = torch.empty_like(mean) if sample else total_input.new_empty(0)
    return mean, samples, total_input.new_empty(2, dtype=torch.int64)


def _rbm_sample_units_setup_context(ctx, inputs, output):
    ctx.unit = inputs[1]
    ctx.save_for_backward(output[0] if ctx.unit == "bernoulli" else None)


def _rbm_sample_units_backward(ctx, grad_mean, _grad_sample, _grad_seed_offset):
    (mean,) = ctx.saved_tensors
    return _rbm_grad_total_input(ctx.unit, grad_mean, mean), None, None, None, None


torch.library.register_autograd("fastnets::rbm_sample_units", _rbm_sample_units_backward,
                                setup_context=_rbm_sample_units_setup_context)


# ---- LSTM ---------------------------------------------------------------------------------

@torch.library.register_fake("fastnets::lstm_layer")
def _lstm_layer_fake(input, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, cudnn_tf32=False,
                     batch_sizes=None):
    rank = 3 if batch_sizes is None else 2
    torch._check(input.dim() == rank, lambda: f"input must be {rank}-D, got {input.dim()}-D")
    torch._check(w_hh.dim() == 2 and w_hh.shape[0] == 4 * w_hh.shape[1],
                 lambda: "w_hh must be 2-D (4 * hidden_size, hidden_size)")
    steps, hidden = input.shape[:-1], w_hh.shape[1]  # (time, batch) or (packed rows,)
    return (input.new_empty(*steps, hidden), h0.new_empty(h0.shape[0], hidden), c0.new_empty(c0.shape[0], hidden),
            input.new_empty(*steps, 4 * hidden), input.new_empty(*steps, hidden))


@torch.library.register_fake("fastnets::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, output, gates,
                              cell_states, reverse=False, output_mask=(True, True, True, True), cudnn_tf32=False,
                              batch_sizes=None):
    # any of the three gradients may be None; the gradients output_mask leaves out are empty, one
    # tensor apiece (an op's outputs do not alias each other)
    def none():
        return input.new_empty(0)
    wanted_input, wanted_weights, wanted_bias, wanted_states = output_mask
    return (torch.empty_like(input, memory_format=torch.contiguous_format) if wanted_input else none(),
            h0.new_empty(h0.shape) if wanted_states else none(), c0.new_empty(c0.shape) if wanted_states else none(),
            w_ih.new_empty(w_ih.shape) if wanted_weights else none(),
            w_hh.new_empty(w_hh.shape) if wanted_weights else none(),
            w_ih.new_empty(w_ih.shape[0]) if wanted_bias else none())


def _lstm_layer_setup_context(ctx, inputs, output):
    input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, cudnn_tf32, batch_sizes = inputs
    out, _, _, gates, cell_states = output
    ctx.save_for_backward(input, h0, c0, w_ih, w_hh, out, gates, cell_states, batch_sizes)
    ctx.mark_non_differentiable(gates, cell_states)  # saved for backward, not results to differentiate
    ctx.reverse, ctx.cudnn_tf32 = reverse, cudnn_tf32
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.set_materialize_grads(False)  # unused outputs' gradients stay None: the kernel reads them as zero


def _lstm_layer_backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_gates, _grad_cell_states):
    input, h0, c0, w_ih, w_hh, output, gates, cell_states, batch_sizes = ctx.saved_tensors
    if grad_output is None and grad_h_n is None and grad_c_n is None:
        return (None,) * 10
    needs = ctx.needs_input_grad
    has_b_ih, has_b_hh = ctx.has_bias
    mask = [needs[0], needs[3] or needs[4], (has_b_ih and needs[5]) or (has_b_hh and needs[6]), needs[1] or needs[2]]
    grads = ops.lstm_layer_backward(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, output, gates,
                                    cell_states, ctx.reverse, mask, ctx.cudnn_tf32, batch_sizes)
    grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias = grads
    return (grad_input if needs[0] else None, grad_h0 if needs[1] else None, grad_c0 if needs[2] else None,
            grad_w_ih if needs[3] else None, grad_w_hh if needs[4] else None,
            grad_bias if has_b_ih and needs[5] else None, grad_bias if has_b_hh and needs[6] else None, None, None,
            None)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fastnets.nn.LSTM / lstm_layer: double backward (a gradient of the gradient) is not "
                       "supported")


torch.library.register_autograd("fastnets::lstm_layer", _lstm_layer_backward, setup_context=_lstm_layer_setup_context)
torch.library.register_autograd("fastnets::lstm_layer_backward", _no_double_backward)


# ---- matmul (the CPU GEMM of the LSTM layer) ----------------------------------------------

@torch.library.register_fake("fastnets::matmul")
def _matmul_fake(a, b):
    torch._check(a.dim() == 2 and b.dim() == 2, lambda: "a and b must be 2-D")
    return a.new_empty(a.shape[0], b.shape[1])
