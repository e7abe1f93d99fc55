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
"""

from __future__ import annotations

import os
import sys


def configure_process(malloc: bool = True) -> dict:
    """Apply the settings above; returns what was done ({"omp_wait_policy": value,
    "mallopt": bool}). Says on stderr when torch was already imported (the waiting policy then
    no longer reaches libgomp)."""
    if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        print("lvd.runtime.configure_process: torch was imported first; OMP_WAIT_POLICY does not apply",
              file=sys.stderr)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    done = {"omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "mallopt": False}
    if malloc:
        from lvd.pc._cpu import tune_malloc
        done["mallopt"] = tune_malloc()
    return done
