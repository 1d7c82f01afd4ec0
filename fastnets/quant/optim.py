"""An optimizer wrapper that trains in fixed point."""
from typing import Callable, Dict, Mapping, Optional, Union

import torch

from fastnets.quant.format import FixedPoint

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
