from torch import nn

from fastnets import functional as F


class MaxPool2d(nn.MaxPool2d):
    """Drop-in for :class:`torch.nn.MaxPool2d` (same arguments, results and gradients) whose
    backward keeps a one-byte window position per output instead of an int64 index.

    Shape: (N, C, H_in, W_in) or (C, H_in, W_in) -> (N, C, H_out, W_out) or (C, H_out, W_out);
    float32, float64, float16 or bfloat16; contiguous or channels_last.
    """

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)
