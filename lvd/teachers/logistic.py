"""Discretized logistic mixture likelihood over ``num_cats`` ordered levels.

A pixel value v in {0, ..., C-1} is placed at the centre x(v) = 2 v / (C - 1) - 1 of a
bin of half-width 1 / (C - 1) on [-1, 1]. One logistic component (mean mu, scale s)
gives the bin the mass  sigmoid((x + h - mu) / s) - sigmoid((x - h - mu) / s),  where the
lowest bin extends to -inf and the highest to +inf, so the C masses sum to exactly 1.
A mixture of ``num_mix`` components weights them by softmax(logits).

Parameter layout (last axis, length ``3 * num_mix``): [logits | means | log_scales].
Everything is computed in log space without subtracting two nearly equal sigmoids, so it
stays finite (and has finite gradients) for extreme means and scales.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIN_LOG_SCALE = -7.0


def num_params(num_mix: int) -> int:
    """Length of the parameter vector of one variable."""
    return 3 * num_mix


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a < 0, accurate on both sides of -ln 2."""
    near = a > -math.log(2.0)
    # feed each branch only inputs it handles, so the unused branch has finite gradients too
    a_near = torch.where(near, a, torch.full_like(a, -1.0))
    a_far = torch.where(near, torch.full_like(a, -1.0), a)
    return torch.where(near, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))


def _log_sigmoid_diff(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(hi) - sigmoid(lo)) for hi > lo, using the tail that keeps precision.

    Right of the logistic's centre (hi + lo > 0) both sigmoids are near 1, so use the
    mirrored form sigmoid(-lo) - sigmoid(-hi), whose terms are small.
    """
    mirror = (hi + lo) > 0
    a = torch.where(mirror, -lo, hi)  # the larger argument
    b = torch.where(mirror, -hi, lo)
    la, lb = F.logsigmoid(a), F.logsigmoid(b)
    return la + _log1mexp(torch.clamp(lb - la, max=-1e-12))


def log_prob(values: torch.Tensor, params: torch.Tensor, num_cats: int) -> torch.Tensor:
    """Log-probability (nats) of integer ``values`` [...] under ``params`` [..., 3 * num_mix]."""
    if num_cats < 2:
        raise ValueError(f"num_cats must be at least 2, got {num_cats}")
    if params.shape[:-1] != values.shape or params.shape[-1] % 3:
        raise ValueError(f"params shape {tuple(params.shape)} does not fit values shape {tuple(values.shape)} "
                         f"(expected values.shape + (3 * num_mix,))")
    logits, means, log_scales = params.chunk(3, dim=-1)  # each [..., M]
    inv_s = torch.exp(-torch.clamp(log_scales, min=MIN_LOG_SCALE))
    half = 1.0 / (num_cats - 1)
    x = (values.to(params.dtype) * (2.0 * half) - 1.0).unsqueeze(-1)  # [..., 1] bin centres in [-1, 1]
    hi = (x + half - means) * inv_s
    lo = (x - half - means) * inv_s
    v = values.unsqueeze(-1)
    comp = torch.where(v == 0, F.logsigmoid(hi),                     # bin (-inf, x + h]
                       torch.where(v == num_cats - 1, F.logsigmoid(-lo),  # bin [x - h, inf)
                                   _log_sigmoid_diff(hi, lo)))
    return torch.logsumexp(F.log_softmax(logits, dim=-1) + comp, dim=-1)


def mean(params: torch.Tensor, num_cats: int) -> torch.Tensor:
    """Expected level (float, in [0, C-1]) under the mixture: sum_v v p(v), by enumeration."""
    levels = torch.arange(num_cats, device=params.device)
    shape = params.shape[:-1]
    lp = log_prob(levels.expand(*shape, num_cats).movedim(-1, 0),
                  params.unsqueeze(0).expand(num_cats, *params.shape), num_cats)  # [C, ...]
    return (lp.exp() * levels.view(-1, *[1] * len(shape))).sum(0)
