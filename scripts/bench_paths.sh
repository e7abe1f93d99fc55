#!/bin/bash
# The engine-speed table: ROUNDS rounds (default 3), each timing the default path (kernel mode
# auto: implementations chosen by measurement, lvd.pc.kernels) against the torch reference path
# in the same process (python -m lvd.bench ... --reference: alternating blocks of steps) on the
# HCLT 784 x 256 at K = 32 and 128 and the HMM at H = 256; one JSON line per run into OUT
# (default results/bench_paths). Run it with nothing else running (about 8 minutes on 2 cores);
# it prints the summary at the end, or alone with:
#   bash scripts/bench_paths.sh --summary
set -euo pipefail
out=${OUT:-results/bench_paths}
py=${PYTHON:-python}
summary() {
  "$py" - "$out" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
for name in ("em_K32", "em_K128", "hmm"):
    rs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}_*.json"))]
    if not rs:
        continue
    r0 = rs[0]
    chosen = sorted({f"{k.split('|')[0]}:{v['chosen']}" for r in rs for k, v in r.get("choices", {}).items()})
    print(f"{name:8s} default {statistics.median(r['seconds_per_batch'] for r in rs):.4f} s "
          f"(ratio " + " / ".join(f"{r['ratio']:.3f}" for r in rs) + "), reference "
          f"{statistics.median(r['reference_seconds_per_batch'] for r in rs):.4f} s, speedup "
          + " / ".join(f"{r['speedup']:.2f}" for r in rs)
          + f"; peak {statistics.median(r['matmul_peak_gflops'] for r in rs):.0f} GFLOP/s; "
          f"{r0.get('cpu_model')} ({r0.get('vector_isa')}); chosen: {', '.join(chosen)}")
PY
}
if [ "${1:-}" = "--summary" ]; then summary; exit 0; fi
mkdir -p "$out"
for rep in $(seq 1 "${ROUNDS:-3}"); do
  for K in 32 128; do
    "$py" -m lvd.bench em --num-vars 784 --num-cats 256 --num-latents "$K" --steps 20 --reference 2>/dev/null \
      | tail -1 > "$out/em_K${K}_${rep}.json"
  done
  "$py" -m lvd.bench hmm --seq-len 32 --vocab-size 33278 --num-latents 256 --steps 20 --reference 2>/dev/null \
    | tail -1 > "$out/hmm_${rep}.json"
  echo "round $rep: done" >&2
done
summary
