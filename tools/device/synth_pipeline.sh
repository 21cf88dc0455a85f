#!/usr/bin/env bash
# The GPU run behind the built-in model and its ablation (BENCHMARKS.md, reports/synth-small/).
# Run from the repo root; uses every visible GPU (one training arm per GPU, round robin).
#   1. render the data once (and train the VAE + embedder, unless REUSE names a model directory whose
#      vae/ and embedder/ are taken instead: they come from the same config's earlier run);
#   2. DiT arms, same data and VAE: full (shipped), no noise augmentation, no negative sampling, and the
#      full recipe from a second seed (run-to-run spread);
#   3. the ablation on 50 held-out stories (one process per arm) and the merged report.
# What comes back goes to $RUNS/pack as soon as it exists (model split in <16 MB parts, logs, report).
set -euo pipefail
R=${RUNS:-runs}
REUSE=${REUSE:-}
NGPU=${NGPU:-$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')}
GPU_IDS=(${GPU_IDS:-$(seq 0 $((NGPU - 1)))})  # physical GPU indices (GPU_IDS="1": one GPU of a lease shared with another job)
SETS=${SETS:-}  # --set overrides for every training call (SETS="--set data.cache_dir=..." beside another run)
CFG=${CFG:-configs/synth-small.yaml}
STORIES=${STORIES:-50}
SHARDS=${SHARDS:-2}  # evaluation processes per arm (the tiny model is host-bound: more processes, more GPU use)
INIT_FROM=${INIT_FROM:-}  # a model directory every DiT arm starts from (dit.init_from); empty = from scratch
# BENCH_GPUS="2 3": once training ends, run the issue-4 GPU benchmarks (tools/device/bench_on_gpus.sh) on those
# two GPUs while the ablation evaluates on the others (same lease, separate GPUs)
BENCH_GPUS=${BENCH_GPUS:-}
# which DiT arms to train and which ablation arms to evaluate (fewer GPUs: train only `full` and evaluate the
# arms that use its model; the training-recipe arms then keep an earlier run's rows, labelled as such)
TRAIN_ARMS=${TRAIN_ARMS:-full no_noise no_negatives full_seed1}
EVAL_ARMS=${EVAL_ARMS:-full no_shot_cache no_temporal_cache no_noise_aug no_negative_sampling sink_window full_seed1 no_memory_guidance}
EVAL_GPUS=($(python3 -c "print(*[g for g in '${GPU_IDS[*]}'.split() if g not in '$BENCH_GPUS'.split()])"))
train() { python3 -m filmweaver.train $CFG $SETS "$@"; }

mkdir -p $R $R/pack  # pack exists from the start: helpers beside the pipeline (bench_one_gpu.sh) write into it
if [ -n "$REUSE" ]; then
  for arm in base $TRAIN_ARMS; do mkdir -p $R/$arm && cp -r $REUSE/vae $REUSE/embedder $R/$arm/; done
fi
train -o $R/base --set stop_after=embedder > $R/base.log 2>&1
for arm in $TRAIN_ARMS; do
  mkdir -p $R/$arm
  for part in vae embedder; do [ -d $R/$arm/$part ] || cp -r $R/base/$part $R/$arm/; done
done
# the probe is trained once, with the shipped arm (or reused)
PROBE_SET=(); [ -n "$REUSE" ] && PROBE_SET=(--set probe=null)
INIT=(); [ -n "$INIT_FROM" ] && INIT=(--set dit.init_from=$INIT_FROM)
declare -A ARGS=(
  [full]="${PROBE_SET[*]}"
  [no_noise]="--set dit.augment.noise_shot_cache=null --set dit.augment.noise_temporal_cache=null --set probe=null"
  [no_negatives]="--set dit.augment.negative_sampling=0 --set probe=null"
  [full_seed1]="--set seed=1 --set probe=null"
  # recipe arms beside full are evaluated as ARM@NAME (full@NAME, no_shot_cache@NAME, ...). Run 7 compared
  # the character weight 3 against 6 (6 is in the config since); run 8 trained 55 % memory-only later-shot
  # starts in the memory stage (in the config since). shot35: that stage's mix before run 8
  [shot35]="--set dit.stages.1.modes.shot=0.35 --set dit.stages.1.modes.both=0.35 --set dit.stages.1.modes.text=0.15 --set dit.stages.1.modes.temporal=0.15 --set probe=null"
)
# one arm per GPU at a time (run 3 put four arms on one H200: the GPU, not the host, was then the
# bottleneck, each arm got 2.7 steps/s instead of 5.5, and one arm ran out of memory)
i=0
for arm in $TRAIN_ARMS; do
  CUDA_VISIBLE_DEVICES=${GPU_IDS[$((i % NGPU))]} OMP_NUM_THREADS=4 setsid python3 -m filmweaver.train $CFG $SETS -o $R/$arm ${ARGS[$arm]} ${INIT[*]} > $R/$arm.log 2>&1 &
  i=$((i + 1))
  [ $((i % NGPU)) -eq 0 ] && wait  # a wave per NGPU arms
done
wait
# the reused model is arm `full` when that arm is not retrained (it is the model REUSE was trained as)
if [ -n "$REUSE" ]; then
  mkdir -p $R/full; [ -d $R/full/model ] || cp -r $REUSE $R/full/model
  cp -r $REUSE/probe $R/full/model/
fi
# pack the model now: a device machine can go back at any time, and tools/device/device_wait.sh copies
# whatever is in $R/pack on every call
PACK=$R/pack; source tools/device/pack.sh
[[ " $TRAIN_ARMS " == *" full "* ]] && pack_model $R/full
# the other arms' models without the parts they share with full (vae, embedder, probe)
for arm in $TRAIN_ARMS; do
  [ "$arm" = full ] || pack_model $R/$arm --exclude model/vae --exclude model/embedder --exclude model/probe
done
tar czf $R/pack/train.tgz $R/*/log.jsonl $R/*/summary.json $R/*/loss.png $R/*.log
echo TRAINING-DONE
if [ -n "$BENCH_GPUS" ]; then
  bash tools/device/bench_on_gpus.sh "$BENCH_GPUS" $R/bench $R/pack/bench.tgz > $R/bench.log 2>&1 &
  BENCH_PID=$!
fi

STORIES=$STORIES bash tools/device/synth_eval.sh $R $R/eval "$EVAL_ARMS" $SHARDS "${EVAL_GPUS[*]}"

P=$R/eval/runs/full
tar czf $R/pack/report.tgz $R/eval/report.* $R/eval/ablation.png $R/*/loss.png $R/*/summary.json \
  $R/*/log.jsonl $R/*.log $(ls -d $P/*/storyboard.png $P/*/memory.png | head -12)
echo EVAL-DONE
[ -n "${BENCH_PID:-}" ] && wait $BENCH_PID
echo ALL-DONE
