#!/usr/bin/env bash
# Where sharpness-aware training pays: 40% symmetric label noise, an MLP that memorises,
# full Fashion-MNIST (issue 11). Results and the commands' outputs: BENCHMARKS.md.
#   sudo apt-get install -y dataset-fashion-mnist      # the full data set, offline
#   JOBS=2 benchmarks/run_noise.sh                     # about 2 h on 2 CPU cores
# Resumable: rerun the same command and finished runs are skipped, stopped ones resumed.
#
# 1) ρ per method family, chosen by `xsam tune` on 5,000 held-out training images whose labels
#    carry the same noise (seed 0): the test set plays no part in the choice. A choice at the
#    end of its list means the list was too short: these lists are the ones that ended with
#    an interior choice.
# 2) every method at its ρ, plus SGD for twice the epochs (the SAM family's compute), seeds
#    0-4, paired (a seed gives every method the same initialisation and data order).
# 3) the paper's multi-step claim: SAM and XSAM with k = 1, 2, 3, 5 at one ρ.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-0-4}
OUT=${OUT:-runs/noise}
COMMON=(--preset fmnist-noise-mlp --quiet --jobs "$JOBS" --threads 1)

chosen() {  # the ρ a tune folder chose
    $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["chosen"]["rho"])' "$1/tune.json"
}
$PY -m xsam tune "${COMMON[@]}" --optimizer sam --rhos 0.05,0.1,0.2,0.4 --seeds 0 --out "$OUT/tune_sam"
$PY -m xsam tune "${COMMON[@]}" --optimizer xsam --rhos 0.05,0.1,0.2,0.4 --seeds 0 --out "$OUT/tune_xsam"
$PY -m xsam tune "${COMMON[@]}" --optimizer "sam:adaptive=true" --rhos 0.5,1,2,4,8 --seeds 0 \
    --out "$OUT/tune_asam"
$PY -m xsam tune "${COMMON[@]}" --optimizer "xsam:adaptive=true" --rhos 0.5,1,2,4,8 --seeds 0 \
    --out "$OUT/tune_xsam_adaptive"
S=$(chosen "$OUT/tune_sam"); X=$(chosen "$OUT/tune_xsam")
A=$(chosen "$OUT/tune_asam"); XA=$(chosen "$OUT/tune_xsam_adaptive")
echo "chosen on validation: sam $S, xsam $X, asam $A, xsam+adaptive $XA"

$PY -m xsam compare "${COMMON[@]}" --seeds "$SEEDS" --out "$OUT/grid" \
    --optimizers "sgd,sam:rho=$S,xsam:rho=$X,sgd:epochs=60,sam:adaptive=true,rho=$A,xsam:adaptive=true,rho=$XA" \
    --pairs "sam:rho=$S-sgd,xsam:rho=$X-sgd,xsam:rho=$X-sam:rho=$S,sam:rho=$S-sgd:epochs=60,xsam:rho=$X-sgd:epochs=60,xsam:adaptive=true,rho=$XA-sam:adaptive=true,rho=$A"

R=${MULTISTEP_RHO:-$S}
$PY -m xsam compare "${COMMON[@]}" --seeds "$SEEDS" --out "$OUT/multistep" \
    --optimizers "sam:rho=$R,sam:rho=$R,steps=2,sam:rho=$R,steps=3,sam:rho=$R,steps=5,xsam:rho=$R,xsam:rho=$R,steps=2,xsam:rho=$R,steps=3,xsam:rho=$R,steps=5"
# every run of every comparison folder also in its runs.jsonl (what is committed: benchmarks/README.md)
$PY benchmarks/consolidate_results.py "$OUT"
