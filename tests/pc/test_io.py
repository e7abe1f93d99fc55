"""pc.save / pc.load: exact HDF5 round trips and clear errors on bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from lvd import io, pc
from pc_bruteforce import all_configs, as_t, tree_circuit
from pc_bruteforce_lvd import make_lvd


def _hclt():
    X = np.random.default_rng(0).integers(0, 3, (60, 5))
    return pc.hclt(X, num_latents=3, num_cats=3, seed=0)


CIRCUITS = {
    "hclt": _hclt,
    "hmm_tied": lambda: pc.hmm(seq_len=4, num_latents=3, vocab_size=5, homogeneous=True, seed=1),
    "hmm_untied": lambda: pc.hmm(seq_len=4, num_latents=3, vocab_size=5, homogeneous=False, seed=1),
    "groups_heads": lambda: tree_circuit([-1, 0, 0, 1], K=2, C=3, G=2, H=3, seed=2),
    "lvd_position": lambda: make_lvd("pos4", seed=3),
    "lvd_shared": lambda: make_lvd("shared", seed=3),
    "lvd_group_trees": lambda: pc.lvd_circuit((2, 2, 1), 2, num_states=4, num_latents=2, num_cats=3, mode="shared",
                                              num_groups=2, top_parents=[-1],
                                              patch_trees=[[-1, 0, 1, 2], [1, -1, 1, 1]], seed=3),
}


def _trees(c):
    return [c.patch, c.top] if isinstance(c, pc.LVDCircuit) else [c]


@pytest.mark.parametrize("name", list(CIRCUITS))
def test_round_trip_is_exact(name, tmp_path, device):
    c = CIRCUITS[name]().to(device)
    # move the parameters off their initial values so a loader that re-initializes fails
    X = as_t(np.random.default_rng(4).integers(0, 3, (20, c.num_vars)), device=device)
    pc.em(c, X, epochs=1, batch_size=10, step_size=0.5)
    path = tmp_path / f"{name}.h5"
    pc.save(c, path, history=[1.5, 2.5], seconds=3.25, note="tiny")
    d = pc.load(path, device=device)
    assert d.device == c.device
    assert type(d) is type(c)
    assert set(d.params) == set(c.params)
    for k in c.params:
        assert d.params[k].dtype == torch.float32
        assert torch.equal(d.params[k], c.params[k]), k
    for a, b in zip(_trees(c), _trees(d)):
        for field in ("parents", "edge_index", "leaf_index"):
            np.testing.assert_array_equal(getattr(a.structure, field), getattr(b.structure, field))
        assert (a.num_latents, a.num_cats, a.num_groups, a.num_heads, a.kind, a.meta) == \
            (b.num_latents, b.num_cats, b.num_groups, b.num_heads, b.kind, b.meta)
        assert (a.var_map is None and b.var_map is None) or torch.equal(a.var_map, b.var_map)
    if isinstance(c, pc.LVDCircuit):
        assert (d.image_shape, d.patch_size, d.mode) == (c.image_shape, c.patch_size, c.mode)
    assert torch.equal(d.log_likelihood(X), c.log_likelihood(X))
    attrs = pc.load_attrs(path)
    assert attrs["history"] == [1.5, 2.5] and attrs["seconds"] == 3.25 and attrs["note"] == "tiny"
    assert attrs["format"] == "lvd.pc"


def test_loaded_hmm_stays_tied(tmp_path):
    pc.save(CIRCUITS["hmm_tied"](), tmp_path / "h.h5")
    h = pc.load(tmp_path / "h.h5")
    assert h.params["edges"].shape[0] == 1 and h.params["leaves"].shape[0] == 1
    assert h.meta == {"homogeneous": True}
    lls = h.log_likelihood(as_t(all_configs(4, 5)))
    assert np.exp(lls.double().numpy()).sum() == pytest.approx(1.0, abs=1e-5)


def test_wrong_format_names_the_file(tmp_path):
    path = tmp_path / "latents.h5"
    with io.create(path, "lvd.latents", "tests", {}) as f:
        f["z"] = np.zeros((2, 2), np.int32)
    with pytest.raises(io.ArtifactError, match="latents.h5") as e:
        pc.load(path)
    assert "lvd.pc" in str(e.value) and "lvd.latents" in str(e.value)


def test_not_hdf5_and_missing_file_name_the_file(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("not an HDF5 file")
    with pytest.raises(io.ArtifactError, match="notes.h5"):
        pc.load(bad)
    with pytest.raises(io.ArtifactError, match="absent.h5"):
        pc.load(tmp_path / "absent.h5")


def test_missing_field_and_bad_shape_name_file_and_field(tmp_path):
    path = tmp_path / "c.h5"
    pc.save(_hclt(), path)
    with h5py.File(path, "a") as f:
        del f["tree/params/root"]
    with pytest.raises(io.ArtifactError, match=r"c\.h5.*params/root"):
        pc.load(path)
    pc.save(_hclt(), path)
    with h5py.File(path, "a") as f:
        root = f["tree/params/root"][()]
        del f["tree/params/root"]
        f["tree/params/root"] = np.concatenate([root, root], axis=-1)        # K -> 2K
    with pytest.raises(io.ArtifactError, match=r"c\.h5.*params/root.*shape"):
        pc.load(path)


def test_unknown_circuit_kind(tmp_path):
    path = tmp_path / "c.h5"
    pc.save(_hclt(), path)
    with h5py.File(path, "a") as f:
        f.attrs["circuit"] = "dag"
    with pytest.raises(io.ArtifactError, match=r"c\.h5.*'dag'"):
        pc.load(path)
