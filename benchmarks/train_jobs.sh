#!/usr/bin/env bash
# Training throughput of `wbc-train --jobs`: the same trainings (4 single-light networks + early fusion
# on 2 folds) one after the other with every core (--jobs 1) and side by side (--jobs 2, cores / 2 threads
# each), interleaved A B A B so drift hits both. Prints each round's wall time and the median ratio.
# Usage: benchmarks/train_jobs.sh [WORK_DIR] (default benchmarks/work-jobs; ~10 min on 2 cores)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${1:-$HERE/work-jobs}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
ROUNDS="${ROUNDS:-2}"
mkdir -p "$WORK"
[ -d "$WORK/cells" ] || "$PY" -m wbc_edge.cli.synth cells -q --out "$WORK/cells" --n 600 --seed 0 --class-mix balanced

run() {  # run JOBS -> wall seconds of a fresh run directory
  rm -rf "$WORK/run-$1"
  local t0
  t0=$(date +%s.%N)
  "$PY" -m wbc_edge.cli.train table --data "$WORK/cells" --out "$WORK/run-$1" --methods single:fluorescent \
    single:color1 single:color2 single:color3 early --folds 5 --fold-subset 0,1 --epochs 3 --img-size 64 \
    --no-plots --jobs "$1" >/dev/null 2>&1
  "$PY" -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$t0"
}

echo "cores: $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
ratios=()
for r in $(seq "$ROUNDS"); do
  a=$(run 1); b=$(run 2)
  ratios+=("$("$PY" -c "import sys; print(round(float(sys.argv[1]) / float(sys.argv[2]), 3))" "$a" "$b")")
  echo "round $r: --jobs 1 $a s, --jobs 2 $b s, ratio ${ratios[-1]}"
done
"$PY" -c "import statistics, sys; print('median speed-up of --jobs 2:', statistics.median(map(float, sys.argv[1:])))" "${ratios[@]}"
