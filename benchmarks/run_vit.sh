#!/usr/bin/env bash
# A small vision transformer from scratch with AdamW (issue 20, cell 1): the label-noise
# benchmark's data (full Fashion-MNIST, 10k training images, 5k validation images carrying
# the same noise, the 10k test images clean) with the preset fmnist-noise-vit (ViT 7x7 patches,
# width 96, depth 4; AdamW lr 1e-3, 2 warm-up epochs then cosine, weight decay 0.05 on weight
# matrices only, 30 epochs, no augmentation). Results and their reading: BENCHMARKS.md.
#   sudo apt-get install -y dataset-fashion-mnist      # the full data set, offline
#   nice -n 10 benchmarks/run_vit.sh                   # ~4 h per noise level on one CPU thread
#   JOBS=2 nice -n 10 benchmarks/run_vit.sh            # two runs at a time (~1.5 h for the clean level)
# Resumable: rerun the same command and finished runs are skipped, stopped ones resumed.
#
# Per noise level (NOISES, default "0.4 0.0"):
# 1) SAM(AdamW)'s and XSAM(AdamW)'s rho chosen by `xsam tune` on the noisy validation split
#    (seed 0; the test set plays no part): RHOS (default 0.025-0.2), doubled past an end that
#    wins (twice at most). AdamW's learning rate and decay are the preset's, not tuned.
# 2) AdamW, SAM and XSAM at those radii, paired seeds 0..SEEDS_MAX (default 4), one seed at a
#    time so that every finished seed is a complete pair (`--seeds 0-n`, finished runs skipped).
# 3) the summaries (reports, and every finished run in runs.jsonl: no checkpoints, no
#    metrics.csv, which repeats metrics.jsonl) copied to
#    benchmarks/results/vit/.
# JOBS=2 trains two runs at a time (each on one thread; the default is one at a time).
# The 40% grid also has the schedule rows (SCHEDULE=0 leaves them out): SAM with a full update
# every 4th step and, on the cheap steps between, LookSAM reuse with each lambda of REUSES
# (default "0.5 0"; 0 is plain AdamW on the cheap steps). Each seed trains every row, so the
# report written after each seed always holds every row.
# The runs import the code snapshot $OUT/src (copied from src/ at the first start, so that
# edits to the tree during a study of several hours cannot change it midway; SNAPSHOT=0 uses
# the tree itself; delete $OUT/src to take a newer tree, for a new study).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/vit}
RESULTS=${RESULTS:-benchmarks/results/vit}
PRESET=fmnist-noise-vit
mkdir -p "$OUT"
if [[ "${SNAPSHOT:-1}" == 1 ]]; then
  if [[ ! -d "$OUT/src" ]]; then
    cp -r src "$OUT/src.tmp" && find "$OUT/src.tmp" -name __pycache__ -prune -exec rm -rf {} +
    git rev-parse HEAD > "$OUT/src.tmp/COMMIT" && git status --short src > "$OUT/src.tmp/STATUS"
    mv "$OUT/src.tmp" "$OUT/src"
  fi
  export PYTHONPATH="$PWD/$OUT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export OMP_NUM_THREADS=1
source benchmarks/_sweep.sh  # chosen, widen, tune: the validation sweep of rho
collect() {  # $1 a cell folder under $OUT: its finished runs copied to $RESULTS, each
  # comparison's runs in one runs.jsonl (benchmarks/README.md), no checkpoints
  $PY - "$1" "$RESULTS/$(basename "$1")" <<'PYEOF'
import json, os, shutil, sys
def unfinished(run):  # a run folder with fewer epochs of metrics than its config asks for
    if not os.path.isfile(os.path.join(run, "config.json")):
        return False
    epochs = json.load(open(os.path.join(run, "config.json")))["epochs"]
    metrics = os.path.join(run, "metrics.jsonl")
    return not os.path.isfile(metrics) or sum(1 for _ in open(metrics)) < epochs
def skip(folder, names):  # checkpoints, and the folders of runs not finished yet
    return [n for n in names if n.endswith((".pt", ".tmp")) or n in ("checkpoints", "metrics.csv")
            or unfinished(os.path.join(folder, n))]
shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True, ignore=skip)
PYEOF
  env -u PYTHONPATH "$PY" benchmarks/consolidate_results.py --prune "$RESULTS/$(basename "$1")"
}
for NOISE in ${NOISES:-0.4 0.0}; do
  TAG=n$($PY -c "print(round($NOISE * 100))")
  DIR="$OUT/fmnist_vit_$TAG"
  COMMON=(--preset "$PRESET" --label-noise "$NOISE" --quiet --jobs "${JOBS:-1}" --threads 1)
  tune sam "$DIR/tune_sam" "${RHOS:-0.025,0.05,0.1,0.2}"
  collect "$DIR"
  tune xsam "$DIR/tune_xsam" "${RHOS:-0.025,0.05,0.1,0.2}"
  collect "$DIR"
  S=$(chosen "$DIR/tune_sam"); X=$(chosen "$DIR/tune_xsam")
  echo "$TAG: chosen on validation: sam $S, xsam $X"
  VARIANTS="sgd,sam:rho=$S,xsam:rho=$X"
  PAIRS="sam:rho=$S-sgd,xsam:rho=$X-sgd,xsam:rho=$X-sam:rho=$S"
  if [[ "${SCHEDULE:-1}" == 1 && "$TAG" == n40 ]]; then
    for R in ${REUSES:-0.5 0}; do
      L="sam:rho=$S,perturb_every=4,perturb_reuse=$R"
      VARIANTS="$VARIANTS,$L" PAIRS="$PAIRS,$L-sgd,$L-sam:rho=$S"
    done
  fi
  for n in $(seq 0 "${SEEDS_MAX:-4}"); do
    $PY -m xsam compare "${COMMON[@]}" --seeds "0-$n" --out "$DIR/grid" \
      --optimizers "$VARIANTS" --pairs "$PAIRS"
    collect "$DIR"
  done
done
