"""EM for circuits: flows by autograd, the one update rule, epochs of the one schedule.

Flows (expected counts) are the gradients of the summed per-example log-likelihoods with
respect to the log-parameter tables (lvd.pc.tree computes them directly in its backward).
The update (../shared/docs/method.md section 5), for a distribution with n entries:

    new = (F + a / n) / (sum F + a);   params <- (1 - s) * params + s * new

with step size s and pseudocount a. Full-batch EM accumulates flows over the epoch and
updates once. Tied parameters are single table rows, so their flows already add up. The step
size of every mini-batch step comes from lvd.pc.schedule (``Schedule.step_size_at``):
``em_epoch`` runs one epoch of a Schedule, ``em`` a whole one-off run.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from lvd.pc.schedule import FULL_BATCH_STEP, Schedule
from lvd.progress import Progress

log = logging.getLogger("lvd.pc.em")


def flows(circuit, batch: dict, names=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(flows per parameter table, per-example lls [B]) for one batch."""
    logp = {k: v.detach().clamp_min(1e-38).log().requires_grad_(names is None or _selected(k, names))
            for k, v in circuit.params.items()}
    lls = circuit.objective(logp, batch)
    wanted = [k for k, v in logp.items() if v.requires_grad]
    grads = torch.autograd.grad(lls.sum(), [logp[k] for k in wanted], allow_unused=True)
    out = {k: (g if g is not None else torch.zeros_like(logp[k])) for k, g in zip(wanted, grads)}
    return out, lls.detach()


def _selected(name: str, names) -> bool:
    return any(name == n or name.startswith(n) for n in names)


def target(F: torch.Tensor, p: torch.Tensor, dim: int, pseudocount: float) -> torch.Tensor:
    """The EM estimate (F + a / n) / (sum F + a) over ``dim``; a distribution with no flow and
    no pseudocount has no estimate and keeps its values ``p``."""
    n = F.shape[dim]
    denom = F.sum(dim, keepdim=True).add_(pseudocount)
    new = (F + pseudocount / n).div_(denom)
    if not bool((denom > 0).all()):
        new = torch.where(denom > 0, new, p)
    return new


@torch.no_grad()
def update(circuit, flow: dict, step_size: float, pseudocount: float) -> None:
    """Apply the EM update to every table that has flows."""
    for name, F in flow.items():
        dim = circuit.norm_dims[name.split(".")[-1]]
        p = circuit.params[name]
        p.lerp_(target(F, p, dim, pseudocount), min(step_size, 1.0))   # (1 - s) p + s new, one pass


def _batches(N: int, batch_size: int, shuffle: bool, gen: np.random.Generator):
    order = gen.permutation(N) if shuffle else np.arange(N)
    for i in range(0, N, batch_size):
        yield np.sort(order[i:i + batch_size])


def _take(arrays: dict, rows: np.ndarray, device) -> dict:
    out = {}
    for k, a in arrays.items():
        if a is None:
            continue
        t = a[rows] if not torch.is_tensor(a) else a[torch.from_numpy(rows)]
        out[k] = torch.as_tensor(np.asarray(t) if not torch.is_tensor(t) else t).to(device)
    return out


def em_epoch(circuit, sched: Schedule, epoch: int, data=None, *, gen: np.random.Generator | None = None,
             shuffle: bool = True, params=None, full_batch_step: float = FULL_BATCH_STEP, logger=None,
             **arrays) -> float:
    """Run epoch ``epoch`` (0-based) of ``sched`` on ``circuit`` in place; returns its mean train ll.

    A mini-batch epoch (epoch < sched.epochs) updates after every batch with the schedule's step
    size of that step (``Schedule.step_size_at``); a full-batch epoch accumulates the flows of
    every batch and updates once with ``full_batch_step`` (1 = exact EM), its mean ll being the
    one at the start of the epoch. data, arrays, params: as for ``em``. gen: the shuffling
    generator (default: one seeded with ``sched.epoch_seed(epoch)``). logger: where the progress
    lines go (default lvd.pc.em).
    """
    arrays = {"x": data, **arrays}
    N = next(len(a) for a in arrays.values() if a is not None)
    if N == 0:
        raise ValueError("em: no training examples")
    full_batch = sched.is_full_batch(epoch)
    nb = sched.num_batches(N)
    gen = np.random.default_rng(sched.epoch_seed(epoch)) if gen is None else gen
    total, acc, seen = 0.0, None, 0
    bar = Progress(nb, f"EM epoch {epoch + 1}/{sched.total_epochs}", logger or log)  # lvd.progress
    for j, rows in enumerate(_batches(N, sched.batch_size, shuffle and not full_batch, gen)):
        f, lls = flows(circuit, _take(arrays, rows, circuit.device), params)
        total += float(lls.double().sum())
        seen += len(rows)
        bar.update(ll=total / seen)
        if full_batch:
            acc = f if acc is None else {k: acc[k] + f[k] for k in acc}
        else:
            update(circuit, f, sched.step_size_at(epoch * nb + j, nb), sched.pseudocount)
    bar.close()
    if full_batch:
        update(circuit, acc, full_batch_step, sched.pseudocount)
    return total / N


def em(circuit, data=None, epochs: int = 1, batch_size: int = 512, step_size: float = 0.1,
       pseudocount: float = 0.1, full_batch: bool = False, step_size_end: float | None = None,
       params=None, shuffle: bool = True, seed: int = 0, callback=None, **arrays) -> list[float]:
    """Train ``circuit`` in place by EM; returns the mean train log-likelihood of each epoch.

    data: int64 [N, V] (array, tensor or h5py dataset) or None for circuits without leaves.
    Extra aligned arrays (missing=[N, V] bool, z=..., evidence=[N, ...]) go to
    ``circuit.objective``. step_size is annealed linearly to ``step_size_end`` over all
    mini-batch steps (constant if None): the steps of ``Schedule(epochs, batch_size=batch_size,
    step_size=step_size, step_size_end=step_size_end)``. full_batch: every epoch accumulates
    the flows of the whole epoch and updates once, with step_size (1.0 = exact EM). One
    shuffling generator seeded with ``seed`` serves all epochs. params: names (or prefixes
    like "top.") of the tables to train; None = all. callback(epoch, mean_ll) is called after
    every epoch.
    """
    sched = Schedule(epochs=0 if full_batch else epochs, full_batch_epochs=epochs if full_batch else 0,
                     batch_size=batch_size, step_size=step_size, step_size_end=step_size_end,
                     pseudocount=pseudocount, seed=seed)
    gen = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        history.append(em_epoch(circuit, sched, epoch, data, gen=gen, shuffle=shuffle, params=params,
                                full_batch_step=step_size, **arrays))
        log.info("EM epoch %d/%d: mean train ll %.4f (%.1f s)", epoch + 1, epochs, history[-1],
                 time.perf_counter() - t0)
        if callback is not None:
            callback(epoch, history[-1])
    return history


@torch.no_grad()
def mean_log_likelihood(circuit, data=None, batch_size: int = 1024, **arrays) -> float:
    """Mean per-example log-likelihood over a dataset, in batches."""
    arrays = {"x": data, **arrays}
    N = next(len(a) for a in arrays.values() if a is not None)
    total = 0.0
    for i in range(0, N, batch_size):
        rows = np.arange(i, min(i + batch_size, N))
        batch = _take(arrays, rows, circuit.device)
        total += float(circuit.objective(circuit.log_params(), batch).double().sum())
    return total / N
