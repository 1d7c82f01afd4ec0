"""fastnets: hand-written C++ and CUDA kernels for classic deep-network building blocks.

Importing the package loads ``fastnets._C``, which registers the ops as ``torch.ops.fastnets.*``
(CPU and CUDA kernels), then adds their fake (meta) implementations and autograd formulas.

Layers: ``fastnets.nn`` (modules) -> ``fastnets.functional`` (functions) -> ``torch.ops.fastnets``
(dispatcher ops) -> ``csrc/`` (kernels). ``fastnets.random`` exposes the Philox stream that every
random op draws from; ``fastnets.quant`` holds the fixed-point training tools.
"""

__version__ = "0.1.0"

import torch  # noqa: F401  (the extension links against torch's libraries)

from fastnets import _C  # noqa: F401  (registers torch.ops.fastnets.*)
from fastnets import _ops  # noqa: F401  (fake impls and autograd)
from fastnets import functional, nn, quant, random, rbm

__all__ = ["functional", "nn", "quant", "random", "rbm", "build_info", "__version__"]


def build_info() -> dict:
    """How the compiled kernels were built: version, CUDA (and its architectures), OpenMP, CPU SIMD level."""
    return dict(_C.build_info())
