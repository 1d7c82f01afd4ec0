"""The networks of the seed lecture (and of Gupta et al. 2015) for MNIST (1 x 28 x 28 inputs,
10 classes), each buildable from fastnets layers or from the equivalent torch.nn layers with the
same parameters and state_dict keys, so that the two builds can be compared and share
checkpoints."""
from torch import nn

import fastnets.nn as fnn

LAYER_SETS = ("fastnets", "torch")


def _check_layers(layers: str) -> None:
    if layers not in LAYER_SETS:
        raise ValueError(f'layers must be "fastnets" or "torch", got {layers!r}')


class TorchMaxout(nn.Module):
    """torch.nn's maxout: the max over each run of ``pieces`` consecutive features of dim 1."""

    def __init__(self, pieces: int) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, input):
        return input.unflatten(1, (input.size(1) // self.pieces, self.pieces)).amax(2)


def _dropout(layers: str, p: float) -> nn.Module:
    return fnn.Dropout(p) if layers == "fastnets" else nn.Dropout(p)


def softmax_regression(layers: str = "fastnets") -> nn.Sequential:
    """The seed's shallow model: softmax regression on the 784 pixels (logits out; the softmax
    is in the loss). No fastnets layer applies, so both builds are the same."""
    _check_layers(layers)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def lenet5(layers: str = "fastnets") -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998) on 28x28 digits, with ReLU and max-pooling in place of the
    scaled tanh and trainable subsampling: 5x5 conv 1->6 (padding 2) + ReLU + 2x2 pool, 5x5 conv
    6->16 + ReLU + 2x2 pool, fc 400->120->84->10. The fastnets build fuses each conv + ReLU +
    pool."""
    _check_layers(layers)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    return fnn.fuse_conv_relu_pool(model) if layers == "fastnets" else model


def maxout_mlp(layers: str = "fastnets", units: int = 240, pieces: int = 5, dropout: float = 0.5) -> nn.Sequential:
    """A maxout network (Goodfellow et al. 2013, permutation-invariant MNIST): two maxout layers of
    ``units`` units of ``pieces`` pieces, each followed by dropout, then fc -> 10."""
    _check_layers(layers)
    maxout = (lambda: fnn.Maxout(pieces)) if layers == "fastnets" else (lambda: TorchMaxout(pieces))
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, units * pieces), maxout(), _dropout(layers, dropout),
        nn.Linear(units, units * pieces), maxout(), _dropout(layers, dropout), nn.Linear(units, 10))


def gupta_mlp(hidden: int = 1000) -> nn.Sequential:
    """Gupta et al.'s fully connected network: 784 -> hidden -> hidden -> 10, ReLU, logits out
    (softmax in the loss). Input (N, 1, 28, 28) or (N, 784); output (N, 10)."""
    if hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}")
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def mnist_cnn(layers: str = "fastnets", dropout: float = 0.5) -> nn.Sequential:
    """The TensorFlow tutorial's MNIST CNN: 5x5 conv 1->32 + ReLU + 2x2 max-pool, 5x5 conv 32->64
    + ReLU + 2x2 max-pool, fc 3136->1024 + ReLU, dropout, fc 1024->10 (logits).

    ``layers="fastnets"`` fuses each conv + ReLU + pool into one ConvReLUPool2d and uses fastnets
    dropout; ``"torch"`` uses torch.nn throughout. Both have the same state_dict keys. Input
    (N, 1, 28, 28); output (N, 10)."""
    _check_layers(layers)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(), _dropout(layers, dropout), nn.Linear(1024, 10))
    return fnn.fuse_conv_relu_pool(model) if layers == "fastnets" else model


MODELS = {"softmax": softmax_regression, "cnn": mnist_cnn, "lenet5": lenet5, "maxout": maxout_mlp}


def build(name: str, layers: str = "fastnets") -> nn.Sequential:
    """One of MODELS from fastnets layers or from torch.nn layers (same parameters and keys)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
    return MODELS[name](layers)


__all__ = ["MODELS", "build", "softmax_regression", "mnist_cnn", "lenet5", "maxout_mlp", "gupta_mlp", "TorchMaxout"]
