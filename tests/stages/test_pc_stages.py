"""The PC stages (materialize_pc .. evaluate) on tiny fixtures, against hand computations."""

import json
import logging
import math

import h5py
import numpy as np
import pytest
import torch

import pc_fixtures as fx
from lvd import io, pc, shardio
from lvd.pc import kernels
from lvd.stages import evaluate, finetune, inputs, latent_em, latent_top_em, materialize_pc, train_baseline, train_hclt

K, KH = 4, 4  # patch states, patch-tree hidden states
LCFG = latent_em.Config(epochs=2, batch_size=64)
TCFG = latent_top_em.Config(epochs=2, batch_size=64)
FCFG = finetune.Config(epochs=2, full_batch_epochs=1, batch_size=64)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """digits (200 train) -> position-mode latents -> pc_init -> shards (S=2 and S=1) -> pc_latent_em."""
    d = tmp_path_factory.mktemp("images")
    data = fx.write_digits(d / "data.h5", n_train=200, n_valid=30, n_test=40)
    x = inputs.load_split(data, "train")
    z = fx.kmeans_latents(x.reshape(-1, 8, 8, 1), 2, K)
    lat = fx.write_latents(d / "latents.h5", z, K)
    materialize_pc.run(materialize_pc.Config(num_latents=KH), data, lat, d / "pc_init.h5")
    # the reference path: the measured choice of a fast path is per shape, and a shard's groups
    # are another shape than the whole's, so under "auto" they may differ in the last bits
    with kernels.forced("torch"):
        for s in range(2):
            latent_em.run(LCFG, data, lat, d / "pc_init.h5", s, 2, d / f"shard{s}.h5")
        latent_em.run(LCFG, data, lat, d / "pc_init.h5", 0, 1, d / "whole.h5")
    latent_top_em.run(TCFG, data, lat, d / "pc_init.h5", [d / "shard1.h5", d / "shard0.h5"], d / "pc_latent_em.h5")
    return {"dir": d, "data": data, "latents": lat, "x": x, "z": z.astype(np.int64)}


def test_materialize_top_counts_equal_hand_counts(run_dir):
    c = pc.load(run_dir["dir"] / "pc_init.h5")
    z, a = run_dir["z"], materialize_pc.Config().pseudocount
    assert isinstance(c, pc.LVDCircuit) and c.mode == "position"
    assert (c.patch.num_groups, c.patch.num_heads, c.patch.num_latents, c.num_states) == (16 * K, 1, KH, K)
    st = c.top.structure
    root = int(st.order[0])
    want_root = fx.normalize_counts(np.bincount(z[:, root], minlength=K), 0, a)
    np.testing.assert_allclose(c.top.params["root"][0, 0].numpy(), want_root, rtol=1e-5)
    for v in np.flatnonzero(st.parents >= 0):
        cnt = np.zeros((K, K))
        np.add.at(cnt, (z[:, st.parents[v]], z[:, v]), 1)
        got = c.top.params["edges"][st.edge_index[v], 0].numpy()
        np.testing.assert_allclose(got, fx.normalize_counts(cnt, 1, a), rtol=1e-5, atol=1e-7)


def test_materialize_shared_mode_and_bad_num_groups(run_dir, tmp_path):
    z = fx.kmeans_latents(run_dir["x"].reshape(-1, 8, 8, 1), 2, K, mode="shared")
    lat = fx.write_latents(tmp_path / "latents.h5", z, K, mode="shared")
    materialize_pc.run(materialize_pc.Config(num_latents=KH, num_groups=2), run_dir["data"], lat, tmp_path / "pc.h5")
    c = pc.load(tmp_path / "pc.h5")
    assert (c.mode, c.patch.num_groups, c.patch.num_heads) == ("shared", 2, 2)
    assert pc.load_attrs(tmp_path / "pc.h5")["latents_mode"] == "shared"
    with pytest.raises(ValueError, match="num_groups=3 must divide num_states=4"):
        materialize_pc.run(materialize_pc.Config(num_groups=3), run_dir["data"], lat, tmp_path / "bad.h5")
    bad = fx.write_latents(tmp_path / "short.h5", z[:10], K)
    with pytest.raises(io.ArtifactError, match=r"short.h5: field 'z' has shape \(10, 16\), expected \(200, 16\)"):
        materialize_pc.run(materialize_pc.Config(), run_dir["data"], bad, tmp_path / "bad.h5")


@pytest.mark.parametrize("mode,H", [("position", 1), ("position", 2), ("shared", 2)])
def test_group_members_sum_to_log_p_x_given_z(run_dir, mode, H):
    """sum over groups of log p(member patch | its head) = log p(x, z) - log p_top(z), summed over
    images: every patch is a member of exactly the group serving its state."""
    x = run_dir["x"][:50]
    z = np.random.default_rng(0).integers(0, K, size=(50, 16))
    c = pc.lvd_circuit((8, 8, 1), 2, num_states=K, num_latents=3, num_cats=17, mode=mode,
                       heads_per_group=H, data=x, z=z, seed=3)
    want = float((c.log_likelihood(x, z=z) - c.top.log_likelihood(z=torch.as_tensor(z))).double().sum())
    total, members = 0.0, 0
    for g in range(c.patch.num_groups):
        patches, heads = latent_em.group_members(c, x, z, g)
        sub = c.patch.select_groups([g])
        lls = sub.group_lls(sub.log_params(), torch.as_tensor(patches))[:, 0]      # [n, H]
        total += float(lls.gather(1, torch.as_tensor(heads)[:, None]).double().sum())
        members += len(patches)
    assert members == z.size
    assert total == pytest.approx(want, rel=1e-5)


def test_sharded_latent_em_equals_unsharded(run_dir):
    d = run_dir["dir"]
    whole, init = pc.load(d / "pc_init.h5"), pc.load(d / "pc_init.h5")
    latent_top_em.gather(whole, [str(d / "whole.h5")], str(d / "pc_init.h5"), str(run_dir["latents"]))
    sharded = pc.load(d / "pc_latent_em.h5")
    for name, t in whole.patch.params.items():
        assert torch.equal(t, sharded.patch.params[name]), name
        assert not torch.equal(t, init.patch.params[name]), f"{name} was not trained"
    with io.open_artifact(d / "shard1.h5", "lvd.pc_shard") as f:
        assert f["groups"][()].tolist() == list(range(1, 16 * K, 2))
        hist = f["history"][()]
        n = f["num_examples"][()]
    assert hist.shape == (8 * K, LCFG.epochs)
    trained = n > 0
    assert np.all(hist[trained, -1] > hist[trained, 0])  # EM raised every trained group's ll


def test_gather_rejects_missing_duplicate_and_foreign_shards(run_dir, tmp_path):
    d, data, lat = run_dir["dir"], run_dir["data"], run_dir["latents"]
    run = lambda shards: latent_top_em.run(TCFG, data, lat, d / "pc_init.h5", shards, tmp_path / "o.h5")  # noqa: E731
    with pytest.raises(shardio.ShardError, match=r"missing shard\(s\) \[1\] of num_shards=2"):
        run([d / "shard0.h5"])
    with pytest.raises(shardio.ShardError, match="shard 0 given twice"):
        run([d / "shard0.h5", d / "shard0.h5"])
    with pytest.raises(shardio.ShardError, match="num_shards"):
        run([d / "shard0.h5", d / "whole.h5"])
    materialize_pc.run(materialize_pc.Config(num_latents=KH, seed=5), data, lat, tmp_path / "other.h5")
    latent_em.run(LCFG, data, lat, tmp_path / "other.h5", 1, 2, tmp_path / "foreign1.h5")
    with pytest.raises(shardio.ShardError, match="foreign1.h5: attribute 'pc_fingerprint' does not match"):
        run([d / "shard0.h5", tmp_path / "foreign1.h5"])
    assert not (tmp_path / "o.h5").exists()


def test_latent_top_em_trains_the_top_and_records_history(run_dir, tmp_path):
    d = run_dir["dir"]
    attrs = pc.load_attrs(d / "pc_latent_em.h5")
    stages = [r["stage"] for r in attrs["history"]]
    assert stages == ["latent_em", "latent_top_em"]
    top = attrs["history"][1]
    assert len(top["train_ll"]) == len(top["valid_ll"]) == TCFG.epochs
    c = pc.load(d / "pc_latent_em.h5")
    xv = inputs.load_split(run_dir["data"], "valid")
    assert float(c.log_likelihood(xv).double().mean()) == pytest.approx(top["valid_ll"][-1], rel=1e-5)
    assert not torch.equal(c.top.params["edges"], pc.load(d / "pc_init.h5").top.params["edges"])
    # L through the float16 file: the same values up to float16 rounding of L - max
    L = latent_top_em.patch_lls(c, run_dir["x"], 64)
    disk, perm = latent_top_em.spill_patch_lls(c, run_dir["x"], tmp_path / "o.h5", 64, seed=0)
    try:
        assert disk.path.parent == tmp_path and disk.path.exists()
        got = torch.as_tensor(disk[np.arange(10, 90)])
        want = L[torch.as_tensor(perm[10:90])]
        mx = want.amax(-1, keepdim=True)
        torch.testing.assert_close(got - mx, want - mx, rtol=2e-3, atol=2e-3)
    finally:
        disk.close()
    assert list(tmp_path.iterdir()) == []
    calls = []

    def failing(x):                       # the second block fails (an error, or SIGTERM's exception)
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return pc.LVDCircuit.latent_lls(c, x)

    c.latent_lls = failing
    with pytest.raises(KeyboardInterrupt):
        latent_top_em.spill_patch_lls(c, run_dir["x"], tmp_path / "o.h5", 64, seed=0)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []
    assert not (tmp_path / "l.h5").exists()
    cfg = latent_top_em.Config(**{**TCFG.__dict__, "patch_lls_memory_gb": 0.0})
    s = latent_top_em.run(cfg, run_dir["data"], run_dir["latents"], d / "pc_init.h5",
                          [d / "shard0.h5", d / "shard1.h5"], tmp_path / "disk.h5")
    assert s["patch_lls_on_disk"] and s["valid_ll"] == pytest.approx(top["valid_ll"][-1], abs=0.5)


def test_finetune_resumes_after_a_kill(run_dir, tmp_path, monkeypatch):
    src, data = run_dir["dir"] / "pc_latent_em.h5", run_dir["data"]
    ref = finetune.run(FCFG, data, src, tmp_path / "ref.h5", tmp_path / "ckpt_ref")
    assert not (tmp_path / "ckpt_ref").exists()  # removed (file and empty folder) once the output is written
    real, calls = pc.em_epoch, []

    def em_epoch(circuit, sched, epoch, *args, **kwargs):
        if len(calls) == limit:
            raise KeyboardInterrupt("killed")
        calls.append(sched.is_full_batch(epoch))
        return real(circuit, sched, epoch, *args, **kwargs)

    monkeypatch.setattr(pc, "em_epoch", em_epoch)
    limit = 1  # killed during epoch 2 of 2 mini-batch + 1 full-batch epochs
    with pytest.raises(KeyboardInterrupt):
        finetune.run(FCFG, data, src, tmp_path / "out.h5", tmp_path / "ckpt")
    assert pc.load_attrs(tmp_path / "ckpt" / "finetune.h5")["epoch"] == 1 and not (tmp_path / "out.h5").exists()
    before = pc.load_attrs(tmp_path / "ckpt" / "finetune.h5")["record"]["seconds"]
    calls.clear()
    limit = 99
    got = finetune.run(FCFG, data, src, tmp_path / "out.h5", tmp_path / "ckpt")
    assert calls == [False, True]  # only epoch 2 (mini-batch) and the full-batch epoch ran again
    a, b = pc.load(tmp_path / "ref.h5"), pc.load(tmp_path / "out.h5")
    for name, t in a.params.items():
        assert torch.equal(t, b.params[name]), name
    assert got["valid_ll"] == ref["valid_ll"]
    hist = inputs.history_of(tmp_path / "out.h5")
    assert [r["stage"] for r in hist] == ["latent_em", "latent_top_em", "finetune"]
    assert hist[-1]["train_ll"] == inputs.history_of(tmp_path / "ref.h5")[-1]["train_ll"]
    assert len(hist[-1]["valid_ll"]) == 3 and hist[-1]["valid_ll"][-1] > hist[0 + 1]["valid_ll"][-1]
    # the first run's loop seconds travel in the record, for the arm's training seconds (lvd.stages.curves)
    assert before > 0 and hist[-1]["carried_seconds"] == before and hist[-1]["seconds"] > before
    assert "carried_seconds" not in inputs.history_of(tmp_path / "ref.h5")[-1]


def test_finetune_ignores_a_checkpoint_of_another_config(run_dir, tmp_path):
    src, data = run_dir["dir"] / "pc_latent_em.h5", run_dir["data"]
    one = finetune.Config(epochs=1, full_batch_epochs=0, batch_size=64)
    c = pc.load(src)
    pc.save(c, tmp_path / "ckpt" / "finetune.h5", epoch=1, record={}, resume_key="another run")
    finetune.run(one, data, src, tmp_path / "out.h5", tmp_path / "ckpt")
    assert len(inputs.history_of(tmp_path / "out.h5")[-1]["train_ll"]) == 1


def test_baseline_same_structure_random_params(run_dir, tmp_path):
    d = run_dir["dir"]
    cfg = train_baseline.Config(epochs=2, full_batch_epochs=1, batch_size=64)
    s = train_baseline.run(cfg, run_dir["data"], d / "pc_init.h5", tmp_path / "baseline.h5")
    init, base = pc.load(d / "pc_init.h5"), pc.load(tmp_path / "baseline.h5")
    assert base.num_params == init.num_params == s["num_params"]
    for part in ("patch", "top"):
        a, b = getattr(init, part), getattr(base, part)
        np.testing.assert_array_equal(a.structure.parents, b.structure.parents)
        assert (a.num_groups, a.num_heads, a.num_latents) == (b.num_groups, b.num_heads, b.num_latents)
    assert not torch.allclose(init.top.params["edges"], base.top.params["edges"], atol=1e-2)
    fresh = pc.random_like(init, cfg.seed)
    assert not torch.equal(fresh.patch.params["leaves"], init.patch.params["leaves"])
    rec = inputs.history_of(tmp_path / "baseline.h5")[-1]
    assert rec["stage"] == "train_baseline" and len(rec["valid_ll"]) == 3
    assert rec["valid_ll"][-1] > rec["valid_ll"][0]


def test_every_em_stage_logs_under_its_own_name(run_dir, tmp_path, caplog):
    """finetune, train_baseline, train_hclt and latent_top_em share one training loop; each logs
    as lvd.<stage> (the engine's own lines stay under lvd.pc.*)."""
    d, data = run_dir["dir"], run_dir["data"]
    one = dict(epochs=1, full_batch_epochs=0, batch_size=64)
    runs = {"finetune": lambda: finetune.run(finetune.Config(**one), data, d / "pc_latent_em.h5", tmp_path / "f.h5"),
            "train_baseline": lambda: train_baseline.run(train_baseline.Config(**one), data, d / "pc_init.h5",
                                                         tmp_path / "b.h5"),
            "train_hclt": lambda: train_hclt.run(train_hclt.Config(**one, num_latents=2), data, d / "pc_init.h5",
                                                 tmp_path / "h.h5"),
            "latent_top_em": lambda: latent_top_em.run(TCFG, data, run_dir["latents"], d / "pc_init.h5",
                                                       [d / "shard0.h5", d / "shard1.h5"], tmp_path / "t.h5")}
    for stage, run in runs.items():
        caplog.clear()
        with caplog.at_level(logging.INFO):
            run()
        names = {r.name for r in caplog.records if not r.name.startswith("lvd.pc.")}
        assert names == {f"lvd.{stage}"}, stage
        assert f"{stage} epoch 1/" in caplog.text, stage


def test_evaluate_images_metrics_and_figures(run_dir, tmp_path):
    d, data = run_dir["dir"], run_dir["data"]
    finetune.run(finetune.Config(epochs=1, full_batch_epochs=0, batch_size=64), data, d / "pc_latent_em.h5",
                 tmp_path / "pc_final.h5")
    train_baseline.run(train_baseline.Config(epochs=1, full_batch_epochs=0), data, d / "pc_init.h5",
                       tmp_path / "baseline.h5")
    teacher = fx.write_teacher_metrics(tmp_path / "teacher.json", teacher_test_bpd=1.5)
    bench = tmp_path / "bench"
    fx.write_benchmark(bench / "prepare_data.tsv", [2.0, 4.0])
    fx.write_benchmark(bench / f"k{K}" / "finetune.tsv", [7.5])
    fx.write_benchmark(bench / f"k{K}" / "latent_em" / "shard0.tsv", [1.25])
    fx.write_benchmark(bench / "k99" / "finetune.tsv", [100.0])
    out = tmp_path / f"k{K}" / "metrics.json"
    evaluate.main(["--config", json.dumps({"num_samples": 4, "num_inpaint": 2}), "--data", str(data),
                   "--pc", str(tmp_path / "pc_final.h5"), "--baseline", str(tmp_path / "baseline.h5"),
                   "--random-latents", "--hclt",
                   "--teacher-metrics", str(teacher), "--benchmarks-dir", str(bench), "--out", str(out),
                   "--figdir", str(tmp_path / "fig"), "--device", "cpu", "--threads", "1"])
    m = json.loads(out.read_text())
    for key in ("test_bpd", "baseline_test_bpd", "teacher_test_bpd", "valid_bpd", "num_params", "seconds",
                "num_states", "inpaint_bpd", "baseline_inpaint_bpd"):
        assert key in m, key
    xt = inputs.load_split(data, "test")
    ll = pc.load(tmp_path / "pc_final.h5").log_likelihood(xt).double().numpy()
    assert m["test_bpd"] == pytest.approx(-ll.mean() / (math.log(2) * 64), rel=1e-6)
    assert m["teacher_test_bpd"] == 1.5 and m["num_states"] == K
    assert m["num_params"] == pc.load(tmp_path / "pc_final.h5").num_params
    assert {k: v for k, v in m["seconds"].items() if k != "evaluate"} == \
        {"prepare_data": 3.0, "finetune": 7.5, "latent_em/shard0": 1.25}
    for name in ("samples", "inpainting", "curves"):
        assert (tmp_path / "fig" / f"{name}.png").stat().st_size > 1000
    assert m["num_seeds"] == 1 and m["test_bpd_std"] == 0.0
    assert m["controls"]["baseline"]["beats"] is None and "one seed" in m["verdict"]
    with pytest.raises(io.ArtifactError, match="missing field 'teacher_test_bpd'"):
        evaluate.run(evaluate.Config(num_samples=0, num_inpaint=0), data,
                     {"lvd": [tmp_path / "pc_final.h5"], "baseline": [tmp_path / "baseline.h5"]},
                     fx.write_teacher_metrics(tmp_path / "t2.json"), None, tmp_path / "m2.json", tmp_path / "fig2")


def test_text_count_init_finetune_and_perplexity(tmp_path):
    rng = np.random.default_rng(0)
    H, V, T = 3, 6, 5
    windows = {s: rng.integers(0, V, size=(n, T)) for s, n in (("train", 60), ("valid", 20), ("test", 25))}
    data = fx.write_text(tmp_path / "data.h5", windows, V)
    z = rng.integers(0, H, size=(60, T))
    pos = fx.write_latents(tmp_path / "latents_position.h5", z, H)
    with pytest.raises(ValueError, match="latents_position.h5.*mode.*shared"):
        materialize_pc.run(materialize_pc.Config(), data, pos, tmp_path / "pc_bad.h5")
    assert not (tmp_path / "pc_bad.h5").exists()
    lat = fx.write_latents(tmp_path / "latents.h5", z, H, mode="shared")
    a = 0.5
    materialize_pc.run(materialize_pc.Config(pseudocount=a), data, lat, tmp_path / "pc_init.h5")
    h = pc.load(tmp_path / "pc_init.h5")
    init, trans, emit = fx.hmm_hand_counts(z, windows["train"], H, V)
    np.testing.assert_allclose(h.params["root"][0, 0].numpy(), fx.normalize_counts(init, 0, a), rtol=1e-5)
    np.testing.assert_allclose(h.params["edges"][0, 0].numpy(), fx.normalize_counts(trans, 1, a), rtol=1e-5)
    np.testing.assert_allclose(h.params["leaves"][0, 0].numpy(), fx.normalize_counts(emit.T, 0, a), rtol=1e-5)

    finetune.run(finetune.Config(epochs=2, batch_size=16), data, tmp_path / "pc_init.h5", tmp_path / "final.h5")
    train_baseline.run(train_baseline.Config(epochs=3, batch_size=16), data, tmp_path / "pc_init.h5",
                       tmp_path / "base.h5")
    teacher = fx.write_teacher_metrics(tmp_path / "teacher.json", teacher_test_perplexity=5.5)
    m = evaluate.run(evaluate.Config(), data, {"lvd": [tmp_path / "final.h5"], "baseline": [tmp_path / "base.h5"]},
                     teacher, tmp_path / "nowhere", tmp_path / "metrics.json", tmp_path / "fig")
    p = pc.load(tmp_path / "final.h5").params
    ll = fx.hmm_forward_ll(p["root"][0, 0].double().numpy(), p["edges"][0, 0].double().numpy(),
                           p["leaves"][0, 0].double().numpy().T, windows["test"])
    assert m["test_perplexity"] == pytest.approx(math.exp(-ll.sum() / (25 * T)), rel=1e-5)
    assert m["teacher_test_perplexity"] == 5.5 and m["num_states"] == H and m["test_tokens_scored"] == 125
    assert 1 < m["baseline_test_perplexity"] and set(m["seconds"]) == {"evaluate"}
    assert (tmp_path / "fig" / "perplexity.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="latent_em is for images"):
        latent_em.run(LCFG, data, lat, tmp_path / "pc_init.h5", 0, 1, tmp_path / "s.h5")


def test_gather_refuses_tampered_shards(run_dir, tmp_path):
    d, data, lat = run_dir["dir"], run_dir["data"], run_dir["latents"]
    run = lambda shards: latent_top_em.run(TCFG, data, lat, d / "pc_init.h5", shards, tmp_path / "o.h5")  # noqa: E731
    bad = tmp_path / "shard1.h5"
    with open(d / "shard1.h5", "rb") as src:
        bad.write_bytes(src.read())
    with h5py.File(bad, "a") as f:  # a NaN in a trained table, the checksum left as it was
        a = f["params/leaves"][()]
        a[0, 0, 0, 0] = np.nan
        del f["params/leaves"]
        f["params/leaves"] = a
    with pytest.raises(io.ArtifactError, match=r"shard1\.h5: field 'params/leaves' does not match its checksum"):
        run([d / "shard0.h5", bad])
    with h5py.File(bad, "a") as f:  # without a checksum the table check still refuses it
        del f.attrs["sha256"]
    with pytest.raises(io.ArtifactError, match=r"shard1\.h5: field 'params/leaves' has 1 NaN"):
        run([d / "shard0.h5", bad])
    assert not (tmp_path / "o.h5").exists()
