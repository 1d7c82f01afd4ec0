"""Builds fastnets._C: the CPU kernels always, the CUDA kernels when torch has CUDA and nvcc is found.

Environment:
  FASTNETS_CUDA=0|1       force a CPU-only build, or fail unless CUDA can be built (default: auto)
  TORCH_CUDA_ARCH_LIST    CUDA architectures (default "8.0;9.0": A100, H100/H200)
  FASTNETS_SANITIZE=1     AddressSanitizer + UBSan in the CPU kernels (make asan-test)
  MAX_JOBS                parallel compile jobs for ninja
"""
import os
import re
import shutil
import subprocess
from pathlib import Path


def find_cuda_home():
    """The CUDA toolkit: torch guesses it from the nvcc on PATH, which may be a wrapper script or
    link outside the toolkit (here /usr/local/bin/nvcc, giving /usr/local with no CUDA libraries)."""
    nvcc = shutil.which("nvcc")
    candidates = [Path(nvcc).resolve().parent.parent] if nvcc else []
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    return None


if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and find_cuda_home():
    os.environ["CUDA_HOME"] = find_cuda_home()

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = Path(__file__).resolve().parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "fastnets" / "__init__.py").read_text()).group(1)
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def build_cuda() -> bool:
    choice = os.environ.get("FASTNETS_CUDA", "auto")
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if choice == "0":
        return False
    if choice == "1" and not available:
        raise RuntimeError("FASTNETS_CUDA=1 but torch has no CUDA or nvcc was not found (set CUDA_HOME)")
    return available


def sources(pattern: str) -> list:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob(pattern))


with_cuda = build_cuda()
define_macros = [("FASTNETS_VERSION", f'"{VERSION}"')]
# -fno-trapping-math: no FP exception traps are relied on, and it lets GCC vectorize selects
# between rounded values; -fno-math-errno: nothing reads errno, and it lets GCC vectorize sqrt.
# Results are unchanged (rounding and NaN semantics stay IEEE).
cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-Wno-psabi"]
link_flags = ["-fopenmp"]
# `make asan-test`: AddressSanitizer and UBSan in the CPU kernels (the later -O1 wins over -O3).
if os.environ.get("FASTNETS_SANITIZE") == "1":
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    cxx_flags += sanitize + ["-O1", "-g"]
    link_flags += sanitize
extra_compile_args = {"cxx": cxx_flags}


def find_cublas():
    """cuBLAS's headers (with the others ATen/cuda/CUDAContextLight.h includes) and library: the
    toolkit's, else those of the nvidia/cu13-style wheels a pip torch brings (not the per-library
    nvidia/cublas layout of CUDA 12 wheels); None if either is missing or FASTNETS_CUBLAS=0."""
    if os.environ.get("FASTNETS_CUBLAS") == "0":
        return None
    roots = [Path(CUDA_HOME)] if CUDA_HOME else []
    try:
        import nvidia  # the wheels' namespace package

        roots += sorted(path for base in nvidia.__path__ for path in Path(base).glob("cu[0-9]*"))
    except Exception:  # noqa: BLE001  (no wheels, or a broken namespace package: no cuBLAS path)
        pass
    headers = ("cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h")
    include = next((root / "include" for root in roots if all((root / "include" / h).exists() for h in headers)), None)
    if include is None:
        return None
    for root in roots:
        for lib in (root / "lib64", root / "lib"):
            found = sorted(lib.glob("libcublas.so*"))  # libcublas.so before libcublas.so.13
            if found:
                return include, lib, found[0].name
    return None


if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    define_macros += [("FASTNETS_WITH_CUDA", None), ("FASTNETS_CUDA_ARCHS", f'"{archs}"')]
    extra_compile_args["nvcc"] = ["-O3", "-lineinfo"]
    # The LSTM's per-step GEMMs call cuBLAS directly where it is found (else through ATen;
    # FASTNETS_CUBLAS=0 forces that). Only nvcc includes its headers, after the toolkit's
    # (-isystem), so that they never shadow the toolkit's own.
    cublas = find_cublas()
    if cublas is not None:
        include, lib, name = cublas
        define_macros.append(("FASTNETS_WITH_CUBLAS", None))
        extra_compile_args["nvcc"] += ["-isystem", str(include)]
        link_flags += [f"-L{lib}", f"-l:{name}", f"-Wl,-rpath,{lib}"]
    extension = CUDAExtension
    files = sources("*.cpp") + sources("*.cu")
else:
    extension = CppExtension
    files = sources("*.cpp")



def libstdcxx_link_args() -> list:
    """Links libstdc++ dynamically even where the compiler has only its static archive (no
    libstdc++.so, as on some CUDA images): a second, static copy of the C++ library inside
    _C.so shares no locale with torch's, and formatting an error message then segfaults."""
    compiler = os.environ.get("CXX", "c++")
    found = subprocess.run([compiler, "-print-file-name=libstdc++.so"], capture_output=True, text=True).stdout.strip()
    return [] if os.path.isabs(found) else ["-l:libstdc++.so.6"]


setup(
    name="fastnets",
    version=VERSION,
    packages=["fastnets", "fastnets.nn", "fastnets.quant"],
    ext_modules=[
        extension(
            "fastnets._C",
            files,
            include_dirs=[str(ROOT / "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=[*link_flags, *libstdcxx_link_args()],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
