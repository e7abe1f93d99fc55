"""EM for circuits: flows by autograd, the one update rule, mini-batch and full-batch loops.

Flows (expected counts) are the gradients of the summed per-example log-likelihoods with
respect to the log-parameter tables (lvd.pc.tree computes them directly in its backward).
The update (../shared/docs/method.md section 5), for a distribution with n entries:

    new = (F + a / n) / (sum F + a);   params <- (1 - s) * params + s * new

with step size s and pseudocount a. Full-batch EM accumulates flows over the epoch and
updates once. Tied parameters are single table rows, so their flows already add up.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

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


def em(circuit, data=None, epochs: int = 1, batch_size: int = 512, step_size: float = 0.1,
       pseudocount: float = 0.1, full_batch: bool = False, step_size_end: float | None = None,
       params=None, shuffle: bool = True, seed: int = 0, callback=None, **arrays) -> list[float]:
    """Train ``circuit`` in place by EM; returns the mean train log-likelihood of each epoch.

    data: int64 [N, V] (array, tensor or h5py dataset) or None for circuits without leaves.
    Extra aligned arrays (missing=[N, V] bool, z=..., evidence=[N, ...]) go to
    ``circuit.objective``. step_size is annealed linearly to ``step_size_end`` over all
    mini-batch steps (constant if None). full_batch: flows of the whole epoch, one update.
    params: names (or prefixes like "top.") of the tables to train; None = all.
    callback(epoch, mean_ll) is called after every epoch.
    """
    arrays = {"x": data, **arrays}
    N = next(len(a) for a in arrays.values() if a is not None)
    if N == 0:
        raise ValueError("em: no training examples")
    gen = np.random.default_rng(seed)
    steps = epochs * math.ceil(N / batch_size)
    end = step_size if step_size_end is None else step_size_end
    step, history = 0, []
    for epoch in range(epochs):
        t0, total, acc, seen = time.perf_counter(), 0.0, None, 0
        bar = Progress(math.ceil(N / batch_size), f"EM epoch {epoch + 1}/{epochs}", log)  # lvd.progress
        for rows in _batches(N, batch_size, shuffle and not full_batch, gen):
            f, lls = flows(circuit, _take(arrays, rows, circuit.device), params)
            total += float(lls.double().sum())
            seen += len(rows)
            bar.update(ll=total / seen)
            if full_batch:
                acc = f if acc is None else {k: acc[k] + f[k] for k in acc}
            else:
                s = step_size + (end - step_size) * step / max(steps - 1, 1)
                update(circuit, f, s, pseudocount)
                step += 1
        bar.close()
        if full_batch:
            update(circuit, acc, step_size, pseudocount)
        history.append(total / N)
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
