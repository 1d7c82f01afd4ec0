"""The log-likelihood of an RBM: its log partition function, exactly for small models and by
annealed importance sampling (Salakhutdinov & Murray 2008) for real ones.

Both take any object with the attributes of :class:`fastnets.nn.RBM` (``weight`` (H, V),
``visible_bias``, ``hidden_bias``, ``visible``) and compute in float64.
"""
import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor
from torch.nn.functional import softplus

from fastnets.functional import rbm_sample, rbm_sample_units

_MAX_ENUMERATED_UNITS = 26


def _binary_states(first: int, count: int, units: int, device) -> Tensor:
    """Rows first .. first+count-1 of the 2^units binary states (bit j of the row index), float64."""
    index = torch.arange(first, first + count, device=device, dtype=torch.int64)
    bits = torch.arange(units, device=device, dtype=torch.int64)
    return ((index[:, None] >> bits) & 1).to(torch.float64)


def exact_log_partition(rbm, chunk: int = 1 << 14) -> Tensor:
    """``log Z`` (float64 scalar) by summing over every state of one layer, the other summed
    analytically: over the hidden layer when it is the smaller one or the visible units are
    Gaussian (their integral is Gaussian), otherwise over the visible layer."""
    weight = rbm.weight.detach().to(torch.float64)
    b = rbm.visible_bias.detach().to(torch.float64)
    c = rbm.hidden_bias.detach().to(torch.float64)
    n_hidden, n_visible = weight.shape
    over_hidden = rbm.visible == "gaussian" or n_hidden <= n_visible
    units = n_hidden if over_hidden else n_visible
    if units > _MAX_ENUMERATED_UNITS:
        layer = "hidden" if over_hidden else "visible"
        raise ValueError(f"the exact log partition function enumerates 2^{units} {layer} states; at most "
                         f"2^{_MAX_ENUMERATED_UNITS} are allowed: estimate it with fastnets.rbm.ais instead")
    terms = []
    for first in range(0, 1 << units, chunk):
        states = _binary_states(first, min(chunk, (1 << units) - first), units, weight.device)
        if not over_hidden:  # -F(v) for every v
            terms.append(states @ b + softplus(states @ weight.t() + c).sum(1))
        elif rbm.visible == "bernoulli":
            terms.append(states @ c + softplus(states @ weight + b).sum(1))
        else:
            mean = states @ weight + b
            terms.append(states @ c + 0.5 * (mean**2).sum(1))
    log_z = torch.logsumexp(torch.cat(terms), 0)
    if rbm.visible == "gaussian":
        log_z = log_z - 0.5 * (b**2).sum() + 0.5 * n_visible * math.log(2 * math.pi)
    return log_z


class AISEstimate(NamedTuple):
    """``log_z``: the estimate of log Z; ``log_z_low``, ``log_z_high``: log of (mean importance
    weight -+ 3 standard errors), the interval Salakhutdinov & Murray report (``-inf`` low when the
    weights spread too wide); ``log_weights``: each run's log importance weight."""

    log_z: float
    log_z_low: float
    log_z_high: float
    log_weights: Tensor


def ais_betas(num_betas: int = 14500) -> Tensor:
    """Salakhutdinov & Murray's schedule of inverse temperatures from 0 to 1, scaled to
    ``num_betas`` values: steps of 1/1000 up to 0.5, 1/10000 up to 0.9 and 1/100000 to 1 in
    their 14,500; here the same three stretches get 500/14500, 4000/14500 and 10000/14500 of the values."""
    if num_betas < 4:
        raise ValueError(f"num_betas must be at least 4, got {num_betas}")
    first = max(1, round(num_betas * 500 / 14500))
    second = max(1, round(num_betas * 4000 / 14500))
    third = num_betas - first - second  # >= 2: the last stretch ends at 1
    return torch.cat([torch.linspace(0.0, 0.5, first + 1, dtype=torch.float64)[:-1],
                      torch.linspace(0.5, 0.9, second + 1, dtype=torch.float64)[:-1],
                      torch.linspace(0.9, 1.0, third, dtype=torch.float64)])


def base_visible_bias(data: Tensor, visible: str = "bernoulli", smoothing: float = 0.05) -> Tensor:
    """The base model's visible biases that match the data's marginals: the log-odds of each pixel's
    (smoothed) mean for Bernoulli units, the mean for Gaussian ones."""
    rows = data.detach().to(torch.float64).reshape(-1, data.shape[-1])
    mean = rows.mean(0)
    if visible == "gaussian":
        return mean
    mean = (mean * rows.shape[0] + smoothing) / (rows.shape[0] + 2 * smoothing)
    return torch.log(mean) - torch.log1p(-mean)


def ais(rbm, num_runs: int = 100, betas: Optional[Sequence[float]] = None, num_betas: int = 14500,
        base_bias: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> AISEstimate:
    """Annealed importance sampling estimate of ``log Z`` (Salakhutdinov & Murray 2008).

    The base model has visible biases ``base_bias`` (default: zeros; :func:`base_visible_bias`
    of the training data gives a better start) and no weights, so its log Z is known. Between
    it and the RBM, inverse temperatures ``beta`` define intermediate RBMs with weights
    ``beta W``, hidden biases ``beta c`` and visible biases ``(1 - beta) base_bias + beta b``;
    ``num_runs`` independent chains take one Gibbs transition at each (sampled with
    ``fastnets.functional.rbm_sample`` in float64: two GEMMs per temperature) and add up their log
    importance weights.

    Args:
        rbm: an RBM (``fastnets.nn.RBM`` or anything with its attributes).
        num_runs: independent AIS runs (one batch).
        betas: increasing inverse temperatures from 0 to 1; default :func:`ais_betas` ``(num_betas)``.
        base_bias: (V,) visible biases of the base model.
        generator: for the samples.
    """
    weight = rbm.weight.detach().to(torch.float64)
    b = rbm.visible_bias.detach().to(torch.float64)
    c = rbm.hidden_bias.detach().to(torch.float64)
    device = weight.device
    n_hidden, n_visible = weight.shape
    gaussian = rbm.visible == "gaussian"
    base = torch.zeros(n_visible, dtype=torch.float64, device=device) if base_bias is None else \
        base_bias.detach().to(device=device, dtype=torch.float64)
    if base.shape != (n_visible,):
        raise ValueError(f"base_bias must have shape ({n_visible},), got {tuple(base.shape)}")
    betas = ais_betas(num_betas) if betas is None else torch.as_tensor(betas, dtype=torch.float64)
    if betas.dim() != 1 or betas.numel() < 2 or betas[0] != 0 or betas[-1] != 1 or bool((betas[1:] < betas[:-1]).any()):
        raise ValueError("betas must increase from 0 to 1")
    if num_runs < 1:
        raise ValueError(f"num_runs must be positive, got {num_runs}")
    unit = rbm.visible

    # log p*_beta(v) - log p*_beta'(v) = sum_j [softplus(beta a_j) - softplus(beta' a_j)]
    #                                   + (beta - beta') (v.(b - base) + constant),
    # a = v W^T + c; constant = (|base|^2 - |b|^2) / 2 for Gaussian visible units, else 0.
    towards_b = b - base
    constant = 0.5 * float((base**2).sum() - (b**2).sum()) if gaussian else 0.0
    zeros = torch.zeros(num_runs, n_hidden, dtype=torch.float64, device=device)
    v = rbm_sample(zeros, weight.t(), base, unit, True, generator)[1]  # exact samples of the base model
    log_w = torch.zeros(num_runs, dtype=torch.float64, device=device)
    previous = 0.0
    for beta in betas[1:].tolist():
        total = torch.addmm(c, v, weight.t())
        log_w += (softplus(beta * total) - softplus(previous * total)).sum(1)
        log_w += (beta - previous) * (v @ towards_b + constant)
        if beta == 1.0:
            break
        # one Gibbs transition that leaves p_beta invariant, its hidden units from the GEMM above
        h = rbm_sample_units(beta * total, "bernoulli", True, generator)[1]
        v = rbm_sample(beta * h, weight.t(), (1 - beta) * base + beta * b, unit, True, generator)[1]
        previous = beta
    if gaussian:
        log_z_base = 0.5 * n_visible * math.log(2 * math.pi)
    else:
        log_z_base = float(softplus(base).sum())
    log_z_base += n_hidden * math.log(2.0)  # the base model's hidden units are free
    log_mean = torch.logsumexp(log_w, 0) - math.log(num_runs)
    relative = torch.exp(log_w - log_mean)  # weights over their mean
    error = 3 * float(relative.std()) / math.sqrt(num_runs) if num_runs > 1 else math.inf
    log_z = float(log_mean) + log_z_base
    low = log_z + math.log(1 - error) if error < 1 else -math.inf
    return AISEstimate(log_z, low, log_z + math.log1p(error), log_w)


__all__ = ["exact_log_partition", "ais", "ais_betas", "base_visible_bias", "AISEstimate"]
