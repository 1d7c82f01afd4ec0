"""Every CPU SIMD level (FASTNETS_CPU_ISA caps it; each run is a new process) gives bit-identical
results: the AVX-512, AVX2 and baseline loops run the same math (the convolution: bit-identical
where FMA exists)."""
import os
import subprocess
import sys

import torch

import fastnets

SCRIPT = r"""
import sys, torch, fastnets
from fastnets import random as frandom
ops = torch.ops.fastnets
torch.manual_seed(0)
x = torch.randn(100_003) * 3
so = frandom.seed_offset_tensor(12345, 678)
g = lambda: torch.Generator().manual_seed(9)
results = {
    "isa": fastnets.build_info()["cpu_isa"],
    "dropout": [ops.dropout_backward(x.to(t), so, 0.3) for t in (torch.float32, torch.float64, torch.bfloat16)],
    "stochastic": [fastnets.functional.fixed_point_quantize(x.to(t), 12, 6, generator=g())
                   for t in (torch.float32, torch.float16)],
    "nearest": fastnets.functional.fixed_point_quantize(x.double(), 20, 11, "nearest"),
    "philox": [frandom.philox_bits((10_007,), 3, 4, first=first) for first in (0, 5, 2**34 - 5_003)],
    "codes": fastnets.quant.to_fixed(x, 8, 4, "stochastic", generator=g()),
    "maxout": [t for view, pieces, dim in ((x[:100_000].view(400, 250), 5, -1), (x[:100_000].view(400, 250), 2, 1),
                                           (x[:96_000].view(40, 24, 100), 4, 1), (x[:96_000].view(40, 24, 100), 3, 1))
               for t in ops.maxout(view, pieces, dim)],
}
leaves = [t.requires_grad_() for t in (torch.randn(3, 5, 13, 11), torch.randn(7, 5, 3, 4), torch.randn(7))]
pooled = fastnets.functional.conv_relu_pool2d(*leaves, padding=1, pool_kernel=2)
pooled.backward(torch.randn_like(pooled))
results["conv"] = [fastnets.functional.conv2d(*leaves, stride=(2, 1), dilation=(1, 2)).detach(), pooled.detach()]
results["conv"] += [t for kernel, stride in ((3, 2), ((2, 3), (3, 1)), (1, 1))
                    for t in ops.conv_relu_pool2d(*[leaf.detach() for leaf in leaves], [1, 1], [1, 1], [1, 1], 1,
                                                  list(fastnets.functional._pair(kernel, "k")),
                                                  list(fastnets.functional._pair(stride, "s")))]
results["conv"] += [leaf.grad for leaf in leaves]
wide = [t.requires_grad_() for t in (torch.randn(2, 40, 9, 11), torch.randn(40, 20, 3, 7))]
by_positions = fastnets.functional.conv2d(*wide, padding=(2, 6), dilation=2, groups=2)  # tiles of output positions
by_positions.backward(torch.randn_like(by_positions))
results["conv"] += [by_positions.detach()] + [leaf.grad for leaf in wide]
long_rows = [t.requires_grad_() for t in (torch.randn(1, 32, 4, 29), torch.randn(32, 32, 5, 5))]
by_runs = fastnets.functional.conv2d(*long_rows, padding=2)  # output rows in three runs of positions
by_runs.backward(torch.randn_like(by_runs))
results["conv"] += [by_runs.detach()] + [leaf.grad for leaf in long_rows]
strided = [t.requires_grad_() for t in (torch.randn(2, 32, 13, 14), torch.randn(64, 32, 3, 3))]
by_stride = fastnets.functional.conv2d(*strided, stride=2, padding=1)  # by positions, column stride 2
by_stride.backward(torch.randn_like(by_stride))
results["conv"] += [by_stride.detach()] + [leaf.grad for leaf in strided]
partial = [t.requires_grad_() for t in (torch.randn(2, 37, 7, 9), torch.randn(8, 37, 3, 3))]
by_channels = fastnets.functional.conv2d(*partial, padding=1)  # weight gradient by channels, partial tiles
by_channels.backward(torch.randn_like(by_channels))
results["conv"] += [leaf.grad for leaf in partial]
winners = [t.requires_grad_() for t in (torch.randn(2, 20, 10, 9), torch.randn(6, 20, 3, 3), torch.randn(6))]
by_winners = fastnets.functional.conv_relu_pool2d(*winners, padding=1)  # weight gradient by the pool's winners
by_winners.backward(torch.randn_like(by_winners))
results["conv"] += [leaf.grad for leaf in winners]
states, weight = torch.randn(61, 37) * 2, torch.randn(53, 37)
results["rbm"] = [t for dtype in (torch.float32, torch.float64, torch.bfloat16) for unit in ("bernoulli", "gaussian")
                  for t in ops.rbm_sample(states.to(dtype), weight.to(dtype), None, unit, generator=g())[:2]]
torch.save(results, sys.argv[1])
"""


def run_with(isa, path):
    env = dict(os.environ, FASTNETS_CPU_ISA=isa)
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, check=True, cwd=os.getcwd())
    return torch.load(path)


def test_every_simd_level_gives_the_same_results(tmp_path):
    detected = fastnets.build_info()["cpu_isa"]
    levels = ["baseline", "avx2", "avx512"]
    runs = {isa: run_with(isa, tmp_path / f"{isa}.pt") for isa in levels}
    for isa, result in runs.items():
        expected_isa = levels[min(levels.index(isa), levels.index(detected))]
        assert result["isa"] == expected_isa
    reference = runs["baseline"]
    for isa in ("avx2", "avx512"):
        for key in ("dropout", "stochastic", "nearest", "codes", "maxout", "philox"):
            left, right = reference[key], runs[isa][key]
            pairs = zip(left, right) if isinstance(left, list) else [(left, right)]
            for a, b in pairs:
                assert torch.equal(a, b), f"{key} differs between baseline and {isa}"
    # The convolution's GEMM fuses multiply-adds where the instruction set has FMA (AVX2 and
    # up): those levels agree bit for bit, the baseline to rounding.
    for a, b, c in zip(reference["conv"], runs["avx2"]["conv"], runs["avx512"]["conv"]):
        assert torch.equal(b, c), "convolution differs between avx2 and avx512"
        torch.testing.assert_close(a, c)


def test_unknown_level_is_an_error():
    env = dict(os.environ, FASTNETS_CPU_ISA="sse9")
    result = subprocess.run([sys.executable, "-c", "import torch, fastnets; fastnets.functional.dropout(torch.ones(8))"],
                            env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "FASTNETS_CPU_ISA" in result.stderr
