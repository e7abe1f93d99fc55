"""The EM stages' output tables on tiny fixtures, against tables recorded from earlier code.

Every EM loop runs one Schedule (lvd.pc.schedule: a list of phases, epoch e of the whole schedule
shuffling with a seed from (seed, e)). The stages whose seeding that unification left as it was
give the tables they gave before it, bit for bit: their digests were recorded with the code
before it (``BEFORE``). The stages whose seeding it changed (``CHANGED``: latent_em's and
grow_patch_pcs's groups drew epoch after epoch from one generator per group; materialize_pc's
HCLT-top fit through pc.em drew from one generator for all epochs; latent_top_em's second phase
was seeded from (seed, 1000003)) are pinned to the digests of the unified code
(docs/pc_stages.md, "One EM loop").

Each run uses the reference kernels (``kernels.forced("torch")``) on one thread, on the
committed shard fixture's circuits (tests/stages/data/pc_shard_v1) and the 40 digits it was
written from. float32 arithmetic on the CPU differs in the last bits between instruction sets
(MKL's and numba's code paths), so the digests are compared where the float path is the one
they were recorded on, i.e. where ``canary`` (two EM epochs without shuffling on the fixture)
gives its recorded digest (x86-64 with AVX-512); on any CPU every table is also compared with
the recorded tables (data/em_tables.npz) to a relative 1e-4, which the float path meets (AVX2:
4e-6) and any change of the batches breaks (the seeding's change moved every changed stage's
tables by 2.7e-2 or more).
"""

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import pc_fixtures as fx
from lvd import pc
from lvd.pc import kernels
from lvd.stages import (finetune, grow_patch_pcs, inputs, latent_em, latent_top_em, materialize_pc,
                        train_baseline, train_hclt)
from test_grow_stage import write_embeddings

V1 = Path(__file__).parent / "data" / "pc_shard_v1"
RECORDED = Path(__file__).parent / "data" / "em_tables.npz"   # {"<stage>/<dataset>": array}, this code's
CANARY = "de5276734dd68cfbb4e8"
SCHED = dict(epochs=2, full_batch_epochs=1, batch_size=16)
BEFORE = {   # recorded with the code before the one EM loop; the unified code must match them
    "latent_top_em": "2da6a4a34ddfc1a8ec7e",
    "finetune": "8fbacdf909ba7df91151",
    "train_baseline": "89139e2ef239a9781f70",
    "train_hclt": "c8a40ec5d0428eaededb",
}
CHANGED = {  # seeding unified: recorded with the unified code (before it: the comments)
    "latent_em": "f63a6dbd8f67783634ac",                    # before: 4313193d5d453c25b101
    "latent_top_em_two_phases": "05dc2d991bb73ee879b9",     # before: c4f318cda56918b9d97e
    "grow_patch_pcs": "99567bdef06bfc8de8f7",               # before: b24542ad681a9469c36f
    "materialize_pc_hclt": "9f0a2b5b9aa0f0607f75",          # before: 7186564eb79accaa094b
}


def datasets(path) -> dict:
    """Every dataset of an HDF5 file, by name."""
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        return {n: f[n][()] for n in names}


def digest(arrays: dict) -> str:
    """sha256 (20 hex digits) of arrays by name: names, dtypes, shapes, bytes."""
    h = hashlib.sha256()
    for n in sorted(arrays):
        a = np.ascontiguousarray(arrays[n])
        h.update(f"{n}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def canary(data) -> str:
    """The digest of the fixture's pc_init after a mini-batch and a full-batch EM epoch without
    shuffling: no seed involved, only the float path (matmuls, the fused EM update)."""
    c = pc.load(V1 / "latent_em" / "pc_init.h5")
    x = inputs.load_split(data, "train")
    pc.em(c, x, epochs=1, batch_size=16, step_size=0.5, shuffle=False)
    pc.em(c, x, epochs=1, batch_size=16, full_batch=True, step_size=1.0)
    return digest({k: t.numpy() for k, t in c.params.items()})


def check(runs, stage: str, want: str) -> None:
    got = datasets(getattr(runs, stage)())
    recorded = {k.split("/", 1)[1]: v for k, v in runs.recorded.items() if k.startswith(stage + "/")}
    assert sorted(got) == sorted(recorded), stage
    for name, a in got.items():
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, recorded[name], rtol=1e-4, atol=1e-7, err_msg=f"{stage}: {name}")
        else:
            np.testing.assert_array_equal(a, recorded[name], err_msg=f"{stage}: {name}")
    if runs.exact:
        assert digest(got) == want, f"{stage}: not bit-identical to the recorded tables"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every stage once, lazily: {name: digest of its output}."""
    d = tmp_path_factory.mktemp("digests")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with kernels.forced("torch"):
            yield Runs(d)
    finally:
        torch.set_num_threads(threads)


class Runs:
    def __init__(self, d: Path):
        self.d = d
        self.data = fx.write_digits(d / "data.h5", n_train=40, n_valid=10, n_test=10)
        self.exact = canary(self.data) == CANARY        # the float path the digests were recorded on
        with np.load(RECORDED) as f:
            self.recorded = {k: f[k] for k in f.files}
        self.le = V1 / "latent_em"
        self.shards = [self.le / "shard0.h5", self.le / "shard1.h5"]

    def latent_em(self):
        latent_em.run(latent_em.Config(**SCHED), self.data, self.le / "latents.h5", self.le / "pc_init.h5", 0, 1,
                      self.d / "shard.h5")
        return self.d / "shard.h5"

    def latent_top_em(self, name="top.h5", **cfg):
        latent_top_em.run(latent_top_em.Config(**{**SCHED, **cfg}), self.data, self.le / "latents.h5",
                          self.le / "pc_init.h5", self.shards, self.d / name)
        return self.d / name

    def latent_top_em_two_phases(self):
        return self.latent_top_em("top2.h5", epochs=1, next_phases=({"epochs": 2, "step_size": 0.01,
                                                                      "step_size_end": 0.001},))

    def finetune(self):
        top = self.d / "top.h5"
        if not top.exists():
            self.latent_top_em()
        finetune.run(finetune.Config(**SCHED), self.data, top, self.d / "final.h5")
        return self.d / "final.h5"

    def train_baseline(self):
        train_baseline.run(train_baseline.Config(**SCHED, budget="passes"), self.data, self.le / "pc_init.h5",
                           self.d / "baseline.h5")
        return self.d / "baseline.h5"

    def train_hclt(self):
        train_hclt.run(train_hclt.Config(**SCHED, budget="passes", num_latents=3), self.data, self.le / "pc_init.h5",
                       self.d / "hclt.h5")
        return self.d / "hclt.h5"

    def grow_patch_pcs(self):
        g = V1 / "grow"
        emb = write_embeddings(self.d / "emb.h5", self.data)
        grow_patch_pcs.run(grow_patch_pcs.Config(**SCHED, prune_threshold=1e-3), str(self.data), str(g / "latents.h5"),
                           str(emb), str(g / "pc_init.h5"), 0, 1, str(self.d / "grow.h5"))
        return self.d / "grow.h5"

    def materialize_pc_hclt(self):
        materialize_pc.run(materialize_pc.Config(num_latents=2, top="hclt", top_init_batch_size=16), str(self.data),
                           str(V1 / "grow" / "latents.h5"), str(self.d / "hclt_init.h5"))
        return self.d / "hclt_init.h5"


@pytest.mark.parametrize("stage", sorted(BEFORE))
def test_a_stage_whose_seeding_did_not_change_gives_the_same_tables(runs, stage):
    check(runs, stage, BEFORE[stage])


@pytest.mark.parametrize("stage", sorted(CHANGED))
def test_a_stage_whose_seeding_was_unified_gives_the_recorded_tables(runs, stage):
    check(runs, stage, CHANGED[stage])


def test_the_recorded_tables_are_the_digests():
    with np.load(RECORDED) as f:
        arrays = {k: f[k] for k in f.files}
    for stage, want in {**BEFORE, **CHANGED}.items():
        assert digest({k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(stage + "/")}) == want, stage
