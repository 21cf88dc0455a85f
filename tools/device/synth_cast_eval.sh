#!/usr/bin/env bash
# The multi-character ablation on a lent H200, on the warm machine of a synth_cast.sh call (its packages in
# /tmp/site and its run in runs/synth-castB stay there): the candidate trained before arrives as a carried
# model (.carryM/part0: `tar cf .carryM/part0 -C PARENT model`, the parts that differ from the shipped
# model; the rest is copied from it), or none (B_RUN alone, its own probes). Held-out cast stories (--world cast) and one-character stories, one
# evaluate process per share (the tiny model is host-bound), stopped at LIMIT seconds so that what finished
# comes back: every run's metrics.json (records included) in one archive, plus the logs.
#   MODELS="A B" CAST_ARMS="entity@A topk@A ..." SINGLE_ARMS="full@A full@B" bash tools/device/synth_cast_eval.sh
#   LONG_SHARDS=4 [LONG_STORIES=50 LONG_ARMS="entity@B topk@B" LONG_FIRST_SEED=2000000]: also the long stories' gap curve
set -uo pipefail
OUT=${OUT:?}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
[ -f /tmp/site/.av ] || { echo "no /tmp/site: not the warm machine of a synth_cast.sh call"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD/src
R=runs/ablation; mkdir -p $R/A $R/B
B=${B_RUN:-runs/synth-castB}
[ -d $B/model ] && ln -sfn $PWD/$B/model $R/B/model
SHIPPED=src/filmweaver/weights/synth-small
PROBE=$R/B/model/probe  # without a carried A: the candidate trained on this machine brings its probes
if [ -f .carryM/part0 ]; then
  tar xf .carryM/part0 -C $R/A
  for part in vae scheduler embedder tokenizer text_encoder; do
    [ -d $R/A/model/$part ] || cp -r $SHIPPED/$part $R/A/model/
  done
  cp -n $SHIPPED/probe/probe.* $R/A/model/probe/
  PROBE=$R/A/model/probe
fi
CAST_ARMS=${CAST_ARMS:-entity@A topk@A no_shot_cache@A sink_window@A entity@B topk@B}
SINGLE_ARMS=${SINGLE_ARMS:-full@A full@B}
STORIES=${STORIES:-50}; LIMIT=${LIMIT:-470}; CAST_SHARDS=${CAST_SHARDS:-10}; SINGLE_SHARDS=${SINGLE_SHARDS:-5}
# (a later --stories in the arguments overrides the default)
ev() { timeout $LIMIT python3 -m filmweaver.synth.evaluate $R --stories $STORIES --probe $PROBE --device cuda "$@"; }
for k in $(seq 0 $((CAST_SHARDS - 1))); do
  ev runs/eval-cast --world cast --arms $CAST_ARMS --shard $k/$CAST_SHARDS > runs/cast_$k.log 2>&1 &
done
for k in $(seq 0 $((SINGLE_SHARDS - 1))); do
  ev runs/eval-single --arms $SINGLE_ARMS --shard $k/$SINGLE_SHARDS > runs/single_$k.log 2>&1 &
done
# long cast stories (30-50 shots, one character away for 20+ shots): the recurrence-gap curve
LONG_SHARDS=${LONG_SHARDS:-0}; LONG_STORIES=${LONG_STORIES:-50}
for k in $(seq 0 $((LONG_SHARDS - 1))); do
  ev runs/eval-long --world cast --min-shots 30 --max-shots 50 --first-seed ${LONG_FIRST_SEED:-2000000} --stories $LONG_STORIES \
    --shard $k/$LONG_SHARDS --arms ${LONG_ARMS:-entity@B topk@B} > runs/long_$k.log 2>&1 &
done
wait
tail -n 3 runs/cast_0.log runs/single_0.log
find runs/eval-cast runs/eval-single $(ls -d runs/eval-long 2>/dev/null) -name metrics.json | tar czf "$OUT/metrics.tgz" -T -
tar czf "$OUT/eval-logs.tgz" runs/*.log
ls runs/eval-cast/runs/* runs/eval-single/runs/* | head -40
ls -la "$OUT"
