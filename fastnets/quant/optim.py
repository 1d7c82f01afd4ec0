"""Optimizers that train in fixed point: a wrapper for any torch.optim optimizer, and SGD with
the roundings fused into its step."""
from typing import Callable, Dict, List, Mapping, Optional, Union

import torch

from fastnets.quant.format import FixedPoint

ops = torch.ops.fastnets

StateFormats = Union[FixedPoint, Mapping[str, FixedPoint], None]


class FixedPointOptimizer:
    """Wraps any ``torch.optim`` optimizer so that a step sees fixed-point gradients and leaves
    fixed-point weights and optimizer state.

    ``step()`` rounds each parameter's gradient to ``grad``, runs the wrapped optimizer's step,
    then rounds each parameter to ``weight`` and each tensor of its optimizer state (momentum,
    Adam's moments, ...) to ``state``. Any of them may be None (left in floating point).

    Args:
        optimizer: the optimizer to wrap (keep passing it to LR schedulers).
        weight: format of the weights after each step.
        grad: format of the gradients before each step.
        state: a mapping from state names (e.g. ``{"momentum_buffer": ..., "exp_avg": ...,
            "exp_avg_sq": ...}``) to formats, names not in it left as they are; or one format
            for every state tensor of the parameter's shape (momenta and moments, not scalars
            such as Adam's step counter or NAdam's mu_product).
        generator: for stochastic rounding; default: torch's generator for each device.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, weight: Optional[FixedPoint] = None,
                 grad: Optional[FixedPoint] = None, state: StateFormats = None,
                 generator: Optional[torch.Generator] = None) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        for name, value in (("weight", weight), ("grad", grad)):
            if value is not None and not isinstance(value, FixedPoint):
                raise TypeError(f"{name} must be a FixedPoint or None, got {type(value).__name__}")
        if state is not None and not isinstance(state, (FixedPoint, Mapping)):
            raise TypeError(f"state must be a FixedPoint, a mapping of state names to them, or None, got {type(state).__name__}")
        self.optimizer = optimizer
        self.weight, self.grad, self.state_format = weight, grad, state
        self.generator = generator

    def _parameters(self):
        for group in self.optimizer.param_groups:
            yield from group["params"]

    def _state_format(self, name: str, value, parameter: torch.Tensor) -> Optional[FixedPoint]:
        if not (torch.is_tensor(value) and value.is_floating_point()):
            return None
        if isinstance(self.state_format, Mapping):
            return self.state_format.get(name)
        return self.state_format if value.shape == parameter.shape and name != "step" else None

    @torch.no_grad()
    def _quantize_grads(self) -> None:
        if self.grad is None:
            return
        for parameter in self._parameters():
            if parameter.grad is not None:
                self.grad.quantize_(parameter.grad, self.generator)

    @torch.no_grad()
    def _quantize_weights_and_state(self) -> None:
        for parameter in self._parameters():
            if self.weight is not None:
                self.weight.quantize_(parameter, self.generator)
            for name, value in self.optimizer.state.get(parameter, {}).items():
                format = self._state_format(name, value, parameter)
                if format is not None:
                    format.quantize_(value, self.generator)

    def step(self, closure: Optional[Callable[[], float]] = None):
        """One step of the wrapped optimizer between the roundings; a closure's gradients are
        rounded as soon as it has computed them."""
        if closure is None:
            self._quantize_grads()
            loss = self.optimizer.step()
        else:
            def rounded_closure():
                with torch.enable_grad():
                    result = closure()
                self._quantize_grads()
                return result
            loss = self.optimizer.step(rounded_closure)
        self._quantize_weights_and_state()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self) -> Dict:
        return self.optimizer.state

    def state_dict(self) -> Dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: Dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: Dict) -> None:
        self.optimizer.add_param_group(param_group)

    def __repr__(self) -> str:
        return (f"FixedPointOptimizer(weight={self.weight}, grad={self.grad}, state={self.state_format},\n"
                f"{self.optimizer})")


def _format_spec(format: Optional[FixedPoint]) -> List[int]:
    # fixed_point_sgd_'s encoding of an optional rounding.
    if format is None:
        return []
    return [format.wl, format.fl, int(format.rounding == "stochastic"), int(format.clamp), int(format.symmetric)]


class FixedPointSGD(torch.optim.Optimizer):
    """``torch.optim.SGD`` with the fixed-point roundings of :class:`FixedPointOptimizer` fused
    into its step: one kernel per parameter (all of them launched by one call) reads and writes the
    parameter, its gradient and its momentum buffer once, where torch's step and three separate
    roundings take six passes.

    Each step rounds the gradient to ``grad`` (in place), takes torch.optim.SGD's step, then
    rounds the parameter to ``weight`` and the momentum buffer to ``state``; any format may be
    None. In float32 and float64, with round-to-nearest or no rounding, the results are those of
    ``FixedPointOptimizer(torch.optim.SGD(...), weight, grad, state)`` bit for bit (without
    formats, torch.optim.SGD's). Stochastic roundings draw per parameter, in the order gradient,
    weight, state, so other numbers than FixedPointOptimizer's, which rounds every gradient
    first. In float16 and bfloat16 the step is computed in float32 and only its results are
    stored in the parameter's dtype (torch's SGD stores each intermediate).

    Args:
        params, lr, momentum, dampening, weight_decay, nesterov, maximize: as torch.optim.SGD
            (lr may be a float or a 0-dim tensor).
        weight: format of the parameters after each step.
        grad: format of the gradients before each step.
        state: format of the momentum buffers after each step.
        generator: for stochastic rounding; default: torch's generator for each device.

    Parameters without a gradient are not stepped, but their weights and momentum buffers are
    rounded, as FixedPointOptimizer rounds them. The state_dict is torch.optim.SGD's
    (``momentum_buffer`` per parameter), so a checkpoint loads into either optimizer. Sparse
    gradients are not supported.
    """

    def __init__(self, params, lr: Union[float, torch.Tensor] = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 weight: Optional[FixedPoint] = None, grad: Optional[FixedPoint] = None,
                 state: Optional[FixedPoint] = None, generator: Optional[torch.Generator] = None) -> None:
        for name, value in (("lr", float(lr)), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not value >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"nesterov needs momentum > 0 and dampening = 0, got momentum = {momentum} and "
                             f"dampening = {dampening}")
        for name, value in (("weight", weight), ("grad", grad), ("state", state)):
            if value is not None and not isinstance(value, FixedPoint):
                raise TypeError(f"{name} must be a FixedPoint or None, got {type(value).__name__}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize)
        super().__init__(params, defaults)
        self.weight_format, self.grad_format, self.state_format = weight, grad, state
        self.generator = generator

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """One step; a closure, if given, recomputes the loss (with gradients) first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        formats = (_format_spec(self.grad_format), _format_spec(self.weight_format), _format_spec(self.state_format))
        for group in self.param_groups:
            momentum = group["momentum"]
            # Runs of parameters stepped alike go to the kernels in one call; the rounding of a
            # parameter without a gradient keeps its place in the order of the draws.
            run: List[torch.Tensor] = []
            buffers: List[torch.Tensor] = []
            run_first = False
            for parameter in group["params"]:
                if parameter.grad is None:
                    self._step_run(group, run, buffers, run_first, formats)
                    run, buffers = [], []
                    self._round_without_step(parameter)
                    continue
                if parameter.grad.is_sparse:
                    raise RuntimeError("FixedPointSGD does not support sparse gradients")
                buffer = self.state[parameter].get("momentum_buffer") if momentum != 0 else None
                first_step = momentum != 0 and buffer is None
                if first_step != run_first:
                    self._step_run(group, run, buffers, run_first, formats)
                    run, buffers, run_first = [], [], first_step
                if first_step:
                    buffer = torch.zeros_like(parameter)  # written whole by the step
                run.append(parameter)
                if buffer is not None:
                    buffers.append(buffer)
            self._step_run(group, run, buffers, run_first, formats)
        return loss

    def _step_run(self, group: Dict, params: List[torch.Tensor], buffers: List[torch.Tensor], first_step: bool,
                  formats: tuple) -> None:
        if not params:
            return
        ops.fixed_point_sgd_foreach_(params, [p.grad for p in params], buffers, float(group["lr"]), group["momentum"],
                                     group["dampening"], group["weight_decay"], group["nesterov"], group["maximize"],
                                     first_step, *formats, self.generator)
        if first_step:  # kept only once the step has succeeded
            for parameter, buffer in zip(params, buffers):
                self.state[parameter]["momentum_buffer"] = buffer

    def _round_without_step(self, parameter: torch.Tensor) -> None:
        # As FixedPointOptimizer: a parameter without a gradient is not stepped, but its weights
        # and momentum stay on their grids.
        if self.weight_format is not None:
            self.weight_format.quantize_(parameter, self.generator)
        buffer = self.state[parameter].get("momentum_buffer") if parameter in self.state else None
        if self.state_format is not None and buffer is not None:
            self.state_format.quantize_(buffer, self.generator)

    def __getstate__(self) -> Dict:
        # torch's Optimizer keeps only defaults, state and param_groups: copies and pickles need
        # the formats too.
        state = super().__getstate__()
        state.update(weight_format=self.weight_format, grad_format=self.grad_format, state_format=self.state_format,
                     generator=self.generator)
        return state

    def __setstate__(self, state: Dict) -> None:
        # A state_dict saved by an older torch.optim.SGD may lack these options.
        super().__setstate__(state)
        for group in self.param_groups:
            for name, default in (("momentum", 0.0), ("dampening", 0.0), ("weight_decay", 0.0), ("nesterov", False),
                                  ("maximize", False)):
                group.setdefault(name, default)
