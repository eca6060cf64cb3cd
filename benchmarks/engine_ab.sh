#!/bin/bash
# Engine A/B on one machine: an older tree against this one, interleaved (old, new, old, new),
# on the same validation configurations; prints each run's measured tokens/s (and the DES's
# against --hardware, which both sides share). Needs a CUDA GPU (the device machine).
#
#   git worktree add /tmp/old <rev> && mkdir -p _ab/old && \
#     cp -r /tmp/old/{inf2hw,inf2sim,conf,experiments} _ab/old/ && rm -rf _ab/old/experiments/validation/results
#   bash benchmarks/engine_ab.sh _ab/old experiments/validation/results/h100_s11e/h100.yaml
#
# Session 11: 44a3e74 against 4c775fd, benchmarks/results/h100_s11/ab_engine.txt.
set -u
OLD=$(realpath "$1"); H=$(realpath "$2"); NEW=$PWD
POLICIES=${POLICIES:-flexgen_dram,ans_xcache,flexgen_ssd}
for k in 1 2; do for side in old new; do
  if [ $side = old ]; then CODE=$OLD; else CODE=$NEW; fi
  (cd "$CODE" && PYTHONPATH=${SITE:-/tmp/site}:$CODE INF2_CONF_DIR=$CODE/conf timeout 120 python3 experiments/validation/run.py \
     --hardware "$H" --device cuda --dtype fp16 --out /tmp/ab_$side$k --work /tmp/abw_$side$k --csd-dir /tmp/inf2-kv \
     --models ${MODELS:-opt-13b-4l} --prompts 512,1536 --batch 32 --gen 16 --policies "$POLICIES" 2>&1 \
     | grep "measured" | sed "s/^/$side$k /")
done; done
