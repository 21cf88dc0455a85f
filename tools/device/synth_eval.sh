#!/usr/bin/env bash
# The synthetic-world ablation on held-out stories, sharded: SHARDS processes per arm (the tiny model is
# host-bound, so more processes use the GPU better), spread round robin over GPUS, then the merged report.
# Used by synth_pipeline.sh, synth_repro.sh and repro_x2.sh.
#   bash tools/device/synth_eval.sh RUNS OUT "ARM ARM@RUN ..." [SHARDS=2] ["GPU GPU ..."]   (STORIES=50)
set -uo pipefail
R=$1; OUT=$2; ARMS=$3; SHARDS=${4:-2}; GPUS=(${5:-})
STORIES=${STORIES:-50}
i=0
for arm in $ARMS; do
  for k in $(seq 0 $((SHARDS - 1))); do
    (
      [ ${#GPUS[@]} -gt 0 ] && export CUDA_VISIBLE_DEVICES=${GPUS[$((i % ${#GPUS[@]}))]}
      OMP_NUM_THREADS=1 exec python3 -m filmweaver.synth.evaluate $R $OUT --stories $STORIES --arms $arm \
        --shard $k/$SHARDS > $R/eval_${arm}_$k.log 2>&1
    ) &
    i=$((i + 1))
  done
done
wait
python3 -m filmweaver.synth.evaluate $R $OUT --stories $STORIES --report-only --arms $ARMS > $R/eval_report.log 2>&1
