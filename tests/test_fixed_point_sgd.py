"""FixedPointSGD and its op fixed_point_sgd_: bit for bit against torch.optim.SGD wrapped in
FixedPointOptimizer (float32 and float64), 16-bit steps against the float32 step, stochastic
rounding against the same roundings done one by one from the exposed streams, threads, CPU and
CUDA, state_dict exchange with torch.optim.SGD, opcheck, torch.compile and errors."""
import copy
import itertools

import pytest
import torch

import fastnets  # noqa: F401  (loads the ops)
from fastnets.quant import FixedPoint, FixedPointOptimizer, FixedPointSGD
from harness import check_compiles, check_cpu_cuda_identical, check_opcheck, check_same_for_threads, cuda_only

ops = torch.ops.fastnets

SHAPES = [(37, 11), (1001,), (3,), (0,), (130, 129)]  # odd sizes: vector loops and their tails
# (momentum, dampening, weight_decay, nesterov, maximize)
OPTIONS = [(0.0, 0.0, 0.0, False, False), (0.9, 0.0, 0.0, False, False), (0.9, 0.1, 0.01, False, True),
           (0.8, 0.0, 0.001, True, False), (0.0, 0.0, 0.05, False, True), (0.7, 0.0, 0.02, True, True)]
NEAREST_FORMATS = [None, FixedPoint(16, 12, "nearest"), FixedPoint(8, 4, "nearest", symmetric=True),
                   FixedPoint(40, 30, "nearest"), FixedPoint(12, 6, "nearest", clamp=False)]


def make_parameters(dtype, device="cpu", seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(shape, generator=generator) * 0.3).to(dtype).to(device))
            for shape in SHAPES]


def set_gradients(parameters, step):
    generator = torch.Generator().manual_seed(100 + step)
    for parameter in parameters:
        parameter.grad = (torch.randn(parameter.shape, generator=generator) * 0.1).to(parameter.dtype).to(
            parameter.device)


def state_of(optimizer, parameters):
    buffers = [optimizer.state[p].get("momentum_buffer") for p in parameters]
    return [p.detach().clone() for p in parameters] + [p.grad.clone() for p in parameters] + \
        [b.clone() for b in buffers if b is not None]


def step_both(fused, parameters, reference, reference_parameters, steps):
    """``steps`` steps of each optimizer on the same gradients; the two states must agree after each."""
    for step in range(steps):
        set_gradients(reference_parameters, step)
        set_gradients(parameters, step)
        reference.step()
        fused.step()
        assert_all_equal(state_of(fused, parameters), state_of(reference.optimizer, reference_parameters))


def assert_all_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and torch.equal(a, e), (a - e).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("format", NEAREST_FORMATS)
def test_equals_torch_sgd_with_rounding(device, dtype, options, format):
    """Four steps (the first creates the momentum buffer) equal FixedPointOptimizer around
    torch.optim.SGD (its single-tensor step, the CPU default) bit for bit: parameters, rounded
    gradients and momentum buffers. Without a format that is torch.optim.SGD itself."""
    momentum, dampening, weight_decay, nesterov, maximize = options
    hyper = dict(lr=0.05, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                 maximize=maximize)
    reference_parameters, parameters = make_parameters(dtype, device), make_parameters(dtype, device)
    reference = FixedPointOptimizer(torch.optim.SGD(reference_parameters, **hyper, foreach=False), weight=format,
                                    grad=format, state=format)
    fused = FixedPointSGD(parameters, **hyper, weight=format, grad=format, state=format)
    step_both(fused, parameters, reference, reference_parameters, 4)


def test_each_rounding_alone():
    """Only the gradient, only the weights, only the state: each as FixedPointOptimizer does it."""
    fmt = FixedPoint(10, 6, "nearest")
    for which in ("weight", "grad", "state"):
        reference_parameters, parameters = make_parameters(torch.float32), make_parameters(torch.float32)
        reference = FixedPointOptimizer(torch.optim.SGD(reference_parameters, lr=0.1, momentum=0.9), **{which: fmt})
        fused = FixedPointSGD(parameters, lr=0.1, momentum=0.9, **{which: fmt})
        step_both(fused, parameters, reference, reference_parameters, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("format", [None, FixedPoint(8, 4, "nearest"), FixedPoint(6, 2, "stochastic")])
@pytest.mark.parametrize("first_step", [True, False])
def test_16_bit_step_is_the_float32_step_cast(device, dtype, format, first_step):
    """In float16 and bfloat16 the step is computed in float32 and only its results are stored:
    the float32 op on the same values, cast, on grids the dtype holds (codes of at most 8 bits);
    the same seed gives the same stochastic roundings."""
    spec = [] if format is None else [format.wl, format.fl, int(format.rounding == "stochastic"), 1, 0]
    generator = torch.Generator().manual_seed(0)
    values = [(torch.randn(2053, generator=generator) * s).to(dtype).to(device) for s in (0.5, 0.1, 0.2)]
    results = []
    for working in (dtype, torch.float32):
        param, grad, buffer = (v.to(working).clone() for v in values)
        torch.manual_seed(5)
        ops.fixed_point_sgd_(param, grad, buffer, 0.07, 0.9, 0.0, 0.01, False, False, first_step, spec, spec, spec,
                             None)
        results.append([t.to(dtype) for t in (param, grad, buffer)])
    assert_all_equal(results[0], results[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_gradient_not_rounded_is_written_alike_for_every_rounding(dtype):
    """With the gradient's rounding off and the weights' on, a 16-bit gradient goes through float32
    and back whether the weights round to nearest (the one-pass step, as on CUDA) or
    stochastically (the passes by groups): NaNs of other payloads come out in the same form."""
    payloads = {torch.float16: [0x7C01, 0xFE01, 0x7E01], torch.bfloat16: [0xFFC0, 0x7F81, 0x7FC1]}[dtype]
    grads = []
    for stochastic in (0, 1):
        grad = torch.full((300,), 0.5, dtype=dtype)
        grad.view(torch.int16)[:3] = torch.tensor(payloads, dtype=torch.int32).to(torch.int16)
        param = torch.ones(300, dtype=dtype)
        ops.fixed_point_sgd_(param, grad, None, 0.1, weight_format=[12, 8, stochastic, 1, 0],
                             generator=torch.Generator().manual_seed(0))
        grads.append(grad.view(torch.int16))
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("formats", [
    (FixedPoint(12, 8, "stochastic"),) * 3,
    (FixedPoint(40, 30, "stochastic"),) * 3,  # not float-exact: the double arithmetic's kernel
    (FixedPoint(12, 8, "stochastic"), FixedPoint(12, 8, "nearest"), FixedPoint(16, 10, "stochastic")),
    (None, FixedPoint(12, 8, "stochastic"), None),  # roundings off: their values only stored
    (FixedPoint(12, 8, "stochastic"), None, FixedPoint(16, 10, "stochastic")),
    (None, FixedPoint(12, 8, "nearest"), FixedPoint(16, 10, "stochastic")),
], ids=["12-8", "40-30", "mixed", "weight-only", "no-weight", "no-grad-mixed"])
def test_stochastic_equals_the_roundings_one_by_one(device, dtype, formats):
    """Stochastic roundings draw per parameter in the order gradient, weight, state: the fused
    step equals, for each parameter in turn, fixed_point_quantize_ of its gradient, torch's SGD
    step, then fixed_point_quantize_ of the parameter and of the buffer, from torch's generator
    in the same state (each stochastic call draws one stream, so the words are the same; a
    nearest one draws none, nor does a rounding that is off)."""
    grad_format, weight_format, state_format = formats
    parameters = make_parameters(dtype, device)
    reference_parameters = make_parameters(dtype, device)
    fused = FixedPointSGD(parameters, lr=0.1, momentum=0.9, weight=weight_format, grad=grad_format,
                          state=state_format)
    singles = [torch.optim.SGD([p], lr=0.1, momentum=0.9, foreach=False) for p in reference_parameters]
    for step in range(3):
        set_gradients(parameters, step)
        set_gradients(reference_parameters, step)
        torch.manual_seed(step)
        fused.step()
        torch.manual_seed(step)
        with torch.no_grad():
            for parameter, single in zip(reference_parameters, singles):
                if grad_format is not None:
                    grad_format.quantize_(parameter.grad)
                single.step()
                if weight_format is not None:
                    weight_format.quantize_(parameter)
                if state_format is not None:
                    state_format.quantize_(single.state[parameter]["momentum_buffer"])
    reference_buffers = [s.state[p]["momentum_buffer"] for p, s in zip(reference_parameters, singles)]
    assert_all_equal(state_of(fused, parameters),
                     [p.detach() for p in reference_parameters] + [p.grad for p in reference_parameters]
                     + reference_buffers)


def test_seed_offsets_and_fresh_draws(device):
    """The op returns each rounding's stream ([0, 0] for one that draws nothing); two steps draw
    different numbers; the same seed repeats them."""
    param = torch.randn(1000, device=device)
    grad = torch.randn(1000, device=device) * 0.01
    stochastic, nearest = [12, 8, 1, 1, 0], [12, 8, 0, 1, 0]

    def run(seed):
        p, g = param.clone(), grad.clone()
        torch.manual_seed(seed)
        so = ops.fixed_point_sgd_(p, g, None, 0.1, 0.0, 0.0, 0.0, False, False, False, stochastic, nearest, [], None)
        return p, so

    first, so_first = run(1)
    again, so_again = run(1)
    other, so_other = run(2)
    assert torch.equal(first, again) and torch.equal(so_first, so_again)
    assert not torch.equal(first, other)
    assert so_first.shape == (3, 2) and so_first.dtype == torch.int64
    assert so_first[0].abs().sum() > 0 and torch.equal(so_first[1:].cpu(), torch.zeros(2, 2, dtype=torch.int64))


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_same_for_threads(rounding):
    fmt = FixedPoint(16, 12, rounding)

    def run():
        parameters = [torch.nn.Parameter(torch.randn(300_001, generator=torch.Generator().manual_seed(0)))]
        optimizer = FixedPointSGD(parameters, lr=0.1, momentum=0.9, weight=fmt, grad=fmt, state=fmt,
                                  generator=torch.Generator().manual_seed(4))
        for step in range(2):
            set_gradients(parameters, step)
            optimizer.step()
        return torch.cat([parameters[0].detach(), optimizer.state[parameters[0]]["momentum_buffer"]])

    threads = torch.get_num_threads()
    try:
        check_same_for_threads(run)
    finally:
        torch.set_num_threads(threads)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_cpu_cuda_identical(dtype, rounding):
    fmt = FixedPoint(16, 10, rounding)

    def run(device):
        parameters = make_parameters(dtype, device)
        optimizer = FixedPointSGD(parameters, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True,
                                  weight=fmt, grad=fmt, state=fmt)
        torch.manual_seed(0)
        torch.cuda.manual_seed(0)
        results = []
        for step in range(2):
            set_gradients(parameters, step)
            # The same stream on both devices: each call's seed_offsets decide the numbers.
            optimizer.step()
            results += state_of(optimizer, parameters)
        return torch.cat([r.flatten().cpu().double() for r in results])

    if rounding == "nearest":
        check_cpu_cuda_identical(run)
    else:  # the devices' generators differ; each device repeats itself
        assert torch.equal(run("cuda"), run("cuda"))


def test_state_dict_moves_between_torch_sgd_and_fixed_point_sgd():
    """Checkpoints load either way and training goes on identically (no formats: the same step)."""
    hyper = dict(lr=0.05, momentum=0.9, nesterov=True)
    parameters = make_parameters(torch.float32)
    torch_parameters = [torch.nn.Parameter(p.detach().clone()) for p in parameters]
    fused, plain = FixedPointSGD(parameters, **hyper), torch.optim.SGD(torch_parameters, **hyper)
    for step in range(2):
        set_gradients(parameters, step)
        set_gradients(torch_parameters, step)
        fused.step()
        plain.step()
    fused_copy = FixedPointSGD(parameters, **hyper)
    fused_copy.load_state_dict(copy.deepcopy(plain.state_dict()))
    plain_copy = torch.optim.SGD(torch_parameters, **hyper)
    plain_copy.load_state_dict(copy.deepcopy(fused.state_dict()))
    for step in range(2, 4):
        set_gradients(parameters, step)
        set_gradients(torch_parameters, step)
        fused_copy.step()
        plain_copy.step()
    assert_all_equal(state_of(fused_copy, parameters), state_of(plain_copy, torch_parameters))


def test_non_contiguous_parameters_and_schedulers():
    """A transposed parameter is stepped through contiguous copies; an LR scheduler drives lr."""
    base = torch.randn(64, 48)
    parameter = torch.nn.Parameter(base.t())
    reference = torch.nn.Parameter(base.t().clone())
    fmt = FixedPoint(12, 8, "nearest")
    fused = FixedPointSGD([parameter], lr=0.2, momentum=0.5, weight=fmt, grad=fmt, state=fmt)
    wrapped = FixedPointOptimizer(torch.optim.SGD([reference], lr=0.2, momentum=0.5), weight=fmt, grad=fmt, state=fmt)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in (fused, wrapped.optimizer)]
    for step in range(3):
        parameter.grad = torch.randn(48, 64, generator=torch.Generator().manual_seed(step)).t().t()
        reference.grad = parameter.grad.clone()
        fused.step()
        wrapped.step()
        for scheduler in schedulers:
            scheduler.step()
    assert not parameter.is_contiguous()
    assert torch.equal(parameter.detach(), reference.detach())
    assert fused.param_groups[0]["lr"] == 0.2 * 0.5**3


def test_closure_and_parameters_without_gradients():
    parameters = make_parameters(torch.float32)
    before = [p.detach().clone() for p in parameters]
    optimizer = FixedPointSGD(parameters, lr=0.1)
    parameters[0].grad = torch.ones_like(parameters[0])

    def closure():
        return torch.tensor(3.0)

    assert optimizer.step(closure) == 3.0
    assert torch.equal(parameters[0].detach(), before[0] - 0.1)
    assert all(torch.equal(p.detach(), b) for p, b in zip(parameters[1:], before[1:]))


def test_parameters_without_gradients_are_rounded_like_fixed_point_optimizer():
    fmt = FixedPoint(8, 4, "nearest")
    values = torch.tensor([0.03, 0.51, -1.27])
    fused_parameters = [torch.nn.Parameter(values.clone()), torch.nn.Parameter(values.clone())]
    reference_parameters = [torch.nn.Parameter(values.clone()), torch.nn.Parameter(values.clone())]
    fused = FixedPointSGD(fused_parameters, lr=0.1, momentum=0.9, weight=fmt, state=fmt)
    reference = FixedPointOptimizer(torch.optim.SGD(reference_parameters, lr=0.1, momentum=0.9), weight=fmt, state=fmt)
    for parameters, optimizer in ((fused_parameters, fused), (reference_parameters, reference)):
        parameters[1].grad = torch.full((3,), 0.25)
        optimizer.step()
    assert_all_equal([p.detach() for p in fused_parameters], [p.detach() for p in reference_parameters])
    assert torch.equal(fused_parameters[0].detach(), torch.tensor([0.0, 0.5, -1.25]))
    assert "momentum_buffer" not in fused.state.get(fused_parameters[0], {})


def test_buffers_of_parameters_without_gradients_stay_on_the_grid():
    """A parameter that had a gradient (so a momentum buffer) and then has none: its buffer is
    rounded as FixedPointOptimizer rounds it (given here off the grid, as after a format change)."""
    fmt = FixedPoint(8, 4, "nearest")
    parameters = [torch.nn.Parameter(torch.zeros(3)) for _ in range(2)]
    fused = FixedPointSGD(parameters[:1], lr=0.1, momentum=0.9, state=fmt)
    reference = FixedPointOptimizer(torch.optim.SGD(parameters[1:], lr=0.1, momentum=0.9), state=fmt)
    for parameter, optimizer in zip(parameters, (fused, reference)):
        parameter.grad = torch.full((3,), 0.25)
        optimizer.step()
        optimizer.state[parameter]["momentum_buffer"].copy_(torch.tensor([0.03, 0.51, -1.27]))
        parameter.grad = None
        optimizer.step()
    buffers = [fused.state[parameters[0]]["momentum_buffer"], reference.state[parameters[1]]["momentum_buffer"]]
    assert torch.equal(buffers[0], torch.tensor([0.0, 0.5, -1.25])) and torch.equal(buffers[0], buffers[1])


def test_copies_keep_the_formats_and_an_explicit_generator_draws():
    """deepcopy and pickling keep the formats; an explicit generator decides the stochastic draws
    (the same seed gives the same step, torch's default generator is not touched)."""
    fmt = FixedPoint(8, 4, "stochastic")

    def run(seed):
        parameters = make_parameters(torch.float32)
        optimizer = FixedPointSGD(parameters, lr=0.1, momentum=0.9, weight=fmt, grad=fmt, state=fmt,
                                  generator=torch.Generator().manual_seed(seed))
        set_gradients(parameters, 0)
        optimizer.step()
        return optimizer, parameters

    torch.manual_seed(0)
    default_state = torch.get_rng_state()
    (first, first_parameters), (_, again), (_, other) = run(1), run(1), run(2)
    assert torch.equal(torch.get_rng_state(), default_state)
    assert all(torch.equal(a, b) for a, b in zip(first_parameters, again))
    assert not all(torch.equal(a, b) for a, b in zip(first_parameters, other))
    copied = copy.deepcopy(first)
    assert (copied.weight_format, copied.grad_format, copied.state_format) == (fmt, fmt, fmt)
    set_gradients(copied.param_groups[0]["params"], 1)
    copied.step()


def test_overlapping_tensors_are_refused_before_anything_is_written():
    param = torch.randn(8)
    before = param.clone()
    with pytest.raises(RuntimeError, match="param and momentum_buffer must not share memory"):
        ops.fixed_point_sgd_(param, torch.randn(8), param.view(2, 4).view(8), 0.1, 0.9)
    with pytest.raises(RuntimeError, match="param and grad must not share memory"):
        ops.fixed_point_sgd_(param, param[:], None, 0.1)
    expanded = torch.ones(1).expand(8)  # read only: fine; rounded in place: refused
    ops.fixed_point_sgd_(param, expanded, None, 0.1)
    assert torch.equal(param, before - 0.1)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        ops.fixed_point_sgd_(param, expanded, None, 0.1, grad_format=[8, 4, 0, 1, 0])
    assert torch.equal(param, before - 0.1)
    base = torch.randn(8, 2)  # strided views of one storage: torch cannot tell, so refused
    with pytest.raises(RuntimeError, match="param and grad must not share memory"):
        ops.fixed_point_sgd_(base[:, 0], base.view(16)[::2], None, 0.1, grad_format=[8, 4, 0, 1, 0])
    with pytest.raises(RuntimeError, match="param and momentum_buffer must not share memory"):
        ops.fixed_point_sgd_(base[:, 0], torch.randn(8), base[:, 1], 0.1, 0.9)
    flat = torch.zeros(20)  # parameters and grads as views of flat buffers, as DDP's buckets: fine
    flat_grads = torch.ones(20)
    ops.fixed_point_sgd_(flat[:8], flat_grads[:8], flat[10:18], 0.5, 0.9, first_step=True)
    assert torch.equal(flat[:8], torch.full((8,), -0.5)) and torch.equal(flat[10:18], torch.ones(8))
    parameter = torch.nn.Parameter(torch.randn(8))
    parameter.grad = parameter.detach()  # the parameter's own memory
    optimizer = FixedPointSGD([parameter], lr=0.1, momentum=0.9)
    with pytest.raises(RuntimeError, match="must not share memory"):
        optimizer.step()
    assert "momentum_buffer" not in optimizer.state[parameter]  # no half-made state


def test_loads_a_state_dict_without_newer_options():
    parameters = make_parameters(torch.float32)
    optimizer = FixedPointSGD(parameters, lr=0.1, momentum=0.9)
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        del group["maximize"], group["nesterov"]
    optimizer.load_state_dict(state)
    set_gradients(parameters, 0)
    optimizer.step()
    assert optimizer.param_groups[0]["maximize"] is False


def test_opcheck(device):
    param = torch.randn(5, 7, device=device)
    grad = torch.randn(5, 7, device=device)
    buffer = torch.randn(5, 7, device=device)
    fmt = [16, 12, 0, 1, 0]
    check_opcheck(ops.fixed_point_sgd_.default,
                  (param, grad, buffer, 0.1, 0.9, 0.0, 0.01, True, False, False, fmt, fmt, fmt, None))
    check_opcheck(ops.fixed_point_sgd_.default,
                  (param.double(), grad.double(), None, 0.1, 0.0, 0.0, 0.0, False, True, True, [], fmt, [], None))


def test_torch_compile_fullgraph(device):
    fmt = [16, 12, 1, 1, 0]

    def step(param, grad, buffer):
        param, grad, buffer = param.clone(), grad.clone(), buffer.clone()
        ops.fixed_point_sgd_(param, grad, buffer, 0.1, 0.9, 0.0, 0.0, False, False, False, fmt, fmt, fmt, None)
        return torch.stack([param, grad, buffer])

    tensors = [torch.randn(257, device=device) for _ in range(3)]
    check_compiles(step, *tensors, seed=0)

    def step_foreach(a, b, grad_a, grad_b):
        params, grads = [a.clone(), b.clone()], [grad_a.clone(), grad_b.clone()]
        buffers = [torch.zeros_like(a), torch.zeros_like(b)]
        ops.fixed_point_sgd_foreach_(params, grads, buffers, 0.1, 0.9, 0.0, 0.0, False, False, True, fmt, fmt, fmt,
                                     None)
        return torch.cat([t.flatten() for t in params + grads + buffers])

    check_compiles(step_foreach, *(torch.randn(n, device=device) for n in (257, 33, 257, 33)), seed=0)


def test_bad_arguments_are_named(device):
    param = torch.randn(4, 3, device=device)
    grad = torch.randn(4, 3, device=device)
    buffer = torch.randn(4, 3, device=device)

    def call(p=param, g=grad, b=buffer, lr=0.1, momentum=0.9, grad_format=(), weight_format=()):
        ops.fixed_point_sgd_(p, g, b, lr, momentum, 0.0, 0.0, False, False, False, list(grad_format),
                             list(weight_format), [], None)

    with pytest.raises(RuntimeError, match="grad must have param's dtype"):
        call(g=grad.double())
    with pytest.raises(RuntimeError, match="grad must have param's size"):
        call(g=grad[:2])
    with pytest.raises(RuntimeError, match="momentum_buffer must have param's size"):
        call(b=buffer[:, :2])
    with pytest.raises(RuntimeError, match="momentum_buffer must be given exactly when momentum != 0"):
        call(b=None)
    with pytest.raises(RuntimeError, match="momentum_buffer must be given exactly when momentum != 0"):
        call(momentum=0.0)
    with pytest.raises(RuntimeError, match="param must be float32"):
        call(p=param.int(), g=grad.int(), b=buffer.int())
    with pytest.raises(RuntimeError, match="lr must be finite"):
        call(lr=float("nan"))
    with pytest.raises(RuntimeError, match=r"grad_format must be \[\] or \[wl, fl, stochastic, clamp, symmetric\]"):
        call(grad_format=(16, 14))
    with pytest.raises(RuntimeError, match="weight_format .* takes flags 0 or 1"):
        call(weight_format=(16, 14, 2, 1, 0))
    with pytest.raises(RuntimeError, match="weight_format: wl"):
        call(weight_format=(0, 14, 0, 1, 0))
    if device == "cuda":
        with pytest.raises(RuntimeError, match="grad must be on param's device"):
            call(g=grad.cpu())

    parameters = [torch.nn.Parameter(torch.randn(3, device=device))]
    with pytest.raises(ValueError, match="lr must be >= 0"):
        FixedPointSGD(parameters, lr=-1.0)
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        FixedPointSGD(parameters, momentum=-0.1)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0 and dampening = 0"):
        FixedPointSGD(parameters, nesterov=True)
    with pytest.raises(TypeError, match="weight must be a FixedPoint or None"):
        FixedPointSGD(parameters, weight=(16, 14))
    parameters[0].grad = torch.ones(3, device=device).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        FixedPointSGD(parameters).step()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_foreach_is_the_loop_of_single_steps(device, momentum):
    """fixed_point_sgd_foreach_ (one call for all of FixedPointSGD's parameters) draws and writes
    what fixed_point_sgd_ called on each parameter in turn does; a bad parameter anywhere in the
    list is refused before any is written."""
    stochastic = [12, 8, 1, 1, 0]
    shapes = [(5, 7), (33,), (2, 3, 4), (0,), (1,)]

    def tensors(seed):
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(shape, generator=g).to(device) for shape in shapes]

    params, grads, buffers = tensors(0), tensors(1), tensors(2) if momentum else []
    expected = [[t.clone() for t in group] for group in (params, grads, buffers)]
    torch.manual_seed(3)
    seed_offsets = ops.fixed_point_sgd_foreach_(params, grads, buffers, 0.1, momentum, 0.0, 0.01, False, False, True,
                                                stochastic, stochastic, stochastic if momentum else [], None)
    torch.manual_seed(3)
    expected_seed_offsets = [
        ops.fixed_point_sgd_(p, g, b, 0.1, momentum, 0.0, 0.01, False, False, True, stochastic, stochastic,
                             stochastic if momentum else [], None)
        for p, g, b in itertools.zip_longest(*expected)]
    assert_all_equal(params + grads + buffers + seed_offsets, sum(expected, []) + expected_seed_offsets)

    kept = [t.clone() for t in params + grads]
    bad_grads = grads[:2] + [grads[2].double()] + grads[3:]
    with pytest.raises(RuntimeError, match="grad must have param's dtype"):
        ops.fixed_point_sgd_foreach_(params, bad_grads, buffers, 0.1, momentum, 0.0, 0.0, False, False, False,
                                     stochastic, [], [], None)
    assert_all_equal(params + grads, kept)
    with pytest.raises(RuntimeError, match="grads must have one tensor per param"):
        ops.fixed_point_sgd_foreach_(params, grads[:2], buffers, 0.1, momentum, 0.0, 0.0, False, False, False, [],
                                     [], [], None)
    with pytest.raises(RuntimeError, match="momentum_buffers must be empty or have one tensor per param"):
        ops.fixed_point_sgd_foreach_(params, grads, grads[:1], 0.1, momentum, 0.0, 0.0, False, False, False, [], [],
                                     [], None)
    fmt = [16, 12, 0, 1, 0]
    check_opcheck(ops.fixed_point_sgd_foreach_.default,
                  (params, grads, buffers, 0.1, momentum, 0.0, 0.01, False, False, False, fmt, fmt,
                   fmt if momentum else [], None))


@cuda_only
@pytest.mark.cuda
def test_foreach_refuses_a_generator_of_another_device_before_any_step():
    """Parameters on the CPU and on CUDA with a CPU generator and stochastic rounding: the CUDA
    parameter cannot draw from it, and the CPU one before it is not stepped either."""
    stochastic = [12, 8, 1, 1, 0]
    params = [torch.randn(10), torch.randn(10, device="cuda")]
    grads = [torch.randn(10), torch.randn(10, device="cuda")]
    kept = [t.clone() for t in params + grads]
    with pytest.raises(RuntimeError, match=r"generator must be a cuda generator for params\[1\]"):
        ops.fixed_point_sgd_foreach_(params, grads, [], 0.1, 0.0, 0.0, 0.0, False, False, False, stochastic, [], [],
                                     torch.Generator().manual_seed(0))
    assert_all_equal(params + grads, kept)
    # Round-to-nearest draws nothing: any generator will do.
    ops.fixed_point_sgd_foreach_(params, grads, [], 0.1, 0.0, 0.0, 0.0, False, False, False, [12, 8, 0, 1, 0], [],
                                 [], torch.Generator())
