#!/usr/bin/env bash
# Lease G (reports/synth-small/device_runs.md): one nvidia-h200-x2 lease, about 26 minutes.
#   1. issue 4, both GPUs, nothing else on them: CFG parallelism timed against batched CFG on one GPU
#      (13b_cfg2 on GPU 0 beside 14b_cfg2 on GPU 1, then torchrun 13b_cfg_parallel 14b_cfg_parallel),
#      while the CPU renders the training data (cores 8-31; the benchmarks keep cores 0-7);
#   2. issue 3: two continuations of the shipped model (run 8) for DIT_MIN minutes each, memory stage only
#      (dit.init_from, dit.stages.0.steps=0): `cont` at the config's peak learning rate 4e-4 (a second
#      cosine cycle) on GPU 0, `cont_lo` at 1.5e-4 on GPU 1;
#   3. both models on the 50 held-out stories (8 processes each, both GPUs); the paired comparison with
#      run 8 is made afterwards from run 8's committed report (report-only).
# Everything that comes back is in runs/pack (scripts/device_wait.sh copies it on every call).
#   bash scripts/device_carry.sh A >/dev/null; . scripts/device_setup.sh; bash scripts/lease_g.sh   # call 1
#   bash scripts/device_carry.sh B >/dev/null; . scripts/device_setup.sh; bash scripts/device_wait.sh 540
set -uo pipefail
DIT_MIN=${DIT_MIN:-12}
W=src/filmweaver/weights/synth-small
mkdir -p runs/pack runs/bench runs/base runs/ev/full
cp -r $W/vae $W/embedder runs/base/
for arm in cont cont_lo; do mkdir -p runs/$arm && cp -r $W/vae $W/embedder runs/$arm/; done
cp -r $W runs/ev/full/model  # the evaluation's probe (RUNS/full/model/probe)
cat > runs/lease_g.sh <<EOF
set -u
pack_bench() { tar czf runs/pack/bench.tgz.tmp runs/bench && mv runs/pack/bench.tgz.tmp runs/pack/bench.tgz; }
date +%T > runs/wall.txt
taskset -c 8-31 python3 -m filmweaver.train configs/synth-small.yaml -o runs/base --set stop_after=embedder \
  --set probe=null > runs/base.log 2>&1 &
RENDER=\$!
CUDA_VISIBLE_DEVICES=0 taskset -c 0-3 python3 scripts/gpu_bench.py runs/bench 13b_cfg2 > runs/bench/g0.log 2>&1 &
G0=\$!
CUDA_VISIBLE_DEVICES=1 taskset -c 4-7 python3 scripts/gpu_bench.py runs/bench 14b_cfg2 > runs/bench/g1.log 2>&1 &
G1=\$!
wait \$G0 \$G1
echo BENCH1-DONE \$(date +%T)
pack_bench
taskset -c 0-7 python3 -m torch.distributed.run --nproc_per_node 2 scripts/gpu_bench.py runs/bench \
  13b_cfg_parallel 14b_cfg_parallel > runs/bench/cp.log 2>&1
echo BENCH-DONE \$(date +%T)
pack_bench
wait \$RENDER
echo RENDER-DONE \$(date +%T)
C="--set probe=null --set dit.init_from=$W --set dit.stages.0.steps=0 --set dit.max_minutes=$DIT_MIN"
CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=4 taskset -c 0-15 python3 -m filmweaver.train configs/synth-small.yaml \
  -o runs/cont \$C > runs/cont.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 OMP_NUM_THREADS=4 taskset -c 16-31 python3 -m filmweaver.train configs/synth-small.yaml \
  -o runs/cont_lo \$C --set dit.lr=1.5e-4 > runs/cont_lo.log 2>&1 &
wait
echo TRAINING-DONE \$(date +%T)
tar czf runs/pack/train.tgz runs/*/log.jsonl runs/*/summary.json runs/*/loss.png runs/*.log
for arm in cont cont_lo; do
  tar czf - -C runs/\$arm --exclude model/vae --exclude model/embedder model | split -b 15m - runs/pack/model-\$arm.tgz.part-
  mkdir -p runs/ev/\$arm && cp -r runs/\$arm/model runs/ev/\$arm/model
done
bash scripts/synth_eval.sh runs/ev runs/ev/eval "full@cont full@cont_lo" 8 "0 1"
tar czf runs/pack/eval.tgz runs/ev/eval/arm_*.json runs/ev/eval/report.* runs/ev/*.log
date +%T >> runs/wall.txt
echo ALL-DONE \$(date +%T)
EOF
setsid nohup bash runs/lease_g.sh > runs/pipeline.out 2>&1 < /dev/null &
echo started
