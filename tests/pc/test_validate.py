"""Tampered circuit files are refused by pc.load, naming the file and the field (lvd.pc.validate)."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from lvd import io, pc
from lvd.pc import validate
from pc_bruteforce import as_t
from pc_bruteforce_lvd import make_lvd


def _hclt():
    X = np.random.default_rng(0).integers(0, 3, (60, 5))
    return pc.hclt(X, num_latents=3, num_cats=3, seed=0, leaf_latents=True)   # (the bit-flip offsets)


@pytest.fixture
def hclt_file(tmp_path):
    path = tmp_path / "pc_final.h5"
    pc.save(_hclt(), path)
    return path


@pytest.fixture
def lvd_file(tmp_path):
    path = tmp_path / "pc_latent.h5"
    pc.save(make_lvd("pos4", seed=3), path)
    return path


def _edit(path, field, fn):
    """Replace dataset ``field`` by fn(its values), keeping the stored checksum as it was."""
    with h5py.File(path, "a") as f:
        a = fn(f[field][()].copy())
        del f[field]
        f[field] = a


def _refused(path, field, what):
    with pytest.raises(io.ArtifactError) as e:
        pc.load(path)
    msg = str(e.value)
    assert path.name in msg and repr(field) in msg and what in msg, msg
    return msg


def test_saved_files_carry_checksums_and_load(hclt_file, lvd_file):
    with h5py.File(hclt_file, "r") as f:
        sums = json.loads(f["tree"].attrs["sha256"])
        assert sorted(sums) == ["edge_index", "leaf_index", "params/edges", "params/leaves", "params/root",
                                "parents"]
    pc.load(hclt_file)
    pc.load(lvd_file)


def test_a_file_without_checksums_still_loads(hclt_file):
    with h5py.File(hclt_file, "a") as f:
        del f["tree"].attrs["sha256"]
    pc.load(hclt_file)


def test_bit_flips_in_the_raw_file_are_caught(hclt_file, tmp_path):
    with h5py.File(hclt_file, "r") as f:
        d = f["tree/params/edges"]
        offset, nbytes = d.id.get_offset(), d.id.get_storage_size()
    raw = bytearray(hclt_file.read_bytes())
    raw[offset + nbytes // 2] ^= 0x01  # the lowest mantissa bit of one probability
    flipped = tmp_path / "flipped.h5"
    flipped.write_bytes(bytes(raw))
    _refused(flipped, "params/edges", "does not match its checksum")
    raw[offset:offset + 256] = bytes(b ^ 0xFF for b in raw[offset:offset + 256])  # a 256-byte flip
    flipped.write_bytes(bytes(raw))
    _refused(flipped, "params/edges", "")


@pytest.mark.parametrize("field,edit,what", [
    ("params/edges", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a), "NaN or infinite"),
    ("params/root", lambda a: a * np.where(np.arange(a.size).reshape(a.shape) == 0, -1, 1), "negative"),
    ("params/leaves", lambda a: a * 1.5, "not normalized over dim 2"),
    ("params/leaves", lambda a: np.concatenate([a, a[:, :, :1]], axis=2) / 2, "has shape"),  # one more category
    ("params/edges", lambda a: a.astype(np.int64), "expected floating point"),
    ("edge_index", lambda a: a + 100, "expected [-1, "),
    ("leaf_index", lambda a: a - 1, "expected [0, "),
    ("leaf_index", lambda a: a[:-1], "one entry per node"),
    ("parents", lambda a: np.where(a == -1, 1, a), "roots"),
])
def test_tampered_tables_and_indices_name_the_field(hclt_file, field, edit, what):
    _edit(hclt_file, f"tree/{field}", edit)
    _refused(hclt_file, field, what)


def test_a_cycle_in_parents(hclt_file):
    def self_loop(parents):
        v = int(np.flatnonzero(parents >= 0)[0])
        parents[v] = v  # still one root and every value in range, but v hangs off no tree
        return parents
    _edit(hclt_file, "tree/parents", self_loop)
    _refused(hclt_file, "parents", "does not form a tree")


def test_unexpected_table_and_missing_leaves(lvd_file):
    with h5py.File(lvd_file, "a") as f:
        f["top/params/leaves"] = np.ones((1, 1, 2, f["top"].attrs["num_latents"]), np.float32) / 2
    _refused(lvd_file, "params/leaves", "is not expected")
    with h5py.File(lvd_file, "a") as f:
        del f["top/params/leaves"]
        del f["patch/params/leaves"]
    with pytest.raises(io.ArtifactError, match=r"pc_latent\.h5:/patch: missing field 'params/leaves'"):
        pc.load(lvd_file)


def test_lvd_attributes_that_do_not_fit_the_trees(lvd_file, tmp_path):
    other = tmp_path / "other.h5"
    shutil.copy(lvd_file, other)
    with h5py.File(other, "a") as f:
        f.attrs["image_shape"] = [8, 8, 1]
    with pytest.raises(io.ArtifactError, match=r"other\.h5: attributes 'image_shape'"):
        pc.load(other)
    with h5py.File(lvd_file, "a") as f:
        del f.attrs["mode"]
    with pytest.raises(io.ArtifactError, match=r"pc_latent\.h5: missing attribute 'mode'"):
        pc.load(lvd_file)


def test_a_bad_attribute_names_file_group_and_attribute(hclt_file):
    with h5py.File(hclt_file, "a") as f:
        f["tree"].attrs["num_latents"] = 0
    with pytest.raises(io.ArtifactError, match=r"pc_final\.h5:/tree: attribute 'num_latents' is 0"):
        pc.load(hclt_file)


def test_trained_circuits_stay_within_the_tolerance(tmp_path):
    c = _hclt()
    X = as_t(np.random.default_rng(1).integers(0, 3, (200, 5)))
    pc.em(c, X, epochs=20, batch_size=7, step_size=0.9, pseudocount=0.0)
    pc.save(c, tmp_path / "t.h5")
    pc.load(tmp_path / "t.h5")
    for name, t in c.params.items():
        s = t.double().sum(c.norm_dims[name])
        assert float((s - 1).abs().max()) < validate.TOLERANCE / 100, name
