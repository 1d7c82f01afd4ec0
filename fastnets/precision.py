"""The fixed-point precision experiment of Gupta et al. (ICML 2015), on any model.

A network is trained with its weights, activations, gradients (of weights and of activations)
and optimizer state held in a fixed-point format <IL, FL>, each dot product accumulated in
floating point and rounded once at the layer's output (a fused Conv-ReLU-Pool layer's output is
its pooled one), for each setting of a sweep: a float32
baseline, then word length 16 with several FL, rounding to nearest and stochastically. Their
finding: with stochastic rounding 16 bits train as well as float32, while round-to-nearest
degrades or stalls as small updates round away.

    from fastnets.precision import sweep, run_sweep, table
    histories = run_sweep(lambda: MyNet(), sweep(fls=(8, 14)), load_mnist(), epochs=5)
    print(table(histories))

``python -m fastnets precision`` runs it on the paper's MLP or the seed's CNN and writes a table,
a JSON file and the test-error curves.
"""
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from fastnets._progress import Progress
from fastnets._training import CudaGraphTrainingStep, TrainingStep, test_accuracy, train_epoch
from fastnets.data import Digits
from fastnets.quant import FixedPoint, FixedPointSGD, quantize_activations_, quantize_parameters_

QUANTITIES = ("weights", "activations", "gradients", "state")


@dataclass(frozen=True)
class Setting:
    """One configuration: a fixed-point format (None: float32 throughout) and which quantities it
    holds: "weights", "activations" (and the network's input), "gradients" (of the weights and of
    the activations), "state" (the optimizer's)."""

    format: Optional[FixedPoint] = None
    quantized: FrozenSet[str] = frozenset(QUANTITIES)

    def __post_init__(self) -> None:
        unknown = set(self.quantized) - set(QUANTITIES)
        if unknown:
            raise ValueError(f"unknown quantities {sorted(unknown)}: choose from {', '.join(QUANTITIES)}")

    @property
    def name(self) -> str:
        if self.format is None:
            return "float32"
        fmt = self.format
        what = "" if set(self.quantized) == set(QUANTITIES) else f" [{','.join(sorted(self.quantized))}]"
        return f"<{fmt.il},{fmt.fl}> {fmt.rounding}{what}"

    def holds(self, quantity: str) -> Optional[FixedPoint]:
        """The format of ``quantity``, or None where it stays in floating point."""
        return self.format if quantity in self.quantized else None


def sweep(fls: Iterable[int] = (8, 10, 12, 14), wl: int = 16, roundings: Iterable[str] = ("nearest", "stochastic"),
          quantized: Iterable[str] = QUANTITIES, baseline: bool = True) -> List[Setting]:
    """The float32 baseline (unless ``baseline=False``), then <wl - fl, fl> for each fl and rounding."""
    quantized = frozenset(quantized)
    if not quantized:
        raise ValueError(f"quantized must name at least one of {', '.join(QUANTITIES)}")
    settings = [Setting()] if baseline else []
    settings += [Setting(FixedPoint(wl, fl, rounding), quantized)
                 for fl in dict.fromkeys(fls) for rounding in dict.fromkeys(roundings)]
    return settings


@dataclass
class History:
    """One training run: per epoch, the test error (%), the mean training loss and the seconds
    the epoch's training steps took (evaluation not counted)."""

    setting: str
    seed: int
    test_error: List[float] = field(default_factory=list)
    train_loss: List[float] = field(default_factory=list)
    epoch_seconds: List[float] = field(default_factory=list)


class _Run:
    """One training run (see :func:`train`), an epoch at a time. It keeps torch's random state
    between its epochs, so runs taken in turns draw what each would draw alone."""

    def __init__(self, model: nn.Module, setting: Setting, data: Digits, *, lr: float = 0.01, momentum: float = 0.9,
                 batch_size: int = 100, seed: int = 0, cuda_graphs: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.setting, self.data, self.batch_size = model, setting, data, batch_size
        self.device = data.train_images.device
        torch.manual_seed(seed)
        weights, self.activations, gradients, state = (setting.holds(q) for q in QUANTITIES)
        # SGD with the roundings fused into its step, for every setting (float32 too, which then
        # takes torch.optim.SGD's step bit for bit), so that the settings' times compare one kernel.
        self.optimizer = FixedPointSGD(model.parameters(), lr=lr, momentum=momentum, weight=weights, grad=gradients,
                                       state=state)
        if weights is not None:
            quantize_parameters_(model, weights)
        self.history = History(setting.name, seed)
        self.handles = []
        # A saturated output's gradient is zero (the derivative of the clamp): passed straight
        # through, it would keep pushing the weights behind an output that can no longer move.
        if self.activations or gradients:
            self.handles = quantize_activations_(model, self.activations, gradients, zero_outside_range=True)
        graphed = cuda_graphs and self.device.type == "cuda"
        self.step = (CudaGraphTrainingStep if graphed else TrainingStep)(model, self.optimizer, self.activations)
        self.random_state = self._random_state()

    def _random_state(self) -> tuple:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def epoch(self, progress: Optional[Callable[[str], None]] = None) -> None:
        cpu, cuda = self.random_state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        data, history = self.data, self.history
        order = torch.randperm(len(data.train_labels), device=self.device)
        loss, seconds = train_epoch(self.model, self.optimizer, data, order, self.batch_size, step=self.step)
        history.train_loss.append(loss)
        history.epoch_seconds.append(seconds)
        history.test_error.append(100.0 - test_accuracy(self.model, data, self.activations))
        self.random_state = self._random_state()
        if progress is not None:
            progress(f"{self.setting.name} seed {history.seed} epoch {len(history.test_error)}: "
                     f"test error {history.test_error[-1]:.2f}%")

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def train(model: nn.Module, setting: Setting, data: Digits, *, epochs: int = 10, lr: float = 0.01,
          momentum: float = 0.9, batch_size: int = 100, seed: int = 0, cuda_graphs: bool = False,
          progress: Optional[Callable[[str], None]] = None) -> History:
    """Trains ``model`` (on ``data``'s device) with SGD under ``setting`` and returns its history.

    The batches' order and the stochastic rounding draw from torch's generator seeded with
    ``seed``; the model's initialization is the caller's (build it after ``torch.manual_seed``).
    ``cuda_graphs`` (CUDA only): after three eager steps, each training step of a full batch is
    one replay of a CUDA graph (see :class:`fastnets._training.CudaGraphTrainingStep`), which
    takes the host's kernel launches out of the time per epoch; the random draws then differ from
    an eager run's."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    run = _Run(model, setting, data, lr=lr, momentum=momentum, batch_size=batch_size, seed=seed,
               cuda_graphs=cuda_graphs)
    try:
        for _ in range(epochs):
            run.epoch(progress)
    finally:
        run.close()
    return run.history


def run_sweep(make_model: Callable[[], nn.Module], settings: Sequence[Setting], data: Digits, *,
              seeds: Sequence[int] = (0,), epochs: int = 10, progress: bool = True, **train_args) -> List[History]:
    """Trains a fresh ``make_model()`` for each setting and seed (built after
    ``torch.manual_seed(seed)``, so every setting starts from the same weights for a seed), as
    :func:`train` with ``train_args`` would. The settings of a seed train in turns, an epoch
    each, in an order that rotates from epoch to epoch: a machine whose speed drifts then slows
    them alike, and their times per epoch compare. Each run draws the numbers it would draw alone.
    Returns the histories setting by setting, seed by seed."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    bar = Progress(len(settings) * len(seeds) * epochs, enabled=progress)
    histories: Dict[tuple, History] = {}
    for position, seed in enumerate(seeds):
        runs = []
        try:
            for setting in settings:
                torch.manual_seed(seed)
                model = make_model().to(data.train_images.device)
                runs.append(_Run(model, setting, data, seed=seed, **train_args))
            for epoch in range(epochs if runs else 0):
                turn = epoch % len(runs)
                for run in runs[turn:] + runs[:turn]:
                    run.epoch(bar.step)
        finally:
            for run in runs:
                run.close()
        for index, run in enumerate(runs):
            histories[index, position] = run.history
    return [histories[index, position] for index in range(len(settings)) for position in range(len(seeds))]


def summary(histories: Sequence[History]) -> Dict[str, Dict[str, float]]:
    """Per setting: mean final test error (%) over seeds, its standard deviation, the median
    seconds per epoch and the overhead over the float32 baseline of the same run."""
    by_setting: Dict[str, List[History]] = {}
    for history in histories:
        by_setting.setdefault(history.setting, []).append(history)
    summary = {}
    for name, runs in by_setting.items():
        finals = [run.test_error[-1] for run in runs]
        # The first epoch also pays for warm-up (allocations, kernels' first calls): left out.
        seconds = [s for run in runs for s in (run.epoch_seconds[1:] or run.epoch_seconds)]
        summary[name] = {"final_test_error": statistics.mean(finals),
                         "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                         "seeds": len(runs), "epoch_seconds": statistics.median(seconds)}
    baseline = summary.get("float32")
    for values in summary.values():
        values["overhead"] = values["epoch_seconds"] / baseline["epoch_seconds"] - 1 if baseline else math.nan
    return summary


def table(histories: Sequence[History]) -> str:
    lines = ["| setting | final test error % | seeds | s/epoch | time vs float32 |", "|---|---|---|---|---|"]
    for name, values in summary(histories).items():
        error = f"{values['final_test_error']:.2f}" + (f" ± {values['std']:.2f}" if values["seeds"] > 1 else "")
        overhead = "-" if name == "float32" or math.isnan(values["overhead"]) else f"{100 * values['overhead']:+.0f}%"
        lines.append(f"| {name} | {error} | {values['seeds']} | {values['epoch_seconds']:.2f} | {overhead} |")
    return "\n".join(lines)


def save(histories: Sequence[History], path: Union[str, Path], settings: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"experiment": "fixed-point precision (Gupta et al. 2015)", "settings": settings,
                "summary": summary(histories), "runs": [asdict(h) for h in histories]}
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def plot(histories: Sequence[History], path: Union[str, Path], title: str = "") -> Path:
    """Test error against epoch, one curve per setting (mean over seeds), as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    by_setting: Dict[str, List[History]] = {}
    for history in histories:
        by_setting.setdefault(history.setting, []).append(history)
    figure, axes = plt.subplots(figsize=(8, 5))
    for name, runs in by_setting.items():
        epochs = range(1, len(runs[0].test_error) + 1)
        mean = [statistics.mean(run.test_error[i] for run in runs) for i in range(len(runs[0].test_error))]
        style = "-" if name == "float32" or "stochastic" in name else "--"
        axes.plot(epochs, mean, style, marker="o", markersize=3, label=name)
    axes.set_xlabel("epoch")
    axes.set_ylabel("test error (%)")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(title or "fixed-point training: stochastic (solid) vs round-to-nearest (dashed)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


__all__ = ["QUANTITIES", "Setting", "History", "sweep", "train", "run_sweep", "summary", "table",
           "save", "plot"]
