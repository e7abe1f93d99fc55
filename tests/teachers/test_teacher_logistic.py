"""Discretized logistic mixture: brute-force normalization and a hand computation."""

import math

import pytest
import torch

from lvd.teachers import logistic


def _random_params(n, num_mix, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_mix, generator=g, dtype=torch.float64)
    means = scale * torch.randn(n, num_mix, generator=g, dtype=torch.float64)
    log_scales = scale * torch.randn(n, num_mix, generator=g, dtype=torch.float64) - 2
    return torch.cat([logits, means, log_scales], -1)


@pytest.mark.parametrize("num_cats", [2, 3, 17, 256])
@pytest.mark.parametrize("scale", [0.5, 4.0])  # 4.0: means far outside [-1, 1], scales from tiny to huge
def test_sums_to_one_over_all_levels(num_cats, scale):
    params = _random_params(7, 3, scale, seed=num_cats)  # [7, 9]
    values = torch.arange(num_cats).unsqueeze(1).expand(num_cats, 7)  # every level for every variable
    lp = logistic.log_prob(values, params.expand(num_cats, 7, 9), num_cats)  # [C, 7]
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp.exp().sum(0), torch.ones(7, dtype=torch.float64), atol=1e-9, rtol=0)


def test_float32_sums_to_one_and_finite_gradients():
    params = (_random_params(50, 4, 6.0, seed=1) * 3).float().requires_grad_(True)
    values = torch.arange(256).unsqueeze(1).expand(256, 50)
    lp = logistic.log_prob(values, params.expand(256, 50, 12), 256)
    torch.testing.assert_close(lp.exp().sum(0), torch.ones(50), atol=1e-4, rtol=0)
    lp.sum().backward()
    assert torch.isfinite(params.grad).all()


def test_matches_hand_computation():
    # one component, mean 0.1, scale 0.25, C = 5 levels at -1, -0.5, 0, 0.5, 1 (half-width 0.25)
    def sig(t):
        return 1 / (1 + math.exp(-t))

    mu, s = 0.1, 0.25
    edges = [-0.75, -0.25, 0.25, 0.75]
    cdf = [0.0] + [sig((e - mu) / s) for e in edges] + [1.0]
    expect = [math.log(cdf[v + 1] - cdf[v]) for v in range(5)]
    params = torch.tensor([[0.0, mu, math.log(s)]], dtype=torch.float64).expand(5, 3)
    got = logistic.log_prob(torch.arange(5), params, 5)
    torch.testing.assert_close(got, torch.tensor(expect, dtype=torch.float64))
    # a two-component mixture is the weighted sum of the components' masses
    p2 = torch.tensor([[0.0, math.log(3.0), mu, -0.6, math.log(s), math.log(0.5)]], dtype=torch.float64)
    other = logistic.log_prob(torch.arange(5), torch.tensor([[0.0, -0.6, math.log(0.5)]],
                                                              dtype=torch.float64).expand(5, 3), 5)
    mix = logistic.log_prob(torch.arange(5), p2.expand(5, 6), 5)
    torch.testing.assert_close(mix.exp(), 0.25 * got.exp() + 0.75 * other.exp())


def test_mean_by_enumeration():
    params = torch.tensor([[0.0, 0.0, -8.0]])  # a very sharp logistic at 0 -> level (C - 1) / 2
    assert abs(logistic.mean(params, 17).item() - 8.0) < 1e-3


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="params shape"):
        logistic.log_prob(torch.zeros(3, dtype=torch.long), torch.zeros(4, 6), 17)
