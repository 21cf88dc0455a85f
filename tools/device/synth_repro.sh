#!/usr/bin/env bash
# The documented one-command reproduction of the built-in model on one GPU, timed as one command:
# `python3 -m filmweaver.train configs/synth-small.yaml` from scratch (render, VAE, CLIP embedder, probe,
# then the DiT within the config's time budget; nothing reused). The wall time goes to
# $RUNS/pack/wall.txt, the model (split in <16 MB parts) and logs to $RUNS/pack as soon as training
# ends; then, if EVAL_ARMS is set, those arms of the ablation on $STORIES held-out stories (SHARDS
# processes each) and their report.
#   setsid nohup bash tools/device/synth_repro.sh > runs/pipeline.out 2>&1 < /dev/null &   # tools/device/device_wait.sh waits on it
set -uo pipefail
R=${RUNS:-runs}
CFG=${CFG:-configs/synth-small.yaml}
EVAL_ARMS=${EVAL_ARMS:-}
STORIES=${STORIES:-50}
SHARDS=${SHARDS:-8}
mkdir -p $R/pack
start=$(date +%s)
python3 -m filmweaver.train $CFG -o $R/full "$@" > $R/repro.log 2>&1
rc=$?
echo "rc=$rc wall_s=$(( $(date +%s) - start )) cmd=python3 -m filmweaver.train $CFG $*" | tee $R/pack/wall.txt
PACK=$R/pack; source tools/device/pack.sh; pack_model $R/full
tar czf $R/pack/train.tgz $R/full/log.jsonl $R/full/summary.json $R/full/loss.png $R/repro.log $R/pack/wall.txt
echo TRAINING-DONE
if [ -n "$EVAL_ARMS" ] && [ $rc -eq 0 ]; then
  STORIES=$STORIES bash tools/device/synth_eval.sh $R $R/eval "$EVAL_ARMS" $SHARDS
  tar czf $R/pack/report.tgz $R/eval/report.* $R/eval/ablation.png
fi
echo ALL-DONE
