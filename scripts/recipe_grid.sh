#!/usr/bin/env bash
# The recipe measurements of docs/training.md, "Real cells (pbc_dev)": one fold (fold 0 of five,
# stratified: 300 validation cells), 12 epochs, 64 px, ShuffleNetV2 x1.0 from scratch, on the
# pbc_dev rgb-hed four-light set, plus the synthetic check (balanced 2,000 cells, 16 epochs).
# Two trainings side by side, one thread each, under nice. Prints a markdown table at the end.
#
# Usage: scripts/recipe_grid.sh [WORK_DIR] [STAGE...]   (default WORK_DIR scripts/work-recipe; stages:
#   aug lr mimo size synth length; default all)
# Cost on the 2-core machine shared with three other engineers (2 December 2026; wall times per run
# in docs/training.md): aug ~4 min, lr ~4 min, mimo ~45 min (the four teachers and the KD student
# ~8 min, then each MM-MIMO variant 3-12 min depending on load), size ~15 min, synth ~45 min
# (teachers + student 21 min). Alone on 2 cores about half. A finished run is skipped.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${1:-$HERE/work-recipe}"; shift || true
STAGES="${*:-aug lr mimo size synth length}"
BIN="$ROOT/.venv/bin"
PBC="${PBC_DEV:-$ROOT/../shared/data/pbc_dev}"
mkdir -p "$WORK/runs"
[ -f "$WORK/pbc4_64/manifest.csv" ] || nice -n 10 "$BIN/wbc-data" four-light "$PBC" --out "$WORK/pbc4_64" --size 64 -q
GEOM=(--flip-rotate --randaugment 0 0)   # geometric-only augmentation
PAPER=(--no-flip-rotate --randaugment 2 18)  # the paper's augmentation

one() {  # one NAME DATA METHOD EPOCHS [flags...]: a fold-0 training, its wall time appended to runs/wall.txt
  local name=$1 data=$2 method=$3 epochs=$4; shift 4
  [ -f "$WORK/runs/$name/folds/fold0/${method//:/-}/metrics.json" ] && return 0
  local t0 rc=0; t0=$(date +%s)
  nice -n 10 "$BIN/wbc-train" --data "$data" --method "$method" --folds 5 --fold-subset 0 --epochs "$epochs" \
    --img-size "${SIZE:-64}" --jobs 1 --threads 1 -q --out "$WORK/runs/$name" "$@" > "$WORK/runs/$name.log" 2>&1 || rc=$?
  echo "$name rc=$rc wall=$(( $(date +%s) - t0 ))s method=$method epochs=$epochs ${*}" >> "$WORK/runs/wall.txt"
}
D="$WORK/pbc4_64"
for stage in $STAGES; do case $stage in
  aug)
    one pbc-early-ra2-18 "$D" early 12 "${PAPER[@]}" & one pbc-early-ra0 "$D" early 12 --no-flip-rotate --randaugment 0 0; wait
    one pbc-early-fr-ra0 "$D" early 12 "${GEOM[@]}" & one pbc-early-fr-ra2-5 "$D" early 12 --flip-rotate --randaugment 2 5; wait ;;
  lr)
    one pbc-early-fr-lr2e-3 "$D" early 12 "${GEOM[@]}" --lr 2e-3 & one pbc-early-fr-lr8e-3 "$D" early 12 "${GEOM[@]}" --lr 8e-3; wait
    one pbc-early-fr-wd0.01 "$D" early 12 "${GEOM[@]}" --weight-decay 0.01 & one pbc-early-fr-24ep "$D" early 24 "${GEOM[@]}"; wait ;;
  mimo)
    one pbc-mimokd-fr "$D" mimo-kd 12 "${GEOM[@]}"   # trains the four single-light teachers first
    T=(--teachers "$WORK/runs/pbc-mimokd-fr")
    one pbc-mimo-fr "$D" mimo 12 "${GEOM[@]}" & one pbc-mimokd-fr-p0.25 "$D" mimo-kd 12 "${GEOM[@]}" "${T[@]}" --light-dropout 0.25; wait
    one pbc-mimokd-fr-rho0.75 "$D" mimo-kd 12 "${GEOM[@]}" "${T[@]}" --rho 0.75 & one pbc-mimokd-fr-alpha1 "$D" mimo-kd 12 "${GEOM[@]}" "${T[@]}" --kd-alpha 1; wait
    one pbc-mimokd-fr-solo0.2 "$D" mimo-kd 12 "${GEOM[@]}" "${T[@]}" --solo-rows 0.2 &
    one pbc-mimokd-fr-alpha1-p0.25 "$D" mimo-kd 12 "${GEOM[@]}" "${T[@]}" --kd-alpha 1 --light-dropout 0.25; wait ;;
  size)
    [ -f "$WORK/pbc4_96/manifest.csv" ] || nice -n 10 "$BIN/wbc-data" four-light "$PBC" --out "$WORK/pbc4_96" --size 96 -q
    SIZE=96 one pbc-early-fr-96px "$WORK/pbc4_96" early 12 "${GEOM[@]}" & SIZE=96 one pbc-mimo-fr-96px "$WORK/pbc4_96" mimo 12 "${GEOM[@]}"; wait
    SIZE=96 one pbc-mimokd-fr-96px "$WORK/pbc4_96" mimo-kd 12 "${GEOM[@]}"
    [ -f "$WORK/pbc4_128/manifest.csv" ] || nice -n 10 "$BIN/wbc-data" four-light "$PBC" --out "$WORK/pbc4_128" --size 128 -q
    SIZE=128 one pbc-early-fr-128px "$WORK/pbc4_128" early 12 "${GEOM[@]}" ;;
  synth)
    S="$WORK/bal2000"
    [ -f "$S/manifest.csv" ] || nice -n 10 "$BIN/wbc-synth" cells --out "$S" --n 2000 --seed 21 --class-mix balanced -q
    one syn-early-paper "$S" early 16 "${PAPER[@]}" & one syn-early-fr "$S" early 16 "${GEOM[@]}"; wait
    one syn-mimokd-fr "$S" mimo-kd 16 "${GEOM[@]}"
    one syn-mimokd-fr-alpha1 "$S" mimo-kd 16 "${GEOM[@]}" --teachers "$WORK/runs/syn-mimokd-fr" --kd-alpha 1 ;;
  length)  # the second round: training length and the missing light (needs the mimo stage's teachers)
    T=(--teachers "$WORK/runs/pbc-mimokd-fr")
    one pbc-mimokd-fr-kdfused "$D" mimo-kd 12 "${GEOM[@]}" "${T[@]}" --kd-fused --light-dropout 0.1 &
    one pbc-mimokd-fr-kdfused-p0.25 "$D" mimo-kd 12 "${GEOM[@]}" "${T[@]}" --kd-fused --light-dropout 0.25; wait
    one pbc-mimokd-fr-24ep-p0.25 "$D" mimo-kd 24 "${GEOM[@]}" "${T[@]}" --light-dropout 0.25 &
    one pbc-mimokd-fr-24ep-p0.25-kdfused "$D" mimo-kd 24 "${GEOM[@]}" "${T[@]}" --light-dropout 0.25 --kd-fused; wait
    one pbc-mimokd-fr-24ep-p0.35 "$D" mimo-kd 24 "${GEOM[@]}" "${T[@]}" --light-dropout 0.35 &
    one pbc-mimokd-fr-24ep "$D" mimo-kd 24 "${GEOM[@]}" "${T[@]}" --light-dropout 0.1; wait ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac; done
"$BIN/python" "$HERE/recipe_summary.py" "$WORK/runs"
