#!/bin/bash
# One device call (nvidia-h100-x1): the engine's host attention kernels side by side
# (benchmarks/cpu_attention.py), then FlexGen KV-in-DRAM and the engine's flexgen_dram on
# one shape (MODEL, default opt-13b). Run from the repo root on the device machine with
# .whl/ and _fgwheels/ carried; writes to $OUT.
set -u
T0=$SECONDS; DEADLINE=${DEADLINE:-580}
left() { echo $(( DEADLINE - (SECONDS - T0) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, os; print('torch', torch.__version__, torch.cuda.get_device_name(0), os.cpu_count(), 'cpus')"
  lscpu | grep -E 'Model name|L3|NUMA node\(s\)|Flags' | cut -c1-400
  grep -E 'MemTotal|MemAvailable' /proc/meminfo; git rev-parse HEAD 2>/dev/null; git status --short | head
  date -Is; } 2>&1 | tee "$OUT/device.txt"
LOG=$OUT/bench.log
MODEL=${MODEL:-opt-13b}
if [ "${KERNELS:-1}" = 1 ]; then
  echo "== cpu_attention $(date -Is)" | tee -a "$LOG"
  timeout 120 python3 benchmarks/cpu_attention.py --rows 640 --ctx 2064 --d 128 --dtype fp16 --threads 16,14 \
    --total-gb 2 --repeat 7 2>&1 | tee "$OUT/cpu_attention.jsonl" | tee -a "$LOG"
fi
COMMON="--model $MODEL --gbs 16 --ngb 2 --prompt 2048 --gen 16 --weights gpu --csds 8"
step() {  # name, per-run timeout, extra args
  local name=$1 to=$2; shift 2
  local l=$(left); local t=$(( l - 40 < to ? l - 40 : to ))
  if [ "$t" -lt 60 ]; then echo "== skip $name: ${l}s left" | tee -a "$LOG"; return 1; fi
  echo "== $name $(date -Is) per-run timeout ${t}s (${l}s left)" | tee -a "$LOG"
  local s=$SECONDS
  timeout $(( t * 2 + 30 < l - 5 ? t * 2 + 30 : l - 5 )) python3 benchmarks/engine_vs_flexgen.py $COMMON \
    --work /tmp/b_$name --timeout $t --out "$OUT/$name.json" "$@" 2>&1 | grep -v "it/s\]\|tok/s\]" | tee -a "$LOG"
  echo "== $name done in $(( SECONDS - s ))s rc ${PIPESTATUS[0]}" | tee -a "$LOG"
}
for name in ${PLAN:-fg eng}; do
  case $name in
    fg) step fg 170 --flexgen dram --engine "" ;;
    fgdisk) step fgdisk 200 --flexgen disk --engine "" ;;
    eng) step eng 200 --flexgen "" --engine flexgen_dram ;;
    ssd) step ssd 220 --flexgen "" --engine flexgen_ssd ;;
    inf2) step inf2 320 --flexgen "" --engine inf2@0.85,inf2@1.0 ;;
  esac
done
tar czf "$OUT/child_logs.tgz" -C /tmp $(cd /tmp && ls -d b_*/logs/*.log 2>/dev/null) 2>/dev/null
date -Is >> "$OUT/device.txt"
tar czf "$OUT/all.tgz" -C "$OUT" --exclude all.tgz . 2>/dev/null  # the device returns at most 8 files
ls -la "$OUT"
