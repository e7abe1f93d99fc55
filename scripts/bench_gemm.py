"""The passes' K x K products: torch's batched matmul against lvd.pc._gemm's compiled kernels.

    python scripts/bench_gemm.py                     # K = 32 and 128, 50 pairs of 512 rows
    python scripts/bench_gemm.py --num-latents 32 --pairs 4 50 200 --threads 1 2

For each shape it times, in one process and alternating the two, M = u W^T (upward), r W
(downward) and r^T u (edge flows) over ``--pairs`` (node, group) pairs of [rows, K] blocks, and
prints the median GFLOP/s of each (over ``--repeats`` timings, with the quartiles) next to
torch's 2048^2 float32 matmul peak measured in the same process, before and after.
"""

from __future__ import annotations

import argparse
import json
import time

from lvd.runtime import configure_process  # noqa: I001  (first: before torch loads libgomp)

configure_process()

import numpy as np
import torch

from lvd.bench import matmul_peak
from lvd.pc import _gemm


def _times(fn, repeats: int) -> list:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-latents", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--pairs", type=int, nargs="+", default=[50])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    if not _gemm.available():
        raise SystemExit(f"the compiled kernels are unavailable here: {_gemm.reason()}")
    n0 = torch.get_num_threads()
    for threads in args.threads:
        torch.set_num_threads(threads)
        peak0 = [matmul_peak() for _ in range(3)]
        for K in args.num_latents:
            for P in args.pairs:
                g = torch.Generator().manual_seed(0)
                a = torch.rand(P, args.rows, K, generator=g)
                u = torch.rand(P, args.rows, K, generator=g)
                w = torch.rand(P, K, K, generator=g)
                out, gout = torch.empty_like(a), torch.empty(P, K, K)
                wt = w.transpose(-1, -2).contiguous()
                flop = 2 * P * args.rows * K * K
                cases = {
                    "u W^T torch": lambda: torch.matmul(a, w.transpose(-1, -2), out=out),
                    "u W^T C": lambda: _gemm.mm(a, wt, out),
                    "r W torch": lambda: torch.matmul(a, w, out=out),
                    "r W C": lambda: _gemm.mm(a, w, out),
                    "r^T u torch": lambda: torch.matmul(a.transpose(-1, -2), u, out=gout),
                    "r^T u C": lambda: _gemm.tmm(a, u, gout),
                }
                times = {k: [] for k in cases}
                for _ in range(3):                       # alternate the cases, three rounds
                    for k, fn in cases.items():
                        times[k] += _times(fn, args.repeats // 3)
                res = {k: {"gflops": flop / float(np.median(v)) / 1e9,
                           "gflops_quartiles": [flop / float(np.quantile(v, q)) / 1e9 for q in (0.75, 0.25)]}
                       for k, v in times.items()}
                peak = float(np.median(peak0 + [matmul_peak() for _ in range(3)]))
                print(json.dumps({"threads": threads, "num_latents": K, "pairs": P, "rows": args.rows,
                                  "matmul_peak_gflops": peak,
                                  **{k: round(v["gflops"], 1) for k, v in res.items()},
                                  "ratios_to_peak": {k: round(v["gflops"] / peak, 3) for k, v in res.items()}}))
    torch.set_num_threads(n0)


if __name__ == "__main__":
    main()
