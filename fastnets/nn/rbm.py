"""Restricted Boltzmann machines (Hinton 2002) and deep belief networks (Hinton et al. 2006).

The units are sampled by ``fastnets.functional.rbm_sample`` (one GEMM and one fused pass that
writes the means and the samples). Training follows Hinton's practical guide (2010): binary
hidden states when they are driven by data, probabilities for the last update and for the
statistics; ``contrastive_divergence`` only fills ``.grad``, so any ``torch.optim`` optimizer
(momentum, weight decay) takes the step.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from fastnets.functional import check_rbm_unit, rbm_sample
from fastnets.rbm import exact_log_partition


class RBM(nn.Module):
    r"""A restricted Boltzmann machine with binary hidden units and Bernoulli or Gaussian visible units.

    Energy (``W`` = ``weight``, ``b`` = ``visible_bias``, ``c`` = ``hidden_bias``):
    ``E(v, h) = -b.v - c.h - h.W.v`` for Bernoulli visible units, and
    ``E(v, h) = |v - b|^2 / 2 - c.h - h.W.v`` for Gaussian ones (unit variance: standardize the data).

    Args:
        n_visible: number of visible units V.
        n_hidden: number of hidden units H.
        visible: ``"bernoulli"`` (data in [0, 1], e.g. pixel intensities read as probabilities)
            or ``"gaussian"``.
        device, dtype: of the parameters (float32, float64, float16 or bfloat16).

    Attributes:
        weight: (H, V), initialized from N(0, 0.01^2) as the guide recommends.
        visible_bias: (V,), zeros.
        hidden_bias: (H,), zeros.
        chain: the persistent chains' visible states for PCD (a buffer outside the state_dict, None
            until first used).
    """

    def __init__(self, n_visible: int, n_hidden: int, visible: str = "bernoulli", device=None, dtype=None) -> None:
        super().__init__()
        check_rbm_unit(visible, "visible")
        if n_visible < 1 or n_hidden < 1:
            raise ValueError(f"n_visible and n_hidden must be positive, got {n_visible} and {n_hidden}")
        factory = {"device": device, "dtype": dtype}
        self.n_visible, self.n_hidden, self.visible = n_visible, n_hidden, visible
        self.weight = nn.Parameter(torch.empty(n_hidden, n_visible, **factory))
        self.visible_bias = nn.Parameter(torch.empty(n_visible, **factory))
        self.hidden_bias = nn.Parameter(torch.empty(n_hidden, **factory))
        self.register_buffer("chain", None, persistent=False)  # training state, not in checkpoints
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, 0.01)
            self.visible_bias.zero_()
            self.hidden_bias.zero_()
        self.chain = None

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, visible={self.visible!r}"

    def _check_states(self, x: Tensor, size: int, name: str) -> Tensor:
        if x.dim() not in (1, 2) or x.shape[-1] != size:
            raise ValueError(f"{name} must have shape (batch, {size}) or ({size},), got {tuple(x.shape)}")
        return x

    def sample_h(self, v: Tensor, sample: bool = True, generator: Optional[torch.Generator] = None
                 ) -> Tuple[Tensor, Optional[Tensor]]:
        """``(P(h = 1 | v), a sample of h)`` for visible states ``v`` (batch, V); each (batch, H)."""
        self._check_states(v, self.n_visible, "v")
        return rbm_sample(v, self.weight, self.hidden_bias, "bernoulli", sample, generator)

    def sample_v(self, h: Tensor, sample: bool = True, generator: Optional[torch.Generator] = None
                 ) -> Tuple[Tensor, Optional[Tensor]]:
        """``(E[v | h], a sample of v)`` for hidden states ``h`` (batch, H); each (batch, V)."""
        self._check_states(h, self.n_hidden, "h")
        return rbm_sample(h, self.weight.t(), self.visible_bias, self.visible, sample, generator)

    def forward(self, v: Tensor) -> Tensor:
        """The hidden units' probabilities ``P(h = 1 | v)`` (batch, H): the features a DBN passes up."""
        return self.sample_h(v, sample=False)[0]

    def gibbs(self, v: Tensor, k: int = 1, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """``k`` steps of block Gibbs sampling ``v -> h -> v`` from ``v``: the last step's
        ``(E[v | h], v sample)``."""
        _check_steps(k)
        with torch.no_grad():
            for _ in range(k):
                h = self.sample_h(v, generator=generator)[1]
                mean, v = self.sample_v(h, generator=generator)
        return mean, v

    def free_energy(self, v: Tensor) -> Tensor:
        """``F(v) = -log sum_h exp(-E(v, h))`` (batch,), so that ``p(v) = exp(-F(v)) / Z``."""
        self._check_states(v, self.n_visible, "v")
        total = torch.nn.functional.linear(v, self.weight, self.hidden_bias)
        hidden_term = torch.nn.functional.softplus(total).sum(-1)
        if self.visible == "bernoulli":
            return -(v @ self.visible_bias) - hidden_term
        return 0.5 * ((v - self.visible_bias) ** 2).sum(-1) - hidden_term

    def reconstruction_error(self, v: Tensor) -> Tensor:
        """Mean over the batch of ``|v - E[v | P(h | v)]|^2`` (a deterministic up-down pass): a
        training monitor, not the objective."""
        with torch.no_grad():
            mean_h = self.sample_h(v, sample=False)[0]
            mean_v = self.sample_v(mean_h, sample=False)[0]
            return ((v - mean_v) ** 2).sum(-1).mean()

    def contrastive_divergence(self, v: Tensor, k: int = 1, persistent: bool = False,
                               generator: Optional[torch.Generator] = None) -> Tensor:
        """Adds the CD-k (or PCD-k) estimate of the gradient of ``-mean log p(v)`` to the ``.grad``
        of ``weight``, ``visible_bias`` and ``hidden_bias``; returns the batch's reconstruction error
        (mean squared distance between ``v`` and ``E[v | h]`` for ``h`` sampled from ``v``).

        Positive statistics: ``v`` and ``P(h | v)``. Negative statistics: after ``k`` Gibbs steps
        (binary hidden samples, sampled visible states in between), the last step's ``E[v | h]``
        and ``P(h | E[v | h])``. With ``persistent`` (Tieleman 2008) the negative chains start from
        ``self.chain`` (initialized from the first batch; their number stays, whatever the size of
        later batches, and the negative statistics are averaged over them) and their sampled visible
        states are kept there for the next call.

        For Bernoulli visible units the data are checked to lie in [0, 1] (on CUDA that check waits
        for the device once per call; it is skipped under CUDA graph capture).

        Args:
            v: data (batch, V); for Bernoulli visible units in [0, 1].
            k: Gibbs steps, at least 1.
            persistent: PCD instead of CD.
            generator: for the samples.
        """
        _check_steps(k)
        self._check_states(v, self.n_visible, "v")
        if v.dim() == 1:
            v = v.unsqueeze(0)
        with torch.no_grad():
            if self.visible == "bernoulli" and v.numel() > 0 and not _capturing(v):
                low, high = torch.aminmax(v)
                if not (low >= 0 and high <= 1):
                    raise ValueError("v must lie in [0, 1] for Bernoulli visible units (binary data or probabilities)")
            positive_h, data_h = self.sample_h(v, generator=generator)
            h = data_h
            if persistent:
                if self.chain is None or self.chain.shape[1:] != v.shape[1:] or self.chain.dtype != v.dtype or \
                        self.chain.device != v.device:
                    self.chain = v.clone()
                h = self.sample_h(self.chain, generator=generator)[1]
            for step in range(k):
                # CD's last visible states are used as means only: no samples drawn for them
                mean_v, sampled_v = self.sample_v(h, persistent or step < k - 1, generator)
                if step < k - 1:
                    h = self.sample_h(sampled_v, generator=generator)[1]
            if persistent:
                self.chain = sampled_v
                reconstruction = self.sample_v(data_h, sample=False)[0]
            else:
                reconstruction = mean_v if k == 1 else self.sample_v(data_h, sample=False)[0]
            negative_h = self.sample_h(mean_v, sample=False)[0]
            batch, chains = v.shape[0], mean_v.shape[0]  # as many chains as data, except in PCD
            grad_weight = torch.mm(negative_h.t(), mean_v).div_(chains)
            grad_weight.addmm_(positive_h.t(), v, alpha=-1 / batch)
            _accumulate(self.weight, grad_weight)
            _accumulate(self.visible_bias, mean_v.sum(0).div_(chains) - v.sum(0).div_(batch))
            _accumulate(self.hidden_bias, negative_h.sum(0).div_(chains) - positive_h.sum(0).div_(batch))
            return ((v - reconstruction) ** 2).sum(-1).mean()

    def log_partition(self, chunk: int = 1 << 14) -> Tensor:
        """The exact ``log Z`` (float64 scalar) by enumerating the states of the smaller layer
        (hidden for Gaussian visible units); at most 2^26 states."""
        return exact_log_partition(self, chunk)

    def log_prob(self, v: Tensor, log_z) -> Tensor:
        """``log p(v) = -F(v) - log Z`` in nats (batch,) given ``log Z`` (exact or from AIS): F in the
        module's dtype, the result in float64."""
        with torch.no_grad():
            return -self.free_energy(v).to(torch.float64) - torch.as_tensor(log_z, dtype=torch.float64)


def _capturing(t: Tensor) -> bool:
    """Whether a CUDA graph is being captured on t's device (a data check would synchronize)."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _check_steps(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def _accumulate(parameter: nn.Parameter, grad: Tensor) -> None:
    if parameter.grad is None:
        parameter.grad = grad.to(parameter.dtype)
    else:
        parameter.grad.add_(grad)


def pretrain_greedily(rbms: Sequence[nn.Module], data: Tensor, epochs: int = 5, batch_size: int = 64,
                      lr: float = 0.1, momentum: float = 0.5, weight_decay: float = 2e-4, k: int = 1,
                      persistent: bool = False, generator: Optional[torch.Generator] = None,
                      progress=None) -> List[float]:
    """Trains ``rbms`` (modules with ``weight``, ``visible_bias``, ``hidden_bias``,
    ``contrastive_divergence`` and a forward that gives the hidden probabilities) one after the
    other, each on the hidden probabilities of the one below, by SGD; see :meth:`DBN.pretrain`."""
    _check_steps(k)
    errors = []
    inputs = data
    for layer, rbm in enumerate(rbms):
        optimizer = torch.optim.SGD(
            [{"params": [rbm.weight], "weight_decay": weight_decay},
             {"params": [rbm.visible_bias, rbm.hidden_bias], "weight_decay": 0.0}],
            lr=lr, momentum=momentum)
        error = math.nan
        for epoch in range(epochs):
            permutation_device = generator.device if generator is not None else "cpu"
            order = torch.randperm(inputs.shape[0], generator=generator, device=permutation_device)
            order = order.to(inputs.device)
            total, batches = 0.0, 0
            for start in range(0, inputs.shape[0], batch_size):
                optimizer.zero_grad(set_to_none=True)
                batch = inputs[order[start:start + batch_size]]
                total += float(rbm.contrastive_divergence(batch, k, persistent, generator))
                optimizer.step()
                batches += 1
            error = total / max(batches, 1)
            if progress is not None:
                progress(layer, epoch, error)
        errors.append(error)
        with torch.no_grad():
            inputs = torch.cat([rbm(inputs[i:i + 4096]) for i in range(0, inputs.shape[0], 4096)])
    return errors


class DBN(nn.Module):
    """A deep belief network (Hinton et al. 2006): RBMs stacked and pre-trained greedily, layer by
    layer, each on the hidden probabilities of the one below; then unrolled into an
    ``nn.Sequential`` of ``Linear`` + ``Sigmoid`` layers (plus an optional classifier) for
    fine-tuning with backprop.

    Args:
        sizes: units per layer, visible first: e.g. ``[784, 500, 500, 2000]``.
        visible: the first RBM's visible units, ``"bernoulli"`` or ``"gaussian"``; higher layers
            are Bernoulli.
        device, dtype: of the parameters.
    """

    def __init__(self, sizes: Sequence[int], visible: str = "bernoulli", device=None, dtype=None) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least two layers (visible, hidden), got {sizes}")
        self.sizes = sizes
        self.rbms = nn.ModuleList(
            RBM(sizes[i], sizes[i + 1], visible if i == 0 else "bernoulli", device=device, dtype=dtype)
            for i in range(len(sizes) - 1))

    def forward(self, v: Tensor) -> Tensor:
        """The top layer's probabilities after a deterministic up pass (batch, sizes[-1])."""
        for rbm in self.rbms:
            v = rbm(v)
        return v

    def pretrain(self, data: Tensor, epochs: int = 5, batch_size: int = 64, lr: float = 0.1,
                 momentum: float = 0.5, weight_decay: float = 2e-4, k: int = 1, persistent: bool = False,
                 generator: Optional[torch.Generator] = None, progress=None) -> List[float]:
        """Greedy layer-wise pre-training with CD-k (or PCD-k) and SGD with momentum; weight decay
        on the weights only. ``data`` (N, sizes[0]); returns each layer's reconstruction error over
        its last epoch. ``progress(layer, epoch, error)`` is called after every epoch if given."""
        if data.dim() != 2 or data.shape[1] != self.sizes[0]:
            raise ValueError(f"data must have shape (N, {self.sizes[0]}), got {tuple(data.shape)}")
        return pretrain_greedily(self.rbms, data, epochs, batch_size, lr, momentum, weight_decay, k, persistent,
                                 generator, progress)

    def to_sequential(self, num_classes: Optional[int] = None) -> nn.Sequential:
        """``Linear(sizes[i], sizes[i+1]) + Sigmoid`` per RBM, holding copies of its weight and hidden
        bias, then ``Linear(sizes[-1], num_classes)`` (freshly initialized) if ``num_classes``."""
        layers: List[nn.Module] = []
        for rbm in self.rbms:
            linear = nn.Linear(rbm.n_visible, rbm.n_hidden, device=rbm.weight.device, dtype=rbm.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(rbm.weight)
                linear.bias.copy_(rbm.hidden_bias)
            layers += [linear, nn.Sigmoid()]
        if num_classes is not None:
            last = self.rbms[-1].weight
            layers.append(nn.Linear(self.sizes[-1], num_classes, device=last.device, dtype=last.dtype))
        return nn.Sequential(*layers)
