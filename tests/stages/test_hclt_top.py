"""The HCLT top (pc.top: hclt) through the PC stages: materialize -> latent_em -> latent_top_em
-> finetune -> evaluate on tiny digits, against the brute-force-tested engine."""

import json

import numpy as np
import pytest
import torch

import pc_fixtures as fx
from lvd import pc
from lvd.stages import evaluate, finetune, inputs, latent_em, latent_top_em, materialize_pc, train_baseline

K, M = 4, 3  # patch states, hidden states of the top's H_i
LCFG = latent_em.Config(epochs=2, batch_size=64)
TCFG = latent_top_em.Config(epochs=2, batch_size=64)


@pytest.fixture(scope="module")
def hclt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hclt_top")
    data = fx.write_digits(d / "data.h5", n_train=200, n_valid=30, n_test=40)
    x = inputs.load_split(data, "train")
    z = fx.kmeans_latents(x.reshape(-1, 8, 8, 1), 2, K)
    lat = fx.write_latents(d / "latents.h5", z, K)
    cfg = materialize_pc.Config(num_latents=2, top="hclt", top_num_latents=M, top_init_epochs=2)
    summary = materialize_pc.run(cfg, data, lat, d / "pc_init.h5")
    for s in range(2):
        latent_em.run(LCFG, data, lat, d / "pc_init.h5", s, 2, d / f"shard{s}.h5")
    top = latent_top_em.run(TCFG, data, lat, d / "pc_init.h5", [d / "shard0.h5", d / "shard1.h5"],
                            d / "pc_latent_em.h5")
    return {"dir": d, "data": data, "latents": lat, "x": x, "z": z.astype(np.int64), "init": summary,
            "top": top}


def test_materialize_builds_an_hclt_over_the_zs_fitted_to_z(hclt_dir):
    c = pc.load(hclt_dir["dir"] / "pc_init.h5")
    assert c.top_kind == "hclt" and c.num_states == K
    assert (c.top.num_latents, c.top.num_cats, c.top.num_vars) == (M, K, c.num_positions)
    assert tuple(c.top.params["leaves"].shape) == (c.num_positions, 1, K, M)
    z = torch.as_tensor(hclt_dir["z"])
    fitted = float(c.top.log_likelihood(x=z).mean())
    assert hclt_dir["init"]["top_mean_ll_z"] == pytest.approx(fitted, abs=1e-5)
    fresh = pc.random_like(c, 0).top
    assert fitted > float(fresh.log_likelihood(x=z).mean()) + 1.0        # EM on z moved it
    # an HCLT top over the same Chow-Liu tree as the tree top would use
    tree = materialize_pc.run(materialize_pc.Config(num_latents=2), hclt_dir["data"], hclt_dir["latents"],
                              hclt_dir["dir"] / "tree_init.h5")
    t = pc.load(hclt_dir["dir"] / "tree_init.h5")
    np.testing.assert_array_equal(t.top.structure.parents, c.top.structure.parents)
    assert tree["top"] == "tree" and hclt_dir["init"]["top"] == "hclt"


def test_latent_top_em_trains_the_hclt_top_on_soft_evidence(hclt_dir):
    d = hclt_dir["dir"]
    init, c = pc.load(d / "pc_init.h5"), pc.load(d / "pc_latent_em.h5")
    assert not torch.equal(c.top.params["leaves"], init.top.params["leaves"])
    rec = inputs.history_of(d / "pc_latent_em.h5")[-1]
    assert rec["stage"] == "latent_top_em" and len(rec["valid_ll"]) == TCFG.epochs
    xv = inputs.load_split(hclt_dir["data"], "valid")
    assert float(c.log_likelihood(xv).double().mean()) == pytest.approx(rec["valid_ll"][-1], rel=1e-5)
    assert rec["valid_ll"][-1] > rec["valid_ll_init"]


def test_finetune_baseline_and_evaluate_with_the_hclt_top(hclt_dir, tmp_path):
    d, data = hclt_dir["dir"], hclt_dir["data"]
    finetune.run(finetune.Config(epochs=1, full_batch_epochs=1, batch_size=64), data, d / "pc_latent_em.h5",
                 tmp_path / "pc_final.h5")
    train_baseline.run(train_baseline.Config(epochs=1, full_batch_epochs=0), data, d / "pc_init.h5",
                       tmp_path / "baseline.h5")
    base = pc.load(tmp_path / "baseline.h5")
    assert base.top_kind == "hclt" and base.num_params == pc.load(d / "pc_init.h5").num_params
    out = tmp_path / f"k{K}" / "metrics.json"
    evaluate.main(["--config", json.dumps({"num_samples": 4, "num_inpaint": 2}), "--data", str(data),
                   "--pc", str(tmp_path / "pc_final.h5"), "--baseline", str(tmp_path / "baseline.h5"),
                   "--random-latents", "--hclt", "--teacher-metrics",
                   str(fx.write_teacher_metrics(tmp_path / "t.json", teacher_test_bpd=1.5)),
                   "--out", str(out), "--figdir", str(tmp_path / "fig"), "--device", "cpu", "--threads", "1"])
    m = json.loads(out.read_text())
    assert 0 < m["test_bpd"] < 5 and np.isfinite(m["inpaint_bpd"])
    assert (tmp_path / "fig" / "samples.png").stat().st_size > 1000


def test_hclt_top_with_k_hidden_states_starts_from_the_counted_tree(hclt_dir, tmp_path):
    """top_num_latents 0 (= K): root and edges equal the tree top's counts, leaves near the
    identity, so its likelihood of z starts next to the tree top's (a random start is far below)."""
    data, lat = hclt_dir["data"], hclt_dir["latents"]
    tree = materialize_pc.run(materialize_pc.Config(num_latents=2), data, lat, tmp_path / "tree.h5")
    start = materialize_pc.run(materialize_pc.Config(num_latents=2, top="hclt", top_init_epochs=0), data, lat,
                               tmp_path / "h0.h5")
    t, h = pc.load(tmp_path / "tree.h5"), pc.load(tmp_path / "h0.h5")
    assert h.top.num_latents == K
    m = h.num_positions
    # zero EM epochs leave one full-batch step: the smoothing's loss is small and partly recovered
    assert start["top_mean_ll_z"] > tree["top_mean_ll_z"] - 0.02 * m
    leaves = h.top.params["leaves"][:, 0]                                 # [m, K, K]
    assert bool((leaves.diagonal(dim1=1, dim2=2) > 0.5).all())
    assert hclt_dir["init"]["top_mean_ll_z"] < start["top_mean_ll_z"]     # M = 3 started random
    np.testing.assert_array_equal(t.top.structure.parents, h.top.structure.parents)


def test_the_top_fits_settings_reach_its_em_and_default_for_older_files(hclt_dir, tmp_path):
    """pc.top_init_batch_size / top_init_step_size / top_init_step_size_end: today's values by
    default (the fit of a pc_init.h5 written before they were settings), another step size
    another fit; the re-initialization (topinit.init_top) reads them from pc_init.h5."""
    import h5py

    from lvd.stages import topinit

    data, lat, z = hclt_dir["data"], hclt_dir["latents"], hclt_dir["z"]
    cfg = materialize_pc.Config(num_latents=2, top="hclt", top_num_latents=M, top_init_epochs=2)
    assert topinit.top_init_schedule(materialize_pc.asdict(cfg)) == \
        {"epochs": 2, "batch_size": 512, "step_size": 0.1, "step_size_end": 0.01}
    path = hclt_dir["dir"] / "pc_init.h5"
    older = tmp_path / "older.h5"
    older.write_bytes(path.read_bytes())
    with h5py.File(older, "a") as f:    # a config without the three keys
        stored = json.loads(f.attrs["config"])
        f.attrs["config"] = json.dumps({k: v for k, v in stored.items() if k not in topinit.TOP_INIT_DEFAULTS})
    now, before = pc.load(path), pc.load(older)
    topinit.init_top(now, z, str(path))
    topinit.init_top(before, z, str(older))
    for name, t in now.top.params.items():
        assert torch.equal(t, before.top.params[name]), name
    other = materialize_pc.run(materialize_pc.Config(**{**materialize_pc.asdict(cfg), "top_init_step_size": 0.5,
                                                        "top_init_batch_size": 64}),
                               data, lat, tmp_path / "other.h5")
    assert other["top_mean_ll_z"] != hclt_dir["init"]["top_mean_ll_z"]
    for bad, match in (({"top_init_batch_size": 0}, "pc.top_init_batch_size is 0"),
                       ({"top_init_step_size": 0}, r"pc.top_init_step_size is 0, expected a number in \(0, 1\]"),
                       ({"top_init_step_size_end": 1.5}, "pc.top_init_step_size_end is 1.5")):
        with pytest.raises(ValueError, match=match):
            materialize_pc.Config(**bad)
