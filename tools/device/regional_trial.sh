#!/usr/bin/env bash
# Regional prompts trained in, against a control, on one lent GPU: the shipped multi-character model
# continued twice on configs/synth-cast-slots.yaml's recipe for the same minutes, side by side (same
# seed, data and schedule): as it is (C) and with dit.regional_prompts (G: each character's description
# read only from its strip of the frame, as the engine's --regional-prompts does at inference); both
# generate with regional prompts (the recipe's generate section). While they train, the shipped model
# (regional prompts at inference: its default) is evaluated on the held-out cast stories (entity@B;
# the tiny model's evaluation is host-bound: it shares the GPU cheaply).
#   PHASE=train MINUTES=6 bash tools/device/regional_trial.sh       (call 1: models back as model-{C,G}.tgz.part-*)
#   PHASE=eval CAST_ARMS="entity@G entity@C topk@G sink_window@G" bash tools/device/regional_trial.sh
#                                                                    (call 2, the same warm machine or the models carried in .carryM)
# The tree travels without reports/ and the camera probe (as tools/device/eval_shipped.sh).
set -uo pipefail
OUT=${OUT:?}
export PYTHONUNBUFFERED=1
[ -f /tmp/site/.base ] || bash tools/device/device_carry.sh ${CARRY:-S} > /tmp/carry.log 2>&1
. tools/device/device_setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
R=runs/trial
SHIPPED=src/filmweaver/weights/synth-small
mkdir -p $R/eval/B && ln -sfn $PWD/$SHIPPED $R/eval/B/model
ev() {  # one evaluate process per share of the stories, stopped at LIMIT seconds (what finished comes back)
  local limit=$1; shift
  (export OMP_NUM_THREADS=1; timeout $limit python3 -m filmweaver.synth.evaluate $R/eval --stories ${STORIES:-50} \
     --probe $SHIPPED/probe --device cuda "$@")
}
collect() {
  find runs/eval-cast runs/eval-single runs/eval-long -name metrics.json 2>/dev/null | tar czf "$OUT/metrics$1.tgz" -T -
  tar czf "$OUT/eval-logs$1.tgz" runs/*.log 2>/dev/null
}
if [ "${PHASE:-train}" = train ]; then
  SIDE_SHARDS=${SIDE_SHARDS:-10}
  for k in $(seq 0 $((SIDE_SHARDS - 1))); do
    ev ${SIDE_LIMIT:-500} runs/eval-cast --world cast --arms ${SIDE_ARMS:-entity@B} --shard $k/$SIDE_SHARDS \
      > runs/side_$k.log 2>&1 &
  done
  common="--set dit.init_from=builtin --set dit.stages.1.steps=${STEPS:-6000} --set dit.max_minutes=${MINUTES:-6}
          --set dit.fit_steps_to_time=true --set dit.lr=${LR:-3e-4}"
  # the data once (rendered, then both runs read the cache)
  python3 -m filmweaver.train configs/synth-cast-slots.yaml -o $R/data --set stop_after=embedder --set dit.init_from=builtin \
    2>&1 | grep -v "it/s]" | tail -3
  for arm in ${ARMS:-C G}; do
    extra=""; [ $arm = G ] && extra="--set dit.regional_prompts=true"
    python3 -m filmweaver.train configs/synth-cast-slots.yaml -o $R/$arm $common $extra 2>&1 | grep -v "it/s]" > $R/$arm.log &
  done
  wait
  for arm in ${ARMS:-C G}; do
    tail -3 $R/$arm.log
    (cd $R/$arm && tar czf "$OUT/logs-$arm.tgz" ../$arm.log $(ls log.jsonl summary.json loss.png 2>/dev/null))
    [ -d $R/$arm/model ] && tar czf - --exclude model/vae --exclude model/embedder --exclude model/probe -C $R/$arm model \
      | split -b 15m - "$OUT/model-$arm.tgz.part-"
  done
  collect -side
else
  for arm in ${ARMS:-C G}; do
    if [ ! -d $R/$arm/model ] && ls .carryM/model-$arm.tgz.part-* >/dev/null 2>&1; then  # a fresh machine
      mkdir -p $R/$arm && cat .carryM/model-$arm.tgz.part-* | tar xz -C $R/$arm
    fi
    for part in vae embedder probe; do [ -d $R/$arm/model/$part ] || cp -r $SHIPPED/$part $R/$arm/model/; done
    mkdir -p $R/eval/$arm && ln -sfn $PWD/$R/$arm/model $R/eval/$arm/model
  done
  CAST_SHARDS=${CAST_SHARDS:-15}; SINGLE_SHARDS=${SINGLE_SHARDS:-0}; LONG_SHARDS=${LONG_SHARDS:-0}
  for k in $(seq 0 $((CAST_SHARDS - 1))); do
    ev ${LIMIT:-520} runs/eval-cast --world cast --arms ${CAST_ARMS:-entity@G entity@C} --shard $k/$CAST_SHARDS > runs/cast_$k.log 2>&1 &
  done
  for k in $(seq 0 $((SINGLE_SHARDS - 1))); do
    ev ${LIMIT:-520} runs/eval-single --arms ${SINGLE_ARMS:-full@G} --shard $k/$SINGLE_SHARDS > runs/single_$k.log 2>&1 &
  done
  for k in $(seq 0 $((LONG_SHARDS - 1))); do
    ev ${LIMIT:-520} runs/eval-long --world cast --min-shots 30 --max-shots 50 --first-seed 2000000 \
      --stories ${LONG_STORIES:-20} --shard $k/$LONG_SHARDS --arms ${LONG_ARMS:-entity@G} > runs/long_$k.log 2>&1 &
  done
  wait
  collect ""
fi
ls -la "$OUT"
