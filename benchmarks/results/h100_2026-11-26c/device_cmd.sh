#!/bin/bash
# One device call (nvidia-h100-x1): FlexGen KV-in-DRAM, then the engine's flexgen_dram with the
# host KV store pinned (--pin-host on), pageable (--pin-host off), and pinned again if time allows.
# Run from the repo root on the device machine with .whl/ and _fgwheels/ carried; writes to $OUT.
set -u
T0=$SECONDS; DEADLINE=${DEADLINE:-580}
left() { echo $(( DEADLINE - (SECONDS - T0) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, os; print('torch', torch.__version__, torch.cuda.get_device_name(0), os.cpu_count(), 'cpus')"
  grep -E 'MemTotal|MemAvailable' /proc/meminfo; cat /sys/kernel/mm/transparent_hugepage/enabled
  date -Is; } 2>&1 | tee "$OUT/device.txt"
LOG=$OUT/bench.log; LAST=0
COMMON="--model opt-13b --gbs 16 --ngb 2 --prompt 2048 --gen 16 --weights gpu --csds 8"
step() {  # name, per-run timeout, extra args
  local name=$1 to=$2; shift 2
  local l=$(left); local t=$(( l - 40 < to ? l - 40 : to ))
  if [ "$t" -lt 60 ]; then echo "== skip $name: ${l}s left" | tee -a "$LOG"; return 1; fi
  echo "== $name $(date -Is) per-run timeout ${t}s (${l}s left)" | tee -a "$LOG"
  local s=$SECONDS
  timeout $(( t * 2 + 30 < l - 5 ? t * 2 + 30 : l - 5 )) python3 benchmarks/engine_vs_flexgen.py $COMMON \
    --work /tmp/b13$name --timeout $t --out "$OUT/$name.json" "$@" 2>&1 | grep -v "it/s\]\|tok/s\]" | tee -a "$LOG"
  echo "== $name done in $(( SECONDS - s ))s rc ${PIPESTATUS[0]}" | tee -a "$LOG"
  LAST=$(( SECONDS - s ))
}
# PLAN: the invocations in order (call 1: "fg on off on2"; call 2: "on off on2")
for name in ${PLAN:-fg on off on2}; do
  case $name in
    fg) step fg 170 --flexgen dram --engine "" ;;
    on|on2|on3|off|off2)
      pin=on; case $name in off*) pin=off ;; esac
      # a later engine invocation runs only if it can finish: about as long as the last one
      if [ "$LAST" -gt 0 ] && [ $(left) -le $(( LAST + 30 )) ]; then
        echo "== skip $name: $(left)s left, last run took ${LAST}s" | tee -a "$LOG"; continue; fi
      step $name 220 --flexgen "" --engine flexgen_dram --pin-host $pin ;;
  esac
done
tar czf "$OUT/child_logs.tgz" -C /tmp $(cd /tmp && ls -d b13*/logs/*.log 2>/dev/null) 2>/dev/null
date -Is >> "$OUT/device.txt"
ls -la "$OUT"
