"""EM reads nothing back from the device per mini-batch step, only a bounded number of values per
epoch (GPU-ready hot paths).

Counted on the CPU: every Tensor method that hands a value to the host (item, tolist, bool,
float, int, index, format, numpy, cpu) and boolean-mask indexing (its output size is a
device read) is wrapped while ``pc.em`` / ``pc.em_groups`` run; the count must not grow with the
number of batches per epoch. On CUDA each of these is a host synchronization; there (the
``gpu`` half of the ``device`` fixture) CUDA's own synchronization warnings are counted
(torch.cuda.set_sync_debug_mode).

On the CPU the counts are taken on the torch path (the one CUDA runs): the fused CPU kernels
(lvd.pc._fused) hand their tensors to numba through ``Tensor.numpy``, a zero-copy view of host
memory that reads nothing back from any device, and would be counted as reads here.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from lvd import pc
from lvd.pc import _fused
from pc_bruteforce_lvd import make_lvd

READS = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__format__", "numpy", "cpu"]


class Reads:
    """Counts host reads of tensor values while active (monkeypatched Tensor methods)."""

    def __init__(self, monkeypatch):
        self.n, self.where = 0, []
        for name in READS:
            self._wrap(monkeypatch, name)
        for name in ("__getitem__", "__setitem__"):
            self._wrap(monkeypatch, name, masks_only=True)

    def _wrap(self, monkeypatch, name, masks_only=False):
        orig = getattr(torch.Tensor, name)
        counter = self

        def wrapped(t, *args, **kwargs):
            if not masks_only or _has_mask(args[0]):
                counter.n += 1
                counter.where.append(name)
            return orig(t, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)


def _has_mask(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    """Count on the torch path (see the module docstring)."""
    monkeypatch.setattr(_fused, "ENABLED", False)


def reads_during(monkeypatch, fn, device=torch.device("cpu")) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in seen)
    with monkeypatch.context() as m:
        r = Reads(m)
        fn()
        return r.n


def circuits():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, (64, 6))
    yield "hclt", pc.hclt(X, num_latents=3, num_cats=3, seed=0), {"data": X}
    yield "hmm", pc.hmm(seq_len=5, num_latents=3, vocab_size=4, seed=0), {"data": rng.integers(0, 4, (64, 5))}
    miss = rng.random((64, 6)) < 0.3
    yield "hclt+missing", pc.hclt(X, num_latents=3, num_cats=3, seed=1), {"data": X, "missing": miss}
    Xl = rng.integers(0, 3, (64, 4))
    for name in ("pos4", "shared", "pos4h"):
        yield f"lvd {name}", make_lvd(name, seed=2), {"data": Xl}
    yield "lvd per-group trees", pc.lvd_circuit((2, 2, 1), 2, num_states=4, num_latents=2, num_cats=3,
                                                mode="shared", num_groups=2, top_parents=[-1],
                                                patch_trees=[[-1, 0, 1, 2], [1, -1, 1, 1]], seed=2), {"data": Xl}
    m = make_lvd("pos4", seed=3)
    z = rng.integers(-1, 3, (64, 4))
    yield "lvd pos4 with z", m, {"data": Xl, "z": torch.from_numpy(z)}


@pytest.mark.parametrize("case", list(circuits()), ids=lambda c: c[0])
def test_em_reads_the_device_only_once_per_epoch(monkeypatch, case, device):
    _, circuit, arrays = case
    circuit = copy.deepcopy(circuit).to(device)

    def run(batch_size):
        pc.em(circuit, epochs=2, batch_size=batch_size, step_size=0.2, **arrays)

    run(64)                                                           # warm caches (index tensors)
    few, many = (reads_during(monkeypatch, lambda b=b: run(b), device) for b in (32, 8))   # 2 and 8 steps
    assert few == many, f"{many - few} more device reads with 6 more steps per epoch"
    assert many <= 2 * 2, f"{many} device reads in 2 epochs"         # the epoch's mean ll


def test_mean_log_likelihood_reads_once(monkeypatch, device):
    rng = np.random.default_rng(1)
    X = rng.integers(0, 3, (64, 6))
    c = pc.hclt(X, num_latents=3, num_cats=3, seed=0, device=device)
    pc.mean_log_likelihood(c, X, batch_size=8)
    with pytest.raises(ValueError, match="num_cats"):
        pc.em(c, X + 3, epochs=1)                                     # still checked, once
    assert reads_during(monkeypatch, lambda: pc.mean_log_likelihood(c, X, batch_size=8), device) == 1


def test_em_groups_reads_once_per_epoch(monkeypatch, device):
    rng = np.random.default_rng(2)
    tc = pc.TreeCircuit(pc.tree_structure([-1, 0, 0, 1]), 3, 3, num_groups=3, seed=0, device=device)
    xs = [rng.integers(0, 3, (n, 4)) for n in (40, 16, 0)]
    heads = [np.zeros(len(x), np.int64) for x in xs]

    def run(batch_size):
        pc.em_groups(tc, xs, heads, epochs=2, batch_size=batch_size, step_size=0.3, full_batch_epochs=1)

    run(40)
    few, many = (reads_during(monkeypatch, lambda b=b: run(b), device) for b in (20, 5))
    assert few == many
    assert many <= 2 * 3                                              # per epoch: the members' mean ll


def test_index_tensors_are_made_once_per_device(device):
    c = pc.hclt(np.random.default_rng(3).integers(0, 3, (32, 5)), num_latents=2, num_cats=3, device=device)
    cache = c.structure.on(c.device)
    pc.em(c, np.random.default_rng(4).integers(0, 3, (32, 5)), epochs=1, batch_size=8)
    assert c.structure.on(c.device) is cache
    assert all(v is cache[k] for k, v in c.structure.on(c.device).items())
