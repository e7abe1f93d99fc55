"""Teacher models: factorization, locality, causality, and the reported bounds by hand."""

import itertools
import math

import pytest
import torch

from lvd.pc.patches import patch_index
from lvd.teachers.lm import TokenLM
from lvd.teachers.mae import MAE, neighbourhoods
from lvd.teachers.vqvae import VQVAE, Quantizer


def _images(n, seed=0, H=8, W=8, C=17):
    return torch.randint(0, C, (n, H, W, 1), generator=torch.Generator().manual_seed(seed))


def _vqvae(**kw):
    torch.manual_seed(0)
    args = dict(height=8, width=8, channels=1, num_cats=17, patch_size=2, dim=16, latent_dim=8,
                codebook_size=8, num_mix=2)
    args.update(kw)
    return VQVAE(**args).eval()


def test_vqvae_patches_follow_patch_index():
    m = _vqvae()
    x = _images(2)
    idx = torch.from_numpy(patch_index(8, 8, 1, 2))
    assert torch.equal(m.patches(x)[1, 5], x[1].reshape(-1)[idx[5]])


def test_vqvae_decoder_is_independent_per_patch():
    m = _vqvae()
    x = _images(3)
    with torch.no_grad():
        zq = m.quantize(m.encode(x))[0]  # [3, 16, 8]
        before = m.patch_log_prob(x, zq)  # [3, 16]
        z2 = zq.clone()
        z2[:, 6] += torch.randn(3, 8)  # change patch 6's latent only
        after = m.patch_log_prob(x, z2)
    others = [i for i in range(16) if i != 6]
    torch.testing.assert_close(after[:, others], before[:, others], rtol=0, atol=0)
    assert (after[:, 6] - before[:, 6]).abs().min() > 1e-4


def test_vqvae_uniform_prior_bound_by_hand():
    m = _vqvae()
    x = _images(10)
    with torch.no_grad():
        out = m.evaluate([x[:4], x[4:]])
        zq, codes, _ = m.quantize(m.encode(x))
        nll_bits = -m.patch_log_prob(x, zq).sum().item() / math.log(2)
    recon = nll_bits / (10 * 64)
    assert math.isclose(out["recon_bpd"], recon, rel_tol=1e-5)
    assert math.isclose(out["bpd_uniform_prior"], recon + 16 * math.log2(8) / 64, rel_tol=1e-5)
    assert out["bpd"] == out["bpd_uniform_prior"]  # no training batches given: nothing fitted


def test_vqvae_fitted_prior_bound_by_hand():
    m = _vqvae(num_codebooks=2)  # two codebooks of 8 codes, 4 dims each
    train, test = _images(12, seed=1), _images(5, seed=2)
    with torch.no_grad():
        out = m.evaluate([test], fit_batches=[train[:7], train[7:]])
        ctrain = m.quantize(m.encode(train))[1]  # [12, 16, 2]
        ctest = m.quantize(m.encode(test))[1]
    bits = 0.0
    for n, i, g in itertools.product(range(5), range(16), range(2)):
        count = (ctrain[:, i, g] == ctest[n, i, g]).sum().item()
        bits -= math.log2((count + 1) / (12 + 8))  # add-one smoothing over 8 codes
    assert math.isclose(out["bpd_fitted_prior"], out["recon_bpd"] + bits / (5 * 64), rel_tol=1e-6)
    assert out["bpd"] == out["bpd_fitted_prior"]


def test_quantizer_picks_nearest_code_and_passes_gradients():
    q = Quantizer(latent_dim=6, codebook_size=5, groups=2).eval()
    z = torch.randn(20, 6, requires_grad=True)
    zq, codes, _ = q(z)
    for g in range(2):
        dist = ((z.detach()[:, None, 3 * g:3 * g + 3] - q.codebook[g][None]) ** 2).sum(-1)  # [20, 5]
        assert torch.equal(codes[:, g], dist.argmin(1))
        torch.testing.assert_close(zq[:, 3 * g:3 * g + 3], q.codebook[g][codes[:, g]])
    zq.sum().backward()  # straight-through: d zq / d z = identity
    torch.testing.assert_close(z.grad, torch.ones(20, 6))


def test_mae_neighbourhood_table():
    idx, ok = neighbourhoods(3, 4)
    assert idx[5, 0] == 5 and ok[5].all()  # interior cell (1, 1): centre first, all 9 on the grid
    assert sorted(idx[5].tolist()) == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert ok[0].sum() == 4 and sorted(idx[0][ok[0]].tolist()) == [0, 1, 4, 5]  # corner


def test_mae_embedding_sees_only_the_3x3_neighbourhood():
    torch.manual_seed(0)
    m = MAE(8, 8, 1, 17, 2, dim=16, layers=2, heads=2).eval()  # 4 x 4 grid of patches
    x = _images(2)
    idx = torch.from_numpy(patch_index(8, 8, 1, 2))
    far, near = x.clone().reshape(2, -1), x.clone().reshape(2, -1)
    far[:, idx[15]] = (far[:, idx[15]] + 5) % 17  # patch (3, 3): not a neighbour of patch 0 = (0, 0)
    near[:, idx[5]] = (near[:, idx[5]] + 5) % 17  # patch (1, 1): a neighbour of patch 0
    with torch.no_grad():
        e, e_far, e_near = m.embed(x), m.embed(far.view_as(x)), m.embed(near.view_as(x))
    torch.testing.assert_close(e_far[:, 0], e[:, 0], rtol=0, atol=1e-6)
    assert (e_near[:, 0] - e[:, 0]).abs().max() > 1e-3
    assert (e_far[:, 15] - e[:, 15]).abs().max() > 1e-3


def test_mae_gathered_embedding_equals_full_grid_with_others_hidden():
    torch.manual_seed(1)
    m = MAE(8, 8, 1, 17, 2, dim=16, layers=2, heads=2).eval()
    x = _images(3)
    nbr, ok = neighbourhoods(4, 4)
    with torch.no_grad():
        e = m.embed(x)
        for i in (0, 6, 13):
            visible = torch.zeros(3, 16, dtype=torch.bool)
            visible[:, nbr[i][ok[i]]] = True
            torch.testing.assert_close(e[:, i], m.encode(x, visible)[:, i], rtol=1e-4, atol=1e-5)


def _lm(causal=True, V=5, T=3, cutoffs=()):
    torch.manual_seed(0)
    return TokenLM(V, T, dim=16, layers=2, heads=2, causal=causal, cutoffs=cutoffs).eval()


def test_causal_lm_state_at_t_ignores_tokens_from_t_on():
    m = _lm(V=11, T=6)
    x = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        e = m.embed(x)
        for t in range(6):
            y = x.clone()
            y[:, t:] = (y[:, t:] + 3) % 11
            e2 = m.embed(y)
            torch.testing.assert_close(e2[:, :t + 1], e[:, :t + 1], rtol=0, atol=1e-6)  # states 0..t
            if t < 5:
                assert (e2[:, t + 1] - e[:, t + 1]).abs().max() > 1e-4  # state t+1 has read x_t


@pytest.mark.parametrize("adaptive", [False, True])
def test_causal_lm_window_probabilities_sum_to_one_and_match_perplexity(adaptive):
    m = _lm(V=6, T=3, cutoffs=(2, 4) if adaptive else ())
    windows = torch.tensor(list(itertools.product(range(6), repeat=3)))  # all 216 windows
    if adaptive:  # a frequency order that is not the identity: 5 most frequent, then 3, ...
        m.prepare(torch.tensor([5] * 9 + [3] * 7 + [0] * 5 + [4] * 3 + [1] * 2 + [2]))
        assert m.rank.tolist() == [2, 4, 5, 1, 3, 0]
    with torch.no_grad():
        logp = torch.log_softmax(m.log_probs(m.embed(windows)), -1)  # [64, 3, 4]
        lp_windows = logp.gather(2, windows[..., None]).squeeze(-1).sum(1)
        assert math.isclose(lp_windows.exp().sum().item(), 1.0, rel_tol=1e-5)
        out = m.evaluate([windows[:10], windows[10:20]])
    assert math.isclose(out["perplexity"], math.exp(-lp_windows[:20].sum().item() / 60), rel_tol=1e-5)
    if adaptive:
        assert m.adaptive.head.out_features == 2 + 2  # the head: the 2 most frequent types + 2 tail clusters


def test_bidirectional_lm_state_sees_later_tokens():
    m = _lm(causal=False, V=11, T=6)
    x = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % 11
    with torch.no_grad():
        assert (m.embed(y)[:, 0] - m.embed(x)[:, 0]).abs().max() > 1e-4
        out = m.evaluate([x])
    assert "masked_perplexity" in out and "perplexity" not in out
