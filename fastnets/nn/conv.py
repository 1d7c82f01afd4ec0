from typing import Optional

from torch import Tensor, nn

from fastnets import functional as F
from fastnets.nn.pooling import MaxPool2d as _MaxPool2d

class Conv2d(nn.Conv2d):
    """Drop-in for :class:`torch.nn.Conv2d`: same constructor, initialization, parameters and
    ``state_dict`` keys (``weight``, ``bias``), so checkpoints load either way; the convolution
    runs in fastnets' kernels.

    padding_mode "zeros" pads inside the kernel; "reflect", "replicate" and "circular" pad the
    input first, as torch.nn.Conv2d does.

    Shape: (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, H_out, W_out) or (C_out, H_out, W_out);
    float32, float64, float16 or bfloat16.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            padded = nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)

class ConvReLUPool2d(nn.Conv2d):
    """``MaxPool2d(pool_kernel, pool_stride)(ReLU()(Conv2d(...)(x)))`` as one fused layer.

    The convolution's arguments, parameters, initialization and ``state_dict`` keys are
    :class:`torch.nn.Conv2d`'s, so the weights of a ``Conv2d`` load into it (and back). The
    pooling: ``pool_kernel`` (int or pair), ``pool_stride`` (default ``pool_kernel``), no padding,
    floor mode, at most 128 positions per window.

    Shape: (N, C_in, H, W) -> (N, C_out, H_pool, W_pool); float32, float64, float16 or bfloat16.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 pool_kernel=2, pool_stride=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.pool_kernel = nn.modules.utils._pair(pool_kernel)
        self.pool_stride = self.pool_kernel if pool_stride is None else nn.modules.utils._pair(pool_stride)

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, pool: nn.MaxPool2d) -> "ConvReLUPool2d":
        """The fused layer of ``conv -> ReLU -> pool``, sharing ``conv``'s parameters."""
        pool_kernel = nn.modules.utils._pair(pool.kernel_size)
        pool_stride = pool_kernel if pool.stride is None else nn.modules.utils._pair(pool.stride)
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.__dict__.update({k: v for k, v in conv.__dict__.items() if k not in ("_parameters", "_buffers",
                                                                                  "_modules")})
        fused._parameters = dict(conv._parameters)
        fused._buffers = dict(conv._buffers)
        fused._modules = {}
        fused.pool_kernel, fused.pool_stride = pool_kernel, pool_stride
        return fused

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pool_kernel={self.pool_kernel}, pool_stride={self.pool_stride}"

    def forward(self, input: Tensor) -> Tensor:
        if self.padding_mode != "zeros":
            input = nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        return F.conv_relu_pool2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                                  self.pool_kernel, self.pool_stride)

def _fusable_conv(conv: nn.Module) -> bool:
    """Plain convolutions only: a subclass may compute something else, a parametrized or lazy
    weight is not a plain parameter."""
    return (type(conv) in (nn.Conv2d, Conv2d) and not nn.utils.parametrize.is_parametrized(conv)
            and not isinstance(conv.weight, nn.parameter.UninitializedParameter))


def _fusable_pool(pool: nn.Module) -> bool:
    if type(pool) is not nn.MaxPool2d and not isinstance(pool, _MaxPool2d):
        return False
    pad = nn.modules.utils._pair(pool.padding)
    dilation = nn.modules.utils._pair(pool.dilation)
    kernel = nn.modules.utils._pair(pool.kernel_size)
    return (pad == (0, 0) and dilation == (1, 1) and not pool.ceil_mode and not pool.return_indices
            and kernel[0] * kernel[1] <= 128)

def fuse_conv_relu_pool(model: nn.Module) -> nn.Module:
    """Replaces every ``Conv2d -> ReLU -> MaxPool2d`` run of consecutive children of an
    :class:`torch.nn.Sequential` (at any depth) by a :class:`ConvReLUPool2d` sharing the
    convolution's parameters, in place; returns ``model``.

    Runs whose pooling has padding, dilation, ``ceil_mode`` or ``return_indices``, and
    convolutions that are subclasses, parametrized or lazy, are left as they are. The state_dict
    keys of the fused layer are the convolution's, under the convolution's name; the ReLU and
    pooling slots become :class:`torch.nn.Identity`, so the indices of later layers do not move.
    """
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules.keys())
        for i in range(len(names) - 2):
            conv, relu, pool = (module._modules[names[i + j]] for j in range(3))
            if _fusable_conv(conv) and type(relu) is nn.ReLU and _fusable_pool(pool):
                module._modules[names[i]] = ConvReLUPool2d.from_modules(conv, pool)
                module._modules[names[i + 1]] = nn.Identity()
                module._modules[names[i + 2]] = nn.Identity()
    return model

__all__ = ["Conv2d", "ConvReLUPool2d", "fuse_conv_relu_pool"]
