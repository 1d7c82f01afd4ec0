"""Training in fixed point (Gupta et al. 2015): formats, quantizers with their own gradient
rounding, real integer storage, and the tools that keep a model's weights, gradients and
optimizer state in fixed point.

    fmt = FixedPoint(wl=16, fl=14, rounding="stochastic")    # <IL, FL> = <2, 14>
    y = fmt(x)                                                # x rounded to the format
    y = quantize(x, forward=fmt, backward=FixedPoint(16, 12)) # gradient rounded too
    codes = to_fixed(x, 16, 14); x_again = from_fixed(codes, 14)
    optimizer = FixedPointOptimizer(torch.optim.SGD(...), weight=fmt, grad=..., state=...)
    optimizer = FixedPointSGD(model.parameters(), lr=0.1, momentum=0.9, weight=fmt, ...)  # fused
"""
from fastnets.quant.format import (FixedPoint, from_fixed, quantize, quantize_activations_, quantize_parameters_,
                                   to_fixed)
from fastnets.quant.optim import FixedPointOptimizer, FixedPointSGD

__all__ = ["FixedPoint", "quantize", "to_fixed", "from_fixed", "quantize_parameters_", "quantize_activations_",
           "FixedPointOptimizer", "FixedPointSGD"]
