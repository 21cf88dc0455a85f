#!/usr/bin/env bash
# Text slots and slot regions, tried against a control on one lent GPU: the shipped multi-character model
# fine-tuned three times on configs/synth-cast.yaml's data for the same minutes, side by side on one GPU
# (same seed, schedule and data): as it is (C), with dit.text_slots (T: the prompt's words marked with
# the slot of the character they speak of), and with text slots and dit.region_slots (R: a crowded
# keyframe's slots marked where each character is); then all evaluated on the held-out cast stories
# with the shipped probes as judge (the same judge as the shipped model's committed records).
#   PHASE=train MINUTES=7.5 bash tools/device/text_slots_trial.sh   (call 1: models back as model-{C,T,R}.tgz.part-*)
#   PHASE=eval LIMIT=480 bash tools/device/text_slots_trial.sh      (call 2, the same warm machine: metrics.tgz)
# The tree travels without reports/ and the camera probe (as tools/device/eval_shipped.sh).
set -uo pipefail
OUT=${OUT:?}
export PYTHONUNBUFFERED=1
[ -f /tmp/site/.base ] || bash tools/device/device_carry.sh ${CARRY:-S} > /tmp/carry.log 2>&1
. tools/device/device_setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
R=runs/trial
SHIPPED=src/filmweaver/weights/synth-small
if [ "${PHASE:-train}" = train ]; then
  common="--set dit.init_from=builtin --set probe=null --set dit.stages.1.steps=${STEPS:-6000}
          --set dit.max_minutes=${MINUTES:-7.5} --set dit.fit_steps_to_time=true --set dit.lr=${LR:-3e-4}"
  # the data once (render, then both runs read the cache)
  python3 -m filmweaver.train configs/synth-cast.yaml -o $R/data --set stop_after=embedder --set probe=null \
    2>&1 | grep -v "it/s]" | tail -3
  for arm in ${ARMS:-C T R}; do
    extra=""; [ $arm != C ] && extra="--set dit.text_slots=true"; [ $arm = R ] && extra="$extra --set dit.region_slots=true"
    python3 -m filmweaver.train configs/synth-cast.yaml -o $R/$arm $common $extra 2>&1 | grep -v "it/s]" > $R/$arm.log &
  done
  wait
  for arm in ${ARMS:-C T R}; do
    tail -3 $R/$arm.log
    (cd $R/$arm && tar czf "$OUT/logs-$arm.tgz" ../$arm.log $(ls log.jsonl summary.json loss.png 2>/dev/null))
    [ -d $R/$arm/model ] && tar czf - --exclude model/vae --exclude model/embedder -C $R/$arm model \
      | split -b 15m - "$OUT/model-$arm.tgz.part-"
  done
else
  export PYTHONPATH=/tmp/site:$PWD/src OMP_NUM_THREADS=1
  mkdir -p $R/eval
  for arm in ${ARMS:-C T R}; do
    if [ ! -d $R/$arm/model ] && ls .carryM/model-$arm.tgz.part-* >/dev/null 2>&1; then  # a fresh machine
      mkdir -p $R/$arm && cat .carryM/model-$arm.tgz.part-* | tar xz -C $R/$arm
    fi
    for part in vae embedder; do [ -d $R/$arm/model/$part ] || cp -r $SHIPPED/$part $R/$arm/model/; done
    mkdir -p $R/eval/$arm && ln -sfn $PWD/$R/$arm/model $R/eval/$arm/model
  done
  ev() { timeout ${LIMIT:-480} python3 -m filmweaver.synth.evaluate $R/eval --stories ${STORIES:-50} --probe $SHIPPED/probe \
         --device cuda "$@"; }
  CAST_SHARDS=${CAST_SHARDS:-12}; SINGLE_SHARDS=${SINGLE_SHARDS:-3}
  for k in $(seq 0 $((CAST_SHARDS - 1))); do
    ev runs/eval-cast --world cast --arms ${CAST_ARMS:-entity@C entity@T entity@R} --shard $k/$CAST_SHARDS > runs/cast_$k.log 2>&1 &
  done
  for k in $(seq 0 $((SINGLE_SHARDS - 1))); do
    ev runs/eval-single --arms ${SINGLE_ARMS:-full@R} --shard $k/$SINGLE_SHARDS > runs/single_$k.log 2>&1 &
  done
  wait
  tail -n 3 runs/cast_0.log runs/single_0.log
  find runs/eval-cast runs/eval-single -name metrics.json | tar czf "$OUT/metrics.tgz" -T -
  tar czf "$OUT/eval-logs.tgz" runs/*.log
fi
ls -la "$OUT"
