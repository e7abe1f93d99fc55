#!/usr/bin/env bash
# The GPU check of ../shared/device/README.md as one command, run from anywhere in the repository:
# the engine's CUDA tests (pytest -m gpu) and the side-by-side against PyJuice 2.6.3, JSON lines.
#
#   scripts/gpu_check.sh              on a CUDA machine: the documented run (K = 32, 128, 512)
#   scripts/gpu_check.sh --cpu-smoke  the same path on the CPU at toy sizes, lvd engine only (and
#                                     PyJuice's parameter check when Triton is importable): a
#                                     test that the command works before a GPU is at hand
#   scripts/gpu_check.sh --prepare    only the copy and the wheel's install: for a machine that
#                                     gets the working tree without ../shared (carry gpubench/)
#
# It copies the prepared folder (LVD_DEVICE_DIR, default ../shared/device) into GPUBENCH (default
# gpubench/, ignored by git; without that folder it uses a copy already there), installs the
# PyJuice wheel from there into $GPUBENCH/.site without the network, and writes gpu_tests.txt, side_by_side.jsonl and side_by_side.err under OUT (default
# $GPUBENCH/out; the device machine sets OUT itself). BUDGET_S: no configuration starts after
# it (default 300); PYTHON: the interpreter (default python3). Exit status: the side-by-side's.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SRC=${LVD_DEVICE_DIR:-$ROOT/../shared/device}
BENCH=${GPUBENCH:-$ROOT/gpubench}
OUT=${OUT:-$BENCH/out}
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-300}
MODE=gpu
case "${1:-}" in
  "") ;;
  --cpu-smoke) MODE=cpu ;;
  --prepare) MODE=prepare ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "gpu_check.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
esac

mkdir -p "$BENCH" "$OUT"
if [ -f "$SRC/pc_side_by_side.py" ]; then
  cp -f "$SRC"/README.md "$SRC"/pc_side_by_side.py "$BENCH"/   # (the originals are read-only)
  cp -f "$SRC"/*.whl "$BENCH"/ 2>/dev/null || true
elif [ -f "$BENCH/pc_side_by_side.py" ]; then
  echo "gpu_check.sh: no $SRC here; using the copy in $BENCH" >&2
else
  echo "gpu_check.sh: no pc_side_by_side.py in $SRC nor in $BENCH" >&2; exit 2
fi

SITE=$BENCH/.site
WHEEL=$(ls "$BENCH"/pyjuice-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$WHEEL" ]; then
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEEL"
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ "$MODE" = prepare ] && { echo "gpu_check.sh: prepared $BENCH"; exit 0; }

if [ "$MODE" = gpu ]; then
  "$PY" -m pytest -q -m gpu tests 2>&1 | tail -n 20 > "$OUT/gpu_tests.txt" || true
  set +e
  timeout $((BUDGET + 200)) "$PY" "$BENCH/pc_side_by_side.py" --num-vars 784 --num-cats 256 \
      --num-latents 32 128 512 --batch-size 512 --steps 20 --device cuda \
      --engines lvd pyjuice pyjuice-lvdtree --check --budget-s "$BUDGET" \
      > "$OUT/side_by_side.jsonl" 2> "$OUT/side_by_side.err"
  rc=$?
  set -e
else
  # the CUDA tests' selection (on the CPU every one of them skips), then the script at toy sizes
  "$PY" -m pytest -q -m gpu tests/pc 2>&1 | tail -n 3 > "$OUT/gpu_tests.txt" || true
  check=()
  if [ -n "$WHEEL" ] && "$PY" -c "import triton" 2>/dev/null; then
    check=(--check --check-vars 8 --check-cats 4 --check-latents 4 --check-batch 16)
  fi
  set +e
  timeout 300 "$PY" "$BENCH/pc_side_by_side.py" --num-vars 16 --num-cats 8 --num-latents 4 \
      --batch-size 32 --steps 2 --fwd-reps 2 --eval-batches 1 --mi-rows 200 --peak-n 256 \
      --device cpu --engines lvd "${check[@]}" --budget-s 60 --threads 1 \
      > "$OUT/side_by_side.jsonl" 2> "$OUT/side_by_side.err"
  rc=$?
  set -e
fi
cat "$OUT/gpu_tests.txt" "$OUT/side_by_side.jsonl"
[ "$rc" -eq 0 ] || { echo "gpu_check.sh: pc_side_by_side.py exited $rc (see $OUT/side_by_side.err)" >&2; tail -n 20 "$OUT/side_by_side.err" >&2; }
exit "$rc"
