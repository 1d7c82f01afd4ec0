"""Benchmark harness: a candidate and its references timed on the same inputs, in the same run.

The suites in ``bench/`` (``python -m fastnets bench``) are built on it, and it works for any
layer::

    from fastnets.benchmark import compare
    compare(my_layer, {"torch": reference_layer}, inputs=(x,), name="my layer")

prints one table row per reference: both median times, the speed-up (reference time /
candidate time, above 1 when the candidate is faster; the median of the per-round ratios) and,
given ``bytes_moved`` or ``flops``, GB/s or TFLOP/s.

Timing. On CUDA every round is bracketed by CUDA events on the current stream (a host timer
without a synchronize would measure only the launches); on CPU by ``time.perf_counter`` with a
fixed thread count. Each implementation is warmed up (compilation, allocator, caches of code)
before the rounds, a round repeats calls until it lasts ``min_round_s``, and the median over
rounds is reported. The implementations of a case take turns round by round (see
:func:`measure_together`) and the speed-up is the median of the per-round ratios: a machine whose
speed drifts during a run slows a round of the candidate and the reference's next to it alike.
Inputs smaller than the cache are replicated and the calls rotate over the copies, so that
repeated calls do not just measure the cache.

Regressions are judged on the same-run speed-up, not on absolute time: a noisy or different
machine slows the candidate and its reference alike (see :func:`compare_runs`).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import platform
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from fastnets._progress import Progress

# An implementation is a *binder*: given one input set (a tuple), it returns the zero-argument
# callable to time. Work that must stay outside the timed region (a saved mask, a gradient to
# feed backward) happens in the binder.
Binder = Callable[[tuple], Callable[[], Any]]

FORMAT_VERSION = 1
MAX_INPUT_SETS = 64


@dataclass
class Case:
    """One benchmark: the candidate (``impls[candidate]``) and its references on the same inputs.

    ``make_inputs()`` builds one input set on ``device``. ``bytes_moved`` (bytes read + written
    per call, an int or one per implementation) marks a memory-bound case, ``flops`` (per call)
    a compute-bound one; either may be None. ``context`` is entered around the whole case (e.g.
    a TF32 switch). ``dtype`` is a label: a torch dtype name, or a precision such as "tf32".
    """

    op: str
    shape: str
    direction: str
    device: str
    dtype: str
    make_inputs: Callable[[], tuple]
    impls: Mapping[str, Binder]
    bytes_moved: Union[int, Mapping[str, int], None] = None
    flops: Optional[int] = None
    context: Callable[[], ContextManager] = contextlib.nullcontext
    candidate: str = "fastnets"

    @property
    def name(self) -> str:
        return f"{self.op} {self.shape} {self.direction} {self.device} {self.dtype}"

    def bytes_for(self, impl: str) -> Optional[int]:
        if isinstance(self.bytes_moved, Mapping):
            return self.bytes_moved.get(impl)
        return self.bytes_moved


def training_step(forward: Callable[[torch.Tensor], torch.Tensor]) -> Binder:
    """A binder for forward+backward through autograd: inputs (x, grad_output), x requiring grad."""
    def bind(inputs: tuple) -> Callable[[], None]:
        x, grad_output = inputs

        def step() -> None:
            x.grad = None
            forward(x).backward(grad_output)
        return step
    return bind


@dataclass
class Timing:
    """Seconds per call: the median and interquartile range over rounds, and each round's value."""

    median_s: float
    iqr_s: float
    rounds: int
    calls_per_round: int
    samples_s: Tuple[float, ...] = ()


def synchronize(device: Union[str, torch.device]) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(calls: Sequence[Callable[[], Any]], device: Union[str, torch.device] = "cpu", *, rounds: int = 10,
            warmup: int = 1, min_round_s: float = 2e-3, timer: Callable[[], float] = time.perf_counter) -> Timing:
    """Times ``calls`` (one callable per input set, used in rotation) and returns seconds per call.

    ``warmup`` untimed passes over all the callables come first (compilation, allocator), then
    one timed pass sizes the rounds: each makes enough calls to last ``min_round_s``. CUDA rounds
    are timed with events on the current stream, CPU rounds with ``timer`` (seconds, like
    ``timeit``'s)."""
    if not calls:
        raise ValueError("calls must hold at least one callable")
    return measure_together({"": calls}, device, rounds=rounds, warmup=warmup, min_round_s=min_round_s,
                            timer=timer)[""]


def _quartiles(values: Sequence[float]) -> Tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")  # within the values seen
    return first, third


def measure_together(impls: Mapping[str, Sequence[Callable[[], Any]]], device: Union[str, torch.device] = "cpu", *,
                     rounds: int = 10, warmup: int = 1, min_round_s: float = 2e-3,
                     timer: Callable[[], float] = time.perf_counter,
                     on_error: Optional[Callable[[str, BaseException], None]] = None) -> Dict[str, Timing]:
    """Times several implementations of one computation (name -> callables, as :func:`measure`
    takes them) round by round, and returns each one's :class:`Timing`.

    Each implementation is warmed up and its rounds sized as :func:`measure` does; then every
    round times each implementation once, in an order that rotates by one place per round, so
    that a machine whose speed drifts (clock boost, a busy neighbour, a library's thread pool
    waking up) slows them alike, and ``samples_s[r]`` of two implementations can be compared
    round by round. ``on_error(name, error)``: where given, an implementation that raises is
    left out from then on (and from the result) and reported there while the others go on;
    otherwise the error propagates."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    for name, calls in impls.items():
        if not calls:
            raise ValueError(f"the calls of {name!r} must hold at least one callable")
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    positions = dict.fromkeys(impls, 0)
    active = list(impls)
    inner: Dict[str, int] = {}
    samples: Dict[str, List[float]] = {name: [] for name in impls}

    def run(name: str, count: int) -> None:
        calls = impls[name]
        for _ in range(count):
            calls[positions[name] % len(calls)]()
            positions[name] += 1

    def attempt(action: Callable[[str], None], name: str) -> None:
        try:
            action(name)
        except Exception as error:  # noqa: BLE001  (reported through on_error, or raised again)
            if on_error is None:
                raise
            active.remove(name)
            on_error(name, error)

    def size(name: str) -> None:
        count = len(impls[name])
        run(name, warmup * count)
        synchronize(device)
        start = timer()
        run(name, count)
        synchronize(device)
        per_call = (timer() - start) / count
        inner[name] = min(10_000, max(1, math.ceil(min_round_s / max(per_call, 1e-9))))

    def time_round(name: str) -> None:
        if on_cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run(name, inner[name])
            end.record()
            end.synchronize()
            samples[name].append(begin.elapsed_time(end) / 1e3 / inner[name])
        else:
            begin_s = timer()
            run(name, inner[name])
            samples[name].append((timer() - begin_s) / inner[name])

    for name in list(active):
        attempt(size, name)
    with torch.cuda.device(device) if on_cuda else contextlib.nullcontext():
        for round_index in range(rounds):
            turn = round_index % max(len(active), 1)
            for name in active[turn:] + active[:turn]:
                if name in active:
                    attempt(time_round, name)
    timings = {}
    for name in active:
        first, third = _quartiles(samples[name])
        timings[name] = Timing(statistics.median(samples[name]), third - first, rounds, inner[name],
                               tuple(samples[name]))
    return timings


def cache_bytes(device: Union[str, torch.device]) -> int:
    """The cache that repeated calls could live in: the GPU's L2, or the CPU's last level."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = entry.read_text().strip()
            sizes.append(int(text[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[text[-1]])
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return max(sizes, default=32 * 2**20)


def tensor_bytes(values: Any) -> int:
    if isinstance(values, torch.Tensor):
        return values.numel() * values.element_size()
    if isinstance(values, (tuple, list)):
        return sum(tensor_bytes(v) for v in values)
    return 0


def input_sets(make_inputs: Callable[[], tuple], device: Union[str, torch.device]) -> List[tuple]:
    """Enough copies of the inputs to fill twice the cache (at most MAX_INPUT_SETS of them)."""
    first = make_inputs()
    size = tensor_bytes(first)
    count = 1 if size == 0 else min(MAX_INPUT_SETS, max(1, math.ceil(2 * cache_bytes(device) / size)))
    return [first] + [make_inputs() for _ in range(count - 1)]


def device_name(device: Union[str, torch.device]) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def copy_bandwidth(device: str, dtype: torch.dtype, *, rounds: int, warmup: int) -> float:
    """GB/s (read + write) of ``out.copy_(x)`` on a buffer far larger than the cache."""
    numel = max(2**20, 4 * cache_bytes(device) // torch.empty((), dtype=dtype).element_size())
    x = torch.randn(numel, device=device).to(dtype)
    out = torch.empty_like(x)
    timing = measure([lambda: out.copy_(x)], device, rounds=rounds, warmup=warmup)
    return 2 * x.numel() * x.element_size() / timing.median_s / 1e9


def run_cases(cases: Sequence[Case], *, rounds: Union[int, Mapping[str, int]] = 10, warmup: int = 1,
              threads: Optional[int] = None, progress: bool = True,
              timer: Callable[[], float] = time.perf_counter) -> List[Dict[str, Any]]:
    """Times every implementation of every case and returns one result row (a dict) per
    implementation, with the reference rows' ``speedup`` over the candidate: the median over
    rounds of the reference's time / the candidate's, the implementations of a case taking
    turns round by round (:func:`measure_together`), and its interquartile range
    ``speedup_iqr``.

    ``rounds``: one count, or one per device type ({"cpu": 20, "cuda": 30}). ``threads``: the CPU
    thread count for the whole run (default: torch's current one). An implementation that
    raises gets a row with its ``error`` (and its traceback on stderr) and the run goes on.
    ``timer``: the CPU clock, see :func:`measure`."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or previous_threads)
    bar = Progress(sum(len(case.impls) for case in cases), enabled=progress)
    copy_gbps: Dict[Tuple[str, str], float] = {}
    rows: List[Dict[str, Any]] = []
    errors: Dict[str, BaseException] = {}  # of the case at hand

    def failed(impl: str, error: BaseException) -> None:  # one broken implementation must not end the run
        traceback.print_exception(type(error), error, error.__traceback__)
        errors[impl] = error

    try:
        for case in cases:
            if case.candidate not in case.impls:
                raise ValueError(f"case {case.name!r}: its candidate {case.candidate!r} is not among its impls")
            device_type = torch.device(case.device).type
            case_rounds = rounds[device_type] if isinstance(rounds, Mapping) else rounds
            if case.bytes_moved is not None and (case.device, case.dtype) not in copy_gbps:
                dtype = getattr(torch, case.dtype, None)
                if isinstance(dtype, torch.dtype):
                    copy_gbps[(case.device, case.dtype)] = copy_bandwidth(case.device, dtype, rounds=case_rounds,
                                                                          warmup=warmup)
            errors.clear()
            with case.context():
                sets = input_sets(case.make_inputs, case.device)
                calls = {}
                for impl, bind in case.impls.items():
                    try:
                        calls[impl] = [bind(inputs) for inputs in sets]
                    except Exception as error:  # noqa: BLE001
                        failed(impl, error)
                timings = measure_together(calls, case.device, rounds=case_rounds, warmup=warmup, timer=timer,
                                           on_error=failed)
                del sets, calls
            case_rows = []
            for impl in case.impls:
                if impl in timings:
                    case_rows.append(result_row(case, impl, timings[impl], copy_gbps.get((case.device, case.dtype))))
                else:
                    case_rows.append(error_row(case, impl, errors[impl]))
                bar.step(f"{case.name} {impl}")
            candidate = timings.get(case.candidate)
            for row in case_rows:
                if row["candidate"] or candidate is None or row["impl"] not in timings:
                    continue
                # Round by round: the reference's time over the candidate's next to it.
                ratios = [theirs / ours for theirs, ours in zip(timings[row["impl"]].samples_s, candidate.samples_s)
                          if ours > 0]
                if ratios:
                    row["speedup"] = statistics.median(ratios)
                    row["speedup_iqr"] = list(_quartiles(ratios))
            rows.extend(case_rows)
            if device_type == "cuda":
                torch.cuda.empty_cache()
    finally:
        torch.set_num_threads(previous_threads)
    return rows


def _case_fields(case: Case, impl: str) -> Dict[str, Any]:
    return {"op": case.op, "shape": case.shape, "direction": case.direction, "device": case.device,
            "device_name": device_name(case.device), "dtype": case.dtype, "impl": impl,
            "candidate": impl == case.candidate}


def result_row(case: Case, impl: str, timing: Timing, copy_gbps: Optional[float]) -> Dict[str, Any]:
    nbytes, flops = case.bytes_for(impl), case.flops
    return dict(_case_fields(case, impl), **{
        "median_ms": 1e3 * timing.median_s, "iqr_ms": 1e3 * timing.iqr_s, "rounds": timing.rounds,
        "calls_per_round": timing.calls_per_round,
        "bytes": nbytes, "gbps": nbytes / timing.median_s / 1e9 if nbytes else None,
        "flops": flops, "tflops": flops / timing.median_s / 1e12 if flops else None,
        "copy_gbps": copy_gbps if nbytes else None,
    })


def error_row(case: Case, impl: str, error: BaseException) -> Dict[str, Any]:
    return dict(_case_fields(case, impl), median_ms=None, error=f"{type(error).__name__}: {error}".splitlines()[0])


def _case_key(row: Mapping[str, Any]) -> tuple:
    return (row["op"], row["shape"], row["direction"], row["device"], row["dtype"])


def _ms(row: Mapping[str, Any]) -> str:
    return f"{row['median_ms']:.3f}" if row.get("median_ms") else "error"


def _rate(row: Mapping[str, Any]) -> str:
    if row.get("tflops"):
        return f"{row['tflops']:.3g} TFLOP/s"
    if row.get("gbps"):
        return f"{row['gbps']:.3g} GB/s"
    return "-"


def table(rows: Sequence[Mapping[str, Any]], candidate_label: str = "fastnets") -> str:
    """A markdown table: one line per (case, reference), then the copy bandwidths measured."""
    ours = candidate_label
    lines = [f"| op | shape | direction | device | dtype | reference | {ours} ms | reference ms | speed-up "
             f"| {ours} rate | reference rate | {ours} % of copy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_case: Dict[tuple, List[Mapping[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(_case_key(row), []).append(row)
    copies = {}
    for key, case_rows in by_case.items():
        candidate = next((row for row in case_rows if row["candidate"]), None)
        if candidate is None:
            continue
        device = candidate["device_name"] if candidate["device"].startswith("cuda") else candidate["device"]
        share = "-"
        if candidate.get("copy_gbps") and candidate.get("gbps"):
            share = f"{100 * candidate['gbps'] / candidate['copy_gbps']:.0f}%"
            copies[(device, candidate["dtype"])] = candidate["copy_gbps"]
        for row in case_rows:
            if row["candidate"]:
                continue
            speedup = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {device} | {key[4]} | {row['impl']} "
                         f"| {_ms(candidate)} | {_ms(row)} | {speedup} | {_rate(candidate)} | {_rate(row)} | {share} |")
    for (device, dtype), gbps in sorted(copies.items()):
        lines.append(f"copy bandwidth, {device} {dtype}: {gbps:.1f} GB/s (read + write, same run)")
    for row in rows:
        if row.get("error"):
            lines.append(f"error: {' '.join(_case_key(row))} {row['impl']}: {row['error']}")
    return "\n".join(lines)


def machine() -> Dict[str, Any]:
    import fastnets

    return {
        "fastnets": fastnets.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "cpu": device_name("cpu"), "threads": torch.get_num_threads(),
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
    }


def save_results(rows: Sequence[Mapping[str, Any]], path: Union[str, Path], settings: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"fastnets_benchmark": FORMAT_VERSION, "created": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": machine(), "settings": dict(settings), "results": list(rows)}
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def load_results(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """The result rows of a file written by :func:`save_results` (``--json`` / ``--save``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {path}")
    try:
        document = json.loads(path.read_text())
        if document.get("fastnets_benchmark") != FORMAT_VERSION:
            raise ValueError
        return list(document["results"])
    except (ValueError, KeyError, AttributeError, TypeError):
        raise ValueError(f"{path} is not a fastnets benchmark results file (format {FORMAT_VERSION})") from None


@dataclass
class Change:
    """A reference's speed-up over the candidate in a baseline and in the current run."""

    case: tuple
    reference: str
    baseline: float
    current: float

    @property
    def slowdown(self) -> float:
        """How much the candidate/reference time ratio grew: 0.12 means 12% slower relative to
        the reference than in the baseline (negative: faster)."""
        return self.baseline / self.current - 1.0


def compare_runs(baseline: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]],
                 fail_above: float = 0.10) -> Tuple[List[Change], List[Change]]:
    """Pairs the reference rows of two runs and returns (all changes, regressions): a regression
    is a candidate/reference time ratio that grew by more than ``fail_above`` (0.10 = 10%).
    Cases present in only one run, or that failed in either, are left out."""
    if not fail_above >= 0:
        raise ValueError(f"fail_above must be >= 0, got {fail_above}")
    old = {(_case_key(r), r["impl"]): r["speedup"] for r in baseline if not r["candidate"] and r.get("speedup")}
    changes = [Change(_case_key(r), r["impl"], old[(_case_key(r), r["impl"])], r["speedup"])
               for r in current if not r["candidate"] and r.get("speedup") and (_case_key(r), r["impl"]) in old]
    regressions = [c for c in changes if c.slowdown > fail_above]
    return changes, regressions


def comparison_table(changes: Sequence[Change], fail_above: float) -> str:
    lines = ["| case | reference | baseline speed-up | now | fastnets/reference time | |",
             "|---|---|---|---|---|---|"]
    for c in changes:
        flag = "REGRESSION" if c.slowdown > fail_above else ""
        lines.append(f"| {' '.join(c.case)} | {c.reference} | {c.baseline:.2f}x | {c.current:.2f}x "
                     f"| {100 * c.slowdown:+.1f}% | {flag} |")
    return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], path: Union[str, Path]) -> Path:
    """A bar chart of the speed-ups over each reference (log scale; 1 = as fast), saved as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    bars = [(f"{' '.join(_case_key(r))} vs {r['impl']}", r["speedup"])
            for r in rows if not r["candidate"] and r.get("speedup")]
    if not bars:
        raise ValueError("no speed-ups to plot: the results hold no reference timings")
    labels, speedups = zip(*bars)
    figure, axes = plt.subplots(figsize=(10, 0.3 * len(bars) + 1.5))
    axes.barh(range(len(bars)), speedups, color=["tab:green" if s >= 1 else "tab:red" for s in speedups])
    axes.set_yticks(range(len(bars)), labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("speed-up of fastnets (reference time / fastnets time)")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def load_suites(directory: Union[str, Path]) -> Dict[str, Any]:
    """The suites bench_<name>.py of ``directory`` as modules, by name (each has ``cases(device)``)."""
    import importlib.util

    directory = Path(directory)
    suites = {}
    for path in sorted(directory.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(f"fastnets_bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if callable(getattr(module, "cases", None)):
            suites[path.stem[len("bench_"):]] = module
    return suites


def select_cases(suites: Mapping[str, Any], devices: Sequence[str], ops: Optional[Sequence[str]] = None) -> List[Case]:
    """The cases of ``suites`` on ``devices``; ``ops`` keeps those whose suite name or op name
    starts with one of its entries (``conv`` keeps conv2d and conv2d+relu+max_pool2d)."""
    named = [(suite, case) for suite, module in suites.items() for device in devices for case in module.cases(device)]
    if not ops:
        return [case for _, case in named]
    names = sorted(set(suites) | {case.op.split(" ")[0] for _, case in named})
    unknown = [op for op in ops if not any(name.startswith(op) for name in names)]
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}: choose from {', '.join(names)}")
    return [case for suite, case in named if any(suite.startswith(op) or case.op.startswith(op) for op in ops)]


def pytest_benchmark_case(benchmark, case_impl) -> None:
    """The pytest-benchmark entry of the bench/ suites (``pytest bench/``; bench/conftest.py
    parametrizes ``case_impl`` with (case, implementation name)). pytest-benchmark times one
    call at a time (the next input set each time), with a synchronize on CUDA."""
    case, impl = case_impl
    with case.context():
        calls = [case.impls[impl](inputs) for inputs in input_sets(case.make_inputs, case.device)]
        position = 0

        def one_call() -> None:
            nonlocal position
            calls[position % len(calls)]()
            position += 1
            synchronize(case.device)

        benchmark.extra_info.update(_case_fields(case, impl), bytes=case.bytes_for(impl), flops=case.flops)
        benchmark.pedantic(one_call, rounds=max(20, 2 * len(calls)), warmup_rounds=len(calls))


def compare(candidate: Callable[..., Any], references: Union[Callable[..., Any], Mapping[str, Callable[..., Any]]],
            inputs: Union[tuple, Callable[[], tuple]], *, name: str = "candidate", shape: str = "",
            direction: str = "forward", bytes_moved: Optional[int] = None, flops: Optional[int] = None,
            rounds: int = 10, warmup: int = 1, print_table: bool = True) -> List[Dict[str, Any]]:
    """Times ``candidate(*inputs)`` against each reference on the same inputs, in the same run.

    ``references``: one callable (named "reference") or a mapping name -> callable. ``inputs``: a
    tuple of arguments, or a function that builds one (then, when they are smaller than the
    cache, the calls rotate over several copies). The device and dtype are those of the first
    tensor argument. Returns the result rows (see :func:`run_cases`) and, unless
    ``print_table=False``, prints the table."""
    if callable(references):
        references = {"reference": references}
    if not references:
        raise ValueError("references must name at least one reference implementation")
    if "candidate" in references:
        raise ValueError("'candidate' names the function under test: give the reference another name")
    make_inputs = inputs if callable(inputs) else (lambda: inputs)
    sample = make_inputs()
    tensors = [t for t in sample if isinstance(t, torch.Tensor)] if isinstance(sample, (tuple, list)) else []
    if not tensors:
        raise ValueError("inputs must hold at least one tensor (it tells the device)")
    impls = {"candidate": lambda args: lambda: candidate(*args)}
    for ref_name, reference in references.items():
        impls[ref_name] = (lambda fn: lambda args: lambda: fn(*args))(reference)
    case = Case(op=name, shape=shape or "x".join(map(str, tensors[0].shape)), direction=direction,
                device=str(tensors[0].device), dtype=str(tensors[0].dtype).replace("torch.", ""),
                make_inputs=make_inputs, impls=impls, bytes_moved=bytes_moved, flops=flops, candidate="candidate")
    rows = run_cases([case], rounds=rounds, warmup=warmup, progress=False)
    if print_table:
        print(table(rows, candidate_label="candidate"))
    return rows
