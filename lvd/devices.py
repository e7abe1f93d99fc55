"""Which device a job may use: SLURM's allocation, or one claimed local GPU per process.

    select("auto")    -> the job's GPU if it has one, else the CPU (see below)
    select("cpu")     -> the CPU, nothing claimed
    select("cuda"), select("cuda:N") -> that device, explicitly (an error without CUDA)
    provenance()      -> {"host", "device", "slurm_job_id", "cuda_visible_devices"},
                         stamped into every artifact by lvd.io

"auto" decides in this order:

1. Inside a SLURM job (SLURM_JOB_ID set): SLURM already chose. If it set
   CUDA_VISIBLE_DEVICES (the job asked for ``--gpus``), use ``cuda`` (the first device
   it gave) when torch sees CUDA; otherwise the CPU. Nothing is locked.
2. Locally with N visible GPUs: Snakemake does not hand out GPUs, so the job claims one
   itself. Every device index i has a lock file ``gpu<i>.lock`` in the lock directory
   (``$LVD_DEVICE_LOCK_DIR``, default ``/tmp/lvd-devices-$USER``); the first index whose
   file can be ``flock``-ed exclusively is this process's device. The lock is held until
   the process exits (there is no release: one process is one job), and the kernel drops
   it when the process dies, however it dies, so a crashed job never leaves a stale claim.
3. When all N devices are claimed, the job WAITS: it polls every
   ``$LVD_DEVICE_POLL_SECONDS`` (default 2) and logs who holds the devices, for at most
   ``$LVD_DEVICE_WAIT_SECONDS`` (default 3600), then fails with an error. Waiting (not a
   silent CPU fallback) is right under ``snakemake --resources gpu=N``: Snakemake already
   runs at most N GPU jobs at once, so a wait is short (another workflow or a stray process
   holds a device), while a GPU job silently on the CPU could run for days.
4. No GPU at all: the CPU.

``LVD_FAKE_GPUS=N`` (read only here) pretends N GPUs exist, for tests on CPU machines:
claims work as above, ``select`` returns the CPU, and provenance reports "fake-gpu:<i>".
Rules without a GPU resource should pass ``--device cpu`` so that they claim nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: claiming and provenance do not need it
    import torch

log = logging.getLogger("lvd.devices")

_selected: "torch.device | None" = None
_label: str | None = None  # what provenance reports as the device
_claim: tuple[int, int] | None = None  # (device index, open lock-file descriptor)


def lock_dir() -> Path:
    user = os.environ.get("USER") or str(os.getuid())
    return Path(os.environ.get("LVD_DEVICE_LOCK_DIR") or f"/tmp/lvd-devices-{user}")


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r}: expected a number of seconds") from None


def _fake_gpus() -> int:
    text = os.environ.get("LVD_FAKE_GPUS", "")
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"environment variable LVD_FAKE_GPUS={text!r}: expected a count of GPUs")
    return int(text)


def num_local_gpus() -> int:
    """GPUs this process may claim from: LVD_FAKE_GPUS if set, else what torch sees."""
    fake = _fake_gpus()
    if fake:
        return fake
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _lock_path(index: int) -> Path:
    """Lock file of visible device ``index``, named by the physical id when
    CUDA_VISIBLE_DEVICES renumbers the devices (so "2,3" and "0,1" never collide)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    name = visible[index] if not _fake_gpus() and index < len(visible) else str(index)
    return lock_dir() / f"gpu{name}.lock"


def _try_lock(index: int) -> int | None:
    """An open descriptor holding the exclusive lock on device ``index``, or None if taken."""
    path = _lock_path(index)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)  # record the holder, for the log lines of waiting jobs
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _holders(num: int) -> str:
    out = []
    for i in range(num):
        try:
            text = _lock_path(i).read_text().split()
        except OSError:
            text = []
        out.append(f"{i}:pid {text[0]}" if text else f"{i}:?")
    return ", ".join(out)


def claim(num: int | None = None, wait_seconds: float | None = None) -> int:
    """Claim a free local device index (see the module docstring); waits while all are held.

    A process holds at most one claim; calling again returns the same index.
    """
    global _claim
    if _claim is not None:
        return _claim[0]
    num = num_local_gpus() if num is None else num
    if num < 1:
        raise RuntimeError("no local GPU to claim (torch sees none and LVD_FAKE_GPUS is unset)")
    lock_dir().mkdir(parents=True, exist_ok=True)
    wait = _env_float("LVD_DEVICE_WAIT_SECONDS", 3600.0) if wait_seconds is None else wait_seconds
    poll = _env_float("LVD_DEVICE_POLL_SECONDS", 2.0)
    start = time.monotonic()
    next_log = start
    while True:
        for i in range(num):
            fd = _try_lock(i)
            if fd is not None:
                _claim = (i, fd)
                log.info("claimed local GPU %d of %d (lock %s)", i, num, _lock_path(i))
                return i
        waited = time.monotonic() - start
        if waited >= wait:
            raise RuntimeError(
                f"all {num} local GPUs stay claimed after {waited:.0f} s (holders {_holders(num)}; "
                f"locks in {lock_dir()}); run fewer GPU jobs (snakemake --resources gpu={num}) "
                f"or raise LVD_DEVICE_WAIT_SECONDS")
        if time.monotonic() >= next_log:
            log.info("all %d local GPUs are claimed (%s); waiting up to %.0f s more", num,
                     _holders(num), wait - waited)
            next_log = time.monotonic() + 60
        time.sleep(min(poll, max(wait - waited, 0.01)))


def _in_slurm() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


def select(requested: str = "auto") -> "torch.device":
    """The torch device for this job; see the module docstring."""
    global _selected, _label
    import torch

    requested = (requested or "auto").strip().lower()
    if requested == "cpu":
        device, label = torch.device("cpu"), "cpu"
    elif requested.startswith("cuda"):
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ValueError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {requested} requested but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) visible")
        label = str(device)
    elif requested == "auto":
        device, label = _auto()
    else:
        raise ValueError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N")
    _selected, _label = device, label
    return device


def _auto() -> "tuple[torch.device, str]":
    import torch

    if _in_slurm():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if visible and visible != "NoDevFiles" and torch.cuda.is_available():
            return torch.device("cuda:0"), "cuda:0"
        return torch.device("cpu"), "cpu"
    if num_local_gpus() == 0:
        return torch.device("cpu"), "cpu"
    index = claim()
    if _fake_gpus():
        return torch.device("cpu"), f"fake-gpu:{index}"
    return torch.device(f"cuda:{index}"), f"cuda:{index}"


def provenance() -> dict[str, str]:
    """Where this process computes: stamped into every artifact's root attributes."""
    return {
        "host": socket.gethostname(),
        "device": _label or "cpu",
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
