"""Two CPU traps measured on 2-core machines (AMD EPYC and Intel Xeon VMs), and their cures.

1. glibc returns large freed buffers to the OS and maps fresh zero pages for the next
   allocation: every level of every pass page-faults. ``tune_malloc`` raises glibc's mmap
   and trim thresholds (mallopt) to 1 GiB; entry points call it through
   lvd.runtime.configure_process. Set LVD_NO_MALLOPT=1 to skip it.
   mallopt takes C ints: its argtypes are declared, so a value that does not fit is an
   error here instead of arriving truncated (1 << 34 used to arrive as 0).
2. ``index_add_`` and ``index_select`` along dim 0 with several intra-op threads take a slow
   parallel path on CPU (measured: 50-480 ms per call, against 0.02-2 ms on one thread, for
   the [n, G, B, K] level tensors and the leaf tables here), so ``index_add`` and
   ``index_select`` run them on one thread there. CUDA is untouched. Measured again with
   OMP_WAIT_POLICY=PASSIVE (lvd.runtime): with the cores otherwise idle multi-threaded index ops
   were 7% faster per EM step (HCLT, K = 32: 0.064 against 0.069 s), with both cores busy
   with other work 15-25% slower (0.31-0.32 against 0.25-0.29 s); workflow jobs share cores,
   so the one-thread path stays.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# (parameter, value) of every mallopt call; values are C ints (< 2**31)
MALLOPT = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 1 << 30))


def tune_malloc(libc=None) -> bool:
    """Apply MALLOPT through glibc's mallopt (``libc``: a loaded libc, for tests); True when
    every call succeeded."""
    if os.environ.get("LVD_NO_MALLOPT") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6") if libc is None else libc
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        return all([bool(mallopt(param, value)) for param, value in MALLOPT])
    except (OSError, AttributeError):
        return False


def _one_thread(fn, t: torch.Tensor, *args, **kwargs):
    n = torch.get_num_threads()
    if t.device.type != "cpu" or n == 1:
        return fn(*args, **kwargs)
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(n)


def index_add(target: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """target.index_add_(0, index, src), on one thread when on the CPU."""
    return _one_thread(target.index_add_, target, 0, index, src)


def index_select(src: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """src.index_select(0, index) (into ``out`` when given), on one thread when on the CPU."""
    if out is None:
        return _one_thread(src.index_select, src, 0, index)
    return _one_thread(torch.index_select, src, src, 0, index, out=out)
