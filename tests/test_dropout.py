"""Dropout: exact against a reference built from the Philox stream, statistics, autograd,
opcheck, torch.compile, threads, errors, and torch.nn.Dropout drop-in behaviour."""
import pytest
import torch
import torch.nn.functional as torch_F

import fastnets
import fastnets.functional as F
from fastnets import random as frandom
from harness import (ODD_SHAPES, TRAINING_DTYPES, assert_close_to_reference, binomial_bounds,
                     check_compiles, check_cpu_cuda_identical, check_opcheck, check_same_for_threads,
                     cuda_only)

ops = torch.ops.fastnets


def reference(x, p, seed_offset):
    """The exact output: x times (mask ? 1/(1-p) : 0), computed in x's accumulation type
    (float32 for 16-bit types) from the mask that fastnets.random gives for the stream."""
    seed, offset = frandom.unpack_seed_offset(seed_offset)
    mask = frandom.dropout_mask(x.shape, p, seed, offset, device=x.device)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale = torch.tensor(1.0 / (1.0 - p) if p < 1 else 0.0, dtype=acc, device=x.device)
    multiplier = torch.where(mask, scale, torch.zeros((), dtype=acc, device=x.device))
    return (x.to(acc) * multiplier).to(x.dtype)


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_forward_equals_stream_reference(device, dtype, shape):
    x = torch.randn(shape, device=device, dtype=dtype)
    for p in (0.0, 0.2, 0.5, 0.9, 1.0):
        out, seed_offset = ops.dropout(x, p, None)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert seed_offset.dtype == torch.int64 and seed_offset.shape == (2,) and seed_offset.device == x.device
        torch.testing.assert_close(out, reference(x, p, seed_offset), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_within_twice_pytorch(device, dtype):
    x = torch.randn(4096, device=device, dtype=dtype)
    p = 0.3
    out, seed_offset = ops.dropout(x, p, None)
    seed, offset = frandom.unpack_seed_offset(seed_offset)
    mask = frandom.dropout_mask(x.shape, p, seed, offset, device=device)
    exact = x.double() * mask / (1 - p)
    pytorch_in_dtype = x * mask.to(dtype) * torch.tensor(1 / (1 - p), dtype=dtype, device=device)
    assert_close_to_reference(out, exact, baseline=pytorch_in_dtype)


def test_non_contiguous_input_is_read_row_major(device):
    base = torch.randn(64, 48, device=device)
    for x in (base.t(), base[::2, 1::3], base.unsqueeze(0).expand(3, 64, 48)):
        out, seed_offset = ops.dropout(x, 0.4, None)
        assert out.is_contiguous()
        torch.testing.assert_close(out, reference(x.contiguous(), 0.4, seed_offset), rtol=0, atol=0)


def test_p_within_2_pow_minus_32_of_one_drops_everything(device):
    x = torch.randn(100_000, device=device)
    p = 1 - 2**-40
    out, seed_offset = ops.dropout(x, p, None)
    assert not frandom.dropout_mask(x.shape, p, *frandom.unpack_seed_offset(seed_offset), device=device).any()
    assert torch.equal(out, x * 0)


def test_nan_and_inf_behave_like_pytorch(device):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0] * 64, device=device)
    out, seed_offset = ops.dropout(x, 0.5, None)
    mask = frandom.dropout_mask(x.shape, 0.5, *frandom.unpack_seed_offset(seed_offset), device=device)
    assert mask.any() and not mask.all()
    expected = x * mask * 2.0  # PyTorch multiplies by the mask: dropped NaN and inf become NaN
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=0, atol=0)
    assert F.dropout(x, 1.0).isnan().sum() == 3 * 64  # p = 1: x * 0, as torch.nn.functional.dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_rate_in_binomial_interval(device, p):
    n = 1_000_000
    out, _ = ops.dropout(torch.ones(n, device=device), p, None)
    kept = (out != 0).sum().item()
    low, high = binomial_bounds(n, 1 - p)
    assert low <= kept <= high


def test_expectation_is_input(device):
    n, p = 1_000_000, 0.3
    x = torch.full((n,), 2.5, device=device, dtype=torch.float64)
    y = F.dropout(x, p)
    std_of_mean = 2.5 * (p / (1 - p) / n) ** 0.5
    assert abs(y.mean().item() - 2.5) < 6 * std_of_mean
    assert set(torch.unique(y).tolist()) == {0.0, 2.5 / (1 - p)}


def test_calls_draw_new_masks_and_manual_seed_reproduces(device):
    x = torch.ones(1000, device=device)
    torch.manual_seed(0)
    first, second = F.dropout(x), F.dropout(x)
    assert not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(F.dropout(x), first)
    assert torch.equal(F.dropout(x), second)


def test_explicit_generator(device):
    x = torch.ones(1000, device=device)
    a = F.dropout(x, 0.5, generator=torch.Generator(device).manual_seed(7))
    b = F.dropout(x, 0.5, generator=torch.Generator(device).manual_seed(7))
    c = F.dropout(x, 0.5, generator=torch.Generator(device).manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(1)
    state = torch.random.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    F.dropout(x, 0.5, generator=torch.Generator(device).manual_seed(7))
    after = torch.random.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    assert torch.equal(state, after), "an explicit generator must leave the default one alone"


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
def test_backward_regenerates_the_forward_mask(device, dtype):
    x = (torch.rand(3001, device=device) + 0.5).to(dtype).requires_grad_()
    p = 0.4
    y = F.dropout(x, p)
    grad = torch.randn_like(y)
    y.backward(grad)
    kept = y.detach() != 0
    assert kept.any() and not kept.all()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    expected = (grad.to(acc) * kept.to(acc) * torch.tensor(1 / (1 - p), dtype=acc)).to(dtype)
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


def test_backward_saves_only_seed_offset():
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    x = torch.randn(1000, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y = F.dropout(x, 0.5)
    assert len(saved) == 1 and saved[0].dtype == torch.int64 and saved[0].shape == (2,)
    y.sum().backward()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        torch_F.dropout(x, 0.5)
    assert saved[1].numel() == 1000  # what PyTorch keeps instead: a full-size mask


def _seeded(p):
    def f(x):
        return F.dropout(x, p, generator=torch.Generator(x.device.type).manual_seed(1234))
    return f


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_gradcheck(device, p):
    x = torch.randn(5, 7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(_seeded(p), (x,))
    assert torch.autograd.gradgradcheck(_seeded(p), (x,))


def test_opcheck(device):
    x = torch.randn(7, 9, device=device, requires_grad=True)
    check_opcheck(ops.dropout.default, (x, 0.3, None))
    check_opcheck(ops.dropout.default, (x.detach().half(), 0.7, None))
    seed_offset = frandom.seed_offset_tensor(5, 6, device)
    check_opcheck(ops.dropout_backward.default, (torch.randn(4, 5, device=device), seed_offset, 0.3))


def test_torch_compile_fullgraph(device):
    x = torch.randn(33, 17, device=device)
    out = check_compiles(lambda t: F.dropout(t, 0.25) * 2, x, seed=3)
    assert (out == 0).any()
    module = fastnets.nn.Dropout(0.25)
    check_compiles(module, x, seed=4)


def test_torch_compile_training_step(device):
    x = torch.randn(257, device=device)

    def step(x, compiled):
        leaf = x.clone().requires_grad_()
        fn = torch.compile(lambda t: (F.dropout(t, 0.5) ** 2).sum(), fullgraph=True) if compiled else \
            (lambda t: (F.dropout(t, 0.5) ** 2).sum())
        torch.manual_seed(9)
        fn(leaf).backward()
        return leaf.grad

    torch._dynamo.reset()
    torch.testing.assert_close(step(x, True), step(x, False), rtol=0, atol=0)


def test_same_for_threads():
    x = torch.randn(300_007)
    check_same_for_threads(lambda: F.dropout(x, 0.5, generator=torch.Generator().manual_seed(5)))
    check_same_for_threads(lambda: ops.dropout_backward(x, frandom.seed_offset_tensor(1, 2), 0.3))


def test_eval_mode_and_p_zero(device):
    x = torch.randn(100, device=device)
    assert F.dropout(x, 0.5, training=False) is x
    assert torch.equal(F.dropout(x, 0.0), x)
    module = fastnets.nn.Dropout(0.5).eval()
    assert module(x) is x


def test_inplace(device):
    x = torch.randn(1000, device=device)
    expected = F.dropout(x, 0.5, generator=torch.Generator(device).manual_seed(3))
    y = x.clone()
    result = F.dropout(y, 0.5, inplace=True, generator=torch.Generator(device).manual_seed(3))
    assert result is y
    assert torch.equal(y, expected)
    module = fastnets.nn.Dropout(0.5, inplace=True)
    z = torch.ones(100, device=device)
    assert module(z) is z and (z == 0).any()


def test_module_is_a_drop_in():
    ours, theirs = fastnets.nn.Dropout(0.3, inplace=False), torch.nn.Dropout(0.3, inplace=False)
    assert isinstance(ours, torch.nn.Dropout)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), fastnets.nn.Dropout(0.5))
    reference_model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    reference_model.load_state_dict(model.state_dict())
    x = torch.randn(2, 4)
    torch.testing.assert_close(model.eval()(x), reference_model.eval()(x))
    assert F.dropout.__name__ == torch_F.dropout.__name__


def test_empty_input(device):
    x = torch.empty(0, 3, device=device, requires_grad=True)
    y = F.dropout(x, 0.5)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 3)


def test_bad_arguments_are_named(device):
    x = torch.randn(10, device=device)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p"):
            F.dropout(x, p)
        with pytest.raises(ValueError, match="p"):
            fastnets.nn.Dropout(p)(x)  # torch.nn.Dropout's constructor lets NaN through; forward does not
        with pytest.raises(RuntimeError, match="p must be a probability"):
            ops.dropout(x, p, None)
    for dtype in (torch.int32, torch.int64, torch.bool, torch.complex64):
        with pytest.raises(RuntimeError, match="input must be float32, float64, float16 or bfloat16"):
            F.dropout(torch.zeros(4, device=device, dtype=dtype))
    with pytest.raises(RuntimeError, match="grad_output must be"):
        ops.dropout_backward(torch.zeros(4, dtype=torch.int32, device=device), frandom.seed_offset_tensor(1, 2, device), 0.5)
    with pytest.raises(RuntimeError, match="seed_offset"):
        ops.dropout_backward(x, torch.zeros(3, dtype=torch.int64, device=device), 0.5)


def test_generator_on_another_device_is_an_error():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA generator")
    with pytest.raises(RuntimeError, match="generator|cuda|device"):
        F.dropout(torch.randn(10), 0.5, generator=torch.Generator("cuda"))


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
def test_cpu_cuda_identical(dtype):
    x = torch.randn(1_000_003, dtype=dtype)
    seed_offset = frandom.seed_offset_tensor(2**64 - 3, 2**36 + 4)
    check_cpu_cuda_identical(lambda device: ops.dropout_backward(x.to(device), seed_offset.to(device), 0.35))
    # Unaligned storage takes the kernel's scalar path; it must agree too.
    check_cpu_cuda_identical(lambda device: ops.dropout_backward(x.to(device)[1:], seed_offset.to(device), 0.35))


@cuda_only
@pytest.mark.cuda
def test_cuda_stream_comes_from_the_generator():
    torch.manual_seed(0)
    generator = torch.cuda.default_generators[torch.cuda.current_device()]
    x = torch.ones(100, device="cuda")
    for _ in range(2):
        before = generator.get_offset()
        _, seed_offset = ops.dropout(x, 0.5, None)
        # One reserved step of 4; its counter is generator offset / 4, as in torch's own ops.
        assert generator.get_offset() == before + 4
        assert frandom.unpack_seed_offset(seed_offset) == (generator.initial_seed(), before // 4)


@cuda_only
@pytest.mark.cuda
def test_cuda_graph_replays_draw_fresh_masks():
    x = torch.ones(4099, device="cuda")
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up outside the capture
            ops.dropout(x, 0.5, None)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, seed_offset = ops.dropout(x, 0.5, None)
    outputs = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, reference(x, 0.5, seed_offset), rtol=0, atol=0)
        outputs.append(out.clone())
    assert not torch.equal(outputs[0], outputs[1]), "graph replays must not reuse a mask"
