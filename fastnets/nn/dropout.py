from torch import Tensor, nn

from fastnets import functional as F


class Dropout(nn.Dropout):
    """Drop-in for :class:`torch.nn.Dropout` whose backward regenerates the mask instead of storing it.

    Args:
        p: probability of an element being zeroed, in [0, 1]. Default: 0.5.
        inplace: write the result into the input. Default: False.

    Shape: input of any shape, output of the same shape; float32, float64, float16 or bfloat16.
    Identity in eval mode. See :func:`fastnets.functional.dropout`.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout(input, self.p, self.training, self.inplace)
