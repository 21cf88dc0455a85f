#!/usr/bin/env bash
# Continue a synthetic model's DiT on both GPUs of one nvidia-h200-x2 lease, one recipe arm a GPU, then
# evaluate both models on the 50 held-out stories (reports/synth-small/device_runs.md, leases G and after).
#   1. (BENCH=1) issue-4 benchmarks on both GPUs first, nothing else on them: batched CFG on one GPU
#      (13b_cfg2 on GPU 0 beside 14b_cfg2 on GPU 1), then torchrun 13b_cfg_parallel 14b_cfg_parallel;
#      the CPU renders the training data meanwhile (cores 8-31; the benchmarks keep cores 0-7);
#   2. arm A on GPU 0 (cores 0-15) and arm B on GPU 1 (cores 16-31): DIT_MIN minutes of the memory stage
#      from INIT's weights (dit.init_from, dit.stages.0.steps=0), INIT's VAE and CLIP embedder;
#   3. EVAL_ARMS (ARM@A / ARM@B, 8 processes an arm over both GPUs); the comparison with the shipped model
#      is made afterwards from its committed report (`evaluate --report-only --from-report`).
# An arm is NAME:EXTRA (EXTRA: --set overrides for that arm). Lease G (run 9) was the defaults with BENCH=1.
# DDP=1 trains arm A alone on both GPUs, data parallel (twice the samples a step; not yet timed on GPUs).
# EVAL=0 ends after packing the models: with PyAV the evaluation needs a second carried piece, so a second
# call, and most call boundaries of leases I-J lost the machine; one call (train + pack) cannot be lost.
# Everything that comes back is in runs/pack (tools/device/device_wait.sh copies it on every call).
#   bash tools/device/device_carry.sh A >/dev/null; . tools/device/device_setup.sh; bash tools/device/continue_x2.sh  # call 1
#   bash tools/device/device_carry.sh B >/dev/null; . tools/device/device_setup.sh; bash tools/device/device_wait.sh 540
set -uo pipefail
BENCH=${BENCH:-0}
INIT=${INIT:-src/filmweaver/weights/synth-small}
DIT_MIN=${DIT_MIN:-12}
ARM_A=${ARM_A:-cont:}
ARM_B=${ARM_B:-cont_lo:--set dit.lr=1.5e-4}
EVAL=${EVAL:-1}  # 0: no evaluation here (a one-call lease: train, pack, return; evaluate on the CPU)
DDP=${DDP:-0}  # 1: arm A alone, data parallel on both GPUs (torchrun); ARM_B is not trained
A=${ARM_A%%:*}; B=${ARM_B%%:*}
[ "$DDP" = 1 ] && B=
EVAL_ARMS=${EVAL_ARMS:-full@$A${B:+ full@$B}}
mkdir -p runs/pack runs/bench runs/base runs/ev/full
for d in base $A $B; do mkdir -p runs/$d && cp -r $INIT/vae $INIT/embedder runs/$d/; done
cp -r src/filmweaver/weights/synth-small runs/ev/full/model  # the evaluation's probe (RUNS/full/model/probe)
cat > runs/continue.sh <<EOF
set -u
PACK=runs/pack; source tools/device/pack.sh
pack_bench() { tar czf runs/pack/bench.tgz.tmp runs/bench && mv runs/pack/bench.tgz.tmp runs/pack/bench.tgz; }
date +%T > runs/wall.txt
taskset -c 8-31 python3 -m filmweaver.train configs/synth-small.yaml -o runs/base --set stop_after=embedder \
  --set probe=null > runs/base.log 2>&1 &
RENDER=\$!
if [ "$BENCH" = 1 ]; then
  CUDA_VISIBLE_DEVICES=0 taskset -c 0-3 python3 tools/device/gpu_bench.py runs/bench 13b_cfg2 > runs/bench/g0.log 2>&1 &
  G0=\$!
  CUDA_VISIBLE_DEVICES=1 taskset -c 4-7 python3 tools/device/gpu_bench.py runs/bench 14b_cfg2 > runs/bench/g1.log 2>&1 &
  G1=\$!
  wait \$G0 \$G1
  echo BENCH1-DONE \$(date +%T)
  pack_bench
  taskset -c 0-7 python3 -m torch.distributed.run --nproc_per_node 2 tools/device/gpu_bench.py runs/bench \
    13b_cfg_parallel 14b_cfg_parallel > runs/bench/cp.log 2>&1
  echo BENCH-DONE \$(date +%T)
  pack_bench
fi
wait \$RENDER
echo RENDER-DONE \$(date +%T)
C="--set probe=null --set dit.init_from=$INIT --set dit.stages.0.steps=0 --set dit.max_minutes=$DIT_MIN"
if [ "$DDP" = 1 ]; then
  OMP_NUM_THREADS=4 python3 -m torch.distributed.run --nproc_per_node 2 -m filmweaver.train configs/synth-small.yaml \
    -o runs/$A \$C ${ARM_A#*:} > runs/$A.log 2>&1
else
  CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=4 taskset -c 0-15 python3 -m filmweaver.train configs/synth-small.yaml \
    -o runs/$A \$C ${ARM_A#*:} > runs/$A.log 2>&1 &
  CUDA_VISIBLE_DEVICES=1 OMP_NUM_THREADS=4 taskset -c 16-31 python3 -m filmweaver.train configs/synth-small.yaml \
    -o runs/$B \$C ${ARM_B#*:} > runs/$B.log 2>&1 &
  wait
fi
echo TRAINING-DONE \$(date +%T)
tar czf runs/pack/train.tgz runs/*/log.jsonl runs/*/summary.json runs/*/loss.png runs/*.log
for arm in $A $B; do
  pack_model runs/\$arm --exclude model/vae --exclude model/embedder
  mkdir -p runs/ev/\$arm && cp -r runs/\$arm/model runs/ev/\$arm/model
done
if [ "$EVAL" = 1 ]; then
  bash tools/device/synth_eval.sh runs/ev runs/ev/eval "$EVAL_ARMS" 8 "0 1"
  tar czf runs/pack/eval.tgz runs/ev/eval/report.* runs/ev/*.log
fi
date +%T >> runs/wall.txt
echo ALL-DONE \$(date +%T)
EOF
setsid nohup bash runs/continue.sh > runs/pipeline.out 2>&1 < /dev/null &
echo started
