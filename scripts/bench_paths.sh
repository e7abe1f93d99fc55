#!/bin/bash
# The engine-speed table of the README: ROUNDS rounds (default 3), each running in turn the
# fused CPU path (the default), the torch path (LVD_NO_FUSED=1) and the fused path with
# GOMP_SPINCOUNT=300000, each on the HCLT at K = 32 and 128 and the HMM at H = 256, one JSON
# line per run into OUT (default results/bench_paths). Run it on a machine with nothing else
# running (about 6 minutes on 2 cores), then summarize with:
#   bash scripts/bench_paths.sh --summary        (the medians, the runs' steps and ratios)
set -euo pipefail
out=${OUT:-results/bench_paths}
py=${PYTHON:-python}
if [ "${1:-}" = "--summary" ]; then
  exec "$py" - "$out" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
for name in ("em_K32", "em_K128", "hmm"):
    for path in ("fused", "torch", "spin"):
        rs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}_{path}_*.json"))]
        if not rs:
            continue
        steps = [r["seconds_per_batch"] for r in rs]
        print(f"{name:8s} {path:5s} median step {statistics.median(steps):.4f} s; runs "
              + " / ".join(f"{s:.3f}" for s in steps) + "; ratios "
              + " / ".join(f"{r['ratio']:.3f}" for r in rs)
              + f"; median peak {statistics.median(r['matmul_peak_gflops'] for r in rs):.0f} GFLOP/s"
              + ("; memory reads " + " / ".join(f"{r['memory_read_gbps']:.0f}" for r in rs) + " GB/s"
                 if all("memory_read_gbps" in r for r in rs) else ""))
PY
fi
mkdir -p "$out"
for rep in $(seq 1 "${ROUNDS:-3}"); do
  for path in fused torch spin; do
    unset LVD_NO_FUSED GOMP_SPINCOUNT
    [ "$path" = torch ] && export LVD_NO_FUSED=1
    [ "$path" = spin ] && export GOMP_SPINCOUNT=300000
    for K in 32 128; do
      "$py" -m lvd.bench em --num-vars 784 --num-cats 256 --num-latents "$K" --steps 20 2>/dev/null | tail -1 \
        > "$out/em_K${K}_${path}_${rep}.json"
    done
    "$py" -m lvd.bench hmm --seq-len 32 --vocab-size 33278 --num-latents 256 --steps 20 2>/dev/null | tail -1 \
      > "$out/hmm_${path}_${rep}.json"
    echo "round $rep, $path: done" >&2
  done
done
