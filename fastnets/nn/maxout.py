import math

import torch
from torch import Tensor, nn

from fastnets import functional as F


class Maxout(nn.Module):
    """Maxout over ``dim``: groups of ``pieces`` consecutive entries reduced to their max.

    Shape: ``(*, C * pieces, *)`` -> ``(*, C, *)`` along ``dim``. See :func:`fastnets.functional.maxout`.
    """

    def __init__(self, pieces: int, dim: int = 1) -> None:
        super().__init__()
        if not isinstance(pieces, int) or pieces < 1:
            raise ValueError(f"pieces must be a positive int, got {pieces!r}")
        self.pieces, self.dim = pieces, dim

    def forward(self, input: Tensor) -> Tensor:
        return F.maxout(input, self.pieces, self.dim)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}, dim={self.dim}"


class MaxoutLinear(nn.Module):
    """A maxout layer as in Goodfellow et al. 2013: ``out_features * pieces`` affine outputs,
    and each output unit the max of its ``pieces`` consecutive ones.

    ``weight``: (out_features * pieces, in_features), rows ``[i * pieces, (i + 1) * pieces)``
    belonging to unit ``i``; ``bias``: (out_features * pieces,). Initialised as
    :class:`torch.nn.Linear` of that size.

    Shape: ``(*, in_features)`` -> ``(*, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, pieces: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        if pieces < 1:
            raise ValueError(f"pieces must be a positive int, got {pieces!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.pieces = in_features, out_features, pieces
        self.weight = nn.Parameter(torch.empty(out_features * pieces, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features * pieces, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as torch.nn.Linear
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor) -> Tensor:
        return F.maxout(torch.nn.functional.linear(input, self.weight, self.bias), self.pieces, dim=-1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, pieces={self.pieces}, "
                f"bias={self.bias is not None}")
