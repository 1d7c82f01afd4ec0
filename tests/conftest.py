import pytest
import torch

import fastnets  # noqa: F401  (registers torch.ops.fastnets.*)

from harness import DEVICES


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every device test runs on CPU, and on CUDA where a GPU is present (skipped otherwise)."""
    return request.param


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
