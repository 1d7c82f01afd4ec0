from typing import Optional

from torch import Tensor, nn

from fastnets.quant.format import FixedPoint, quantize


class FixedPointQuantizer(nn.Module):
    """Rounds what passes through it to a fixed-point format, and the gradient that comes back
    to another: placed between layers, it puts activations and their gradients in fixed point.

    Args:
        forward: format of the output (None: passes the input through).
        backward: format of the gradient (None: passes straight through).
        zero_outside_range: zero the gradient where the input lay outside ``forward``'s range.

    Shape: any; float32, float64, float16 or bfloat16; output of the input's shape and dtype.
    """

    def __init__(self, forward: Optional[FixedPoint] = None, backward: Optional[FixedPoint] = None,
                 zero_outside_range: bool = False) -> None:
        super().__init__()
        for name, value in (("forward", forward), ("backward", backward)):
            if value is not None and not isinstance(value, FixedPoint):
                raise TypeError(f"{name} must be a fastnets.quant.FixedPoint or None, got {type(value).__name__}")
        self.forward_format = forward
        self.backward_format = backward
        self.zero_outside_range = zero_outside_range

    def forward(self, input: Tensor) -> Tensor:
        return quantize(input, self.forward_format, self.backward_format, self.zero_outside_range)

    def extra_repr(self) -> str:
        return f"forward={self.forward_format}, backward={self.backward_format}, zero_outside_range={self.zero_outside_range}"
