#!/usr/bin/env bash
# The multi-character built-in model (configs/synth-cast.yaml) on a lent H200, one part per call: the same
# command, called again, continues the same run where the last call stopped, until the recipe's steps are
# done. Renders, copies the shipped VAE/embedder/attribute probe, trains the cast probe, then the DiT for
# what is left of BUDGET minutes (the run's time_budget_minutes), checkpointing at the end.
#   On the warm machine of the last call the run's full checkpoint is still there. On a fresh machine (the
# last one was lost or given back), the compact checkpoint and the cast probe the last call sent back come
# in as the carried piece .carryR (`mkdir -p .carryR && cat resume-*.tar.part-* > .carryR/resume.tar`),
# with CARRY=T (the training packages alone: the tree has no room for PyAV beside it).
#   Back in $OUT: logs.tgz (train.log, log.jsonl, summary.json, loss.png), the model so far (15 MB parts:
# cat model-*.part-* | tar xz -C DEST) and the resume pack (resume-*.tar.part-*).
#   CARRY=S BUDGET=8.4 bash tools/device/synth_cast.sh     (RUN: the output directory; SETS: --set overrides)
set -uo pipefail
OUT=${OUT:?}
export PYTHONUNBUFFERED=1
RUN=${RUN:-runs/synth-cast}
NAME=$(basename $RUN)
# (at most 8 files come back: the logs of the set-up go to the output tail, not to $OUT)
[ -f /tmp/site/.base ] || bash tools/device/device_carry.sh ${CARRY:-S} > /tmp/carry.log 2>&1
. tools/device/device_setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ ! -f $RUN/checkpoint/state.json ] && [ -f .carryR/resume.tar ]; then
  mkdir -p $RUN && tar xf .carryR/resume.tar -C $RUN && echo "resuming from the carried compact checkpoint:" \
    && cat $RUN/checkpoint/state.json && echo
fi
python3 -m filmweaver.train configs/synth-cast.yaml -o $RUN --set time_budget_minutes=${BUDGET:-8.4} ${SETS:-} \
  2>&1 | grep -v "it/s]" > /tmp/train.log
echo "train rc=${PIPESTATUS[0]}"
tail -4 /tmp/train.log
cp /tmp/train.log $RUN/train.log
(cd $RUN && tar czf "$OUT/logs.tgz" $(ls train.log log.jsonl summary.json loss.png 2>/dev/null))
if [ -d $RUN/model ]; then
  tar czf - -C $RUN model | split -b 15m - "$OUT/model-$NAME.tgz.part-"
fi
if [ -f $RUN/checkpoint/state.json ]; then  # what a fresh machine needs to continue: ~16 MB
  rm -rf /tmp/resume && mkdir -p /tmp/resume
  PYTHONPATH=/tmp/site:$PWD/src python3 -m filmweaver.cli compact-checkpoint $RUN/checkpoint /tmp/resume/checkpoint
  [ -d $RUN/probe ] && cp -r $RUN/probe /tmp/resume/
  tar cf - -C /tmp/resume . | split -b 15m - "$OUT/resume-$NAME.tar.part-"
fi
ls -la "$OUT"
