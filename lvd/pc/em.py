"""EM for circuits: flows by autograd, the one update rule, epochs of the one schedule.

Flows (expected counts) are the gradients of the summed per-example log-likelihoods with
respect to the log-parameter tables (lvd.pc.tree computes them directly in its backward).
The update (docs/method.md, "EM"), for a distribution with n entries:

    new = (F + a / n) / (sum F + a);   params <- (1 - s) * params + s * new

with step size s and pseudocount a. Full-batch EM accumulates flows over the epoch and
updates once. Tied parameters are single table rows, so their flows already add up. The step
size of every step comes from lvd.pc.schedule (``Schedule.step_size_at``: a list of phases,
mini-batch or full-batch), and epoch e of a schedule shuffles with ``Schedule.epoch_seed(e)``:
``em_epoch`` runs one epoch of a Schedule, ``em`` a whole one. Every EM loop of the project
runs its epochs through ``em_epoch`` (``em``, lvd.training's loop of the stages) or, for
independent groups trained in one batch, through ``pc.em_groups`` with the same Schedule.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from lvd.pc.queries import check_values, values_checked
from lvd.pc.schedule import Phase, Schedule
from lvd.pc import _fused_update, distributed
from lvd.pc._cpu import index_add
from lvd.pc.treell import log_handles, sparse_leaf_flows
from lvd.progress import Progress

log = logging.getLogger("lvd.pc.em")


def flows(circuit, batch: dict, names=None, sparse: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(flows per parameter table, per-example lls [B]) for one batch.

    The objective gets autograd handles of the log tables (lvd.pc.treell.log_handles): no log of
    any table is computed, and nothing is read back from the device.

    sparse=True (what ``em_epoch`` asks for): a leaf table whose rows the batch reads few of (an
    HMM's emission table: 512 x 32 tokens of a 33,278-word vocabulary) may get its flows as a
    sparse COO tensor (lvd.pc.treell.sparse_leaf_flows; ``.to_dense()`` gives the table), which
    ``update`` applies without zero-filling, scattering into and passing over a dense table of
    flows. The default returns dense tables."""
    logp = log_handles(circuit.params, lambda k: names is None or _selected(k, names))
    for k, h in logp.items():
        if sparse and k.split(".")[-1] == "leaves" and h.requires_grad:
            sparse_leaf_flows(h)
    lls = circuit.objective(logp, batch)
    wanted = [k for k, v in logp.items() if v.requires_grad]
    grads = torch.autograd.grad(lls.sum(), [logp[k] for k in wanted], allow_unused=True)
    out = {k: (g if g is not None else torch.zeros_like(circuit.params[k])) for k, g in zip(wanted, grads)}
    return out, lls.detach()


def _selected(name: str, names) -> bool:
    return any(name == n or name.startswith(n) for n in names)


# A distribution whose flow plus pseudocount is below the smallest normal float32 has no EM
# estimate and keeps its values: its flows are numerically zero, and step / (a denormal sum)
# overflows to inf (seen with pseudocount 0: a row with total flow 2e-40 turned NaN).
MIN_DENOM = torch.finfo(torch.float32).tiny


def target(F: torch.Tensor, p: torch.Tensor, dim: int, pseudocount: float) -> torch.Tensor:
    """The EM estimate (F + a / n) / (sum F + a) over ``dim``; a distribution with no flow and
    no pseudocount has no estimate and keeps its values ``p``. (No value is read back from the
    device: the test of the denominators is elementwise.)"""
    n = F.shape[dim]
    denom = F.sum(dim, keepdim=True).add_(pseudocount)
    live = denom >= MIN_DENOM
    inv = torch.where(live, 1.0 / denom, 0.0)          # [.., 1, ..]: per distribution
    new = torch.addcmul(inv * (pseudocount / n), F, inv)
    return new.addcmul_(p, (~live).to(p.dtype))        # p where there is no estimate


def em_step(p: torch.Tensor, F: torch.Tensor, dim: int, step_size, pseudocount: float) -> None:
    """p <- (1 - s) p + s (F + a / n) / (sum F + a) in place, over ``dim``, without reading
    anything back from the device: one sum, then two passes over the table (the target is never
    materialized). A distribution with no flow and no pseudocount keeps its values.

    F may be a sparse COO tensor (sparse over the leading dimensions, ``dim`` among them;
    duplicate entries add up): then every entry gets the update with zero flow (one pass) and
    the entries with flow get their share on top (``_em_step_sparse``)."""
    if F.is_sparse:
        if dim % p.dim() < F.sparse_dim():
            return _em_step_sparse(p, F, dim % p.dim(), step_size, pseudocount)
        F = F.to_dense()
    if _fused_update.em_update(p, F, dim, step_size, pseudocount, MIN_DENOM):   # CPU float32: one kernel
        return
    n = F.shape[dim]
    denom = F.sum(dim, keepdim=True).add_(pseudocount)
    live = denom >= MIN_DENOM
    w = torch.where(live, step_size / denom, 0.0)      # [.., 1, ..]: s / (sum F + a)
    keep = torch.where(live, 1.0 - step_size, 1.0)     # (1 - s), or 1 where there is no estimate
    step = torch.addcmul(w * (pseudocount / n), F, w)  # s (F + a / n) / (sum F + a)
    torch.addcmul(step, p, keep, out=p)


def _em_step_sparse(p, F, dim: int, step_size, pseudocount: float) -> None:
    """em_step for a sparse COO F (uncoalesced is fine), with the same formula split in two:
    p <- keep * p + w * a / n everywhere (per distribution: w = s / (sum F + a), keep = 1 - s,
    or w = 0, keep = 1 without an estimate), then p[entry] += w * F[entry] at the entries."""
    S = F.sparse_dim()
    ind, vals = F._indices(), F._values()                  # [S, nnz], [nnz, *dense]
    sizes, dense = p.shape[:S], p.shape[S:]
    n = sizes[dim]
    row = torch.zeros_like(ind[0])                         # entry -> row of p.view(-1, *dense)
    dist = torch.zeros_like(ind[0])                        # entry -> its distribution
    for i, size in enumerate(sizes):
        row = row * size + ind[i]
        if i != dim:
            dist = dist * size + ind[i]
    shape = list(p.shape)
    shape[dim] = 1                                         # the per-distribution shape
    nd = math.prod(sizes) // n                             # distributions (times the dense shape)
    total = vals.sum(0, keepdim=True) if nd == 1 else index_add(vals.new_zeros(nd, *dense), dist, vals)
    denom = total.view(shape).add_(pseudocount)
    live = denom >= MIN_DENOM
    w = torch.where(live, step_size / denom, 0.0)
    keep = torch.where(live, 1.0 - step_size, 1.0)
    add = w * (pseudocount / n)
    flat_p = p.view(-1, *dense)
    if len(dense) == 1 and dim == S - 1 and _fused_update.sparse_step(      # CPU float32: one kernel
            flat_p, n, *(t.expand(shape).reshape(nd, -1) for t in (keep, add, w)), row, vals, dist):
        return
    torch.addcmul(add, p, keep, out=p)                     # the update with zero flow
    w = w.view(nd, *dense)
    share = vals * (w[0] if nd == 1 else w.index_select(0, dist))   # one distribution: no gather
    index_add(flat_p, row, share)


def _accumulate(acc: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """acc + F for flows summed over an epoch, dense as soon as one term is (sparse terms would
    pile up one entry per token)."""
    if acc.is_sparse:
        acc = acc.to_dense()
    return acc.add_(F)


def masked_(p: torch.Tensor, mask: torch.Tensor, dim: int) -> None:
    """In place: zero the entries of ``p`` outside ``mask`` and renormalize over ``dim`` (a
    distribution left without mass keeps its masked values as they are, i.e. zero)."""
    p.mul_(mask)
    p.div_(p.sum(dim, keepdim=True).clamp_min(1e-38))


@torch.no_grad()
def update(circuit, flow: dict, step_size: float, pseudocount: float) -> None:
    """Apply the EM update to every table that has flows. A table with a mask (the circuit's
    ``masks``, LVD-PG's pruned entries) is then zeroed outside it and renormalized, so the
    pseudocount gives a pruned entry no mass (no value is read back from the device)."""
    masks = getattr(circuit, "masks", None) or {}
    for name, F in flow.items():
        dim = circuit.norm_dims[name.split(".")[-1]]
        p = circuit.params[name]
        em_step(p, F, dim, min(step_size, 1.0), pseudocount)
        if name in masks:
            masked_(p, masks[name], dim)


def _batches(N: int, batch_size: int, shuffle: bool, gen: np.random.Generator):
    order = gen.permutation(N) if shuffle else np.arange(N)
    for i in range(0, N, batch_size):
        yield np.sort(order[i:i + batch_size])


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """t on ``device``; host -> CUDA through pinned memory without waiting for the device."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _take(arrays: dict, rows: np.ndarray, device, circuit=None) -> dict:
    """The rows of every array as tensors on ``device``; with ``circuit``, observed values read
    from a store that is neither an array nor a tensor (h5py) are checked on the host first."""
    out = {}
    for k, a in arrays.items():
        if a is None:
            continue
        if torch.is_tensor(a):
            out[k] = a[_to_device(torch.from_numpy(rows), a.device)]
        else:
            out[k] = np.ascontiguousarray(a[rows])
    if circuit is not None and "x" in out and not _in_memory(arrays["x"]):
        _check_host(circuit, out["x"], out.get("missing"))
    return {k: _to_device(t if torch.is_tensor(t) else torch.from_numpy(t), device) for k, t in out.items()}


def _in_memory(a) -> bool:
    return isinstance(a, np.ndarray) or torch.is_tensor(a)


def _check_host(circuit, x: np.ndarray, missing) -> None:
    """lvd.pc.queries.check_values, on the host (numpy)."""
    num_vars, num_cats = circuit.num_vars, getattr(circuit, "num_cats", 0)
    if x.shape[-1] != num_vars:
        raise ValueError(f"x has {x.shape[-1]} variables per example, expected num_vars = {num_vars}")
    if num_cats and x.size:
        obs = x if missing is None else np.where(np.asarray(missing, bool), 0, x)
        lo, hi = obs.min(), obs.max()
        if lo < 0 or hi >= num_cats:
            raise ValueError(f"observed values must lie in [0, {num_cats}) (num_cats), found [{lo}, {hi}]")


def check_data(circuit, x, missing=None, chunk: int = 8192) -> None:
    """Check observed values [N, ...] (array or tensor) once, in chunks: EM's steps then skip the
    per-batch check, which reads a min and a max back from the device. Arrays are checked on
    the host, tensors where they live (two values read back per chunk)."""
    if x is None or not _in_memory(x):
        return
    for i in range(0, len(x), chunk):
        m = None if missing is None else missing[i:i + chunk]
        if torch.is_tensor(x):
            check_values(x[i:i + chunk], None if m is None else torch.as_tensor(m, device=x.device).bool(),
                         circuit.num_vars, getattr(circuit, "num_cats", 0))
        else:
            _check_host(circuit, np.asarray(x[i:i + chunk]), None if m is None else np.asarray(m))


def em_epoch(circuit, sched: Schedule, epoch: int, data=None, *, gen: np.random.Generator | None = None,
             shuffle: bool = True, params=None, logger=None, checked: bool = False, **arrays) -> float:
    """Run epoch ``epoch`` (0-based, counted over the whole schedule) of ``sched`` on ``circuit``
    in place; returns its mean train ll.

    An epoch of a mini-batch phase updates after every batch with the schedule's step size of
    that step (``Schedule.step_size_at``); an epoch of a full-batch phase (or past the
    schedule's end) accumulates the flows of every batch and updates once with its phase's step
    size (1 = exact EM), its mean ll being the one at the start of the epoch. data, arrays,
    params: as for ``em``. gen: the shuffling generator (default, the one rule of every loop: one
    seeded with ``sched.epoch_seed(epoch)``). logger: where the progress lines go (default
    lvd.pc.em). checked: the caller has run ``check_data`` on these arrays (otherwise it runs
    once here); the steps never read values back from the device.

    Under a process group of several processes (lvd.pc.distributed) each process computes the
    flows of its share of every batch (rows rank, rank + N, ..), the flows are summed over the
    processes before each update (full-batch: once, at the end), and the mean ll is the
    whole batch's; every process must call it with the same data, schedule and generator.
    """
    arrays = {"x": data, **arrays}
    N = next(len(a) for a in arrays.values() if a is not None)
    if N == 0:
        raise ValueError("em: no training examples")
    full_batch = sched.is_full_batch(epoch)
    nb = sched.num_batches(N)
    gen = np.random.default_rng(sched.epoch_seed(epoch)) if gen is None else gen
    if not checked:
        check_data(circuit, arrays["x"], arrays.get("missing"))   # once per epoch, not per step
    acc, seen, mine_seen = None, 0, 0
    rank, size = distributed.world()          # data-parallel EM (lvd.pc.distributed): a share of every batch
    ll_sum = torch.zeros((), dtype=torch.float64, device=circuit.device)   # read once per epoch
    bar = Progress(nb, f"EM epoch {epoch + 1}/{sched.total_epochs}", logger or log)  # lvd.progress
    for j, rows in enumerate(_batches(N, sched.batch_size, shuffle and not full_batch, gen)):
        mine = rows if size == 1 else distributed.local_rows(rows, rank, size)
        if len(mine):
            with values_checked():
                f, lls = flows(circuit, _take(arrays, mine, circuit.device, circuit), params, sparse=size == 1)
            ll_sum += lls.double().sum()
        else:                                 # fewer rows than processes: this one adds nothing
            f = _zero_flows(circuit, params)
        seen += len(rows)
        mine_seen += len(mine)
        bar.update(ll=lambda n=mine_seen: float(ll_sum) / max(n, 1))   # read only when shown
        if full_batch:
            acc = f if acc is None else {k: _accumulate(acc[k], f[k]) for k in acc}
        else:
            update(circuit, distributed.sum_flows(f), sched.step_size_at(epoch * nb + j, nb), sched.pseudocount)
    bar.close()
    if full_batch:                            # (summed over the processes once, at the end)
        update(circuit, distributed.sum_flows(acc), sched.full_batch_step(epoch), sched.pseudocount)
    return float(distributed.sum_scalar(ll_sum)) / N


def _zero_flows(circuit, names) -> dict:
    """Zero flows of every table ``flows`` would return (a process with no rows of a batch)."""
    return {k: torch.zeros_like(p) for k, p in circuit.params.items() if names is None or _selected(k, names)}


def em(circuit, data=None, epochs: int = 1, batch_size: int = 512, step_size: float = 0.1,
       pseudocount: float = 0.1, full_batch: bool = False, step_size_end: float | None = None,
       params=None, shuffle: bool = True, seed: int = 0, callback=None, schedule: Schedule | None = None,
       **arrays) -> list[float]:
    """Train ``circuit`` in place by EM; returns the mean train log-likelihood of each epoch.

    data: int64 [N, V] (array, tensor or h5py dataset) or None for circuits without leaves.
    Extra aligned arrays (missing=[N, V] bool, z=..., evidence=[N, ...]) go to
    ``circuit.objective``. schedule: the Schedule to run (lvd.pc.schedule: its phases, batch
    size, pseudocount and seed); without it, the keywords give one phase: ``epochs`` mini-batch
    epochs of ``batch_size`` rows with the step size annealed linearly from ``step_size`` to
    ``step_size_end`` over all steps (constant if None), or with ``full_batch`` ``epochs``
    full-batch epochs (flows of the whole epoch, one update of ``step_size`` each: 1.0 = exact
    EM); ``pseudocount``; ``seed``. Epoch e shuffles with a seed derived from (seed, e)
    (``Schedule.epoch_seed``). params: names (or prefixes like "top.") of the tables to train;
    None = all. callback(epoch, mean_ll) is called after every epoch.
    """
    if schedule is None:
        phase = Phase.full(epochs, step_size) if full_batch else Phase(epochs, step_size, step_size_end)
        schedule = Schedule(phases=[phase], batch_size=batch_size, pseudocount=pseudocount, seed=seed)
    else:
        given = {k: v for k, v, default in (("epochs", epochs, 1), ("batch_size", batch_size, 512),
                                            ("step_size", step_size, 0.1), ("pseudocount", pseudocount, 0.1),
                                            ("full_batch", full_batch, False), ("step_size_end", step_size_end, None),
                                            ("seed", seed, 0)) if v != default}
        if given:
            raise ValueError(f"em: a schedule and its settings {sorted(given)} given; put them in the schedule")
    history = []
    check_data(circuit, data, arrays.get("missing"))      # once; the steps skip the check
    for epoch in range(schedule.total_epochs):
        t0 = time.perf_counter()
        history.append(em_epoch(circuit, schedule, epoch, data, shuffle=shuffle, params=params, checked=True,
                                **arrays))
        log.info("EM epoch %d/%d: mean train ll %.4f (%.1f s)", epoch + 1, schedule.total_epochs, history[-1],
                 time.perf_counter() - t0)
        if callback is not None:
            callback(epoch, history[-1])
    return history


@torch.no_grad()
def mean_log_likelihood(circuit, data=None, batch_size: int = 1024, **arrays) -> float:
    """Mean per-example log-likelihood over a dataset, in batches."""
    arrays = {"x": data, **arrays}
    N = next(len(a) for a in arrays.values() if a is not None)
    total = torch.zeros((), dtype=torch.float64, device=circuit.device)
    logp = circuit.log_handles() if hasattr(circuit, "log_handles") else circuit.log_params()
    check_data(circuit, arrays["x"], arrays.get("missing"))
    for i in range(0, N, batch_size):
        rows = np.arange(i, min(i + batch_size, N))
        batch = _take(arrays, rows, circuit.device, circuit)
        with values_checked():
            total += circuit.objective(logp, batch).double().sum()
    return float(total) / N
