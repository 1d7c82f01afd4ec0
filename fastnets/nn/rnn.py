"""Drop-ins for torch.nn.LSTMCell and torch.nn.LSTM: the same constructor arguments, parameter
names, initialization and results, computed by fastnets' fused LSTM kernels."""
import math
import numbers
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from fastnets.functional import dropout as fastnets_dropout
from fastnets.functional import lstm_cell, lstm_layer


def _init_uniform(module: nn.Module, hidden_size: int) -> None:
    """torch.nn's RNN initialization: every parameter from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
    bound = 1.0 / math.sqrt(hidden_size)
    for weight in module.parameters():
        nn.init.uniform_(weight, -bound, bound)


class LSTMCell(nn.Module):
    """A drop-in for :class:`torch.nn.LSTMCell` (gates i, f, g, o; same ``weight_ih``,
    ``weight_hh``, ``bias_ih``, ``bias_hh`` and their U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))
    initialization), computed by :func:`fastnets.functional.lstm_cell`.

    Input (batch, input_size) or (input_size,); ``hx = (h, c)``, each (batch, hidden_size) (or
    (hidden_size,)), zeros when omitted. Returns ``(h', c')``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size} and {hidden_size}")
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_uniform(self, self.hidden_size)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: expected input to be 1-D or 2-D, got {input.dim()}-D input")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size = {self.input_size}, got "
                               f"{input.shape[-1]}")
        if hx is None:
            zeros = input.new_zeros(input.shape[:-1] + (self.hidden_size,))
            hx = (zeros, zeros)
        return lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class LSTM(nn.Module):
    """A drop-in for :class:`torch.nn.LSTM`: ``input_size, hidden_size, num_layers, bias,
    batch_first, dropout, bidirectional`` with torch's meaning, parameters named as torch names
    them (``weight_ih_l0``, ``weight_hh_l0_reverse``, ...) so that ``load_state_dict`` works both
    ways, and the same initialization. Each layer and direction is one call of
    :func:`fastnets.functional.lstm_layer`; dropout between layers is fastnets dropout.

    Input (time, batch, input_size) (``batch_first``: (batch, time, input_size)) or unbatched
    (time, input_size); ``hx = (h0, c0)``, each (num_layers * num_directions, batch, hidden_size),
    zeros when omitted. Returns ``output, (h_n, c_n)`` as torch.nn.LSTM does; a wrong input or
    state size raises a RuntimeError, as there. A ``PackedSequence`` input gives a
    ``PackedSequence`` output, each sequence run over its own length (h_n and c_n after its last
    step, in the batch's order), as in torch. ``proj_size`` must be 0. Double backward is not
    supported.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None) -> None:
        super().__init__()
        if proj_size != 0:
            raise ValueError(f"proj_size is not supported by fastnets.nn.LSTM, got {proj_size}")
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError(f"input_size, hidden_size and num_layers must be positive, got {input_size}, "
                             f"{hidden_size} and {num_layers}")
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1] representing the probability of an element being "
                             f"zeroed, got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout applies between LSTM layers: with num_layers=1 dropout={dropout} does nothing",
                          stacklevel=2)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout, self.bidirectional = bias, batch_first, float(dropout), bidirectional
        self.proj_size = 0
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        self._names: List[List[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = [("weight_ih", (4 * hidden_size, layer_input)), ("weight_hh", (4 * hidden_size, hidden_size))]
                if bias:
                    shapes += [("bias_ih", (4 * hidden_size,)), ("bias_hh", (4 * hidden_size,))]
                for name, shape in shapes:
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory)))
                self._names.append([name + suffix for name, _ in shapes])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_uniform(self, self.hidden_size)

    def flatten_parameters(self) -> None:
        """Nothing to do (torch.nn.LSTM packs its weights for cuDNN here; fastnets reads them as they are)."""

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
        """The parameters of each layer and direction, as torch.nn.LSTM lists them."""
        return [[getattr(self, name) for name in names] for names in self._names]

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text

    def forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None):
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: expected input to be 2-D or 3-D, got {input.dim()}-D")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        self._check_input_size(input)
        h0, c0 = self._initial_states(input, input.shape[1], hx, unsqueeze=not batched)
        x, (h_n, c_n) = self._layers(input, h0, c0, None)
        if not batched:
            return x.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (x.transpose(0, 1) if self.batch_first else x), (h_n, c_n)

    def _forward_packed(self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]]):
        # As torch.nn.LSTM: the states in the packed (sorted) order of the sequences inside, h_n
        # and c_n back in the caller's order; batch_first does not apply to packed data.
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if data.dim() != 2:
            raise ValueError(f"LSTM: expected packed data to be 2-D (rows, input_size), got {data.dim()}-D")
        self._check_input_size(data)
        batch = sorted_indices.numel() if sorted_indices is not None else int(batch_sizes[0])
        h0, c0 = self._initial_states(data, batch, hx, unsqueeze=False)
        if hx is not None and sorted_indices is not None:
            h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        x, (h_n, c_n) = self._layers(data, h0, c0, batch_sizes)
        if unsorted_indices is not None:
            h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
        return PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)

    def _check_input_size(self, input: Tensor) -> None:
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size = {self.input_size}, got "
                               f"{input.shape[-1]}")

    def _initial_states(self, input: Tensor, batch: int, hx: Optional[Tuple[Tensor, Tensor]], unsqueeze: bool):
        directions = 2 if self.bidirectional else 1
        state_shape = (self.num_layers * directions, batch, self.hidden_size)
        if hx is None:
            zeros = input.new_zeros(state_shape)
            return zeros, zeros
        h0, c0 = hx
        if unsqueeze:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        for name, state in (("hx[0] (h0)", h0), ("hx[1] (c0)", c0)):
            if tuple(state.shape) != state_shape:
                raise RuntimeError(f"{name} must have shape {state_shape}, got {tuple(state.shape)}")
        return h0, c0

    def _layers(self, x: Tensor, h0: Tensor, c0: Tensor, batch_sizes: Optional[Tensor]):
        """Every layer and direction over x (time, batch, features), or packed rows with batch_sizes."""
        directions = 2 if self.bidirectional else 1
        final_h, final_c = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                weights = [getattr(self, name) for name in self._names[index]]
                biases = weights[2:] if self.bias else [None, None]
                output, (h_n, c_n) = lstm_layer(x, (h0[index], c0[index]), weights[0], weights[1], *biases,
                                                reverse=direction == 1, batch_sizes=batch_sizes)
                outputs.append(output)
                final_h.append(h_n)
                final_c.append(c_n)
            x = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = fastnets_dropout(x, self.dropout)
        return x, (torch.stack(final_h), torch.stack(final_c))
