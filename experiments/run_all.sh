#!/usr/bin/env bash
# Every reproduction study: its sweep (`inf2 -m +experiment=<study> hydra/launcher=joblib`,
# all cores) and then its plot script (results/*.csv and a PNG in experiments/<study>/).
# Run from anywhere; uses the code of the checkout it lives in. Sweeps land in
# multirun/<study>/<timestamp>/, logs in multirun/logs/. Prints each study's wall time.
#
#   experiments/run_all.sh                 # the whole suite
#   experiments/run_all.sh energy c_sweep  # some studies only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
LOG="$ROOT/multirun/logs"
mkdir -p "$LOG"
ONLY=("$@")

run() {  # study, then its one command
  local study=$1 t0=$SECONDS
  shift
  if [ ${#ONLY[@]} -gt 0 ] && [[ ! " ${ONLY[*]} " =~ " $study " ]]; then return; fi
  "$@" >"$LOG/$study.log" 2>&1 || { echo "$study: sweep failed, see $LOG/$study.log" >&2; exit 1; }
  python "experiments/$study/plot.py" >>"$LOG/$study.log" 2>&1 || { echo "$study: plot failed, see $LOG/$study.log" >&2; exit 1; }
  printf '%-20s %5d s\n' "$study" $((SECONDS - t0))
}

START=$SECONDS
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
run motivation         inf2 -m +experiment=motivation hydra/launcher=joblib
run main_throughput    inf2 -m +experiment=main_throughput hydra/launcher=joblib
run ablation           inf2 -m +experiment=ablation hydra/launcher=joblib
run alpha_sweep        inf2 -m +experiment=alpha_sweep hydra/launcher=joblib
run c_sweep            inf2 -m +experiment=c_sweep hydra/launcher=joblib
run csd_count          inf2 -m +experiment=csd_count hydra/launcher=joblib
run batch_sweep        inf2 -m +experiment=batch_sweep hydra/launcher=joblib
run memory_budget      inf2 -m +experiment=memory_budget hydra/launcher=joblib
run gqa_moe            inf2 -m +experiment=gqa_moe hydra/launcher=joblib
run cost_effectiveness inf2 -m +experiment=cost_effectiveness hydra/launcher=joblib
run energy             inf2 -m +experiment=energy hydra/launcher=joblib
run endurance          inf2 -m +experiment=endurance hydra/launcher=joblib
printf '%-20s %5d s  (%s, %s cores, load average before: %s, after: %s)\n' total $((SECONDS - START)) \
  "$(date -u +%FT%TZ)" "$(nproc)" "$LOAD0" "$(cut -d' ' -f1-3 /proc/loadavg)"
