"""Circuits and data for the data-parallel EM tests (tests/pc/test_distributed.py): built the
same way, from seeds, in the test process and in every worker (dist_worker.py)."""

from __future__ import annotations

import numpy as np
import torch

from lvd import pc

# mini-batches of 7 rows: the last of 40 has 5, split 3 / 2 between two processes; the batch of
# 1 row in "hmm1" leaves the second process without rows
CASES = {
    "hclt": dict(n=40, batch_size=7),
    "hmm": dict(n=40, batch_size=7),
    "hmm1": dict(n=9, batch_size=4),
    "lvd": dict(n=40, batch_size=7),
}
SCHED = dict(epochs=1, full_batch_epochs=1, step_size=0.5, step_size_end=0.2, pseudocount=0.1, seed=3)


def make(case: str):
    """(circuit, data [N, V] int64 tensor) of ``case``."""
    rng = np.random.default_rng(0)
    n = CASES[case]["n"]
    if case == "hclt":
        x = torch.from_numpy(rng.integers(0, 4, (n, 9)))
        return pc.hclt(x, num_latents=3, num_cats=4, seed=1), x
    if case in ("hmm", "hmm1"):
        x = torch.from_numpy(rng.integers(0, 11, (n, 6)))
        return pc.hmm(seq_len=6, num_latents=3, vocab_size=11, homogeneous=True, seed=1), x
    if case == "lvd":
        c = pc.lvd_circuit(image_shape=(2, 2, 1), patch_size=1, num_states=3, num_latents=2, num_cats=3,
                           top_parents=[-1, 0, 0, 1], patch_parents=[-1], mode="position", seed=1)
        return c, torch.from_numpy(rng.integers(0, 3, (n, 4)))
    raise KeyError(case)


def train(case: str) -> tuple[dict, list]:
    """Both epochs of SCHED on ``case``: (the tables after them, the epochs' mean lls)."""
    c, x = make(case)
    from lvd.pc import distributed

    distributed.sync_params(c)
    sched = pc.Schedule(batch_size=CASES[case]["batch_size"], **SCHED)
    lls = [pc.em_epoch(c, sched, e, x) for e in range(sched.total_epochs)]
    return {k: v.detach().numpy().copy() for k, v in c.params.items()}, lls
