"""grow_patch_pcs: clusters-mode latents -> pc_init -> grown shards -> gathered by latent_top_em."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import pc_fixtures as fx
from lvd import configcheck, io, pc, training
from lvd.pc import grow
from lvd.pc.patches import patch_index
from lvd.stages import assign_latents, common, grow_patch_pcs, inputs, latent_top_em, materialize_pc, topinit

GCFG = grow_patch_pcs.Config(epochs=2, full_batch_epochs=1, batch_size=64, prune_threshold=1e-3)
TOP = latent_top_em.Config(epochs=1, batch_size=64)


def write_embeddings(path, data):
    """Stand-in teacher embeddings: each patch's pixels (with a little seeded noise)."""
    with h5py.File(data, "r") as f:
        imgs = f["train"][()]
    n = len(imgs)
    idx = patch_index(8, 8, 1, 2)
    emb = imgs.reshape(n, -1)[:, idx].astype(np.float32)
    emb += np.random.default_rng(0).normal(size=emb.shape).astype(np.float32) * 0.3
    with io.create(path, "lvd.embeddings", "tests", {}) as f:
        f["train"] = emb.astype(np.float16)
        f.attrs["num_positions"], f.attrs["dim"] = emb.shape[1], emb.shape[2]
    return path


@pytest.fixture(scope="module")
def pg_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # tiny circuits: a second thread only waits (see tests/pc/conftest.py)
    try:
        yield build(tmp_path_factory.mktemp("pg"))
    finally:
        torch.set_num_threads(threads)


def build(d):
    data = fx.write_digits(d / "data.h5", n_train=120)
    emb = write_embeddings(d / "embeddings.h5", data)
    lat = d / "latents.h5"
    assign_latents.run(assign_latents.Config(mode="clusters", num_states=9, heads_per_cluster=3, initial_heads=2,
                                             niter=10), str(emb), str(lat))
    materialize_pc.run(materialize_pc.Config(num_latents=2), str(data), str(lat), str(d / "pc_init.h5"))
    for S in (1, 3):
        for s in range(S):
            grow_patch_pcs.run(GCFG, str(data), str(lat), str(emb), str(d / "pc_init.h5"), s, S,
                               str(d / f"grow{S}_{s}.h5"))
    return d


def test_materialize_allocates_one_state_per_growing_round(pg_dir):
    c = pc.load(pg_dir / "pc_init.h5")
    assert c.mode == "shared" and c.num_states == 9
    attrs = pc.load_attrs(pg_dir / "pc_init.h5")   # the config's word and the circuit's layout, both said
    assert (attrs["latents_mode"], attrs["mode"]) == ("clusters", "shared")
    assert (c.patch.num_groups, c.patch.num_heads, c.patch.num_latents) == (3, 3, 3)


def test_shards_hold_grown_clusters_and_their_curves(pg_dir):
    with io.open_artifact(pg_dir / "grow1_0.h5", "lvd.pc_shard") as f:
        assert f["groups"][()].tolist() == [0, 1, 2]
        assert f["num_heads"][()].tolist() == [3, 3, 3]
        hist, n, heads = f["history"][()], f["num_examples"][()], f["heads"][()]
        assert hist.shape == (3, 2) and np.isfinite(hist).all()
        assert n.sum() == 120 * 16 and len(heads) == n.sum()
        assert set(np.unique(heads)) == {0, 1, 2}
        edges, mask = f["params/edges"][()], f["masks/edges"][()]
        assert (edges[~mask] == 0).all() and f.attrs["initial_states"] == 2


def test_one_shard_equals_three_shards(pg_dir):
    one, three = pc.load(pg_dir / "pc_init.h5"), pc.load(pg_dir / "pc_init.h5")
    lat = str(pg_dir / "latents.h5")
    latent_top_em.gather(one, [str(pg_dir / "grow1_0.h5")], str(pg_dir / "pc_init.h5"), lat)
    latent_top_em.gather(three, [str(pg_dir / f"grow3_{s}.h5") for s in (2, 0, 1)], str(pg_dir / "pc_init.h5"), lat)
    for name, t in one.patch.params.items():
        assert torch.equal(t, three.patch.params[name]), name
    with h5py.File(pg_dir / "grow1_0.h5", "r") as f:
        n, heads = f["num_examples"][()], f["heads"][()]
    per_group = np.split(heads, np.cumsum(n)[:-1])
    for s in range(3):
        with h5py.File(pg_dir / f"grow3_{s}.h5", "r") as f:
            for g, h in zip(f["groups"][()], np.split(f["heads"][()], np.cumsum(f["num_examples"][()])[:-1])):
                np.testing.assert_array_equal(h, per_group[g])


def test_latent_top_em_gathers_the_grown_shards(pg_dir, tmp_path):
    d = pg_dir
    summary = latent_top_em.run(TOP, str(d / "data.h5"), str(d / "latents.h5"), str(d / "pc_init.h5"),
                                [str(d / f"grow3_{s}.h5") for s in range(3)], str(tmp_path / "pc_latent.h5"))
    assert np.isfinite(summary["valid_bpd"])
    c = pc.load(tmp_path / "pc_latent.h5")
    x = torch.zeros(2, 64, dtype=torch.long)
    assert torch.isfinite(c.log_likelihood(x)).all()


def test_refuses_latents_that_are_not_clusters(pg_dir, tmp_path):
    d = pg_dir
    lat = fx.write_latents(tmp_path / "lat.h5", np.zeros((120, 16), dtype=np.int32), 9, mode="shared")
    with pytest.raises(io.ArtifactError, match="needs latents.mode: clusters"):
        grow_patch_pcs.run(GCFG, str(d / "data.h5"), str(lat), str(d / "embeddings.h5"), str(d / "pc_init.h5"), 0, 1,
                           str(tmp_path / "o.h5"))


def test_a_shard_without_clusters_is_written_and_gathered(pg_dir, tmp_path):
    """4 shards over 3 clusters: shard 3 holds none, and the gather still covers every cluster."""
    d = pg_dir
    args = [str(d / "data.h5"), str(d / "latents.h5"), str(d / "embeddings.h5"), str(d / "pc_init.h5")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for s in range(4):
            grow_patch_pcs.run(GCFG, *args, s, 4, str(tmp_path / f"g{s}.h5"))
    finally:
        torch.set_num_threads(threads)
    with io.open_artifact(tmp_path / "g3.h5", "lvd.pc_shard") as f:
        assert f["groups"].shape == (0,) and f["history"].shape == (0, 2)
    four, one = pc.load(d / "pc_init.h5"), pc.load(d / "pc_init.h5")
    lat = str(d / "latents.h5")
    latent_top_em.gather(four, [str(tmp_path / f"g{s}.h5") for s in (3, 0, 1, 2)], str(d / "pc_init.h5"), lat)
    latent_top_em.gather(one, [str(d / "grow1_0.h5")], str(d / "pc_init.h5"), lat)
    for name, t in one.patch.params.items():
        assert torch.equal(t, four.patch.params[name]), name


@pytest.fixture(scope="module")
def gathered(pg_dir):
    """latent_top_em on the three shards: pc_latent.h5 beside the fixture's files."""
    d = pg_dir
    out = d / "pc_latent.h5"
    if not out.exists():
        latent_top_em.run(TOP, str(d / "data.h5"), str(d / "latents.h5"), str(d / "pc_init.h5"),
                          [str(d / f"grow3_{s}.h5") for s in range(3)], str(out))
    return out


def shard_fields(d, name):
    """Field ``name`` of the three shards, by cluster: {g: array}."""
    out = {}
    for s in range(3):
        with h5py.File(d / f"grow3_{s}.h5", "r") as f:
            groups = f["groups"][()]
            if name == "heads":
                parts = np.split(f["heads"][()], np.cumsum(f["num_examples"][()])[:-1])
            else:
                a = f[name][()]
                parts = [a[:, i] if name == "masks/edges" else a[i] for i in range(len(groups))]
            out.update(zip(groups.tolist(), parts))
    return out


def test_the_gathered_circuit_keeps_the_masks_of_every_shard(pg_dir, gathered):
    c = pc.load(gathered)
    edges, root = shard_fields(pg_dir, "masks/edges"), shard_fields(pg_dir, "masks/root")
    assert set(c.patch.masks) == {"edges", "root"}
    for g in range(3):
        np.testing.assert_array_equal(c.patch.masks["edges"][:, g].numpy(), edges[g])
        np.testing.assert_array_equal(c.patch.masks["root"][g].numpy(), root[g])
    assert not c.patch.masks["edges"].all()         # the fixture prunes something
    assert (c.patch.params["edges"][~c.patch.masks["edges"]] == 0).all()
    rec = [h for h in pc.load_attrs(gathered)["history"] if h.get("stage") == "grow_patch_pcs"][0]
    assert np.asarray(rec["growing_curves"]).shape == (3, 2) and 0 <= rec["moved_fraction"] <= 1


def test_the_top_is_counted_from_the_grown_assignment(pg_dir):
    """Tree top: its root distribution is the count of the *grown* states at the top's root
    position (plus the pseudocount), computed here by hand from the shards' heads."""
    d = pg_dir
    c = pc.load(d / "pc_init.h5")
    g = latent_top_em.gather(c, [str(d / f"grow3_{s}.h5") for s in range(3)], str(d / "pc_init.h5"),
                             str(d / "latents.h5"))
    from lvd.stages import inputs
    z = inputs.load_latents(str(d / "latents.h5"), 120, 16)[0]
    H = c.patch.num_heads
    heads = shard_fields(d, "heads")
    zg = z.copy()
    for cl, h in heads.items():
        k = 0
        for n in range(z.shape[0]):          # np.nonzero's order: row-major over (image, position)
            for i in range(z.shape[1]):
                if z[n, i] // H == cl:
                    zg[n, i] = cl * H + h[k]
                    k += 1
    zz, moved = g["pg"].grown_latents(z, H)
    np.testing.assert_array_equal(zz, zg)
    assert moved == pytest.approx(float((zg != z).mean())) and moved > 0
    topinit.init_top(c, zg, str(d / "pc_init.h5"))
    r = int(np.flatnonzero(c.top.structure.parents < 0)[0])
    K, a = c.num_states, 0.1
    want = (np.bincount(zg[:, r], minlength=K) + a / K) / (len(zg) + a)
    np.testing.assert_allclose(c.top.params["root"][0, 0].double().numpy(), want, rtol=1e-5)
    before = (np.bincount(z[:, r], minlength=K) + a / K) / (len(z) + a)
    assert np.abs(want - before).max() > 1e-3      # the grown assignment differs from the initial


def test_the_top_is_not_counted_again_without_materialize_pcs_settings(pg_dir, tmp_path):
    """topinit.init_top takes its settings from pc_init.h5's config alone (lvd.stages.topinit)."""
    import json
    import shutil

    path = tmp_path / "pc_init.h5"
    shutil.copy(pg_dir / "pc_init.h5", path)
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = json.dumps({"num_latents": 4})
    with pytest.raises(io.ArtifactError, match=r"pc_init.h5: its config lacks \['pseudocount'"):
        topinit.init_top(pc.load(path), np.zeros((1, 16), dtype=np.int64), str(path))


def test_finetune_keeps_the_pruned_entries_zero(pg_dir, gathered, tmp_path):
    from lvd.stages import finetune
    out = tmp_path / "pc_final.h5"
    finetune.run(finetune.Config(epochs=1, full_batch_epochs=1, batch_size=64), str(pg_dir / "data.h5"),
                 str(gathered), str(out))
    c, start = pc.load(out), pc.load(gathered)
    m = c.patch.masks["edges"]
    assert torch.equal(m, start.patch.masks["edges"])
    assert (c.patch.params["edges"][~m] == 0).all() and (c.patch.params["root"][~c.patch.masks["root"]] == 0).all()
    assert not torch.equal(c.patch.params["edges"], start.patch.params["edges"])   # it did train


def test_without_growing_one_round_keeps_the_kmeans_heads(pg_dir, tmp_path):
    """The ablation (initial_heads = heads_per_cluster): one round of EM and pruning, no
    re-assignment and no growth, so every patch keeps its k-means head."""
    d = pg_dir
    lat = tmp_path / "latents.h5"
    assign_latents.run(assign_latents.Config(mode="clusters", num_states=9, heads_per_cluster=3, initial_heads=3,
                                             niter=10), str(d / "embeddings.h5"), str(lat))
    materialize_pc.run(materialize_pc.Config(num_latents=3), str(d / "data.h5"), str(lat), str(tmp_path / "pc.h5"))
    out = tmp_path / "g.h5"
    grow_patch_pcs.run(GCFG, str(d / "data.h5"), str(lat), str(d / "embeddings.h5"), str(tmp_path / "pc.h5"), 0, 1,
                       str(out))
    from lvd.stages import inputs
    z = inputs.load_latents(str(lat), 120, 16)[0]
    with io.open_artifact(out, "lvd.pc_shard") as f:
        assert f["history"].shape == (3, 1) and f["num_heads"][()].tolist() == [3, 3, 3]
        heads, n = f["heads"][()], f["num_examples"][()]
    want = np.concatenate([z[z // 3 == g] % 3 for g in range(3)])   # row-major = np.nonzero order
    np.testing.assert_array_equal(heads, want)


def test_every_cluster_gets_its_own_chow_liu_tree(pg_dir):
    """pc.patch_tree auto = group for clusters: cluster g's patch tree is the Chow-Liu tree of its
    members (every position's patches in cluster g), all run inside one super-tree."""
    c = pc.load(pg_dir / "pc_init.h5")
    assert c.patch.var_map is not None and pc.load_attrs(pg_dir / "pc_init.h5")["patch_tree"] == "group"
    from lvd.stages import inputs

    x = inputs.load_split(str(pg_dir / "data.h5"), "train")
    z = inputs.load_latents(str(pg_dir / "latents.h5"), len(x), 16)[0]
    H = c.patch.num_heads
    idx = patch_index(8, 8, 1, 2)
    pooled = pc.chow_liu_tree(x[:, idx].reshape(-1, 4), 17)
    for g in range(3):
        rows, pos = np.nonzero(z // H == g)
        want = pc.chow_liu_tree(x[rows[:, None], idx[pos]], 17, seed=g)
        got = fx.group_parents(c.patch.structure.parents, c.patch.var_map.numpy(), g)
        want = want if len(rows) >= pc.patchtrees.MIN_TREE_MEMBERS else pooled
        assert undirected(got) == undirected(want)          # (the super-tree may root it elsewhere)
    pooled_cfg = materialize_pc.Config(num_latents=2, patch_tree="pooled")
    out = pg_dir / "pc_pooled.h5"
    materialize_pc.run(pooled_cfg, str(pg_dir / "data.h5"), str(pg_dir / "latents.h5"), str(out))
    assert pc.load(out).patch.var_map is None


def undirected(parents):
    return {frozenset((v, int(p))) for v, p in enumerate(parents) if p >= 0}


SECOND = {"epochs": 2, "step_size": 0.01, "step_size_end": 0.001}


def test_latent_top_em_runs_its_phases_as_one_schedule(pg_dir, tmp_path):
    d = pg_dir
    cfg = latent_top_em.Config(epochs=1, next_phases=(SECOND,), full_batch_epochs=1, batch_size=64, seed=5)
    sched = training.schedule_from(cfg)
    assert sched == pc.Schedule(phases=[pc.Phase(1, 0.1, 0.01), pc.Phase(2, 0.01, 0.001), pc.Phase.full(1)],
                                batch_size=64, pseudocount=0.1, seed=5)
    latent_top_em.run(cfg, str(d / "data.h5"), str(d / "latents.h5"), str(d / "pc_init.h5"),
                      [str(d / "grow1_0.h5")], str(tmp_path / "pc_latent.h5"))
    rec = pc.load_attrs(tmp_path / "pc_latent.h5")["history"][-1]
    assert rec["stage"] == "latent_top_em" and rec["phase_epochs"] == [1, 2, 1]
    assert (rec["epochs"], rec["full_batch_epochs"]) == (3, 1)
    assert len(rec["train_ll"]) == len(rec["valid_ll"]) == 4
    for bad, match in (({"next_phases": ({**SECOND, "epochs": -1},)}, r"next_phases\[0\]\.epochs is -1"),
                       ({"next_phases": ({**SECOND, "step_size": 0},)}, r"next_phases\[0\]\.step_size is 0"),
                       ({"next_phases": (SECOND, {**SECOND, "step_size_end": 1.5})},
                        r"next_phases\[1\]\.step_size_end is 1\.5"),
                       ({"next_phases": ({"epochs": 2},)}, r"next_phases\[0\] is .* the keys epochs, step_size"),
                       ({"next_phases": 3}, r"next_phases is 3, expected a list")):
        with pytest.raises(ValueError, match=match):
            latent_top_em.Config(**bad)


def test_latent_top_em_refuses_the_second_phase_keys_naming_next_phases():
    for old in ("second_epochs", "second_step_size", "second_step_size_end"):
        with pytest.raises(SystemExit, match=rf"'latent_top_em.{old}' is now 'latent_top_em.next_phases\[0\]\."):
            common.load_config(latent_top_em.Config, {old: 1})
    with pytest.raises(ValueError, match=r"'latent_top_em.second_epochs' is now 'latent_top_em.next_phases\[0\]\.epochs'"):
        configcheck.reject_renamed_keys({"latent_top_em": {"epochs": 10, "second_epochs": 10}})   # (the workflow's check)
    cfg = common.load_config(latent_top_em.Config, {"next_phases": [SECOND]})     # JSON's list: a tuple
    assert cfg.next_phases == (SECOND,)
    assert [p.epochs for p in training.schedule_from(cfg).phases] == [10, 2]


def test_grow_passes_script_times_a_shards_passes(pg_dir, tmp_path, capsys):
    """scripts/grow_passes.py on a run's layout: the shard's clusters and patches, and the flow
    checksum of the pass it timed, against member_pass run here."""
    import importlib.util
    import os

    run = tmp_path / "run"
    (run / "k9" / "lvd" / "s0").mkdir(parents=True)
    os.symlink(pg_dir / "data.h5", run / "data.h5")
    os.symlink(pg_dir / "latents.h5", run / "k9" / "latents.h5")
    os.symlink(pg_dir / "pc_init.h5", run / "k9" / "lvd" / "s0" / "pc_init.h5")
    spec = importlib.util.spec_from_file_location("grow_passes", Path(__file__).parents[2] / "scripts" / "grow_passes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main([str(run), "--num-states", "9", "--shard", "1", "--num-shards", "2", "--batch-size", "16"])
    out = capsys.readouterr().out
    c = pc.load(pg_dir / "pc_init.h5")
    x = inputs.load_split(pg_dir / "data.h5", "train")
    z = inputs.load_latents(pg_dir / "latents.h5", len(x), c.num_positions)[0]
    groups = [1]                                          # shard 1 of 2 over 3 clusters
    n = int(sum((z // 3 == g).sum() for g in groups))
    assert f"shard 1/2: 1 clusters, {n:,} patches" in out
    members = [grow_patch_pcs.cluster_members(c, x, z, np.zeros((len(x), c.num_positions, 1)), g) for g in groups]
    flows, _ = grow.member_pass(c.patch.select_groups(groups), [m[0] for m in members], [m[1] for m in members],
                                batch_size=16)
    printed = float(out.split("flow checksum ")[1].split()[0])
    assert printed == pytest.approx(sum(float(v.double().sum()) for v in flows.values()), rel=1e-6)
    assert "one masked EM epoch (batch 256):" in out
