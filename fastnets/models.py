"""The networks of the seed lecture and of Gupta et al. 2015, for MNIST (1 x 28 x 28 inputs,
10 classes), each buildable from fastnets layers or from the equivalent torch.nn layers with the
same parameters and state_dict keys, so that the two builds can be compared and share
checkpoints."""
from torch import nn

import fastnets.nn as fnn

LAYER_SETS = ("fastnets", "torch")


def _check_layers(layers: str) -> None:
    if layers not in LAYER_SETS:
        raise ValueError(f'layers must be "fastnets" or "torch", got {layers!r}')


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
    dropout_layer = fnn.Dropout(dropout) if layers == "fastnets" else nn.Dropout(dropout)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(), dropout_layer, nn.Linear(1024, 10))
    return fnn.fuse_conv_relu_pool(model) if layers == "fastnets" else model


__all__ = ["gupta_mlp", "mnist_cnn"]
