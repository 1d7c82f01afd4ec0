"""The suites under pytest-benchmark, for those who already use it:

    pytest bench/ --benchmark-only --benchmark-save=NAME
    pytest bench/ --benchmark-only --benchmark-compare=NAME --benchmark-compare-fail=median:10%

Each bench_<op>.py lists its cases in ``cases(device)``; this file turns every
(case, implementation) into one benchmark. pytest-benchmark compares absolute times;
``python -m fastnets bench --compare`` compares same-run speed-ups, which survive a noisy or
different machine.
"""
import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_configure(config):
    config.addinivalue_line("python_files", "bench_*.py")
    config.addinivalue_line("python_functions", "bench_*")


def pytest_generate_tests(metafunc):
    if "case_impl" not in metafunc.fixturenames:
        return
    params = [pytest.param((case, impl), id=f"{case.name} {impl}".replace(" ", "-"))
              for device in DEVICES for case in metafunc.module.cases(device) for impl in case.impls]
    metafunc.parametrize("case_impl", params)


@pytest.fixture(autouse=True)
def _free_cuda_memory():
    yield
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
