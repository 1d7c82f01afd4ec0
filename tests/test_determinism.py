"""Determinism, randomness, leaks and threads across the ops (issue 11): a forked generator state
reproduces a random call, consecutive calls never reuse numbers, many forward/backward calls do
not grow memory, and calls from several Python threads at once give the single-threaded
results."""
import threading

import pytest
import torch
import torch.nn.functional as torch_F

import fastnets.functional as F
from harness import DEVICES

RANDOM_OPS = {
    "dropout": lambda x, generator=None: F.dropout(x, 0.5, generator=generator),
    "stochastic rounding": lambda x, generator=None: F.fixed_point_quantize(x, 8, 4, "stochastic",
                                                                           generator=generator),
    "bernoulli units": lambda x, generator=None: F.rbm_sample_units(x, "bernoulli", generator=generator)[1],
    "gaussian units": lambda x, generator=None: F.rbm_sample_units(x, "gaussian", generator=generator)[1],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(RANDOM_OPS))
def test_a_forked_generator_state_reproduces_a_call(name, device):
    op = RANDOM_OPS[name]
    x = torch.randn(3000, device=device)
    for generator in (None, torch.Generator(device).manual_seed(3)):
        source = generator or (torch.cuda if device == "cuda" else torch)
        state = source.get_rng_state() if generator is None else generator.get_state()
        first, second = op(x, generator), op(x, generator)
        assert not torch.equal(first, second)  # consecutive calls draw fresh numbers
        if generator is None:
            source.set_rng_state(state)
        else:
            generator.set_state(state)
        assert torch.equal(op(x, generator), first) and torch.equal(op(x, generator), second)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def training_calls(x, weight, bias):
    out = F.conv_relu_pool2d(x, weight, bias, 1, 1)
    out = F.maxout(F.dropout(out.flatten(1), 0.3), 2)
    out = F.fixed_point_quantize(out, 16, 8)
    sequence = out.view(8, 1, 256)  # 8 steps of one 256-feature vector
    h0 = torch.zeros(1, 16)
    output, (h_n, _) = F.lstm_layer(sequence, (h0, h0), torch.ones(64, 256) / 256, torch.ones(64, 16) / 16)
    mean, _ = F.rbm_sample(output.view(8, 16), weight.view(8, 27)[:, :16], None)  # an RBM layer of 8 units
    (mean.sum() + h_n.sum()).backward()
    F.max_pool2d(x.detach(), 2).sum()


def test_many_calls_do_not_grow_memory():
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    weight = torch.randn(8, 3, 3, 3, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    for _ in range(20):  # warm-up: allocator pools, thread pools
        training_calls(x, weight, bias)
    before = resident_bytes()
    for _ in range(300):
        training_calls(x, weight, bias)
    assert resident_bytes() - before < 8 * 2**20, "resident memory grew over 300 training steps"


@pytest.mark.parametrize("device", DEVICES)
def test_concurrent_calls_from_python_threads(device):
    torch.manual_seed(0)
    inputs = [torch.randn(4, 3, 12, 12, device=device, dtype=torch.float64) for _ in range(6)]
    weight = torch.randn(5, 3, 3, 3, device=device, dtype=torch.float64)

    rbm_weight = torch.randn(7, 432, device=device, dtype=torch.float64) / 20
    w_ih, w_hh = (torch.randn(48, n, device=device, dtype=torch.float64) / 10 for n in (144, 12))

    def work(x):
        h0 = x[0, :, 0, :12]  # (3, 12): x.flatten(2) is 4 steps of a batch of 3
        return [F.conv2d(x, weight, padding=1), F.conv_relu_pool2d(x, weight, None, 1, 1), F.max_pool2d(x, 3, 2, 1),
                F.maxout(x, 3, dim=1), F.fixed_point_quantize(x, 12, 6, "nearest"),
                F.rbm_sample(x.flatten(1), rbm_weight, None, sample=False)[0],
                F.lstm_layer(x.flatten(2), (h0, h0), w_ih, w_hh)[0]]

    expected = [work(x) for x in inputs]
    results = [None] * len(inputs)
    errors = []

    def run(i):
        try:
            for _ in range(5):
                results[i] = work(inputs[i])
        except Exception as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for mine, theirs in zip(results, expected):
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)
    # And the references agree (the threads did not all compute the same wrong thing).
    torch.testing.assert_close(expected[0][0], torch_F.conv2d(inputs[0], weight, padding=1))
