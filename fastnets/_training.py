"""The training and evaluation loops that the tools (demo, precision) share."""
import time
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as torch_F
from torch import nn

from fastnets.data import Digits

Transform = Optional[Callable[[torch.Tensor], torch.Tensor]]


def train_epoch(model: nn.Module, optimizer, data: Digits, order: torch.Tensor, batch_size: int,
                share: slice = slice(None), inputs: Transform = None) -> Tuple[float, float]:
    """One epoch over the training digits in ``order``, ``batch_size`` at a time (``share``: the
    part of each batch this process takes); ``inputs`` transforms the images (e.g. rounds them).
    Returns (mean loss, seconds of training, the device synchronized)."""
    device = data.train_images.device
    model.train()
    losses = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size][share]
        images = data.train_images[batch]
        if inputs is not None:
            images = inputs(images)
        loss = torch_F.cross_entropy(model(images), data.train_labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return torch.stack(losses).mean().item(), seconds


@torch.no_grad()
def test_accuracy(model: nn.Module, data: Digits, inputs: Transform = None, batch_size: int = 1000) -> float:
    """Percent of the test digits classified right (the model in eval mode)."""
    model.eval()
    right = 0
    for first in range(0, len(data.test_labels), batch_size):
        images = data.test_images[first:first + batch_size]
        if inputs is not None:
            images = inputs(images)
        right += (model(images).argmax(1) == data.test_labels[first:first + batch_size]).sum().item()
    return 100.0 * right / len(data.test_labels)
