"""Benchmarks. Each prints progress, then ONE JSON line last.

    python -m lvd.bench em --num-vars 784 --num-cats 256 --num-latents 128
    python -m lvd.bench em --num-latents 32 --leaf-latents no      # PyJuice's HCLT layout
    python -m lvd.bench hmm --seq-len 32 --vocab-size 33278 --num-latents 256
    python -m lvd.bench kmeans --num-points 200000 --dim 64 --num-clusters 256
    python -m lvd.bench peak

FLOP counting (em, hmm): 6 * E * K^2 per example and EM step, E = the number of K x K weight
blocks the example passes through (the tree's edges): one matmul forward, two backward
(flows and downward messages). ``ratio`` = achieved GFLOP/s over torch's float32 matmul
GFLOP/s measured in the same process (``matmul_peak_gflops``), so both see the same machine.

Honest numbers on a shared machine: every timed EM step is timed on its own (wall clock and
the process's CPU time) and the peak is measured ``--peak-repeats`` times before and as many
after the steps; the JSON gives medians and spreads (step quartiles, peak min / max), the
ratio of the medians, the same ratio in CPU time (``ratio_cpu``: what the process got done per
CPU second, less sensitive to other jobs when it runs on one thread) and the load average
before and after. Two probes say what kind of machine the steps saw, because the passes
depend on memory as much as on the matmuls: ``memory_read_gbps`` (median, with its range: the
GB/s of summing a 64 MiB float32 tensor, measured with each peak measurement) and
``steal_fraction`` (the share of the machine's CPU time a hypervisor gave to others during the
steps, from /proc/stat; None where there is none). On a host whose cache and memory other
tenants share, the steps can slow down by half with the steal near zero and the peak unchanged:
the memory probe moves with them.

Which implementation ran: the JSON names the CPU (``cpu_model``) and its widest vector
instruction set (``vector_isa``; ``emulation``: the settings that made it run as an older CPU,
lvd.pc.kernels.EMULATION), the kernel mode (``kernels``: auto, torch, numba or
compiled; ``LVD_KERNELS``), the compiled products' vector width (``gemm_vector_width``, 0
where they are unavailable) and every choice lvd.pc.kernels made in the run (``choices``:
pass or product, shape, the chosen path and each candidate's median seconds).
``--reference`` also times the torch reference path in the same process, in blocks of steps
alternating with the default's (``reference_seconds_per_batch``, ``speedup`` = reference over
default): the default path must never be the slower one.
"""

from __future__ import annotations

if __name__ == "__main__":            # an entry point: configure the process before torch loads
    from lvd.runtime import configure_process
    configure_process()

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _loadavg() -> float | None:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "LVD_KERNELS", "LVD_NO_FUSED", "LVD_NO_CGEMM")   # settings that change the figures


def engine_info() -> dict:
    """The CPU, its vector ISA, the kernel mode and the choices made so far (lvd.pc.kernels)."""
    from lvd.pc import _gemm, kernels

    return {"cpu_model": kernels.cpu_model(), "vector_isa": kernels.vector_isa(), "emulation": kernels.emulation(),
            "kernels": kernels.mode(),
            "gemm_vector_width": _gemm.vector_width() if kernels.mode() in ("auto", "compiled") else 0,
            "choices": {k: {"chosen": v["chosen"], "seconds": v.get("seconds", {})}
                        for k, v in kernels.choices().items()}}


def _fused_on(device) -> bool:
    """Whether the engine's fused CPU kernels serve this run (lvd.pc._fused)."""
    from lvd.pc import _fused

    return _fused.usable(torch.zeros(1, device=device))


def matmul_peaks(n: int = 2048, repeats: int = 5, device="cpu") -> list[tuple[float, float]]:
    """(wall, CPU) GFLOP/s of ``repeats`` float32 n x n matmuls on this machine, now."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    out = []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        a @ b
        _sync(device)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        out.append((2 * n**3 / wall / 1e9, 2 * n**3 / max(cpu, 1e-9) / 1e9))
    return out


def memory_reads(nbytes: int = 64 << 20, repeats: int = 5, device="cpu") -> list[float]:
    """GB/s of ``repeats`` sums over a float32 tensor of ``nbytes`` (more than a CPU's cache),
    now."""
    a = torch.ones(nbytes // 4, device=device)
    a.sum()
    _sync(device)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        _sync(device)
        out.append(nbytes / (time.perf_counter() - t) / 1e9)
    return out


def _cpu_times() -> list[int] | None:
    """The machine's total CPU time counters (/proc/stat's first line), or None."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_fraction(before, after) -> float | None:
    """The share of CPU time stolen by the hypervisor between two ``_cpu_times`` readings
    (the 8th counter: steal), or None where the counters are missing."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    d = [b - a for a, b in zip(before, after)]
    total = sum(d[:8])            # user..steal (guest time is counted in user already)
    return d[7] / total if total > 0 else 0.0


def matmul_peak(n: int = 2048, repeats: int = 5, device="cpu") -> float:
    """Best-of float32 matmul GFLOP/s on this machine, now."""
    return max(w for w, _ in matmul_peaks(n, repeats, device))


def _time_steps(circuit, x, batch_size, steps, device, warmup: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(wall, CPU) seconds of each of ``steps`` EM steps (flows + update) on fresh batches."""
    from lvd import pc

    batches = [x[i * batch_size:(i + 1) * batch_size].to(device) for i in range(steps + warmup)]
    for b in batches[:warmup]:
        f, _ = pc.flows(circuit, {"x": b}, sparse=True)   # as em_epoch
        pc.update(circuit, f, 0.1, 0.1)
    _sync(device)
    wall, cpu = [], []
    for b in batches[warmup:]:
        t, c = time.perf_counter(), time.process_time()
        f, _ = pc.flows(circuit, {"x": b}, sparse=True)   # as em_epoch
        pc.update(circuit, f, 0.1, 0.1)
        _sync(device)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return np.array(wall), np.array(cpu)


def _time_both(circuit, x, batch_size, steps, device, blocks: int = 4):
    """The default path's and the torch reference's steps, in ``blocks`` alternating blocks."""
    from lvd.pc import kernels

    per = max(1, steps // blocks)
    wall, cpu, rwall = [], [], []
    for _ in range(blocks):
        w, c = _time_steps(circuit, x, batch_size, per, device)
        wall.append(w)
        cpu.append(c)
        with kernels.forced("torch"):
            rwall.append(_time_steps(circuit, x, batch_size, per, device)[0])
    return np.concatenate(wall), np.concatenate(cpu), np.concatenate(rwall)


def measure(circuit, x, batch_size: int, steps: int, flop_per_step: float, device, peak_repeats: int,
            reference: bool = False) -> dict:
    """Steps and peaks, with medians and spreads (see the module docstring)."""
    load0 = _loadavg()
    peaks = matmul_peaks(repeats=peak_repeats, device=device)
    mem = memory_reads(repeats=peak_repeats, device=device)
    t0 = _cpu_times()
    ref = None
    if reference:
        wall, cpu, ref = _time_both(circuit, x, batch_size, steps, device)
    else:
        wall, cpu = _time_steps(circuit, x, batch_size, steps, device)
    t1 = _cpu_times()
    peaks += matmul_peaks(repeats=peak_repeats, device=device)
    mem += memory_reads(repeats=peak_repeats, device=device)
    pw, pc_ = np.array([p[0] for p in peaks]), np.array([p[1] for p in peaks])
    step = float(np.median(wall))
    gflops = flop_per_step / step / 1e9
    gflops_cpu = flop_per_step / float(np.median(cpu)) / 1e9
    return {"seconds_per_batch": step,
            "seconds_per_batch_quartiles": [float(np.quantile(wall, 0.25)), float(np.quantile(wall, 0.75))],
            "cpu_seconds_per_batch": float(np.median(cpu)), "timed_steps": int(steps),
            "gflops": gflops, "matmul_peak_gflops": float(np.median(pw)),
            "matmul_peak_range": [float(pw.min()), float(pw.max())], "peak_measurements": len(pw),
            "ratio": gflops / float(np.median(pw)), "ratio_cpu": gflops_cpu / float(np.median(pc_)),
            "memory_read_gbps": float(np.median(mem)), "memory_read_gbps_range": [float(min(mem)), float(max(mem))],
            "steal_fraction": steal_fraction(t0, t1),
            "loadavg": [load0, _loadavg()], "threads": torch.get_num_threads(), "device": str(device),
            "fused": _fused_on(device), **{k.lower(): os.environ[k] for k in _ENV if k in os.environ},
            **({} if ref is None else {"reference_seconds_per_batch": float(np.median(ref)),
                                       "speedup": float(np.median(ref)) / step}),
            **engine_info()}


def bench_em(args) -> dict:
    from lvd import pc

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    n = args.batch_size * (args.steps + 2)
    data = rng.integers(0, args.num_cats, size=(max(n, 2000), args.num_vars))
    t = time.perf_counter()
    c = pc.hclt(data, num_latents=args.num_latents, num_cats=args.num_cats, seed=0, device=device,
                leaf_latents=args.leaf_latents == "yes")
    build = time.perf_counter() - t
    E, K = c.num_edges, args.num_latents
    print(f"built HCLT: {args.num_vars} vars, {E} edges, depth {c.structure.depth}, {build:.1f} s",
          file=sys.stderr)
    r = measure(c, torch.from_numpy(data), args.batch_size, args.steps, 6 * E * K * K * args.batch_size,
                device, args.peak_repeats, args.reference)
    return {"bench": "em", "num_vars": args.num_vars, "num_cats": args.num_cats, "num_latents": K,
            "leaf_latents": args.leaf_latents == "yes", "num_edges": E, "batch_size": args.batch_size,
            "seconds_per_epoch_60k": r["seconds_per_batch"] * 60000 / args.batch_size, **r}


def bench_hmm(args) -> dict:
    from lvd import pc

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    h = pc.hmm(args.seq_len, args.num_latents, args.vocab_size, homogeneous=True, seed=0, device=device)
    x = torch.from_numpy(rng.integers(0, args.vocab_size, size=(args.batch_size * (args.steps + 2), args.seq_len)))
    E, H = args.seq_len - 1, args.num_latents
    r = measure(h, x, args.batch_size, args.steps, 6 * E * H * H * args.batch_size, device, args.peak_repeats,
                args.reference)
    return {"bench": "hmm", "seq_len": args.seq_len, "vocab_size": args.vocab_size, "num_latents": H,
            "batch_size": args.batch_size,
            "tokens_per_second": args.batch_size * args.seq_len / r["seconds_per_batch"], **r}


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
    e.add_argument("--leaf-latents", choices=["yes", "no"], default="yes",
                   help="no: a Chow-Liu leaf variable emits from its parent's latent (pc.hclt)")
    h = sub.add_parser("hmm", help="EM steps of a homogeneous HMM on random tokens")
    h.add_argument("--seq-len", type=int, default=32)
    h.add_argument("--vocab-size", type=int, default=33278)
    h.add_argument("--num-latents", type=int, default=256)
    for q in (e, h):
        q.add_argument("--batch-size", type=int, default=512)
        q.add_argument("--steps", type=int, default=20, help="timed EM steps (after two warm-up steps)")
        q.add_argument("--peak-repeats", type=int, default=5,
                       help="matmul peak measurements before and as many after the steps")
        q.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        q.add_argument("--threads", type=int, default=None)
        q.add_argument("--reference", action="store_true",
                       help="also time the torch reference path, alternating blocks of steps in this process")
    k = sub.add_parser("peak", help="float32 matmul GFLOP/s")
    k.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.what == "peak":
        pw = np.array([w for w, _ in matmul_peaks(repeats=args.repeats)])
        result = {"bench": "peak", "matmul_peak_gflops": float(np.median(pw)),
                  "matmul_peak_range": [float(pw.min()), float(pw.max())], "loadavg": _loadavg(),
                  "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    else:
        result = bench_em(args) if args.what == "em" else bench_hmm(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
