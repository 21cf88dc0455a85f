#!/usr/bin/env bash
# The shipped multi-character model evaluated on a fresh lent GPU machine: held-out cast stories under
# several engine settings (CAST_ARMS of filmweaver.synth.evaluate's ARMS, each @B = the shipped model)
# and the long held-out cast stories (30-50 shots, a character away 20+ shots: the recurrence-gap curve).
# The tree travels slimmed (`bash tools/device/slim_tree.sh` here first: no reports, tests, docs, camera probe) so that the packages
# (.carryS from `SLIM=1 bash tools/device/make_site_bundle.sh`) fit beside it. Back in $OUT: metrics.tgz
# (every run's metrics.json) and the logs; the report is made here with `--report-only`.
#   CAST_ARMS="memory_guidance_6@B cfg_5@B" LONG_STORIES=20 bash tools/device/eval_shipped.sh
set -uo pipefail
OUT=${OUT:?}
[ -f /tmp/site/.base ] || bash tools/device/device_carry.sh ${CARRY:-S} > /tmp/carry.log 2>&1
. tools/device/device_setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
mkdir -p runs/shipped && ln -sfn $PWD/src/filmweaver/weights/synth-small runs/shipped/model
B_RUN=runs/shipped SINGLE_SHARDS=0 CAST_SHARDS=${CAST_SHARDS:-8} LONG_SHARDS=${LONG_SHARDS:-7} \
  LONG_STORIES=${LONG_STORIES:-20} LONG_ARMS="${LONG_ARMS:-entity@B}" LIMIT=${LIMIT:-450} \
  CAST_ARMS="${CAST_ARMS:-memory_guidance_6@B cfg_5@B memory_guidance_2@B}" bash tools/device/synth_cast_eval.sh
