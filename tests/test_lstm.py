"""LSTM cell and layer (fastnets::lstm_layer, fastnets.nn.LSTMCell / LSTM) against torch.nn.LSTMCell
and torch.nn.LSTM loaded with the same weights: outputs, final states and every gradient; every
constructor combination; gradcheck, opcheck, torch.compile, threads, errors. Also the CPU GEMM
behind the layer (fastnets::matmul) against torch.mm."""
import contextlib
import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from harness import (TRAINING_DTYPES, assert_close_to_reference, check_compiles, check_opcheck,
                     check_same_for_threads, cuda_only, max_abs_error)

import fastnets
import fastnets.functional as F

ops = torch.ops.fastnets


def random_states(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for _ in range(2)]


def outputs_and_grads(module, x, hx, seed=1):
    """The module's outputs and the gradients of a random projection of all of them with respect
    to the input, the states and every parameter."""
    leaves = [x.detach().clone().requires_grad_()]
    states = None if hx is None else tuple(t.detach().clone().requires_grad_() for t in hx)
    out = module(leaves[0], states)
    flat = [out[0], *out[1]] if isinstance(out[1], tuple) else list(out)
    g = torch.Generator().manual_seed(seed)
    projection = sum((t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t)).sum() for t in flat)
    inputs = leaves + (list(states) if states else []) + list(module.parameters())
    grads = torch.autograd.grad(projection, inputs)
    return [t.detach() for t in flat], list(grads)


def same_weights(ours, reference):
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())


# ---- the cell ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 13, 7), (64, 33, 17)])
def test_cell_matches_torch_in_float64(device, shape, bias):
    batch, input_size, hidden = shape
    torch.manual_seed(0)
    reference = torch.nn.LSTMCell(input_size, hidden, bias=bias).double().to(device)
    ours = fastnets.nn.LSTMCell(input_size, hidden, bias=bias).double().to(device)
    same_weights(ours, reference)
    x = torch.randn(batch, input_size, dtype=torch.float64, device=device)
    hx = random_states((batch, hidden), torch.float64, device, 2)
    ours_out, ours_grads = outputs_and_grads(ours, x, hx)
    ref_out, ref_grads = outputs_and_grads(reference, x, hx)
    for a, b in zip(ours_out + ours_grads, ref_out + ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cell_lower_precision_within_pytorch_error(device, dtype):
    torch.manual_seed(0)
    reference = torch.nn.LSTMCell(48, 40).double().to(device)
    ours = fastnets.nn.LSTMCell(48, 40).to(device=device, dtype=dtype)
    baseline = torch.nn.LSTMCell(48, 40).to(device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    baseline.load_state_dict(reference.state_dict())
    x = torch.randn(32, 48, dtype=torch.float64, device=device)
    hx = random_states((32, 40), torch.float64, device, 3)
    low = lambda t: t.to(dtype)  # noqa: E731
    expected_out, expected_grads = outputs_and_grads(reference, low(x).double(), [low(t).double() for t in hx])
    ours_out, ours_grads = outputs_and_grads(ours, low(x), [low(t) for t in hx])
    base_out, base_grads = outputs_and_grads(baseline, low(x), [low(t) for t in hx])
    for mine, expected, theirs in zip(ours_out + ours_grads, expected_out + expected_grads, base_out + base_grads):
        assert_close_to_reference(mine, expected, theirs, factor=3.0)


def test_cell_unbatched_and_default_state(device):
    torch.manual_seed(0)
    reference, ours = torch.nn.LSTMCell(6, 4).to(device), fastnets.nn.LSTMCell(6, 4).to(device)
    same_weights(ours, reference)
    x = torch.randn(6, device=device)
    for a, b in zip(ours(x), reference(x)):
        assert a.shape == (4,)
        torch.testing.assert_close(a, b)
    h, c = F.lstm_cell(x, (torch.zeros(4, device=device), torch.zeros(4, device=device)), ours.weight_ih,
                       ours.weight_hh)
    assert h.shape == c.shape == (4,)


def test_cell_initialization_and_repr():
    cell = fastnets.nn.LSTMCell(10, 25, bias=False)
    assert [name for name, _ in cell.named_parameters()] == ["weight_ih", "weight_hh"]
    assert cell.weight_ih.shape == (100, 10) and cell.weight_hh.abs().max() <= 0.2
    assert repr(cell) == "LSTMCell(10, 25, bias=False)"


# ---- the layer ---------------------------------------------------------------------------------

COMBINATIONS = list(itertools.product([1, 2, 3], [False, True], [False, True], [True, False], [False, True]))


@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias,with_state", COMBINATIONS)
def test_every_constructor_combination_matches_torch(num_layers, bidirectional, batch_first, bias, with_state):
    torch.manual_seed(num_layers)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    reference = torch.nn.LSTM(6, 5, **kwargs).double()
    ours = fastnets.nn.LSTM(6, 5, **kwargs).double()
    same_weights(ours, reference)
    batch, steps = 4, 7
    x = torch.randn((batch, steps, 6) if batch_first else (steps, batch, 6), dtype=torch.float64)
    directions = 2 if bidirectional else 1
    hx = random_states((num_layers * directions, batch, 5), torch.float64, "cpu", 5) if with_state else None
    ours_out, ours_grads = outputs_and_grads(ours, x, hx)
    ref_out, ref_grads = outputs_and_grads(reference, x, hx)
    for a, b in zip(ours_out + ours_grads, ref_out + ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_on_device_matches_torch(device, bidirectional):
    torch.manual_seed(0)
    reference = torch.nn.LSTM(19, 37, num_layers=2, bidirectional=bidirectional).double().to(device)
    ours = fastnets.nn.LSTM(19, 37, num_layers=2, bidirectional=bidirectional).double().to(device)
    same_weights(ours, reference)
    x = torch.randn(11, 9, 19, dtype=torch.float64, device=device)
    ours_out, ours_grads = outputs_and_grads(ours, x, None)
    ref_out, ref_grads = outputs_and_grads(reference, x, None)
    for a, b in zip(ours_out + ours_grads, ref_out + ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


# ---- packed sequences ---------------------------------------------------------------------------

class Padded(torch.nn.Module):
    """An LSTM run on padded sequences of the given lengths packed, its output padded back."""

    def __init__(self, lstm, lengths, enforce_sorted):
        super().__init__()
        self.lstm, self.lengths, self.enforce_sorted = lstm, lengths, enforce_sorted

    def forward(self, x, hx):
        packed = pack_padded_sequence(x, self.lengths, enforce_sorted=self.enforce_sorted)
        out, state = self.lstm(packed, hx)
        assert isinstance(out, PackedSequence) and torch.equal(out.batch_sizes, packed.batch_sizes)
        return pad_packed_sequence(out, total_length=x.shape[0])[0], state


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (1, True), (2, True), (3, False)])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("lengths", [[6, 6, 4, 3, 1], [3, 6, 1, 6, 4], [5, 5, 5]])
def test_packed_sequences_match_torch(device, num_layers, bidirectional, with_state, lengths):
    """Each sequence runs over its own length (the reverse direction from its own last step), h_n
    and c_n after it, in the caller's order (unsorted lengths too); values and every gradient."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(5, 7, num_layers=num_layers, bidirectional=bidirectional).double().to(device)
    ours = fastnets.nn.LSTM(5, 7, num_layers=num_layers, bidirectional=bidirectional).double().to(device)
    same_weights(ours, reference)
    x = torch.randn(max(lengths) + 1, len(lengths), 5, dtype=torch.float64, device=device)
    shape = (num_layers * (2 if bidirectional else 1), len(lengths), 7)
    hx = random_states(shape, torch.float64, device, 4) if with_state else None
    sorted_lengths = lengths == sorted(lengths, reverse=True)
    ours_out, ours_grads = outputs_and_grads(Padded(ours, lengths, sorted_lengths), x, hx)
    ref_out, ref_grads = outputs_and_grads(Padded(reference, lengths, sorted_lengths), x, hx)
    for a, b in zip(ours_out + ours_grads, ref_out + ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_packed_float32_within_pytorch_error_and_same_for_threads():
    torch.manual_seed(0)
    reference = torch.nn.LSTM(16, 24, bidirectional=True).double()
    ours = fastnets.nn.LSTM(16, 24, bidirectional=True)
    baseline = torch.nn.LSTM(16, 24, bidirectional=True)
    same_weights(ours, reference)
    same_weights(baseline, reference)
    lengths = [9, 7, 7, 4, 2, 1]
    x = torch.randn(9, 6, 16, dtype=torch.float64)
    expected_out, expected_grads = outputs_and_grads(Padded(reference, lengths, True), x, None)
    ours_out, ours_grads = outputs_and_grads(Padded(ours, lengths, True), x.float(), None)
    base_out, base_grads = outputs_and_grads(Padded(baseline, lengths, True), x.float(), None)
    for mine, expected, theirs in zip(ours_out + ours_grads, expected_out + expected_grads, base_out + base_grads):
        assert_close_to_reference(mine, expected, theirs, factor=4.0)

    def run():
        out, grads = outputs_and_grads(Padded(ours, lengths, True), x.float(), None)
        return torch.cat([t.flatten() for t in out + grads])
    check_same_for_threads(run)


@contextlib.contextmanager
def tf32_switches(cudnn_enabled: bool, cudnn_tf32: bool, matmul_tf32: bool):
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    try:
        with torch.backends.cudnn.flags(enabled=cudnn_enabled, allow_tf32=cudnn_tf32):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("module", ["LSTM", "LSTMCell"])
def test_float32_takes_tf32_where_the_module_replaced_does(module):
    """CUDA float32: the layer's GEMMs run in TF32 by torch.backends.cudnn.allow_tf32 (torch.nn.LSTM
    runs on cuDNN), or by torch.backends.cuda.matmul.allow_tf32 when cuDNN is disabled; the cell's
    by the matmul switch alone (torch.nn.LSTMCell's GEMMs are torch.mm's). A build without the direct
    cuBLAS calls goes through torch.mm, which follows the matmul switch only."""
    if not fastnets.build_info()["cublas"]:
        pytest.skip("built without the direct cuBLAS calls: the LSTM's GEMMs are torch.mm's")
    torch.manual_seed(0)
    if module == "LSTM":
        ours = fastnets.nn.LSTM(64, 96).cuda()
        x = torch.randn(12, 32, 64, device="cuda")
    else:
        ours = fastnets.nn.LSTMCell(64, 96).cuda()
        x = torch.randn(32, 64, device="cuda")

    def run(cudnn_enabled, cudnn_tf32, matmul_tf32):
        with tf32_switches(cudnn_enabled, cudnn_tf32, matmul_tf32):
            out, grads = outputs_and_grads(ours, x, None)
        return torch.cat([t.flatten() for t in out + grads])

    strict = run(True, False, False)
    by_cudnn, by_matmul = run(True, True, False), run(True, False, True)
    by_matmul_without_cudnn = run(False, False, True)
    tf32_results = [by_cudnn, by_matmul_without_cudnn] if module == "LSTM" else [by_matmul, by_matmul_without_cudnn]
    fp32_results = [by_matmul] if module == "LSTM" else [by_cudnn]
    for result in fp32_results:
        assert torch.equal(result, strict)
    for result in tf32_results:  # TF32 keeps 10 mantissa bits: differences far past float32's rounding
        assert (result - strict).abs().max().item() > 1e-5 * strict.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_layer_lower_precision_within_pytorch_error(device, dtype):
    """Against a float64 run: the error at most a few times that of torch.nn.LSTM in the dtype (on
    the CPU, where torch has no float16 LSTM, its float32 LSTM rounded to the dtype)."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(32, 48, num_layers=2).double().to(device)
    ours = fastnets.nn.LSTM(32, 48, num_layers=2).to(device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(20, 16, 32, dtype=torch.float64, device=device).to(dtype)
    expected_out, expected_grads = outputs_and_grads(reference, x.double(), None)
    ours_out, ours_grads = outputs_and_grads(ours, x, None)
    try:
        baseline = torch.nn.LSTM(32, 48, num_layers=2).to(device=device, dtype=dtype)
        baseline.load_state_dict(reference.state_dict())
        base_out, base_grads = outputs_and_grads(baseline, x, None)
    except RuntimeError:  # no LSTM in this dtype on this device: float32, rounded
        baseline = torch.nn.LSTM(32, 48, num_layers=2).to(device=device)
        baseline.load_state_dict(reference.state_dict())
        base_out, base_grads = outputs_and_grads(baseline, x.float(), None)
        base_out, base_grads = [t.to(dtype) for t in base_out], [t.to(dtype) for t in base_grads]
    for mine, expected, theirs in zip(ours_out + ours_grads, expected_out + expected_grads, base_out + base_grads):
        assert_close_to_reference(mine, expected, theirs, factor=4.0)


def test_layer_unbatched_input_and_state_dict_both_ways():
    torch.manual_seed(0)
    reference = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    ours = fastnets.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3)
    hx = tuple(torch.randn(4, 4) for _ in range(2))
    (a, (ha, ca)), (b, (hb, cb)) = ours(x, hx), reference(x, hx)
    assert a.shape == (5, 8) and ha.shape == (4, 4)
    for mine, theirs in ((a, b), (ha, hb), (ca, cb)):
        torch.testing.assert_close(mine, theirs)
    torch.manual_seed(1)
    back = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    back.load_state_dict(fastnets.nn.LSTM(3, 4, num_layers=2, bidirectional=True).state_dict())


def test_initialization_matches_torch_and_repr():
    lstm = fastnets.nn.LSTM(10, 20, num_layers=2, bidirectional=True, dropout=0.3)
    reference = torch.nn.LSTM(10, 20, num_layers=2, bidirectional=True, dropout=0.3)
    assert [(n, p.shape) for n, p in lstm.named_parameters()] == [(n, p.shape) for n, p in reference.named_parameters()]
    bound = 20 ** -0.5
    assert all(p.abs().max() <= bound for p in lstm.parameters())
    assert all(p.std() > bound / 2 for p in lstm.parameters())  # uniform, not zeros
    assert repr(lstm) == "LSTM(10, 20, num_layers=2, dropout=0.3, bidirectional=True)"


def test_dropout_between_layers_is_fastnets_dropout():
    torch.manual_seed(0)
    lstm = fastnets.nn.LSTM(4, 6, num_layers=2, dropout=0.5)
    x = torch.randn(7, 3, 4)
    lstm.eval()
    eval_out = lstm(x)[0]
    reference = torch.nn.LSTM(4, 6, num_layers=2, dropout=0.5).eval()
    reference.load_state_dict(lstm.state_dict())
    torch.testing.assert_close(eval_out, reference(x)[0])  # eval: no dropout
    lstm.train()
    torch.manual_seed(3)
    train_out = lstm(x)[0]
    # by hand: layer 0, fastnets dropout with the same seed, layer 1
    torch.manual_seed(3)
    h0 = torch.zeros(3, 6)
    first, _ = F.lstm_layer(x, (h0, h0), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    second, _ = F.lstm_layer(F.dropout(first, 0.5), (h0, h0), lstm.weight_ih_l1, lstm.weight_hh_l1, lstm.bias_ih_l1,
                             lstm.bias_hh_l1)
    torch.testing.assert_close(train_out, second)
    assert not torch.allclose(train_out, eval_out)


def test_reverse_direction_reads_time_backwards():
    torch.manual_seed(0)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    w_ih, w_hh = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    h0 = torch.zeros(2, 4, dtype=torch.float64)
    backwards, (h_b, _) = F.lstm_layer(x, (h0, h0), w_ih, w_hh, reverse=True)
    forwards, (h_f, _) = F.lstm_layer(x.flip(0), (h0, h0), w_ih, w_hh)
    torch.testing.assert_close(backwards, forwards.flip(0))
    torch.testing.assert_close(h_b, h_f)


def test_empty_sequence_and_batch():
    w_ih, w_hh = torch.randn(8, 3), torch.randn(8, 2)
    h0 = torch.randn(4, 2)
    out, (h, c) = F.lstm_layer(torch.zeros(0, 4, 3), (h0, h0), w_ih, w_hh)
    assert out.shape == (0, 4, 2) and torch.equal(h, h0) and torch.equal(c, h0)
    out, (h, c) = F.lstm_layer(torch.zeros(5, 0, 3), (torch.zeros(0, 2), torch.zeros(0, 2)), w_ih, w_hh)
    assert out.shape == (5, 0, 2) and h.shape == (0, 2)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(device, reverse):
    g = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64).to(device).requires_grad_()  # noqa
    args = (make(3, 2, 4), make(2, 3), make(2, 3), make(12, 4), make(12, 3), make(12), make(12))

    def layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        output, (h_n, c_n) = F.lstm_layer(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, reverse)
        return output, h_n, c_n

    assert torch.autograd.gradcheck(layer, args)
    assert torch.autograd.gradcheck(lambda x, h, c, w_ih, w_hh: F.lstm_cell(x, (h, c), w_ih, w_hh),
                                    (args[0][0], *args[1:5]))


def test_opcheck(device):
    g = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(shape, generator=g).to(device)  # noqa: E731
    x, h0, c0, w_ih, w_hh, b = make(4, 3, 5), make(3, 6), make(3, 6), make(24, 5), make(24, 6), make(24)
    check_opcheck(ops.lstm_layer.default, (x, h0, c0, w_ih, w_hh, b, b, False))
    check_opcheck(ops.lstm_layer.default, (x.detach().requires_grad_(), h0, c0, w_ih,
                                           w_hh.detach().requires_grad_(), b, b, False, True))
    check_opcheck(ops.lstm_layer.default, (x.double().requires_grad_(), h0.double(), c0.double(),
                                           w_ih.double().requires_grad_(), w_hh.double(), None, None, True))
    output, h_n, c_n, gates, cells = ops.lstm_layer(x, h0, c0, w_ih, w_hh, b, b)
    check_opcheck(ops.lstm_layer_backward.default,
                  (torch.randn_like(output), torch.randn_like(h_n), torch.randn_like(c_n), x, h0, c0, w_ih, w_hh,
                   output, gates, cells, False))
    check_opcheck(ops.lstm_layer_backward.default,
                  (None, torch.randn_like(h_n), None, x, h0, c0, w_ih, w_hh, output, gates, cells, True,
                   [True, True, True, False], True))
    packed, sizes = make(6, 5), torch.tensor([3, 2, 1])  # steps of 3, 2 and 1 sequences
    args = (packed.detach().requires_grad_(), h0, c0.detach().requires_grad_(), w_ih, w_hh, b, b)
    for reverse in (False, True):
        check_opcheck(ops.lstm_layer.default, (*args, reverse, True, sizes))
        output, h_n, c_n, gates, cells = ops.lstm_layer(packed, h0, c0, w_ih, w_hh, b, b, reverse, True, sizes)
        check_opcheck(ops.lstm_layer_backward.default,
                      (torch.randn_like(output), torch.randn_like(h_n), None, packed, h0, c0, w_ih, w_hh, output,
                       gates, cells, reverse, [True, True, False, True], True, sizes))
    check_opcheck(ops.matmul.default, (make(7, 5), make(5, 9)))


def test_torch_compile_fullgraph(device):
    torch.manual_seed(0)
    lstm = fastnets.nn.LSTM(5, 6, num_layers=2, bidirectional=True).to(device)
    x = torch.randn(4, 3, 5, device=device)
    check_compiles(lambda t: lstm(t)[0], x)
    cell = fastnets.nn.LSTMCell(5, 6).to(device)
    check_compiles(lambda t: torch.cat(cell(t)), x[0])
    for lengths in ([4, 3, 1], [2, 4, 3]):  # sorted, and not (a PackedSequence with sorted_indices)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=lengths == [4, 3, 1])
        check_compiles(lambda p: torch.cat([t.flatten() for t in (lstm(p)[0].data, *lstm(p)[1])]), packed)

    def loss(t):
        output, (h, c) = lstm(t)
        return output.square().sum() + c.sum()

    grads = []
    torch._dynamo.reset()
    for fn in (loss, torch.compile(loss, fullgraph=True)):  # the backward runs through the compiled graph
        lstm.zero_grad()
        fn(x).backward()
        grads.append([p.grad.clone() for p in lstm.parameters()])
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager)


def test_same_for_threads():
    torch.manual_seed(0)
    lstm = fastnets.nn.LSTM(64, 300, bidirectional=True)
    x = torch.randn(12, 60, 64, requires_grad=True)  # 720 rows: the GEMMs split rows and columns

    def run():
        x.grad = None
        lstm.zero_grad()
        output, (h, c) = lstm(x)
        (output.sum() + h.square().sum()).backward()
        return torch.cat([output.flatten(), x.grad.flatten()] + [p.grad.flatten() for p in lstm.parameters()])

    check_same_for_threads(run)


@pytest.mark.parametrize("batch", [5, 6, 7, 9, 10, 11])
def test_small_batch_same_for_threads(batch):
    """torch's float32 mm gives other bits for 1 and 2 threads at 5-7 and 9-11 rows: the per-step
    products of a small batch, and a cell's, go to fastnets' own GEMM."""
    torch.manual_seed(0)
    lstm, cell = fastnets.nn.LSTM(24, 24), fastnets.nn.LSTMCell(24, 24)
    x = torch.randn(3, batch, 24, requires_grad=True)

    def run():
        x.grad = None
        lstm.zero_grad()
        cell.zero_grad()
        output, (h, c) = lstm(x)
        h_cell, c_cell = cell(x[0], (h[0], c[0]))
        (output.sum() + h.square().sum() + h_cell.sum() + c_cell.square().sum()).backward()
        return torch.cat([output.flatten(), h_cell.flatten(), x.grad.flatten()]
                         + [p.grad.flatten() for p in [*lstm.parameters(), *cell.parameters()]])

    check_same_for_threads(run)


def test_small_hidden_size_same_for_one_to_three_threads():
    """The weight gradients of a small hidden size are long, narrow products (3300 deep, 36 rows):
    BLAS split their sums differently for 3 threads; fastnets' own GEMM takes them."""
    torch.manual_seed(0)
    lstm = fastnets.nn.LSTM(17, 9)
    x = torch.randn(100, 33, 17, requires_grad=True)

    def run():
        x.grad = None
        lstm.zero_grad()
        output, _ = lstm(x)
        output.square().sum().backward()
        return torch.cat([output.flatten(), x.grad.flatten()] + [p.grad.flatten() for p in lstm.parameters()])

    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        results.append(run())
    assert all(torch.equal(results[0], other) for other in results[1:]), "CPU result depends on the thread count"


def test_bad_input_is_named():
    lstm = fastnets.nn.LSTM(5, 4, num_layers=2)
    with pytest.raises(RuntimeError, match="input_size = 5"):  # RuntimeError, as torch.nn.LSTM raises
        lstm(torch.randn(3, 2, 6))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        lstm(torch.randn(3, 2, 5, 1))
    with pytest.raises(RuntimeError, match=r"hx\[0\] \(h0\) must have shape \(2, 2, 4\)"):
        lstm(torch.randn(3, 2, 5), (torch.zeros(2, 3, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(RuntimeError, match=r"hx\[1\] \(c0\)"):
        lstm(torch.randn(3, 2, 5), (torch.zeros(2, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="dropout must be a number"):
        fastnets.nn.LSTM(5, 4, num_layers=2, dropout=True)
    with pytest.warns(UserWarning, match="dropout applies between LSTM layers"):
        fastnets.nn.LSTM(5, 4, dropout=0.5)
    packed = pack_padded_sequence(torch.randn(3, 2, 5), [3, 2])
    with pytest.raises(RuntimeError, match=r"hx\[0\] \(h0\) must have shape \(2, 2, 4\)"):
        lstm(packed, (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)))
    with pytest.raises(RuntimeError, match="input_size = 5"):
        lstm(pack_padded_sequence(torch.randn(3, 2, 6), [3, 2]))
    with pytest.raises(ValueError, match="proj_size"):
        fastnets.nn.LSTM(5, 4, proj_size=2)
    with pytest.raises(ValueError, match="dropout"):
        fastnets.nn.LSTM(5, 4, dropout=1.5)
    cell = fastnets.nn.LSTMCell(5, 4)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        cell(torch.randn(2, 3, 5))
    with pytest.raises(RuntimeError, match="input_size = 5"):
        cell(torch.randn(2, 6))
    w_ih, w_hh, h = torch.randn(16, 5), torch.randn(16, 4), torch.zeros(2, 4)
    cases = [
        ((torch.randn(3, 2, 5, 1), h, h, w_ih, w_hh), "input must be 3-D"),
        ((torch.randn(3, 2, 5), torch.zeros(3, 4), h, w_ih, w_hh), "h0 must be 2-D"),
        ((torch.randn(3, 2, 5), h, torch.zeros(2, 5), w_ih, w_hh), "c0 must be 2-D"),
        ((torch.randn(3, 2, 6), h, h, w_ih, w_hh), "w_ih must be 2-D"),
        ((torch.randn(3, 2, 5), h, h, w_ih, torch.randn(15, 4)), "w_hh must be 2-D"),
        ((torch.randn(3, 2, 5), h, h, w_ih.double(), w_hh), "w_ih must have input's dtype"),
        ((torch.randn(3, 2, 5).int(), h, h, w_ih, w_hh), "input must be float32"),
    ]
    packed_x = torch.randn(5, 5)

    def packed(sizes, x=packed_x, h0=h, dtype=torch.int64):
        return (x, h0, h, w_ih, w_hh, None, None, False, False, torch.tensor(sizes, dtype=dtype))
    cases += [
        (packed([2, 2]), "input must have sum\\(batch_sizes\\) = 4 rows"),
        (packed([2, 3]), "batch_sizes must be positive and non-increasing"),
        (packed([2, 2, 1, 0]), "batch_sizes must be positive"),
        (packed([]), "batch_sizes must not be empty"),
        (packed([2, 2, 1], dtype=torch.int32), "batch_sizes must be a 1-D int64 tensor on the CPU"),
        (packed([2, 2, 1], h0=torch.zeros(3, 4)), "h0 must be 2-D"),
        (packed([2, 2, 2], x=torch.randn(3, 2, 5)), "input must be 2-D"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            ops.lstm_layer(*args)
    with pytest.raises(RuntimeError, match="b_hh must be 1-D"):
        ops.lstm_layer(torch.randn(3, 2, 5), h, h, w_ih, w_hh, None, torch.zeros(15))


# ---- the CPU GEMM ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 5, 9), (64, 512, 100), (600, 33, 70), (3, 0, 4), (0, 3, 4),
                                   (513, 129, 257), (9, 17, 64), (300, 70, 32), (70, 1100, 40)])
def test_matmul_equals_float64_product(dtype, m, k, n):
    g = torch.Generator().manual_seed(m + k + n)
    a = torch.randn(m, k, generator=g, dtype=torch.float64)
    b = torch.randn(k, n, generator=g, dtype=torch.float64)
    reference = a @ b
    a_interleaved = torch.stack([a, torch.full_like(a, float("nan"))], 2).flatten(1)  # a strided view: a[:, ::2]
    # b contiguous with 32 or 64 columns is read in place; other layouts (a column-offset view of
    # a wider tensor, too) are copied first
    wide_b = torch.cat([torch.full((k, 16), float("nan"), dtype=torch.float64), b], 1)
    layouts = ((a, b), (a.t().contiguous().t(), b.t().contiguous().t()), (a_interleaved[:, ::2], wide_b[:, 16:]))
    for left, right in layouts:
        ours = ops.matmul(left.to(dtype), right.to(dtype))
        if dtype == torch.float64:
            torch.testing.assert_close(ours, reference, rtol=1e-13, atol=1e-13)
        else:
            assert_close_to_reference(ours, reference, torch.mm(left.to(dtype), right.to(dtype)), factor=3.0)
    assert max_abs_error(ops.matmul(a.half(), b.half()), torch.mm(a.half(), b.half())) == 0  # 16-bit: torch.mm


def test_matmul_same_for_threads_and_errors():
    a, b = torch.randn(700, 300), torch.randn(300, 500)
    check_same_for_threads(lambda: ops.matmul(a, b))
    check_same_for_threads(lambda: ops.matmul(a[:40], b))
    with pytest.raises(RuntimeError, match="b must have a.size"):
        ops.matmul(a, b[:10])
    with pytest.raises(RuntimeError, match="b must have a's dtype"):
        ops.matmul(a, b.double())


@pytest.mark.parametrize("dtype", TRAINING_DTYPES)
def test_layer_every_dtype_runs_forward_and_backward(device, dtype):
    lstm = fastnets.nn.LSTM(8, 8, bidirectional=True).to(device=device, dtype=dtype)
    x = torch.randn(5, 3, 8, device=device, dtype=dtype, requires_grad=True)
    output, (h, c) = lstm(x)
    output.sum().backward()
    assert output.dtype == dtype and x.grad.dtype == dtype and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("reverse", [False, True])
def test_tiled_gemm_path_matches_torch_in_float64(reverse):
    """640 rows (time x batch): the CPU layer's own tiled GEMM for every product (the inputs'
    projections step by step, 64 rows each), in place for the 32-wide hidden state; outputs and
    gradients against torch in float64."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(64, 32, bidirectional=True).double()
    ours = fastnets.nn.LSTM(64, 32, bidirectional=True).double()
    same_weights(ours, reference)
    x = torch.randn(10, 64, 64, dtype=torch.float64)
    hx = random_states((2, 64, 32), torch.float64, "cpu", 4)
    for a, b in zip(sum(outputs_and_grads(ours, x, hx), []), sum(outputs_and_grads(reference, x, hx), [])):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_inputs_projected_step_by_step_match_torch(num_layers):
    """Batches of 32 rows or more whose gates fit in cache project each step's inputs just before
    its recurrent GEMM (CPU, float32 and float64); packed sequences make the steps' rows differ
    (40, then 36, then 33), the reverse direction walks them backwards; values and gradients
    against torch in float64."""
    torch.manual_seed(0)
    lengths = [5] * 33 + [4] * 3 + [2] * 4
    x = torch.randn(6, len(lengths), 24, dtype=torch.float64)
    hx = random_states((2 * num_layers, len(lengths), 40), torch.float64, "cpu", 4)
    reference = torch.nn.LSTM(24, 40, num_layers=num_layers, bidirectional=True).double()
    ours = fastnets.nn.LSTM(24, 40, num_layers=num_layers, bidirectional=True).double()
    same_weights(ours, reference)
    ours_out, ours_grads = outputs_and_grads(Padded(ours, lengths, True), x, hx)
    ref_out, ref_grads = outputs_and_grads(Padded(reference, lengths, True), x, hx)
    for a, b in zip(ours_out + ours_grads, ref_out + ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_inputs_projected_step_by_step_give_the_bits_of_one_gemm():
    """Each value is summed in the same order either way: 40 rows project step by step; with 900
    more rows a step's gates outgrow 512 KB and one GEMM projects all steps; the first 40 rows'
    results are the same bits (float32, both directions)."""
    torch.manual_seed(0)
    lstm = fastnets.nn.LSTM(24, 40, bidirectional=True)
    x = torch.randn(5, 940, 24)
    hx = tuple(torch.randn(2, 940, 40) for _ in range(2))
    with torch.no_grad():
        output, (h_n, c_n) = lstm(x[:, :40], tuple(t[:, :40] for t in hx))
        output_all, (h_all, c_all) = lstm(x, hx)
    assert torch.equal(output, output_all[:, :40])
    assert torch.equal(h_n, h_all[:, :40]) and torch.equal(c_n, c_all[:, :40])


@pytest.mark.parametrize("which", ["b_ih", "b_hh"])
@pytest.mark.parametrize("reverse", [False, True])
def test_a_single_bias(which, reverse):
    g = torch.Generator().manual_seed(1)
    make = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    x, h0, c0, w_ih, w_hh, bias = make(5, 3, 4), make(3, 6), make(3, 6), make(24, 4), make(24, 6), make(24)
    biases = (bias, None) if which == "b_ih" else (None, bias)
    ours, (h, c) = F.lstm_layer(x, (h0, c0), w_ih, w_hh, *biases, reverse=reverse)
    sequence = x.flip(0) if reverse else x
    theirs, h_t, c_t = torch.lstm(sequence, (h0[None], c0[None]), [w_ih, w_hh, bias, torch.zeros(24).double()],
                                  True, 1, 0.0, False, False, False)
    theirs = theirs.flip(0) if reverse else theirs
    torch.testing.assert_close(ours, theirs)
    grads = [torch.autograd.grad(t.sum() + hn.sum(), bias)[0] for t, hn in ((ours, h), (theirs, h_t))]
    torch.testing.assert_close(grads[0], grads[1])


def test_backward_of_empty_sequence_and_batch():
    w_ih, w_hh = torch.randn(8, 3, requires_grad=True), torch.randn(8, 2, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    h0, c0 = torch.randn(4, 2, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    x = torch.zeros(0, 4, 3, requires_grad=True)
    out, (h, c) = F.lstm_layer(x, (h0, c0), w_ih, w_hh, b, b)
    (h.sum() + 2 * c.sum()).backward()
    assert torch.equal(h0.grad, torch.ones(4, 2)) and torch.equal(c0.grad, torch.full((4, 2), 2.0))
    assert not w_ih.grad.any() and not w_hh.grad.any() and not b.grad.any() and x.grad.shape == (0, 4, 3)
    empty = [t.requires_grad_() for t in (torch.zeros(5, 0, 3), torch.zeros(0, 2), torch.zeros(0, 2))]
    out, (h, c) = F.lstm_layer(empty[0], (empty[1], empty[2]), w_ih, w_hh)
    out.sum().backward()
    assert empty[0].grad.shape == (5, 0, 3)
    x = torch.zeros(5, 0, 3, requires_grad=True)  # h.sum()'s gradient: an expanded empty tensor
    fastnets.nn.LSTM(3, 2)(x)[1][0].sum().backward()
    assert x.grad.shape == (5, 0, 3)


def test_saved_tensors_are_not_differentiable_and_no_double_backward():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 4, generator=g, requires_grad=True)
    h0 = torch.zeros(2, 5)
    w_ih, w_hh = torch.randn(20, 4, generator=g, requires_grad=True), torch.randn(20, 5, generator=g)
    output, h_n, c_n, gates, cells = ops.lstm_layer(x, h0, h0, w_ih, w_hh)
    assert output.requires_grad and not gates.requires_grad and not cells.requires_grad
    (grad_x,) = torch.autograd.grad(output.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_x.sum().backward()


def test_gradients_not_needed_are_not_computed_and_the_rest_match_torch():
    """A first layer's input that needs no gradient (images): the weights' gradients still match."""
    torch.manual_seed(0)
    reference, ours = torch.nn.LSTM(6, 5).double(), fastnets.nn.LSTM(6, 5).double()
    same_weights(ours, reference)
    x = torch.randn(7, 3, 6, dtype=torch.float64)
    grads = [torch.autograd.grad(m(x)[0].square().sum(), list(m.parameters())) for m in (ours, reference)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    w_ih, w_hh = torch.randn(20, 6, dtype=torch.float64), torch.randn(20, 5, dtype=torch.float64)
    h0 = torch.zeros(3, 5, dtype=torch.float64)
    output, h_n, c_n, gates, cells = ops.lstm_layer(x, h0, h0, w_ih, w_hh)
    grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias = ops.lstm_layer_backward(
        torch.ones_like(output), None, None, x, h0, h0, w_ih, w_hh, output, gates, cells, False,
        [False, True, False, False])
    assert grad_input.numel() == 0 and grad_bias.numel() == 0 and grad_w_ih.shape == (20, 6)
    assert grad_h0.numel() == 0 and grad_c0.numel() == 0


@pytest.mark.parametrize("steps", [1, 4])
def test_initial_states_gradient_only_where_wanted(device, steps):
    """Without the initial states' gradient the first step's GEMM for dh is left out (an
    LSTMCell's backward with states that need no gradient: one GEMM of its four); the other
    gradients are the same bits as with it (packed sequences and the reverse direction too), and
    the states' gradient, when wanted, matches torch."""
    torch.manual_seed(0)
    x = torch.randn(steps, 5, 6, dtype=torch.float64, device=device)
    h0, c0 = (torch.randn(5, 7, dtype=torch.float64, device=device) for _ in range(2))
    w_ih = torch.randn(28, 6, dtype=torch.float64, device=device)
    w_hh = torch.randn(28, 7, dtype=torch.float64, device=device)
    output, h_n, c_n, gates, cells = ops.lstm_layer(x, h0, c0, w_ih, w_hh)
    grad_output, grad_h_n = torch.randn_like(output), torch.randn_like(h_n)
    results = {wanted: ops.lstm_layer_backward(grad_output, grad_h_n, None, x, h0, c0, w_ih, w_hh, output, gates,
                                               cells, False, [True, True, True, wanted])
               for wanted in (False, True)}
    assert results[False][1].numel() == 0 and results[False][2].numel() == 0
    for index in (0, 3, 4, 5):
        assert torch.equal(results[False][index], results[True][index])
    reference = torch.nn.LSTM(6, 7, bias=False).double().to(device)
    with torch.no_grad():
        reference.weight_ih_l0.copy_(w_ih)
        reference.weight_hh_l0.copy_(w_hh)
    states = (h0[None].clone().requires_grad_(), c0[None].clone().requires_grad_())
    ref_output, (ref_h_n, _) = reference(x, states)
    torch.autograd.backward([ref_output, ref_h_n], [grad_output, grad_h_n[None]])
    torch.testing.assert_close(results[True][1], states[0].grad[0])
    torch.testing.assert_close(results[True][2], states[1].grad[0])

    sizes = torch.tensor([3] + [1] * (steps + 1))  # two sequences of one step, one of steps + 2
    packed = torch.randn(steps + 4, 6, dtype=torch.float64, device=device)
    for reverse in (False, True):
        output, h_n, c_n, gates, cells = ops.lstm_layer(packed, h0[:3], c0[:3], w_ih, w_hh, None, None, reverse,
                                                        False, sizes)
        grads = [ops.lstm_layer_backward(torch.ones_like(output), h_n, c_n, packed, h0[:3], c0[:3], w_ih, w_hh,
                                         output, gates, cells, reverse, [True, True, True, wanted], False, sizes)
                 for wanted in (False, True)]
        for index in (0, 3, 4, 5):
            assert torch.equal(grads[0][index], grads[1][index])


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("where", [(3, 2), (-1, -1)])
def test_zero_initial_state_with_a_bad_recurrent_weight_matches_torch(bad, where):
    """With a zero initial state the first step's recurrent GEMM is left out, where its products
    are known zeros (the same values: nothing shows whether it was): not with an inf or NaN
    anywhere in w_hh, where torch's 0 x inf makes NaN gates."""
    torch.manual_seed(0)
    reference, ours = torch.nn.LSTM(6, 5).double(), fastnets.nn.LSTM(6, 5).double()
    with torch.no_grad():
        reference.weight_hh_l0[where] = bad
    same_weights(ours, reference)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        expected, actual = reference(x)[0], ours(x)[0]
    assert torch.equal(torch.isnan(actual[0]), torch.isnan(expected[0])) and torch.isnan(expected[0]).any()
    torch.testing.assert_close(actual, expected, equal_nan=True)
    with torch.no_grad():
        ours.weight_hh_l0[where] = 0.5
        reference.weight_hh_l0[where] = 0.5
        torch.testing.assert_close(ours(x)[0], reference(x)[0], rtol=1e-11, atol=1e-12)


def test_drop_in_extras():
    lstm = fastnets.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    lstm.flatten_parameters()  # nothing to do, as callers of torch.nn.LSTM expect it to exist
    reference = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    assert [[p.shape for p in layer] for layer in lstm.all_weights] == \
        [[p.shape for p in layer] for layer in reference.all_weights]
