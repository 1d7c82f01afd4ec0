"""The networks of the seed lecture (and of Gupta et al. 2015) for MNIST (1 x 28 x 28 inputs,
10 classes), each buildable from fastnets layers or from the equivalent torch.nn layers with the
same parameters and state_dict keys, so that the two builds can be compared and share
checkpoints."""
import copy
import time
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as torch_F
from torch import nn

import fastnets.nn as fnn
from fastnets.nn.rbm import pretrain_greedily

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


class TorchRBM(nn.Module):
    """torch.nn's RBM for the comparison: fastnets.nn.RBM's parameters and contrastive divergence
    (Bernoulli units, CD-k) in plain PyTorch, ``torch.bernoulli(torch.sigmoid(F.linear(...)))``."""

    def __init__(self, n_visible: int, n_hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_hidden, n_visible))
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))

    def forward(self, v):
        return torch.sigmoid(torch_F.linear(v, self.weight, self.hidden_bias))

    def contrastive_divergence(self, v, k: int = 1, persistent: bool = False, generator=None):
        if persistent:
            raise ValueError("TorchRBM has no persistent chains")
        with torch.no_grad():
            w, b = self.weight, self.visible_bias
            positive_h = self(v)
            h = torch.bernoulli(positive_h, generator=generator)
            for step in range(k):
                mean_v = torch.sigmoid(torch_F.linear(h, w.t(), b))
                if step < k - 1:
                    h = torch.bernoulli(self(torch.bernoulli(mean_v, generator=generator)), generator=generator)
            negative_h = self(mean_v)
            n = v.shape[0]
            for parameter, grad in ((self.weight, (negative_h.t() @ mean_v - positive_h.t() @ v) / n),
                                    (self.visible_bias, (mean_v.sum(0) - v.sum(0)) / n),
                                    (self.hidden_bias, (negative_h.sum(0) - positive_h.sum(0)) / n)):
                parameter.grad = grad if parameter.grad is None else parameter.grad + grad
            return ((v - mean_v) ** 2).sum(1).mean()


DBN_SIZES = (784, 500, 500)


def dbn_classifier(layers: str = "fastnets", sizes: Sequence[int] = DBN_SIZES) -> nn.Sequential:
    """A DBN classifier (Hinton et al. 2006): the network its stacked RBMs unroll into, Linear +
    Sigmoid per RBM (784-500-500 by default), then fc -> 10, fine-tuned with backprop. The two
    builds have the same layers: they differ in pre-training (:func:`pretrain_dbn`)."""
    _check_layers(layers)
    body: List[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        body += [nn.Linear(n_in, n_out), nn.Sigmoid()]
    return nn.Sequential(*body, nn.Linear(sizes[-1], 10))


def pretrain_dbn(model: nn.Sequential, layers: str, images: torch.Tensor, *, epochs: int = 5, batch_size: int = 64,
                 lr: float = 0.1, seed: int = 0, generator: Optional[torch.Generator] = None) -> dict:
    """Greedy CD-1 pre-training of a :func:`dbn_classifier`'s hidden layers on ``images`` with
    fastnets.nn.RBM (``layers="fastnets"``) or :class:`TorchRBM` (``"torch"``), from the same
    initial RBM weights for a given ``seed`` (N(0, 0.01^2)); the trained weights and hidden biases
    are copied into the model's Linear layers. Returns the seconds taken and each layer's
    reconstruction error over its last epoch."""
    _check_layers(layers)
    linears = [m for m in model if isinstance(m, nn.Linear)][:-1]
    init = torch.Generator().manual_seed(seed)
    rbms = []
    for linear in linears:
        rbm = (fnn.RBM if layers == "fastnets" else TorchRBM)(linear.in_features, linear.out_features)
        with torch.no_grad():
            rbm.weight.copy_(torch.randn(rbm.weight.shape, generator=init) * 0.01)
        rbms.append(rbm.to(images.device))
    # Warm-up on copies and one batch: a process's first optimizer step alone takes about a second.
    pretrain_greedily(copy.deepcopy(rbms), images[:batch_size].flatten(1), epochs=1, batch_size=batch_size, lr=lr)
    if images.is_cuda:
        torch.cuda.synchronize(images.device)
    start = time.perf_counter()
    errors = pretrain_greedily(rbms, images.flatten(1), epochs=epochs, batch_size=batch_size, lr=lr,
                               generator=generator)
    if images.is_cuda:
        torch.cuda.synchronize(images.device)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        for rbm, linear in zip(rbms, linears):
            linear.weight.copy_(rbm.weight)
            linear.bias.copy_(rbm.hidden_bias)
    return {"seconds": seconds, "reconstruction_errors": errors}


class RowLSTMClassifier(nn.Module):
    """Reads a digit row by row (28 steps of 28 pixels) with an LSTM and classifies its last hidden
    state: ``lstm`` (fastnets.nn.LSTM or torch.nn.LSTM, batch_first) then ``fc``."""

    def __init__(self, layers: str = "fastnets", hidden: int = 128, num_layers: int = 1) -> None:
        super().__init__()
        _check_layers(layers)
        lstm = fnn.LSTM if layers == "fastnets" else nn.LSTM
        self.lstm = lstm(28, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(images.reshape(-1, 28, 28))
        return self.fc(h_n[-1])


def lstm_classifier(layers: str = "fastnets") -> RowLSTMClassifier:
    """The LSTM sequence classifier: one layer of 128 units over the 28 rows of a digit."""
    return RowLSTMClassifier(layers)


MODELS = {"softmax": softmax_regression, "cnn": mnist_cnn, "lenet5": lenet5, "maxout": maxout_mlp,
          "dbn": dbn_classifier, "lstm": lstm_classifier}


def build(name: str, layers: str = "fastnets") -> nn.Module:
    """One of MODELS from fastnets layers or from torch.nn layers (same parameters and keys)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
    return MODELS[name](layers)


__all__ = ["MODELS", "build", "softmax_regression", "mnist_cnn", "lenet5", "maxout_mlp", "gupta_mlp", "TorchMaxout",
           "dbn_classifier", "pretrain_dbn", "TorchRBM", "DBN_SIZES", "lstm_classifier", "RowLSTMClassifier"]
