"""The controls: random latents (same cluster sizes, no information), the size-matched plain
HCLT, and evaluate's seeds, spreads and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

import pc_fixtures as fx
from lvd import io, metrics, pc
from lvd.stages import evaluate, inputs, latent_em, latent_top_em, materialize_pc, random_latents, train_hclt

K = 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("controls")
    data = fx.write_digits(d / "data.h5", n_train=150, n_valid=30, n_test=30)
    x = inputs.load_split(data, "train").reshape(-1, 8, 8, 1)
    lat = fx.write_latents(d / "latents.h5", fx.kmeans_latents(x, 2, K), K)
    return {"dir": d, "data": data, "latents": lat}


def test_random_latents_keep_every_positions_cluster_sizes_and_lose_the_assignment(files, tmp_path):
    out = tmp_path / "random.h5"
    s = random_latents.run(str(files["latents"]), str(out), seed=3)
    with io.open_artifact(files["latents"], "lvd.latents") as f:
        z = f["z"][()]
    with io.open_artifact(out, "lvd.latents") as f:
        zr, sizes = f["z"][()], f["cluster_sizes"][()]
        assert f.attrs["control"] == "random_latents" and f.attrs["mode"] == "position"
    assert zr.shape == z.shape and s["num_states"] == K
    for i in range(z.shape[1]):
        np.testing.assert_array_equal(np.bincount(zr[:, i], minlength=K), np.bincount(z[:, i], minlength=K))
        np.testing.assert_array_equal(sizes[i], np.bincount(z[:, i], minlength=K))
    assert (zr != z).mean() > 0.3                        # the images' assignments are scrambled
    np.testing.assert_array_equal(random_latents.permute_per_position(z, 3), zr)   # seeded
    assert not np.array_equal(random_latents.permute_per_position(z, 4), zr)
    # positions are permuted independently: the pairs (z_0, z_1) of an image are not kept together
    same_perm = np.all(np.argsort(zr[:, 0], kind="stable") == np.argsort(zr[:, 1], kind="stable"))
    assert not same_perm


def test_hclt_parameter_count_formula_and_matching():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 5, (60, 7))
    for k in (1, 2, 5):
        assert train_hclt.hclt_num_params(7, 5, k) == pc.hclt(data, num_latents=k, num_cats=5,
                                                               leaf_latents=True).num_params
        for lat in (True, False):
            E = train_hclt.hclt_blocks(pc.chow_liu_tree(data, 5), lat)
            c = pc.hclt(data, num_latents=k, num_cats=5, leaf_latents=lat)
            assert E == c.num_edges and train_hclt.hclt_num_params(7, 5, k, E) == c.num_params
    for target in (100, 1000, 12345):
        got = train_hclt.matched_num_latents(7, 5, target)
        gaps = [abs(train_hclt.hclt_num_params(7, 5, k) - target) for k in range(1, 200)]
        assert abs(train_hclt.hclt_num_params(7, 5, got) - target) == min(gaps)


def test_train_hclt_matches_the_lvd_circuits_size(files, tmp_path):
    init = tmp_path / "pc_init.h5"
    materialize_pc.run(materialize_pc.Config(num_latents=2), files["data"], files["latents"], init)
    cfg = train_hclt.Config(epochs=2, full_batch_epochs=1, batch_size=64)
    s = train_hclt.run(cfg, files["data"], init, tmp_path / "hclt.h5")
    h = pc.load(tmp_path / "hclt.h5")
    assert h.kind == "hclt" and h.num_vars == 64 and h.num_cats == 17
    target = pc.load(init).num_params
    assert s["target_num_params"] == target and s["num_params"] == h.num_params
    gap = abs(h.num_params - target)
    assert h.num_edges < 63                                            # the default: no leaf latents
    for k in (h.num_latents - 1, h.num_latents + 1):
        assert gap <= abs(train_hclt.hclt_num_params(64, 17, k, h.num_edges) - target)
    rec = inputs.history_of(tmp_path / "hclt.h5")[-1]
    assert rec["stage"] == "train_hclt" and len(rec["valid_ll"]) == 3 and rec["valid_ll"][-1] > rec["valid_ll"][0]
    assert pc.load_attrs(tmp_path / "hclt.h5")["seconds"] > 0


def _trained_lvd(files, d, latents, seed):
    init, shard, lat = d / f"init{seed}.h5", d / f"shard{seed}.h5", d / f"lat{seed}.h5"
    materialize_pc.run(materialize_pc.Config(num_latents=2, seed=seed), files["data"], latents, init)
    le = latent_em.Config(epochs=1, full_batch_epochs=2, seed=seed)
    latent_em.run(le, files["data"], latents, init, 0, 1, shard)
    latent_top_em.run(latent_top_em.Config(epochs=1, seed=seed), files["data"], latents, init, [shard], lat)
    return lat


def test_evaluate_reports_every_arm_with_its_spread_over_seeds(files, tmp_path):
    lvd = [_trained_lvd(files, tmp_path, files["latents"], s) for s in range(2)]
    rnd = []
    for s in range(2):
        zr = random_latents.run(str(files["latents"]), str(tmp_path / f"rl{s}.h5"), seed=s)
        assert zr["control"] == "random_latents"
        rnd.append(_trained_lvd(files, tmp_path / "..", tmp_path / f"rl{s}.h5", s + 10))
    hclt = []
    for s in range(2):
        train_hclt.run(train_hclt.Config(epochs=1, full_batch_epochs=0, seed=s), files["data"], lvd[0],
                       tmp_path / f"h{s}.h5")
        hclt.append(tmp_path / f"h{s}.h5")
    teacher = fx.write_teacher_metrics(tmp_path / "t.json", teacher_test_bpd=3.0)
    m = evaluate.run(evaluate.Config(num_samples=0, num_inpaint=0), files["data"],
                     {"lvd": lvd, "random_latents": rnd, "hclt": hclt}, teacher, None,
                     tmp_path / "k4" / "metrics.json", tmp_path / "fig")
    xt = inputs.load_split(files["data"], "test")
    per = [-pc.load(p).log_likelihood(xt).double().mean().item() / (math.log(2) * 64) for p in lvd]
    assert m["num_seeds"] == 2 and m["test_bpd_seeds"] == pytest.approx(per, rel=1e-6)
    assert m["test_bpd"] == pytest.approx(np.mean(per)) and m["test_bpd_std"] == pytest.approx(np.std(per, ddof=1))
    for arm in ("random_latents", "hclt"):
        c = m["controls"][arm]
        assert c["margin"] == pytest.approx(m[f"{arm}_test_bpd"] - m["test_bpd"])
        assert c["spread"] == pytest.approx(max(m["test_bpd_std"], m[f"{arm}_test_bpd_std"]))
        assert c["beats"] == (c["margin"] > c["spread"]) and c["beats_3std"] == (c["margin"] > 3 * c["spread"])
    assert "baseline" not in m["controls"] and m["hclt_num_params"] > 0 and m["hclt_seconds"] > 0
    assert "inpaint_bpd" in m and "baseline_inpaint_bpd" not in m   # no baseline: LVD is not relabelled
    assert "LVD vs random_latents" in m["verdict"] and "[2 seed(s)]" in m["verdict"]
    with pytest.raises(ValueError, match="one circuit per seed"):
        evaluate.run(evaluate.Config(num_samples=0, num_inpaint=0), files["data"],
                     {"lvd": lvd, "hclt": hclt[:1]}, teacher, None, tmp_path / "m.json", tmp_path / "fig")


def test_evaluate_refuses_an_impossible_bpd(files, tmp_path, monkeypatch):
    lvd = _trained_lvd(files, tmp_path, files["latents"], 0)
    teacher = fx.write_teacher_metrics(tmp_path / "t.json", teacher_test_bpd=3.0)
    monkeypatch.setattr(pc, "mean_log_likelihood", lambda *a, **k: 5.0)    # log p(x) > 0: bpd < 0
    with pytest.raises(io.ArtifactError, match=r"lat0.h5: test bpd .* is impossible"):
        evaluate.run(evaluate.Config(num_samples=0, num_inpaint=0), files["data"], {"lvd": [lvd]}, teacher,
                     None, tmp_path / "m.json", tmp_path / "fig")
    assert not (tmp_path / "m.json").exists()
    assert metrics.check_metric(2.5, "image", "x") == 2.5
    for bad, kind in ((float("nan"), "image"), (-0.1, "image"), (0.5, "text")):
        with pytest.raises(io.ArtifactError):
            metrics.check_metric(bad, kind, "x")


def test_materialize_root_states_follows_the_number_of_states(files, tmp_path):
    materialize_pc.run(materialize_pc.Config(num_latents=2, root_states=True), files["data"], files["latents"],
                       tmp_path / "root.h5")
    c = pc.load(tmp_path / "root.h5")
    assert (c.patch.num_latents, c.patch.num_heads, c.patch.num_groups) == (K, K, 16)
    np.testing.assert_array_equal(c.patch.params["root"].numpy(), np.broadcast_to(np.eye(K), (16, K, K)))
    assert c.patch.meta["root_states"] is True
