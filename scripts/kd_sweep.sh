#!/usr/bin/env bash
# The five-fold KD weight / light dropout sweep of docs/training.md ("KD weight and light dropout,
# five folds"): MM-MIMO + KD alone, on every fold of a finished five-fold table (its late-fusion
# teachers reused), one setting after the other. Each setting: 5 trainings of 24 epochs (the last two: 32),
# two side by side, about 17 min wall on the 2-core machine (32 epochs: about 16 min on a quieter one;
# 2 December 2026).
#
# Usage: scripts/kd_sweep.sh DATA TABLE_DIR [WORK_DIR]
#   DATA       the four-light set the table ran on (e.g. the pbc_dev rgb-hed set, `wbc-data four-light`)
#   TABLE_DIR  a finished `wbc-train table --folds 5` run (its folds hold the teachers). The docs' rows:
#              a 24-epoch table for every setting but the last, a 32-epoch table for a0.3-p0.1-e32
#              (a1.0-p0.1-e32 ran with both: 24-epoch teachers 95.54, 32-epoch ones 95.27)
# A setting's own --epochs comes after the script's --epochs 24 and overrides it (argparse: last wins).
#   WORK_DIR   where each setting's run goes (default scripts/work-kd-sweep); a finished one is skipped
# Read each setting's WORK_DIR/<name>/table.md: weighted F1 and the one-light-missing table.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="$(cd "$HERE/.." && pwd)/.venv/bin"
DATA=$1 TABLE=$2 WORK="${3:-$HERE/work-kd-sweep}"
mkdir -p "$WORK"
for setting in "a0.3-p0.1 --kd-alpha 0.3 --light-dropout 0.1" "a0.1-p0.1 --kd-alpha 0.1 --light-dropout 0.1" \
               "a1.0-p0.1 --kd-alpha 1.0 --light-dropout 0.1" "a0.1-p0.2 --kd-alpha 0.1 --light-dropout 0.2" \
               "a1.0-p0.2 --kd-alpha 1.0 --light-dropout 0.2" "a1.0-p0.15 --kd-alpha 1.0 --light-dropout 0.15" \
               "a1.0-p0.1-e32 --kd-alpha 1.0 --light-dropout 0.1 --epochs 32" \
               "a0.3-p0.1-e32 --kd-alpha 0.3 --light-dropout 0.1 --epochs 32"; do
  read -r name flags <<< "$setting"
  [ -f "$WORK/$name/table.md" ] && continue
  # shellcheck disable=SC2086
  nice -n 10 "$BIN/wbc-train" table --data "$DATA" --out "$WORK/$name" --folds 5 --img-size 64 --epochs 24 \
    --methods mimo-kd --teachers "$TABLE" $flags --jobs 2 -q --no-plots > "$WORK/$name.log" 2>&1
  grep -E "^\| MM-MIMO \+ KD \|" "$WORK/$name/table.md" | sed "s/^/$name /"
done
