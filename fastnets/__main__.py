"""Command line: ``python -m fastnets {info,demo,bench}``."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

import fastnets

REPO = Path(__file__).resolve().parent.parent


def info() -> None:
    build = fastnets.build_info()
    print(f"fastnets {fastnets.__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    if build["cuda"]:
        print(f"CUDA kernels: compiled for sm {build['cuda_archs']}")
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


def bench(extra_args) -> int:
    """Runs the benchmark suite in bench/ (a source checkout) and prints its summary table."""
    bench_dir = REPO / "bench"
    if not bench_dir.is_dir():
        print("bench/ not found: the benchmarks run from a source checkout of fastnets", file=sys.stderr)
        return 2
    out_dir = Path(os.environ.get("OUT") or REPO / "bench-results")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "bench.json"
    json_path.unlink(missing_ok=True)  # never summarise an earlier run
    command = [sys.executable, "-m", "pytest", str(bench_dir), "-q", "-p", "no:cacheprovider",
               "-o", "python_files=bench_*.py", "-o", "python_functions=bench_*", "--benchmark-only", f"--benchmark-json={json_path}",
               "--benchmark-columns=median,iqr,rounds", *extra_args]
    status = subprocess.call(command, cwd=REPO)
    if json_path.exists():
        subprocess.call([sys.executable, str(bench_dir / "summary.py"), str(json_path)], cwd=REPO)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m fastnets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, how the kernels were built, devices, threads")
    sub.add_parser("demo", help="build info, then the dropout benchmark against PyTorch")
    sub.add_parser("bench", help="every benchmark in bench/ against its PyTorch reference; "
                                 "further arguments go to pytest (e.g. -k cuda)")
    args, pytest_args = parser.parse_known_args()
    if pytest_args and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(pytest_args)}")
    if args.command == "info":
        info()
        return 0
    if args.command == "demo":
        info()
        print()
        return bench(["-k", "dropout"])
    return bench(pytest_args)


if __name__ == "__main__":
    sys.exit(main())
