"""What one parallel region costs here: the fixed price of every kernel call the passes make.

    python scripts/bench_regions.py                       # passive waiting (lvd's default)
    OMP_WAIT_POLICY=ACTIVE python scripts/bench_regions.py

Times ``--calls`` calls of an empty numba ``prange`` over 64 floats (the fused kernels' threading)
and of torch's in-place add over 100,000 floats (torch's), ``--repeats`` times each, on torch's
thread count, and prints one JSON line: microseconds per call, median and range. A K = 32 HCLT
EM step makes about 170 numba regions (five per level of a depth-34 tree), so this figure times
170 is what thread wake-ups can cost a step.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from lvd.runtime import configure_process  # noqa: I001  (first: before torch loads libgomp)

configure_process()

import numpy as np
import torch

from lvd.pc import _fused


if _fused.numba is not None:
    from numba import njit, prange

    @njit(parallel=True)
    def _empty(a):      # at module level: numba did not thread the same loop defined inside main()
        for i in prange(a.shape[0]):
            a[i] += 1.0


def _add(x):
    x.add_(1.0)


def _per_call(fn, arg, calls: int, repeats: int) -> list[float]:
    fn(arg)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn(arg)
        out.append((time.perf_counter() - t) / calls * 1e6)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    result = {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    if _fused.numba is not None:
        _fused._threads()
        us = _per_call(_empty, np.zeros(64, np.float32), args.calls, args.repeats)
        result.update(numba_region_us=float(np.median(us)), numba_region_us_range=[min(us), max(us)])
    x = torch.zeros(100_000)
    us = _per_call(_add, x, args.calls, args.repeats)
    result.update(torch_add_100k_us=float(np.median(us)), torch_add_100k_us_range=[min(us), max(us)])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
