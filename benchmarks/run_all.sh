#!/usr/bin/env bash
# Reproduce benchmarks/RESULTS.md from scratch on this machine:
#   synthetic cells -> a demo-like ShuffleNetV2 MM-MIMO (64 px, briefly trained) -> bundle with
#   FP32 + both INT8 Q/DQ variants + FP16 behind the accuracy gate -> wbc-bench -> RESULTS table.
# Uses the packaged demo bundle instead when it exists (wbc_edge/demo/demo.wbc) and no WORK/model.wbc.
# Usage: benchmarks/run_all.sh [WORK_DIR]   (default: benchmarks/work; ~10-20 min on 2 cores)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${1:-$HERE/work}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
ROUNDS="${ROUNDS:-30}"
SETS="${SETS:-16}"
mkdir -p "$WORK"
cd "$ROOT"

DEMO="$ROOT/wbc_edge/demo/demo.wbc"
MODEL="$WORK/model.wbc"
EAGER=(--checkpoint "$WORK/run/folds/fold0/mimo/model.pt")
if [ ! -f "$MODEL" ] && [ -f "$DEMO" ]; then
  MODEL="$DEMO"; EAGER=()  # the packaged bundle carries weights.npz for the eager baseline
elif [ ! -d "$WORK/cells" ]; then
  "$PY" -m wbc_edge.cli.synth cells --out "$WORK/cells" --n 800 --seed 0
fi
if [ "$MODEL" = "$WORK/model.wbc" ] && [ ! -f "$WORK/run/folds/fold0/mimo/model.pt" ]; then
  "$PY" -m wbc_edge.cli.train --data "$WORK/cells" --method mimo --backbone shufflenet_v2_x1_0 --img-size 64 \
    --epochs "${EPOCHS:-4}" --folds 5 --fold-subset 0 --out "$WORK/run" --seed 0
fi
if [ "$MODEL" = "$WORK/model.wbc" ] && [ ! -f "$WORK/model.wbc" ]; then
  "$PY" -m wbc_edge.cli.export --run "$WORK/run" --method mimo --fold 0 --out "$WORK/model.wbc" --int8 --fp16
fi

# Held-out cells for accuracy: a separate synthetic draw (another seed) the model never saw.
if [ ! -d "$WORK/heldout" ]; then
  "$PY" -m wbc_edge.cli.synth cells --out "$WORK/heldout" --n 300 --seed 1
fi

echo "load before the benchmark: $(cat /proc/loadavg)"
"$PY" -m wbc_edge.cli.bench --model "$MODEL" "${EAGER[@]}" \
  --batch 1,8,32 --rounds "$ROUNDS" --warmup 3 --sets "$SETS" --data "$WORK/heldout" --out "$WORK/bench"
# Thread-count sweep (what was tried): ONNX Runtime and torch with one thread.
"$PY" -m wbc_edge.cli.bench --model "$MODEL" "${EAGER[@]}" \
  --batch 8 --rounds "$ROUNDS" --threads 1 --no-pipeline --out "$WORK/bench-threads1" --quiet
"$PY" "$HERE/ort_options.py" --model "$MODEL" --batch 8 --rounds "$ROUNDS" --out "$WORK/ort_options.json"
"$PY" "$HERE/pipeline_options.py" --model "$MODEL" --sets "$SETS" --out "$WORK/pipeline_options.json"
lscpu > "$WORK/lscpu.txt"
echo "results: $WORK/bench/bench.md, $WORK/bench-threads1/bench.md, $WORK/ort_options.json, $WORK/pipeline_options.json, $WORK/lscpu.txt"
