"""Modules: drop-in replacements for ``torch.nn`` layers (same arguments, same state_dict keys)."""
from fastnets.nn.conv import Conv2d, ConvReLUPool2d, fuse_conv_relu_pool
from fastnets.nn.dropout import Dropout
from fastnets.nn.fixed_point import FixedPointQuantizer
from fastnets.nn.maxout import Maxout, MaxoutLinear
from fastnets.nn.pooling import MaxPool2d
from fastnets.nn.rbm import DBN, RBM
from fastnets.nn.rnn import LSTM, LSTMCell

__all__ = ["Conv2d", "ConvReLUPool2d", "fuse_conv_relu_pool", "Dropout", "FixedPointQuantizer", "Maxout",
           "MaxoutLinear", "MaxPool2d", "RBM", "DBN", "LSTM", "LSTMCell"]
