"""The training and evaluation loops that the tools (demo, precision) share."""
import time
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as torch_F
from torch import nn

from fastnets.data import Digits

Transform = Optional[Callable[[torch.Tensor], torch.Tensor]]


class TrainingStep:
    """One SGD step on a batch: forward (``inputs`` transforms the images first), cross-entropy,
    backward, ``optimizer.step()``. Returns the loss (detached)."""

    def __init__(self, model: nn.Module, optimizer, inputs: Transform = None) -> None:
        self.model, self.optimizer, self.inputs = model, optimizer, inputs

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.inputs is not None:
            images = self.inputs(images)
        return torch_F.cross_entropy(self.model(images), labels)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.loss(images, labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class CudaGraphTrainingStep(TrainingStep):
    """The same step, replayed as a CUDA graph: a small model's step on a GPU is bound by the
    host launching its kernels one by one, which a graph launches at once (the recipe of
    torch.cuda.graphs' "whole network capture"). Batches of the first batch's shape take the
    first ``warmup`` steps eagerly on a side stream, the next one captures the step (forward,
    backward and the optimizer's in-place update, its random draws included: each replay draws
    fresh numbers), and every later one replays it; a batch of another shape (an epoch's short
    last batch) runs eagerly. A failed capture raises: torch does not promise that a process
    goes on correctly after one. The learning rate and every other Python value the step reads
    are fixed at capture."""

    def __init__(self, model: nn.Module, optimizer, inputs: Transform = None, warmup: int = 3) -> None:
        super().__init__(model, optimizer, inputs)
        self.warmup_left = warmup
        self.shapes: Optional[Tuple[torch.Size, torch.Size]] = None  # the batches captured
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.shapes is None:
            self.shapes = (images.shape, labels.shape)
        if (images.shape, labels.shape) != self.shapes:
            return super().__call__(images, labels)
        if self.graph is not None:
            self.images.copy_(images)
            self.labels.copy_(labels)
            self.graph.replay()
            return self.captured_loss.clone()
        if self.warmup_left > 0:
            self.warmup_left -= 1
            side = torch.cuda.Stream(images.device)
            side.wait_stream(torch.cuda.current_stream(images.device))
            with torch.cuda.stream(side):
                loss = super().__call__(images, labels)
            torch.cuda.current_stream(images.device).wait_stream(side)
            return loss
        return self.capture(images, labels)

    def capture(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.images, self.labels = images.clone(), labels.clone()
        graph = torch.cuda.CUDAGraph()
        # A generator of the optimizer's own (FixedPointSGD(generator=...)) must be registered for
        # its draws to advance per replay; the default generators are registered by torch.
        generator = getattr(self.optimizer, "generator", None)
        self.optimizer.zero_grad(set_to_none=True)  # the backward then writes its gradients in the graph's memory
        try:
            if isinstance(generator, torch.Generator) and generator.device.type == "cuda":
                graph.register_generator_state(generator)
            with torch.cuda.graph(graph):
                loss = self.loss(self.images, self.labels)
                loss.backward()
                self.optimizer.step()
        except Exception as error:
            raise RuntimeError(f"CUDA graph capture of the training step failed (train without CUDA graphs): "
                               f"{error}") from error
        self.graph, self.captured_loss = graph, loss.detach()
        graph.replay()  # the capture recorded the step without running it: this is this batch's step
        return self.captured_loss.clone()


def train_epoch(model: nn.Module, optimizer, data: Digits, order: torch.Tensor, batch_size: int,
                share: slice = slice(None), inputs: Transform = None,
                step: Optional[TrainingStep] = None) -> Tuple[float, float]:
    """One epoch over the training digits in ``order``, ``batch_size`` at a time (``share``: the
    part of each batch this process takes); ``inputs`` transforms the images (e.g. rounds them);
    ``step`` (default: an eager :class:`TrainingStep` of ``model``, ``optimizer`` and ``inputs``)
    trains on each batch. Returns (mean loss, seconds of training, the device synchronized)."""
    device = data.train_images.device
    step = step or TrainingStep(model, optimizer, inputs)
    model.train()
    losses = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size][share]
        losses.append(step(data.train_images[batch], data.train_labels[batch]))
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
