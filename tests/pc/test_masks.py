"""Masked tables (TreeCircuit.masks, LVD-PG's pruned entries): the EM update by hand, brute-force
normalization, parameter counts, and the masks' trip through HDF5 with its checks.

The circuit: a 4-node tree (root 1; 1 -> {0, 2}, 2 -> 3), C = 3 values, K = 3 states, G = 2
groups, H = 2 heads; a mask prunes a few edge entries and one root entry.
"""

import h5py
import numpy as np
import pytest
import torch

from lvd import io, pc
from lvd.pc.em import masked_, update
from pc_bruteforce import all_configs, tree_circuit, tree_lls_bf

PARENTS = [1, -1, 1, 2]
V, C, K, G, H = 4, 3, 3, 2, 2


def masked_circuit(seed=0):
    tc = tree_circuit(PARENTS, K=K, C=C, G=G, H=H, seed=seed)
    me = torch.ones(tc.params["edges"].shape, dtype=torch.bool)
    me[0, 0, 1, 2] = me[0, 0, 1, 0] = False       # row (edge row 0, group 0, parent state 1): 1 entry left
    me[2, 1, 0, 1] = False
    mr = torch.ones(G, H, K, dtype=torch.bool)
    mr[1, 0, 2] = False
    tc.masks = {"edges": me, "root": mr}
    with torch.no_grad():
        for name, m in tc.masks.items():
            masked_(tc.params[name], m, tc.norm_dims[name])
    return tc


def test_update_by_hand_keeps_pruned_entries_zero():
    tc = masked_circuit()
    rng = np.random.default_rng(1)
    F = {k: torch.from_numpy(rng.random(v.shape).astype(np.float32)) for k, v in tc.params.items()}
    before = {k: v.double().numpy().copy() for k, v in tc.params.items()}
    s, a = 0.3, 0.5
    update(tc, F, s, a)
    for name, p0 in before.items():
        dim = tc.norm_dims[name]
        f = F[name].double().numpy()
        n = p0.shape[dim]
        want = (1 - s) * p0 + s * (f + a / n) / (f.sum(dim, keepdims=True) + a)
        if name in tc.masks:
            m = tc.masks[name].numpy()
            want = want * m
            want = want / want.sum(dim, keepdims=True)
            assert (tc.params[name].numpy()[~m] == 0).all(), name
        np.testing.assert_allclose(tc.params[name].double().numpy(), want, rtol=1e-5, atol=1e-7, err_msg=name)
    # the entry that is alone in its row holds all of it
    assert float(tc.params["edges"][0, 0, 1, 1]) == pytest.approx(1.0)


def test_without_the_mask_the_pseudocount_revives_a_pruned_entry():
    """The check above can fail: the same update without masks gives the pruned entries mass."""
    tc = masked_circuit()
    tc.masks = {}
    F = {k: torch.zeros_like(v) for k, v in tc.params.items()}
    update(tc, F, 0.3, 0.5)
    assert float(tc.params["edges"][0, 0, 1, 2]) > 0


def test_masked_circuit_stays_normalized_over_every_x():
    tc = masked_circuit(seed=3)
    X = all_configs(V, C)
    for _ in range(3):
        flows, _ = pc.flows(tc, {"x": torch.as_tensor(X[::5])})
        update(tc, flows, 0.5, 0.1)
    with torch.no_grad():
        engine = tc.group_lls(tc.log_params(), torch.as_tensor(X)).double().numpy()   # [B, G, H]
    for g in range(G):
        for h in range(H):
            bf = tree_lls_bf(tc, X, g=g, h=h)
            assert np.exp(bf).sum() == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(engine[:, g, h], bf, atol=1e-4)
    assert (tc.params["edges"][~tc.masks["edges"]] == 0).all()


def test_num_params_counts_allowed_entries():
    tc = masked_circuit()
    dense = tree_circuit(PARENTS, K=K, C=C, G=G, H=H)
    # three pruned edge entries and one root entry: four fewer free parameters
    assert dense.num_params - tc.num_params == 4


def test_select_groups_and_to_carry_masks():
    tc = masked_circuit()
    sub = tc.select_groups([1])
    assert torch.equal(sub.masks["edges"], tc.masks["edges"][:, 1:2])
    assert torch.equal(sub.masks["root"], tc.masks["root"][1:2])
    assert set(tc.without_leaves().masks) == {"edges", "root"}
    assert tc.to("cpu").masks["edges"].dtype == torch.bool


def test_a_mask_must_fit_its_table():
    tc = tree_circuit(PARENTS, K=K, C=C, G=G, H=H)
    with pytest.raises(ValueError, match="does not match a table"):
        pc.TreeCircuit(tc.structure, K, C, num_groups=G, num_heads=H, params=tc.params,
                       masks={"edges": torch.ones(1, 2, 3, dtype=torch.bool)})


def test_masks_round_trip_through_hdf5(tmp_path):
    tc = masked_circuit()
    pc.save(tc, tmp_path / "c.h5")
    back = pc.load(tmp_path / "c.h5")
    for name, m in tc.masks.items():
        assert torch.equal(back.masks[name], m), name
    assert back.num_params == tc.num_params
    dense = tree_circuit(PARENTS, K=K, C=C, G=G, H=H)
    pc.save(dense, tmp_path / "d.h5")
    assert pc.load(tmp_path / "d.h5").masks == {}


def _tamper(path, name, fn):
    """Rewrite field ``name`` of the stored tree with fn(old) and drop the checksums."""
    with h5py.File(path, "r+") as f:
        g = f["tree"]
        new = fn(g[name][()])
        del g[name]
        g[name] = new
        del g.attrs["sha256"]


@pytest.mark.parametrize("name, fn, match", [
    ("masks/edges", lambda m: m.astype(np.int8), "expected bool"),
    ("masks/root", lambda m: m[:, :1], "has shape"),
    ("masks/root", lambda m: np.zeros_like(m), "allows no entry"),
    ("masks/edges", lambda m: np.zeros_like(m) | (np.arange(K) == 0), "masks out an entry"),
])
def test_a_bad_stored_mask_is_refused_naming_the_field(tmp_path, name, fn, match):
    tc = masked_circuit()
    path = tmp_path / "c.h5"
    pc.save(tc, path)
    _tamper(path, name, fn)
    with pytest.raises(io.ArtifactError, match=f"{name}.*{match}|{match}") as e:
        pc.load(path)
    assert str(path) in str(e.value) and name in str(e.value)


def test_a_changed_mask_fails_its_checksum(tmp_path):
    tc = masked_circuit()
    path = tmp_path / "c.h5"
    pc.save(tc, path)
    with h5py.File(path, "r+") as f:
        m = f["tree/masks/edges"]
        a = m[()]
        a[0, 0, 0, 0] = False        # still valid (a row keeps entries) but not what was written
        m[...] = a
    with pytest.raises(io.ArtifactError, match="checksum|masks out"):
        pc.load(path)
