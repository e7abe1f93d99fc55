"""Data-parallel EM for one circuit over ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

EM's flows are sums over examples, so N processes that each hold the same circuit split every
mini-batch between them: process r takes the rows r, r + N, r + 2N, .. of the batch, computes
their flows, the flows are summed over the processes (one all-reduce per table), and every
process applies the same update. The parameters stay identical on every process (they start
identical: ``sync_params`` broadcasts process 0's), and the result equals the single-process
run's up to the order of the float sums (the summation order of an all-reduce is the
backend's).

Launch: ``torchrun --nproc-per-node N ...`` (or SLURM's ``srun`` with one task per process)
sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; ``init_from_env`` then joins the group,
on NCCL where the process has a GPU and on gloo otherwise. Every collective has a timeout
(``TIMEOUT_S``, or ``LVD_DIST_TIMEOUT_S``): a worker that died makes the others fail with an
error naming the step, not hang.

lvd.pc.em.em_epoch uses this whenever a group is initialized with more than one process
(``world() > 1``); nothing changes for a single process.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

TIMEOUT_S = 600.0


def world() -> tuple[int, int]:
    """(rank, number of processes) of the default group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """This process writes the outputs (rank 0, or no group)."""
    return world()[0] == 0


def timeout_s() -> float:
    return float(os.environ.get("LVD_DIST_TIMEOUT_S", TIMEOUT_S))


def init_from_env(device: torch.device | str | None = None) -> bool:
    """Join the process group that torchrun or srun describe in the environment (WORLD_SIZE > 1);
    returns whether one was joined. The backend is NCCL for a CUDA ``device``, gloo otherwise."""
    size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_STEP_NUM_TASKS", "1")) or 1)
    if size <= 1 or dist.is_initialized():
        return dist.is_initialized()
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"data-parallel EM: {size} processes asked for (WORLD_SIZE/SLURM_STEP_NUM_TASKS) but {var} "
                               "is not set; launch with torchrun, or set MASTER_ADDR and MASTER_PORT for srun")
    cuda = device is not None and torch.device(device).type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s()))
    return True


def _collective(what: str, fn, *args):
    try:
        return fn(*args)
    except RuntimeError as e:
        rank, size = world()
        raise RuntimeError(f"data-parallel EM: {what} failed on process {rank} of {size} (a worker died, or did "
                           f"not answer within {timeout_s():.0f} s): {e}") from e


def local_rows(rows, rank: int, size: int):
    """This process's share of a batch's rows: rows[rank::size]."""
    return rows[rank::size]


def sum_flows(flows: dict) -> dict:
    """Every process's flows summed, in place, on every process (dense tables; sparse ones are
    made dense first). The tables are flattened into one buffer per dtype and device: one
    all-reduce instead of one per table."""
    if world()[1] == 1:
        return flows
    out = {k: (f.to_dense() if f.is_sparse else f) for k, f in flows.items()}
    groups: dict = {}
    for k, f in out.items():
        groups.setdefault((f.dtype, f.device), []).append(k)
    for keys in groups.values():
        flat = torch.cat([out[k].reshape(-1) for k in keys])
        _collective("the all-reduce of the flows", dist.all_reduce, flat)
        off = 0
        for k in keys:
            n = out[k].numel()
            out[k] = flat[off:off + n].view_as(out[k])
            off += n
    return out


def sum_scalar(t: torch.Tensor) -> torch.Tensor:
    """A tensor summed over the processes (in place)."""
    if world()[1] > 1:
        _collective("the all-reduce of the log-likelihoods", dist.all_reduce, t)
    return t


def sync_params(circuit) -> None:
    """Every process gets process 0's parameter tables (call once, before training)."""
    if world()[1] == 1:
        return
    for k in sorted(circuit.params):
        _collective(f"the broadcast of the parameters ({k})", dist.broadcast, circuit.params[k], 0)


def broadcast_rows(t: torch.Tensor, src: int, device="cpu") -> torch.Tensor:
    """Process ``src``'s rows ``t`` (a CPU tensor, filled there) on every process, in place.
    ``device``: where the group's tensors live (under NCCL the rows travel through the GPU).
    latent_top_em splits its patch pass this way: each process computes some chunks of L and
    every process ends with all of them."""
    if world()[1] == 1:
        return t
    buf = t if torch.device(device).type == "cpu" else t.to(device)
    _collective(f"the broadcast of process {src}'s rows", dist.broadcast, buf, src)
    if buf is not t:
        t.copy_(buf.cpu())
    return t


def agree(flag: bool, device="cpu") -> bool:
    """Process 0's ``flag`` on every process (a stopping decision taken by one clock); ``device``:
    where the group's tensors live (a CUDA device under NCCL)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    _collective("the broadcast of a decision", dist.broadcast, t, 0)
    return bool(t.item() > 0.5)


def broadcast_float(value: float, device="cpu") -> float:
    """Process 0's ``value`` on every process (float64: a clock's reading keeps its microseconds).
    A stage under a time budget reads one clock this way, so every process stops after the same
    epoch."""
    if world()[1] == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    _collective("the broadcast of a clock reading", dist.broadcast, t, 0)
    return float(t.item())


def barrier(what: str, device="cpu") -> None:
    """Wait until every process gets here (an all-reduce of one number: under NCCL a plain barrier
    would need the device ids); ``what`` names the step in a timeout's error."""
    if world()[1] > 1:
        _collective(what, dist.all_reduce, torch.zeros(1, device=device))


def leave() -> None:
    """Leave the process group, if one was joined (the end of a stage)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
