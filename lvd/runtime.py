"""Process settings for lvd's entry points (the stages, ``python -m lvd.bench``, scripts/).

Importing lvd changes nothing in the importing process. A program that runs the engine calls
``configure_process()`` before it imports torch (or faiss), as the stages do (lvd.stages'
package initializer) and the benchmarks do at their top:

1. ``OMP_WAIT_POLICY=PASSIVE`` unless set: OpenMP threads that busy-wait between parallel
   regions collapse when the machine is shared (several Snakemake jobs, or other users): a
   2-thread EM step went from 0.24 s to 1.06 s and FAISS k-means ran 11x slower with spinning
   threads under load, while passive waiting costs little on an idle machine. libgomp reads
   the variable when it loads, so it must be set before torch is imported; an explicit
   setting wins.
2. glibc's mmap and trim thresholds raised to 1 GiB (``lvd.pc._cpu.tune_malloc``; skipped
   with ``LVD_NO_MALLOPT=1``): glibc otherwise returns large freed buffers to the OS and maps
   fresh zero pages for the next allocation, so every level of every pass page-faults.
3. Denormal floats flushed to zero (FTZ and DAZ, ``flush_denormals``; skipped with
   ``LVD_NO_FTZ=1``): x86 CPUs compute on denormals in microcode, and the passes of sharply
   trained circuits make them; LVD-PG's passes ran 2-6x faster flushed (docs/engine.md). The
   passes keep messages normal (``lvd.pc.kernels.U_FLOOR``), so results move by rounding only.
   The flag lives in each thread's MXCSR register and threads copy it from the thread that
   starts them, so it is set before torch or numba start their worker threads.
"""

from __future__ import annotations

import os
import sys


def configure_process(malloc: bool = True) -> dict:
    """Apply the settings above; returns what was done ({"omp_wait_policy": value,
    "mallopt": bool, "flush_denormal": bool}). Says on stderr when torch was already imported (the waiting policy then
    no longer reaches libgomp)."""
    if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        print("lvd.runtime.configure_process: torch was imported first; OMP_WAIT_POLICY does not apply",
              file=sys.stderr)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    done = {"omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "mallopt": False}
    if malloc:
        from lvd.pc._cpu import tune_malloc
        done["mallopt"] = tune_malloc()
    done["flush_denormal"] = False if os.environ.get("LVD_NO_FTZ") else flush_denormals(True)
    return done


_FLUSHING = False


def flush_denormals(on: bool) -> bool:
    """Flush denormal floats to zero (``on``) or not, in this thread and the threads it starts
    from now on (torch.set_flush_denormal; False where the CPU lacks the flags). Returns
    whether the setting took."""
    global _FLUSHING
    import torch

    ok = bool(torch.set_flush_denormal(on))
    if ok:
        _FLUSHING = on
    return ok


def denormals_flushed() -> bool:
    """Whether ``flush_denormals(True)`` is in force (set by this module)."""
    return _FLUSHING
