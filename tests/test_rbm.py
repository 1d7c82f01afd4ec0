"""RBM unit sampling (fastnets::rbm_sample), the RBM and DBN modules, exact log Z and AIS: against
float64 formulas, brute-force enumeration and the exposed Philox stream; statistics; gradcheck,
opcheck, torch.compile, threads, errors."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from harness import (TRAINING_DTYPES, assert_close_to_reference, check_compiles, check_opcheck,
                     check_same_for_threads, cuda_only)

import fastnets
from fastnets.data import load_mnist
from fastnets.random import rbm_bernoulli, rbm_normal, unpack_seed_offset
from fastnets.rbm import ais, ais_betas, base_visible_bias, exact_log_partition

ops = torch.ops.fastnets


def layer(batch, n_in, n_out, dtype=torch.float32, device="cpu", scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_in, generator=g, dtype=torch.float64)
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64) * scale / math.sqrt(max(n_in, 1))
    b = torch.randn(n_out, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (x, w, b)]


def total_input(x, w, b):
    """The op's total input x w^T + b (a Gaussian unit's mean), close to F.linear's: on the CPU
    float32 and float64 come from fastnets' own GEMM, rounded otherwise."""
    total = ops.rbm_sample(x, w, b, "gaussian", False)[0]
    if x.dtype == torch.float64:  # a sum's rounding: k + 1 units of the largest partial sum, at most
        bound = (x.shape[1] + 1) * torch.finfo(x.dtype).eps * (F.linear(x.abs(), w.abs(), b.abs()))
        assert bool(((total - F.linear(x, w, b)).abs() <= 2 * bound).all())
    else:
        reference = F.linear(x.double(), w.double(), b.double())
        assert_close_to_reference(total, reference, F.linear(x, w, b))
    return total


# ---- the op: means, samples, the stream --------------------------------------------------------

@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5), (64, 129, 33), (3, 0, 6), (0, 5, 4)])
def test_bernoulli_mean_and_sample_match_reference(device, dtype, shape):
    x, w, b = layer(*shape, dtype=dtype, device=device, scale=4.0)
    mean, sample, seed_offset = ops.rbm_sample(x, w, b)
    total = total_input(x, w, b)  # the same GEMM: only the sigmoid differs
    reference = torch.sigmoid(total.double())
    if dtype == torch.float64:
        torch.testing.assert_close(mean, reference, rtol=4e-16, atol=1e-300)
    else:
        assert_close_to_reference(mean, reference, torch.sigmoid(total))
    seed, offset = unpack_seed_offset(seed_offset)
    assert torch.equal(sample, rbm_bernoulli(mean, seed, offset))
    assert sample.dtype == dtype and set(sample.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
def test_gaussian_units_add_the_stream_normal(device, dtype):
    x, w, b = layer(37, 21, 41, dtype=dtype, device=device)
    mean, sample, seed_offset = ops.rbm_sample(x, w, b, "gaussian")
    assert torch.equal(mean, total_input(x, w, b))
    seed, offset = unpack_seed_offset(seed_offset)
    noise_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    z = rbm_normal(mean.shape, seed, offset, noise_dtype, device)
    reference = mean.double() + z
    tolerance = {torch.float64: 1e-13, torch.float32: 2e-6}.get(dtype, 0.0)
    allowed = tolerance * (1 + reference.abs()) + (reference.abs() * torch.finfo(dtype).eps if tolerance == 0 else 0)
    assert bool(((sample.double() - reference).abs() <= allowed + 1e-300).all())


def test_sigmoid_accuracy_over_the_whole_range():
    a = torch.linspace(-120, 120, 480_001, dtype=torch.float64)
    one = torch.ones(1, 1, dtype=torch.float64)
    reference = torch.sigmoid(a)
    mean64 = ops.rbm_sample(a[:, None], one, None, sample=False)[0][:, 0]
    assert ((mean64 - reference).abs() / reference).max() < 1e-15
    mean32 = ops.rbm_sample(a.float()[:, None], one.float(), None, sample=False)[0][:, 0].double()
    normal = reference.float().double() > torch.finfo(torch.float32).tiny
    exact32 = torch.sigmoid(a.float().double())  # the reference of the float32 input
    relative = ((mean32 - exact32).abs() / exact32)[normal]
    torch_relative = ((torch.sigmoid(a.float()).double() - exact32).abs() / exact32)[normal]
    assert relative.max() <= 2 * torch_relative.max() + 2 * torch.finfo(torch.float32).eps


def test_special_values():
    a = torch.tensor([float("inf"), -float("inf"), float("nan"), 1000.0, -1000.0, 0.0])
    for dtype in (torch.float32, torch.float64):
        mean, sample, _ = ops.rbm_sample(a.to(dtype)[:, None], torch.ones(1, 1, dtype=dtype), None)
        assert mean[:, 0].tolist()[:2] == [1.0, 0.0] and math.isnan(mean[2, 0])
        assert mean[3:, 0].tolist() == [1.0, 0.0, 0.5]
        assert sample[[0, 1, 3, 4], 0].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_probability_in_confidence_interval(device):
    # 4096 draws of 64 units with probabilities spread over (0, 1): each count within 6 sigma.
    total = torch.linspace(-5, 5, 64, device=device)
    states = torch.ones(4096, 1, device=device)
    mean, sample, _ = ops.rbm_sample(states, total[:, None], None)
    p = torch.sigmoid(total.double())
    counts = sample.double().sum(0)
    sigma = torch.sqrt(4096 * p * (1 - p))
    assert bool(((counts - 4096 * p).abs() <= 6 * sigma + 1).all())
    assert torch.equal(mean[0], mean[-1])


def test_gaussian_noise_is_standard_normal(device):
    states = torch.zeros(20_000, 1, dtype=torch.float64, device=device)
    sample = ops.rbm_sample(states, torch.zeros(50, 1, dtype=torch.float64, device=device), None, "gaussian")[1]
    z = sample.flatten()
    n = z.numel()
    assert abs(z.mean().item()) < 6 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 6 * math.sqrt(2 / n)
    # the fraction beyond 1, 2 and 3 standard deviations
    for k in (1, 2, 3):
        p = math.erfc(k / math.sqrt(2))
        count = (z.abs() > k).sum().item()
        assert abs(count - n * p) < 6 * math.sqrt(n * p * (1 - p))


def test_calls_draw_fresh_samples_and_manual_seed_reproduces(device):
    x, w, b = layer(50, 30, 40, device=device)
    torch.manual_seed(5)
    first = ops.rbm_sample(x, w, b)
    second = ops.rbm_sample(x, w, b)
    assert not torch.equal(first[1], second[1]) and not torch.equal(first[2], second[2])
    torch.manual_seed(5)
    again = ops.rbm_sample(x, w, b)
    assert torch.equal(again[1], first[1]) and torch.equal(again[2], first[2])
    explicit = [fastnets.functional.rbm_sample(x, w, b, generator=torch.Generator(device).manual_seed(1))[1]
                for _ in range(2)]
    assert torch.equal(explicit[0], explicit[1])


def test_means_only_draw_nothing(device):
    x, w, b = layer(5, 6, 7, device=device)
    state = torch.random.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    mean, sample, seed_offset = ops.rbm_sample(x, w, b, "bernoulli", False)
    after = torch.random.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    assert torch.equal(state, after) and sample.shape == (0,) and seed_offset.tolist() == [0, 0]
    assert torch.equal(mean, ops.rbm_sample(x, w, b)[0])
    assert fastnets.functional.rbm_sample(x, w, b, "gaussian", sample=False)[1] is None


def test_transposed_weight_view_and_one_dimensional_input(device):
    x, w, b = layer(9, 11, 7, device=device)
    h = torch.bernoulli(torch.full((9, 7), 0.5, device=device))
    mean_view = ops.rbm_sample(h, w.t(), None, sample=False)[0]
    mean_copy = ops.rbm_sample(h, w.t().contiguous(), None, sample=False)[0]
    torch.testing.assert_close(mean_view, mean_copy)
    mean, sample = fastnets.functional.rbm_sample(x[0], w, b)
    assert mean.shape == sample.shape == (7,)
    torch.testing.assert_close(mean, torch.sigmoid(F.linear(x[0], w, b)))


@pytest.mark.parametrize("batch", [300, 5, 6, 7, 9, 10, 11])  # torch's float32 mm: other bits for 1, 2 threads
def test_same_for_threads(batch):
    x, w, b = layer(batch, 200, 257)

    def run():
        outputs = [ops.rbm_sample(x, w, b, unit, generator=torch.Generator().manual_seed(3))[:2]
                   for unit in ("bernoulli", "gaussian")]
        return torch.cat([t.flatten() for pair in outputs for t in pair])

    check_same_for_threads(run)


@pytest.mark.parametrize("unit", ["bernoulli", "gaussian"])
def test_gradcheck_of_the_mean(device, unit):
    x, w, b = (t.requires_grad_() for t in layer(4, 5, 3, dtype=torch.float64, device=device))
    assert torch.autograd.gradcheck(lambda x, w, b: ops.rbm_sample(x, w, b, unit)[0], (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: ops.rbm_sample(x, w, None, unit, False)[0], (x, w))


def test_opcheck(device):
    x, w, b = layer(6, 5, 4, device=device)
    check_opcheck(ops.rbm_sample.default, (x, w, b, "bernoulli", False, None))
    check_opcheck(ops.rbm_sample.default, (x.double().requires_grad_(), w.double(), b.double(), "gaussian", False))
    check_opcheck(ops.rbm_sample.default, (x.half(), w.half(), None, "bernoulli", False))
    check_opcheck(ops.rbm_sample.default, (x, w, b, "bernoulli", True))  # samples: compared in shape only
    check_opcheck(ops.rbm_sample_units.default, (x, "gaussian", True))


def test_torch_compile_fullgraph(device):
    x, w, b = layer(8, 12, 10, device=device)
    check_compiles(lambda x: torch.cat([ops.rbm_sample(x, w, b)[1], fastnets.functional.rbm_sample(x, w, b)[0]], 1),
                   x, seed=2)
    rbm = fastnets.nn.RBM(12, 10).to(device)
    check_compiles(lambda v: rbm.gibbs(v, k=2)[1], torch.bernoulli(torch.full((8, 12), 0.3, device=device)), seed=3)


def test_bad_arguments_are_named(device):
    x, w, b = layer(4, 5, 3, device=device)
    cases = [
        ((x[0], w, b), "input must be 2-D"),
        ((x, w[0], b), "weight must be 2-D"),
        ((x, w[:, :4], b), "weight must have in_features"),
        ((x, w.double(), b), "weight must have input's dtype"),
        ((x, w, b[:2]), "bias must be 1-D of out_features"),
        ((x, w, b.double()), "bias must have input's dtype"),
        ((x.int(), w.int(), None), "input must be float32"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            ops.rbm_sample(*args)
    with pytest.raises(RuntimeError, match="unit must be"):
        ops.rbm_sample(x, w, b, "binary")
    with pytest.raises(ValueError, match="unit must be"):
        fastnets.functional.rbm_sample(x, w, b, "softmax")


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("unit", ["bernoulli", "gaussian"])
def test_units_alone_equal_the_layer_op(device, dtype, unit):
    x, w, b = layer(19, 23, 29, dtype=dtype, device=device)
    mean, sample, seed_offset = ops.rbm_sample(x, w, b, unit)
    total = total_input(x, w, b)
    kept = total.clone()
    transposed = ops.rbm_sample_units(total.t(), unit, True, None, seed_offset)  # a non-contiguous view
    assert torch.equal(transposed[0], mean.t()) and transposed[0].is_contiguous()
    replayed = ops.rbm_sample_units(total, unit, True, None, seed_offset)
    assert torch.equal(replayed[0], mean) and torch.equal(replayed[1], sample)
    assert torch.equal(total, kept)  # the input is not overwritten
    mean3, sample3 = fastnets.functional.rbm_sample_units(total.reshape(19, 29, 1), unit)
    assert mean3.shape == sample3.shape == (19, 29, 1)


def test_units_alone_gradcheck_opcheck_and_errors(device):
    total = torch.randn(5, 7, dtype=torch.float64, device=device, requires_grad=True)
    for unit in ("bernoulli", "gaussian"):
        assert torch.autograd.gradcheck(lambda t, unit=unit: ops.rbm_sample_units(t, unit)[0], (total,))
        check_opcheck(ops.rbm_sample_units.default, (total.detach(), unit, False))
    with pytest.raises(RuntimeError, match="total_input must be float32"):
        ops.rbm_sample_units(torch.ones(3, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="unit must be"):
        fastnets.functional.rbm_sample_units(total, "poisson")


# ---- the RBM module ----------------------------------------------------------------------------

def small_rbm(n_visible=10, n_hidden=4, visible="bernoulli", scale=1.0, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    rbm = fastnets.nn.RBM(n_visible, n_hidden, visible, dtype=dtype)
    with torch.no_grad():
        rbm.weight.normal_(0, scale)
        rbm.visible_bias.normal_(0, 1)
        rbm.hidden_bias.normal_(0, 1)
    return rbm


def test_module_parameters_and_initialization():
    rbm = fastnets.nn.RBM(784, 500)
    assert list(rbm.state_dict()) == ["weight", "visible_bias", "hidden_bias"]
    assert rbm.weight.shape == (500, 784) and abs(rbm.weight.std().item() - 0.01) < 1e-3
    assert not rbm.visible_bias.any() and not rbm.hidden_bias.any()
    assert "n_visible=784, n_hidden=500" in repr(rbm)
    rbm64 = fastnets.nn.RBM(3, 2, dtype=torch.float64)
    assert rbm64.weight.dtype == torch.float64


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_free_energy_is_minus_log_sum_over_hidden(visible):
    rbm = small_rbm(6, 4, visible)
    v = torch.rand(5, 6, dtype=torch.float64)
    if visible == "bernoulli":
        v = torch.bernoulli(v)
    W, b, c = rbm.weight.detach(), rbm.visible_bias.detach(), rbm.hidden_bias.detach()
    hs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    visible_term = v @ b if visible == "bernoulli" else -0.5 * ((v - b) ** 2).sum(1)
    minus_energy = visible_term[:, None] + (hs @ c)[None, :] + v @ W.t() @ hs.t()
    torch.testing.assert_close(rbm.free_energy(v), -torch.logsumexp(minus_energy, 1))


def test_exact_log_partition_equals_brute_force():
    rbm = small_rbm(9, 5, scale=1.5)
    W, b, c = rbm.weight.detach(), rbm.visible_bias.detach(), rbm.hidden_bias.detach()
    vs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)), dtype=torch.float64)
    hs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=torch.float64)
    brute = torch.logsumexp(((vs @ b)[:, None] + (hs @ c)[None, :] + vs @ W.t() @ hs.t()).flatten(), 0)
    torch.testing.assert_close(exact_log_partition(rbm), brute)  # over the hidden layer
    flipped = small_rbm(5, 9)
    with torch.no_grad():
        flipped.weight.copy_(W.t())
        flipped.visible_bias.copy_(c)
        flipped.hidden_bias.copy_(b)
    torch.testing.assert_close(flipped.log_partition(), brute)  # over the visible layer


def test_exact_log_partition_gaussian_by_quadrature():
    rbm = small_rbm(1, 3, "gaussian", scale=0.8)
    v = torch.linspace(-30, 30, 600_001, dtype=torch.float64)[:, None]
    integral = torch.logsumexp(-rbm.free_energy(v).detach(), 0) + math.log(60 / 600_000)
    torch.testing.assert_close(exact_log_partition(rbm), integral, rtol=0, atol=1e-8)
    assert torch.allclose(torch.logsumexp(rbm.log_prob(v, rbm.log_partition()), 0) + math.log(60 / 600_000),
                          torch.zeros((), dtype=torch.float64), atol=1e-8)


def test_exact_log_partition_refuses_huge_enumerations():
    with pytest.raises(ValueError, match="ais"):
        exact_log_partition(fastnets.nn.RBM(40, 30))


def cd1_reference(rbm, v, seed):
    # CD-1 from the same samples, in float64 with explicit sums.
    g = torch.Generator().manual_seed(seed)
    W, b, c = (p.detach() for p in (rbm.weight, rbm.visible_bias, rbm.hidden_bias))
    positive_h, h = fastnets.functional.rbm_sample(v, W, c, generator=g)
    mean_v = fastnets.functional.rbm_sample(h, W.t(), b, rbm.visible, generator=g)[0]
    negative_h = torch.sigmoid(mean_v @ W.t() + c)
    n = v.shape[0]
    grad_w = -(torch.einsum("nj,ni->ji", positive_h, v) - torch.einsum("nj,ni->ji", negative_h, mean_v)) / n
    return grad_w, -(v - mean_v).sum(0) / n, -(positive_h - negative_h).sum(0) / n, mean_v


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_cd1_gradients_equal_float64_reference(visible):
    rbm = small_rbm(17, 9, visible, scale=0.5)
    v = torch.rand(31, 17, dtype=torch.float64)
    v = torch.bernoulli(v) if visible == "bernoulli" else v * 3 - 1
    error = rbm.contrastive_divergence(v, generator=torch.Generator().manual_seed(4))
    grad_w, grad_b, grad_c, mean_v = cd1_reference(rbm, v, 4)
    torch.testing.assert_close(rbm.weight.grad, grad_w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rbm.visible_bias.grad, grad_b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rbm.hidden_bias.grad, grad_c, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(error, ((v - mean_v) ** 2).sum(1).mean())
    rbm.contrastive_divergence(v, generator=torch.Generator().manual_seed(4))  # accumulates, as backward does
    torch.testing.assert_close(rbm.weight.grad, 2 * grad_w, rtol=1e-12, atol=1e-14)


def test_cd_k_and_persistent_chains():
    rbm = small_rbm(12, 6, scale=0.5, dtype=torch.float32)
    v = torch.bernoulli(torch.full((20, 12), 0.4))
    rbm.contrastive_divergence(v, k=3)
    assert rbm.weight.grad.shape == (6, 12) and torch.isfinite(rbm.weight.grad).all()
    assert rbm.chain is None
    rbm.contrastive_divergence(v, k=2, persistent=True)
    first = rbm.chain.clone()
    assert first.shape == v.shape and set(first.unique().tolist()) <= {0.0, 1.0}
    rbm.contrastive_divergence(v, persistent=True)
    assert not torch.equal(first, rbm.chain)  # the chain moved on
    rbm.contrastive_divergence(v[:7], persistent=True)  # a short batch keeps the chains
    assert rbm.chain.shape == v.shape
    assert list(rbm.state_dict()) == ["weight", "visible_bias", "hidden_bias"]  # chains are not checkpointed
    fastnets.nn.RBM(12, 6).load_state_dict(rbm.state_dict())
    # PCD with a seeded generator is reproducible
    runs = []
    for _ in range(2):
        rbm.chain = None
        rbm.weight.grad = None
        g = torch.Generator().manual_seed(8)
        for _ in range(3):
            rbm.contrastive_divergence(v, persistent=True, generator=g)
        runs.append((rbm.weight.grad.clone(), rbm.chain.clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_pcd_gradient_averages_data_and_chains_separately():
    rbm = small_rbm(10, 6, scale=0.5)
    v = torch.bernoulli(torch.full((8, 10), 0.4, dtype=torch.float64))
    chains = torch.bernoulli(torch.full((5, 10), 0.6, dtype=torch.float64))
    rbm.chain = chains.clone()
    rbm.contrastive_divergence(v, persistent=True, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    W, b, c = (p.detach() for p in (rbm.weight, rbm.visible_bias, rbm.hidden_bias))
    positive_h = fastnets.functional.rbm_sample(v, W, c, generator=g)[0]
    h = fastnets.functional.rbm_sample(chains, W, c, generator=g)[1]
    mean_v, sampled = fastnets.functional.rbm_sample(h, W.t(), b, generator=g)
    negative_h = torch.sigmoid(mean_v @ W.t() + c)
    expected = negative_h.t() @ mean_v / 5 - positive_h.t() @ v / 8
    torch.testing.assert_close(rbm.weight.grad, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rbm.visible_bias.grad, mean_v.mean(0) - v.mean(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rbm.hidden_bias.grad, negative_h.mean(0) - positive_h.mean(0), rtol=1e-12, atol=1e-14)
    assert torch.equal(rbm.chain, sampled)


def test_module_bad_input_is_named():
    rbm = fastnets.nn.RBM(6, 4)
    with pytest.raises(ValueError, match=r"v must have shape \(batch, 6\)"):
        rbm.sample_h(torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"h must have shape \(batch, 4\)"):
        rbm.sample_v(torch.rand(3, 6))
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        rbm.contrastive_divergence(torch.rand(3, 6), k=0)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        rbm.gibbs(torch.rand(3, 6), k=0)
    with pytest.raises(ValueError, match=r"v must lie in \[0, 1\]"):
        rbm.contrastive_divergence(torch.randn(3, 6) * 3)
    with pytest.raises(ValueError, match="visible must be"):
        fastnets.nn.RBM(6, 4, visible="softmax")
    with pytest.raises(ValueError, match="sizes must list"):
        fastnets.nn.DBN([784])
    fastnets.nn.RBM(6, 4, "gaussian").contrastive_divergence(torch.randn(3, 6) * 3)  # real data is fine there


@pytest.fixture(scope="module")
def binary_digits():
    data = load_mnist()
    return ((data.train_images.reshape(-1, 784) > 0.5).float(), (data.test_images.reshape(-1, 784) > 0.5).float())


def train(rbm, data, epochs, lr=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(rbm.parameters(), lr=lr, momentum=0.5)
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=g)
        for start in range(0, len(data), 64):
            optimizer.zero_grad()
            rbm.contrastive_divergence(data[order[start:start + 64]], generator=g)
            optimizer.step()


def test_cd1_on_mnist_lowers_reconstruction_error(binary_digits):
    train_images, test_images = binary_digits
    torch.manual_seed(0)
    rbm = fastnets.nn.RBM(784, 100)
    before = rbm.reconstruction_error(test_images).item()
    train(rbm, train_images, epochs=2)
    after = rbm.reconstruction_error(test_images).item()
    assert after < 0.5 * before, (before, after)


def test_ais_agrees_with_exact_log_z_and_narrows(binary_digits):
    train_images, test_images = binary_digits
    torch.manual_seed(0)
    rbm = fastnets.nn.RBM(784, 10)
    train(rbm, train_images, epochs=3)
    exact = exact_log_partition(rbm).item()
    coarse = ais(rbm, num_runs=300, num_betas=100, generator=torch.Generator().manual_seed(1))
    fine = ais(rbm, num_runs=300, num_betas=10_000, generator=torch.Generator().manual_seed(1))
    assert abs(fine.log_z - exact) < 0.1, (fine.log_z, exact)
    assert fine.log_z_low <= exact + 0.1 and exact - 0.1 <= fine.log_z_high
    assert fine.log_weights.std() < coarse.log_weights.std() / 2
    assert fine.log_z_high - fine.log_z_low < coarse.log_z_high - coarse.log_z_low
    mean_log_prob = rbm.log_prob(test_images, fine.log_z).mean().item()
    assert -250 < mean_log_prob < -100  # nats per test digit


def test_ais_base_model_from_the_data():
    rbm = small_rbm(30, 6, scale=0.3)
    data = torch.bernoulli(torch.full((500, 30), 0.2, dtype=torch.float64))
    base = base_visible_bias(data)
    assert base.shape == (30,) and bool((base < 0).all())
    estimate = ais(rbm, num_runs=200, num_betas=1000, base_bias=base, generator=torch.Generator().manual_seed(0))
    assert abs(estimate.log_z - exact_log_partition(rbm).item()) < 0.1
    assert ais_betas(4).tolist() == [0.0, 0.5, 0.9, 1.0]
    with pytest.raises(ValueError, match="num_betas must be at least 4"):
        ais_betas(3)
    with pytest.raises(ValueError, match="betas must increase from 0 to 1"):
        ais(rbm, betas=[0.0, 0.7, 0.5, 1.0])
    with pytest.raises(ValueError, match="base_bias must have shape"):
        ais(rbm, base_bias=torch.zeros(5))


def test_ais_gaussian_visible():
    rbm = small_rbm(8, 5, "gaussian", scale=0.3)
    estimate = ais(rbm, num_runs=200, num_betas=1000, generator=torch.Generator().manual_seed(0))
    assert abs(estimate.log_z - exact_log_partition(rbm).item()) < 0.1


# ---- the DBN -----------------------------------------------------------------------------------

def test_dbn_pretrains_greedily_and_unrolls(binary_digits):
    train_images, _ = binary_digits
    torch.manual_seed(0)
    dbn = fastnets.nn.DBN([784, 64, 32])
    history = []
    errors = dbn.pretrain(train_images[:1000], epochs=2, batch_size=50, generator=torch.Generator().manual_seed(0),
                          progress=lambda layer, epoch, error: history.append((layer, epoch, error)))
    assert len(errors) == 2 and [h[:2] for h in history] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert history[1][2] < history[0][2] and history[3][2] < history[2][2]
    network = dbn.to_sequential(num_classes=10)
    assert [type(m).__name__ for m in network] == ["Linear", "Sigmoid", "Linear", "Sigmoid", "Linear"]
    x = train_images[:7]
    torch.testing.assert_close(network[:4](x), dbn(x))
    assert network(x).shape == (7, 10)
    with pytest.raises(ValueError, match=r"data must have shape \(N, 784\)"):
        dbn.pretrain(train_images[:10, :100])


# ---- CUDA --------------------------------------------------------------------------------------

@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
@pytest.mark.parametrize("unit", ["bernoulli", "gaussian"])
def test_cpu_cuda_identical(dtype, unit):
    # Products and sums exact in every dtype (small integers over 64), so both devices' GEMMs give
    # the same total input; the means and the samples of one stream must then agree bit for bit.
    g = torch.Generator().manual_seed(0)
    states = torch.randint(0, 2, (67, 40), generator=g).to(dtype)
    weight = (torch.randint(-64, 65, (53, 40), generator=g) / 64).to(dtype)
    bias = (torch.randint(-64, 65, (53,), generator=g) / 64).to(dtype)
    mean, sample, seed_offset = ops.rbm_sample(states.cuda(), weight.cuda(), bias.cuda(), unit,
                                               generator=torch.Generator("cuda").manual_seed(0))
    on_cpu = ops.rbm_sample(states, weight, bias, unit, seed_offset=seed_offset.cpu())  # the same stream
    as_bytes = lambda t: t.cpu().reshape(-1).view(torch.uint8)  # noqa: E731
    assert torch.equal(as_bytes(mean), as_bytes(on_cpu[0])) and torch.equal(as_bytes(sample), as_bytes(on_cpu[1]))
    if unit == "bernoulli":
        assert torch.equal(sample.cpu(), rbm_bernoulli(mean.cpu(), *unpack_seed_offset(seed_offset)))


def test_seed_offset_replays_a_stream(device):
    x, w, b = layer(30, 20, 25, device=device)
    for unit in ("bernoulli", "gaussian"):
        mean, sample, seed_offset = ops.rbm_sample(x, w, b, unit)
        replayed = ops.rbm_sample(x, w, b, unit, seed_offset=seed_offset)
        assert torch.equal(replayed[1], sample) and torch.equal(replayed[2], seed_offset)
    with pytest.raises(RuntimeError, match="seed_offset must be an int64 tensor"):
        ops.rbm_sample(x, w, b, seed_offset=torch.zeros(3, dtype=torch.int64, device=device))
