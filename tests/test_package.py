"""The package around the ops: build information, the command line, op registration."""
import subprocess
import sys

import torch

import fastnets


def test_build_info():
    info = fastnets.build_info()
    assert info["version"] == fastnets.__version__
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    assert info["cpu_isa"] in {"baseline", "avx2", "avx512"}
    if info["cuda"]:
        assert info["cuda_archs"]
    if torch.cuda.is_available():
        assert info["cuda"], "a GPU is present but the CUDA kernels were not compiled"


def test_ops_are_registered_for_cpu_and_fake():
    for name in ("dropout", "dropout_backward", "philox_bits"):
        op = getattr(torch.ops.fastnets, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU")
        if fastnets.build_info()["cuda"]:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA")
    assert torch.Tag.nondeterministic_seeded in torch.ops.fastnets.dropout.default.tags


def test_cli_info():
    result = subprocess.run([sys.executable, "-m", "fastnets", "info"], capture_output=True, text=True, check=True)
    assert f"fastnets {fastnets.__version__}" in result.stdout
    assert f"torch {torch.__version__}" in result.stdout
    assert "CUDA kernels:" in result.stdout and "OpenMP:" in result.stdout


def test_cli_rejects_unknown_arguments():
    result = subprocess.run([sys.executable, "-m", "fastnets", "info", "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "--bogus" in result.stderr
