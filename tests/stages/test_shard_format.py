"""The lvd.pc_shard format (lvd.shardio.write_shard / read_shard) and lvd.shardio.SpillArray.

The fixture in data/pc_shard_v1/ was written by latent_em and grow_patch_pcs at format version 1
(make_shard_fixture.py); gathering it must keep giving the circuit whose digest was recorded
when it was written."""

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from lvd import io, pc, shardio
from lvd.pc import validate
from lvd.stages import inputs, latent_top_em

V1 = Path(__file__).parent / "data" / "pc_shard_v1"
# digest of the gathered patch tables, histories, sizes (and for grow: masks, heads, pruned
# entries and the grown latents), recorded when the fixture was written
GATHERED = {"latent_em": "119969ded3cfb438ddb3", "grow": "94626deaad3c5a4eb90b"}


def digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[k]))
        h.update(f"{k}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def gathered(run: str):
    d = V1 / run
    c = pc.load(d / "pc_init.h5")
    g = latent_top_em.gather(c, [str(d / "shard1.h5"), str(d / "shard0.h5")], str(d / "pc_init.h5"),
                             str(d / "latents.h5"))
    return c, g


@pytest.mark.parametrize("run", ["latent_em", "grow"])
def test_version_1_shards_gather_to_the_recorded_circuit(run):
    c, g = gathered(run)
    arrays = {f"params/{k}": v.numpy() for k, v in c.patch.params.items()}
    arrays.update(history=g["history"], num_examples=g["num_examples"])
    if run == "grow":
        pg = g["pg"]
        z = inputs.load_latents(str(V1 / run / "latents.h5"), 40, 16)[0]
        arrays.update({"masks/edges": pg.edges.numpy(), "masks/root": pg.root.numpy(), "num_heads": pg.num_heads,
                       "pruned": pg.pruned, "grown_z": pg.grown_latents(z, c.patch.num_heads)[0],
                       **{f"heads/{k}": v for k, v in pg.heads.items()}})
    else:
        assert g["pg"] is None
    assert digest(arrays) == GATHERED[run]


@pytest.mark.parametrize("run", ["latent_em", "grow"])
def test_write_shard_rewrites_a_version_1_shard_identically(run, tmp_path):
    """read_shard, then write_shard with what it read: the same fields, bytes, attributes and
    checksum attributes as the file the stage wrote."""
    src = V1 / run / "shard1.h5"
    sh = shardio.read_shard(src)
    assert (sh.shard, sh.num_shards) == (1, 2) and sh.groups.tolist() == list(range(1, sh.num_groups, 2))
    assert (sh.grown is not None) == (run == "grow")
    own = ("format", "format_version", "writer", "created", "config", io.CHECKSUM_ATTR, shardio.GROWN_CHECKSUM_ATTR)
    attrs = {k: v for k, v in sh.attrs.items() if k not in own and k not in io._provenance()}
    out = tmp_path / "again.h5"
    shardio.write_shard(out, "tests", {}, attrs, groups=sh.groups, num_examples=sh.num_examples, history=sh.history,
                   params=sh.params, grown=sh.grown)
    with h5py.File(src, "r") as a, h5py.File(out, "r") as b:
        names_a, names_b = [], []
        a.visit(names_a.append)
        b.visit(names_b.append)
        assert sorted(names_a) == sorted(names_b)
        for name in names_a:
            if isinstance(a[name], h5py.Dataset):
                assert a[name].dtype == b[name].dtype and np.array_equal(a[name][()], b[name][()], equal_nan=True)
        for k in attrs.keys() | {io.CHECKSUM_ATTR, shardio.GROWN_CHECKSUM_ATTR}:
            assert str(a.attrs.get(k)) == str(b.attrs.get(k)), k


def test_io_checksums_are_the_engines():
    """One digest for every artifact: lvd.pc files and shards hash a field the same way."""
    rng = np.random.default_rng(0)
    arrays = {"a": rng.random((3, 4), dtype=np.float32), "b": np.arange(5), "c": np.zeros((0, 2), bool)}
    assert io.checksums(arrays) == validate.checksums(arrays)


def copy(tmp_path, run="grow", shard=0) -> Path:
    p = tmp_path / f"{run}{shard}.h5"
    shutil.copy(V1 / run / f"shard{shard}.h5", p)
    return p


def test_read_shard_refuses_other_formats_and_versions(tmp_path):
    p = copy(tmp_path)
    with h5py.File(p, "a") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(io.ArtifactError, match=r"grow0\.h5: attribute 'format_version' is 2, expected 1 for lvd.pc_shard"):
        shardio.read_shard(p)
    with pytest.raises(io.ArtifactError, match=r"pc_init\.h5: attribute 'format' is 'lvd.pc', expected 'lvd.pc_shard'"):
        shardio.read_shard(V1 / "grow" / "pc_init.h5")


@pytest.mark.parametrize("edit,match", [
    (lambda f: f.attrs.__delitem__("pc_fingerprint"), r"missing attribute 'pc_fingerprint'"),
    (lambda f: f.__delitem__("num_examples"), r"missing field 'num_examples'"),
    (lambda f: f.__delitem__("masks/active"),
     r"has \['heads', 'num_heads', 'pruned', 'masks/edges', 'masks/root'\] but not \['masks/active'\]"),
    (lambda f: f.attrs.__setitem__("sha256", "not json"), r"attribute 'sha256' is not a JSON object of digests"),
    (lambda f: f.attrs.__setitem__("shard", 5), r"attribute 'shard' is 5, expected 0 <= shard < num_shards=2"),
])
def test_read_shard_names_the_file_and_the_field(tmp_path, edit, match):
    p = copy(tmp_path)
    with h5py.File(p, "a") as f:
        edit(f)
    with pytest.raises(io.ArtifactError, match=r"grow0\.h5: " + match):
        shardio.read_shard(p)


def test_read_shard_checks_both_checksums_and_the_layout(tmp_path):
    p = copy(tmp_path)
    with h5py.File(p, "a") as f:     # a grown field edited, its checksum left as it was
        heads = f["heads"][()]
        heads[0] = 1 - heads[0]
        del f["heads"]
        f["heads"] = heads
    with pytest.raises(io.ArtifactError, match=r"grow0\.h5: field 'heads' does not match its checksum "
                                               r"\(attribute 'pg_checksums'\)"):
        shardio.read_shard(p)
    with h5py.File(p, "a") as f:     # without checksums the layout is still checked
        del f.attrs["sha256"], f.attrs["pg_checksums"]
        del f["heads"]
        f["heads"] = heads[:-1]
    with pytest.raises(shardio.ShardError, match=r"grow0\.h5: field 'heads' has \d+ entries, expected \d+ "
                                            r"\(the shard's num_examples\)"):
        shardio.read_shard(p)
    with h5py.File(p, "a") as f:
        del f["heads"]
        f["heads"] = heads
        root = f["params/root"][()]
        del f["params/root"]
        f["params/root"] = np.concatenate([root, root])
    with pytest.raises(shardio.ShardError, match=r"grow0\.h5: field 'params/root' is float32 \(2, 3, 3\), expected a "
                                            r"float table of 1 group\(s\) on axis 0"):
        shardio.read_shard(p)


def test_write_shard_refuses_a_bad_layout(tmp_path):
    sh = shardio.read_shard(V1 / "latent_em" / "shard0.h5")
    attrs = {k: sh.attrs[k] for k in shardio.SHARD_ATTRS}
    arrays = dict(groups=sh.groups, num_examples=sh.num_examples, history=sh.history, params=sh.params)
    with pytest.raises(shardio.ShardError, match=r"o\.h5: field 'history' has 3 rows, expected 16"):
        shardio.write_shard(tmp_path / "o.h5", "tests", {}, attrs, **{**arrays, "history": sh.history[:3]})
    with pytest.raises(shardio.ShardError, match=r"o\.h5: attributes \['latents_fingerprint'\] not given"):
        shardio.write_shard(tmp_path / "o.h5", "tests", {}, {k: v for k, v in attrs.items() if k != "latents_fingerprint"},
                       **arrays)
    assert not (tmp_path / "o.h5").exists()


def test_gather_refuses_a_shard_of_another_circuit(tmp_path):
    """A well-formed shard whose tables do not fit the circuit: named by gather, not the reader."""
    c = pc.load(V1 / "grow" / "pc_init.h5")
    with pytest.raises(shardio.ShardError, match=r"pc_fingerprint' does not match"):
        latent_top_em.gather(c, [str(V1 / "latent_em" / "shard0.h5")], str(V1 / "grow" / "pc_init.h5"),
                             str(V1 / "grow" / "latents.h5"))


def test_spill_array_round_trip_and_cleanup(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(50, 3, 4)) * 20 - 100).astype(np.float32)      # [N, m, K]
    a[0, 0, 1] = -np.inf
    with shardio.SpillArray(tmp_path / "out.h5", a.shape, tag="lls") as s:
        assert s.path.name == f".out.h5.lls-{os.getpid()}.h5" and len(s) == 50
        for i in range(0, 50, 16):
            s.write(i, a[i:i + 16])
        got = s[np.array([7, 3, 4, 5])]                                  # sorted: rows 3, 4, 5, 7
        np.testing.assert_allclose(got, a[[3, 4, 5, 7]], rtol=1e-3, atol=0)
        np.testing.assert_allclose(s[np.arange(10, 20)], a[10:20], rtol=1e-3)
        assert np.isfinite(s[[0]]).all() and s[[0]][0, 0, 1] < -5e4      # -inf kept finite, far below
    assert list(tmp_path.iterdir()) == []
    s.close()                                                             # twice is harmless
