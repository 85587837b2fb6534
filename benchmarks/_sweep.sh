# The validation sweep of rho shared by run_noise_levels.sh and run_vit.sh (sourced, not run).
# Needs PY (the Python to run) and the array COMMON (the arguments every `xsam tune` shares).
chosen() {  # $1 tune folder: the rho its sweep chose
  $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["chosen"]["rho"])' "$1/tune.json"
}
widen() {  # $1 tune folder, $2 the radii tried: the list grown past the end that won, or nothing
  $PY - "$1/tune.json" "$2" <<'PYEOF'
import json, sys
chosen = json.load(open(sys.argv[1]))["chosen"]["rho"]
rhos = sorted(float(r) for r in sys.argv[2].split(","))
if chosen == rhos[-1]:
    rhos.append(2 * rhos[-1])
elif chosen == rhos[0]:
    rhos.insert(0, rhos[0] / 2)
else:
    sys.exit(0)
print(",".join(f"{r:g}" for r in rhos))
PYEOF
}
tune() {  # $1 optimizer, $2 folder, $3 the first radii: the sweep on the validation split (seed
  # 0), widened (twice at most) while one of its ends wins
  local rhos=$3 more attempt
  for attempt in 1 2 3; do
    $PY -m xsam tune "${COMMON[@]}" --optimizer "$1" --rhos "$rhos" --seeds 0 --out "$2"
    [[ $attempt == 3 ]] && return 0
    more=$(widen "$2" "$rhos")
    [[ -n "$more" ]] || return 0
    rhos=$more
  done
}
