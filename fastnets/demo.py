"""The main job: a network of the seed lecture trained on real digits twice, built from fastnets
layers and from the equivalent torch.nn layers, from the same initial weights and seed, side by
side (``python -m fastnets demo``; data-parallel under ``torchrun ... --distributed``).

Each build reports its test accuracy, seconds per epoch, the bytes autograd saved for backward
in one training step and, on CUDA, the peak memory that training allocated beyond what was
resident before it (data and weights). The fastnets build is saved
(state_dict), loaded into a fresh build and evaluated again, and the torch.nn build's checkpoint
is loaded into a fastnets build to show that the two share checkpoints.
"""
import hashlib
import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as torch_F
from torch import nn

from fastnets import models
from fastnets._progress import Progress
from fastnets._training import test_accuracy, train_epoch
from fastnets.data import Digits


@dataclass
class Run:
    """One build's training: per epoch the mean loss, test accuracy (%) and seconds."""

    build: str
    train_loss: List[float] = field(default_factory=list)
    test_accuracy: List[float] = field(default_factory=list)
    epoch_seconds: List[float] = field(default_factory=list)
    saved_bytes: int = 0
    peak_cuda_bytes: Optional[int] = None
    parameter_digest: str = ""
    pretrain_seconds: Optional[float] = None  # the DBN's greedy RBM pre-training
    pretrain_errors: Optional[List[float]] = None


def saved_for_backward_bytes(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one training step on this
    batch (the model's parameters, which exist anyway, not counted). Runs the step's forward and
    backward, which also warms the build up, and leaves no gradients behind."""
    images, labels = images.clone(), labels.clone()  # their own storage: views would count the whole data set
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = torch_F.cross_entropy(model(images), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def digest(model: nn.Module) -> str:
    """A fingerprint of the parameters' bits (replicas of a data-parallel run must agree)."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()[:16]


def train(model: nn.Module, build: str, data: Digits, *, epochs: int, lr: float, batch_size: int, seed: int,
          progress: Optional[Progress] = None) -> Run:
    """Adam on the training digits. Under torch.distributed the model is wrapped in
    DistributedDataParallel and each rank takes an equal share of every batch; dropout's
    randomness differs per rank (seed + rank) and is reproducible. The losses and times
    recorded are this rank's."""
    device = data.train_images.device
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if batch_size % world:
        # Equal shares make the average of the ranks' mean losses the mean over the batch.
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of the number of processes ({world})")
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if distributed else model
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    run = Run(build)
    run.saved_bytes = saved_for_backward_bytes(model, data.train_images[:batch_size], data.train_labels[:batch_size])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)  # the data, this and the other build's weights
    order_generator = torch.Generator().manual_seed(seed)  # the same batches on every rank
    torch.manual_seed(seed + rank)
    for epoch in range(epochs):
        # Whole batches only, so that every rank takes the same number of steps.
        order = torch.randperm(len(data.train_labels), generator=order_generator).to(device)
        order = order[:len(order) - len(order) % batch_size]
        loss, seconds = train_epoch(net, optimizer, data, order, batch_size, share=slice(rank, None, world))
        run.train_loss.append(loss)
        run.epoch_seconds.append(seconds)
        run.test_accuracy.append(test_accuracy(model, data))
        if progress is not None:
            progress.step(f"{build} epoch {epoch + 1}/{epochs}: loss {run.train_loss[-1]:.3f}, "
                          f"test accuracy {run.test_accuracy[-1]:.2f}%")
    if device.type == "cuda":
        run.peak_cuda_bytes = torch.cuda.max_memory_allocated(device) - resident
    run.parameter_digest = digest(model)
    return run


def compare_builds(model_name: str, data: Digits, *, epochs: int = 2, lr: float = 1e-4, batch_size: int = 50,
                   seed: int = 0, out_dir: Optional[Path] = None, progress: bool = True,
                   pretrain_epochs: int = 5) -> dict:
    """Trains the fastnets and the torch.nn build of ``model_name`` from the same initial weights
    and returns a report (runs, checkpoint checks); rank 0 saves the checkpoints in ``out_dir``.
    The DBN classifier is first pre-trained greedily (``pretrain_epochs`` of CD-1 per layer) with
    each build's RBMs, from the same initial RBM weights; every rank pre-trains alike."""
    device = data.train_images.device
    torch.manual_seed(seed)
    reference = models.build(model_name, "torch").to(device)
    ours = models.build(model_name, "fastnets").to(device)
    ours.load_state_dict(reference.state_dict())  # the same initial weights
    pretrained = {}
    if model_name == "dbn":
        for model, layers, build in ((ours, "fastnets", "fastnets"), (reference, "torch", "torch.nn")):
            generator = torch.Generator(device).manual_seed(seed)
            pretrained[build] = models.pretrain_dbn(model, layers, data.train_images, epochs=pretrain_epochs,
                                                    seed=seed, generator=generator)
    bar = Progress(2 * epochs, enabled=progress)
    runs = [train(model, build, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=bar)
            for model, build in ((ours, "fastnets"), (reference, "torch.nn"))]
    for run in runs:
        if run.build in pretrained:
            run.pretrain_seconds = pretrained[run.build]["seconds"]
            run.pretrain_errors = pretrained[run.build]["reconstruction_errors"]
    report = {"model": model_name, "device": str(device), "data": data.source, "epochs": epochs, "lr": lr,
              "batch_size": batch_size, "seed": seed, "runs": [asdict(run) for run in runs]}
    if pretrained:
        report["pretrain_epochs"] = pretrain_epochs
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        digests = [None] * dist.get_world_size()
        dist.all_gather_object(digests, [run.parameter_digest for run in runs])
        report["world_size"] = dist.get_world_size()
        report["replicas_identical"] = all(d == digests[0] for d in digests)
    if out_dir is not None and (not distributed or dist.get_rank() == 0):
        report["checkpoints"] = check_checkpoints(model_name, ours, reference, data, Path(out_dir))
    return report


def check_checkpoints(model_name: str, ours: nn.Module, reference: nn.Module, data: Digits, out_dir: Path) -> dict:
    """Saves both trained builds, loads the fastnets one back into a fresh fastnets build and the
    torch.nn one into a fastnets build, and evaluates them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {build: out_dir / f"{model_name}-{build}.pt" for build in ("fastnets", "torch.nn")}
    torch.save(ours.state_dict(), paths["fastnets"])
    torch.save(reference.state_dict(), paths["torch.nn"])
    device = data.train_images.device
    reloaded = models.build(model_name, "fastnets").to(device)
    reloaded.load_state_dict(torch.load(paths["fastnets"], map_location=device))
    converted = models.build(model_name, "fastnets").to(device)
    converted.load_state_dict(torch.load(paths["torch.nn"], map_location=device))
    return {"fastnets_path": str(paths["fastnets"]), "torch_path": str(paths["torch.nn"]),
            "fastnets_trained": test_accuracy(ours, data), "fastnets_reloaded": test_accuracy(reloaded, data),
            "torch_trained": test_accuracy(reference, data),
            "torch_checkpoint_in_fastnets_build": test_accuracy(converted, data)}


def table(report: dict) -> str:
    runs = report["runs"]
    baseline = statistics.median(runs[1]["epoch_seconds"][1:] or runs[1]["epoch_seconds"])
    lines = ["| build | test accuracy % | s/epoch | speed-up | saved for backward MB | CUDA peak in training MB |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        # The first epoch also pays for warm-up: the median of the others when there are any.
        seconds = statistics.median(run["epoch_seconds"][1:] or run["epoch_seconds"])
        peak = f"{run['peak_cuda_bytes'] / 2**20:.0f}" if run["peak_cuda_bytes"] is not None else "-"
        lines.append(f"| {run['build']} | {run['test_accuracy'][-1]:.2f} | {seconds:.2f} | {baseline / seconds:.2f}x "
                     f"| {run['saved_bytes'] / 2**20:.1f} | {peak} |")
    if runs[0].get("pretrain_seconds") is not None:
        errors = lambda run: ", ".join(f"{e:.2f}" for e in run["pretrain_errors"])  # noqa: E731
        lines.append(f"\nDBN pre-training, {report['pretrain_epochs']} epochs of CD-1 per layer: fastnets "
                     f"{runs[0]['pretrain_seconds']:.2f} s, torch.nn {runs[1]['pretrain_seconds']:.2f} s "
                     f"({runs[1]['pretrain_seconds'] / runs[0]['pretrain_seconds']:.2f}x); reconstruction errors "
                     f"per layer: fastnets {errors(runs[0])}, torch.nn {errors(runs[1])}")
    checks = report.get("checkpoints")
    if checks:
        lines.append(f"\ncheckpoint: fastnets build {checks['fastnets_trained']:.2f}% -> saved and reloaded "
                     f"{checks['fastnets_reloaded']:.2f}%; torch.nn checkpoint loaded into the fastnets build: "
                     f"{checks['torch_checkpoint_in_fastnets_build']:.2f}% (torch.nn build: "
                     f"{checks['torch_trained']:.2f}%)")
    if "replicas_identical" in report:
        lines.append(f"data-parallel over {report['world_size']} processes: replicas identical: "
                     f"{report['replicas_identical']}")
    return "\n".join(lines)


def init_distributed(device: str) -> torch.device:
    """torch.distributed from torchrun's environment: gloo on CPU, NCCL on CUDA (the GPU of the
    local rank, whatever index ``device`` names). Returns this rank's device."""
    if "RANK" not in os.environ:
        raise RuntimeError("--distributed runs under torchrun: torchrun --nproc_per_node 2 -m fastnets demo "
                           "--distributed")
    if device.startswith("cuda"):
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return local
    dist.init_process_group("gloo")
    return torch.device("cpu")


def save_report(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path
