#!/usr/bin/env bash
# Rebuilds the packaged demo bundle (wbc_edge/demo/demo.wbc) with the project's own pipeline:
# the same steps as wbc-demo, on more cells, donors and epochs. About 15 minutes on 2 CPU cores.
# 40 simulated donors (32 in the training split): the differential estimate's calibration must hold
# for donors the model never saw, and a model trained on six donors' stains did not (benchmarks/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/demo-bundle}
.venv/bin/wbc-demo --out "$out" --cells 4000 --donors 40 --epochs 12 --seed 0
mkdir -p wbc_edge/demo
cp "$out/model.wbc" wbc_edge/demo/demo.wbc
# The export measured quantification.json on the fold's 400 validation cells; re-measure it on 4,000
# fresh cells (another seed, 32 new donors) so the differential estimate's rates are known better.
.venv/bin/wbc-synth cells --out "$out/quant-heldout" --n 4000 --seed 303 --groups 32 --class-mix balanced -q
.venv/bin/wbc-export quantify --bundle wbc_edge/demo/demo.wbc --data "$out/quant-heldout" --train-prior balanced
echo "wrote wbc_edge/demo/demo.wbc from $out/model.wbc"
