#!/bin/bash
# Calibrate + validate on a GPU machine reached through the device tool (one call, one H100).
# Run from the repo root there:  bash experiments/validation/device_run.sh <code dir> [validation args...]
# <code dir> holds inf2sim/, inf2hw/, conf/, experiments/ (a clean copy of this repo's code);
# .whl/ holds the wheels the image lacks (omegaconf, hydra, simpy, matplotlib, ...).
# Everything it reports goes to $OUT (flat: at most 8 files come back).
set -u
CODE=$(realpath "$1"); shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$CODE INF2_CONF_DIR=$CODE/conf PYTHONUNBUFFERED=1
cd "$CODE"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, os; print('torch', torch.__version__, torch.cuda.get_device_name(0), os.cpu_count(), 'cpus')"
  df -h /tmp | tail -1; findmnt -n -o FSTYPE,SOURCE -T /tmp; date -Is; } 2>&1 | tee "$OUT/device.txt"
NAME=${NAME:-h100}
rm -f conf/hardware/$NAME.yaml  # this copy's: the validation must use the profile calibrated now, or none
timeout ${CAL_S:-240} python3 -c "from inf2sim.cli import main; main()" calibrate calibrate.name=$NAME \
  calibrate.quick=${QUICK:-true} calibrate.device=cuda dtype=fp16 calibrate.threads=${THREADS:-8} \
  calibrate.procs=4 calibrate.csd_count=4 calibrate.ssd_count=4 calibrate.dir=/tmp/inf2-calib \
  "calibrate.models=[${MODELS:-opt-13b-4l}]" \
  hydra.run.dir=/tmp/cal 2>&1 | grep -v "bench/s" | tee "$OUT/log.txt"
cp conf/hardware/$NAME.yaml /tmp/cal/calibration.json "$OUT/" 2>/dev/null
[ -f conf/hardware/$NAME.yaml ] || { echo "no profile written (calibration past CAL_S=${CAL_S:-240} s?)"; exit 1; }
timeout ${VAL_S:-420} python3 experiments/validation/run.py --hardware $NAME --device cuda --dtype fp16 \
  --out /tmp/val --work /tmp/vw --csd-dir /tmp/inf2-kv --tar "$OUT/runs.tgz" "$@" 2>&1 | grep -v "tok/s\]\|it/s\]" | tee -a "$OUT/log.txt"
cp /tmp/val/table.md /tmp/val/results.json "$OUT/" 2>/dev/null
cp /tmp/val/timeline_*.png "$OUT/" 2>/dev/null
ls "$OUT"
