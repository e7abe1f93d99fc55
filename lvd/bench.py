"""Benchmarks. Each prints progress, then ONE JSON line last.

    python -m lvd.bench em --num-vars 784 --num-cats 256 --num-latents 128
    python -m lvd.bench hmm --seq-len 32 --vocab-size 33278 --num-latents 256
    python -m lvd.bench kmeans --num-points 200000 --dim 64 --num-clusters 256
    python -m lvd.bench peak

FLOP counting (em, hmm): 6 * E * K^2 per example and EM step, E = the number of K x K weight
blocks the example passes through (V - 1 tree edges): one matmul forward, two backward
(flows and downward messages). ``ratio`` = achieved GFLOP/s over torch's float32 matmul
GFLOP/s measured in the same process (``matmul_peak_gflops``), so both see the same machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def matmul_peak(n: int = 2048, repeats: int = 5, device="cpu") -> float:
    """Best-of float32 matmul GFLOP/s on this machine, now."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        if a.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _time_steps(circuit, x, batch_size, steps, device) -> float:
    from lvd import pc

    batches = [x[i * batch_size:(i + 1) * batch_size].to(device) for i in range(steps + 1)]
    f, _ = pc.flows(circuit, {"x": batches[0]})            # warm-up
    pc.update(circuit, f, 0.1, 0.1)
    t = time.perf_counter()
    for b in batches[1:]:
        f, _ = pc.flows(circuit, {"x": b})
        pc.update(circuit, f, 0.1, 0.1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def bench_em(args) -> dict:
    from lvd import pc

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    n = args.batch_size * (args.steps + 1)
    data = rng.integers(0, args.num_cats, size=(max(n, 2000), args.num_vars))
    t = time.perf_counter()
    c = pc.hclt(data, num_latents=args.num_latents, num_cats=args.num_cats, seed=0, device=device)
    build = time.perf_counter() - t
    print(f"built HCLT: {args.num_vars} vars, depth {c.structure.depth}, {build:.1f} s", file=sys.stderr)
    peak = matmul_peak(device=device)
    per_step = _time_steps(c, torch.from_numpy(data), args.batch_size, args.steps, device)
    E, K = c.num_vars - 1, args.num_latents
    gflops = 6 * E * K * K * args.batch_size / per_step / 1e9
    return {"bench": "em", "num_vars": args.num_vars, "num_cats": args.num_cats, "num_latents": K,
            "batch_size": args.batch_size, "seconds_per_batch": per_step,
            "seconds_per_epoch_60k": per_step * 60000 / args.batch_size,
            "gflops": gflops, "matmul_peak_gflops": peak, "ratio": gflops / peak,
            "threads": torch.get_num_threads(), "device": str(device)}


def bench_hmm(args) -> dict:
    from lvd import pc

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    h = pc.hmm(args.seq_len, args.num_latents, args.vocab_size, homogeneous=True, seed=0, device=device)
    x = torch.from_numpy(rng.integers(0, args.vocab_size, size=(args.batch_size * (args.steps + 1), args.seq_len)))
    peak = matmul_peak(device=device)
    per_step = _time_steps(h, x, args.batch_size, args.steps, device)
    E, H = args.seq_len - 1, args.num_latents
    gflops = 6 * E * H * H * args.batch_size / per_step / 1e9
    return {"bench": "hmm", "seq_len": args.seq_len, "vocab_size": args.vocab_size, "num_latents": H,
            "batch_size": args.batch_size, "seconds_per_batch": per_step,
            "tokens_per_second": args.batch_size * args.seq_len / per_step,
            "gflops": gflops, "matmul_peak_gflops": peak, "ratio": gflops / peak,
            "threads": torch.get_num_threads(), "device": str(device)}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "kmeans":
        from lvd import bench_kmeans

        return bench_kmeans.main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m lvd.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("em", help="EM steps of an HCLT on random data")
    e.add_argument("--num-vars", type=int, default=784)
    e.add_argument("--num-cats", type=int, default=256)
    e.add_argument("--num-latents", type=int, default=32)
    h = sub.add_parser("hmm", help="EM steps of a homogeneous HMM on random tokens")
    h.add_argument("--seq-len", type=int, default=32)
    h.add_argument("--vocab-size", type=int, default=33278)
    h.add_argument("--num-latents", type=int, default=256)
    for q in (e, h):
        q.add_argument("--batch-size", type=int, default=512)
        q.add_argument("--steps", type=int, default=5, help="timed EM steps (after one warm-up)")
        q.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        q.add_argument("--threads", type=int, default=None)
    sub.add_parser("peak", help="float32 matmul GFLOP/s")
    args = p.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.what == "peak":
        result = {"bench": "peak", "matmul_peak_gflops": matmul_peak()}
    else:
        result = bench_em(args) if args.what == "em" else bench_hmm(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
