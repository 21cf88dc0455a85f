#!/usr/bin/env bash
# One nvidia-h200-x2 lease used as two one-GPU machines (device_runs.md, "Lease C"):
#   GPU 0 on cores 0-15 (what the nvidia-h200 kind has: one H200, 16 cores): the one-command
#     reproduction, timed (tools/device/synth_repro.sh, nothing reused);
#   GPU 1 on cores 16-31: the 50 held-out stories on the *shipped* model for the guidance candidates
#     (full, memory_guidance_4, k2_memory_guidance_3), then the issue-4 14B FlashAttention-4 cases.
# Every result lands in runs/pack (tools/device/device_wait.sh copies it on each call).
# Lease E (device_runs.md, run 8) gave GPU 1 a training arm instead: a recipe arm of tools/device/synth_pipeline.sh
# on the shipped VAE, embedder and probe, its own data cache, then the held-out stories on its model.
#   bash tools/device/repro_x2.sh repro          # call 1 (needs carry piece 1: diffusers, pydantic)
#   bash tools/device/repro_x2.sh train_arm ARM  # call 1 too (PyAV, the last piece, is there before it evaluates)
#   bash tools/device/repro_x2.sh vae_check      # call 1 too: GPU 1 runs render -> VAE -> embedder -> probe at
#                                           # VAE batch 64 x 1,000 and 128 x 500 steps (a VAE step is launch-bound)
#   bash tools/device/repro_x2.sh gpu1         # call 5 (needs PyAV, the last piece; FA4 for the benchmark)
set -uo pipefail
mkdir -p runs/pack
case $1 in
  repro)
    CUDA_VISIBLE_DEVICES=0 setsid nohup taskset -c 0-15 bash tools/device/synth_repro.sh > runs/pipeline.out 2>&1 < /dev/null &
    ;;
  train_arm)
    RUNS=runs/sh GPU_IDS=1 NGPU=1 SHARDS=7 SETS="--set data.cache_dir=runs/sh/data-cache" \
      REUSE=src/filmweaver/weights/synth-small TRAIN_ARMS=$2 EVAL_ARMS="full@$2 no_shot_cache@$2" \
      setsid nohup taskset -c 16-31 bash tools/device/synth_pipeline.sh > runs/gpu1.out 2>&1 < /dev/null &
    ;;
  vae_check)
    # the phases before the DiT only (stop_after=probe), their times in summary.json; the probe's VAE-roundtrip
    # accuracy ("probe" -> "vae") is the bar (99.6 % on shape at batch 32 x 2,000 steps)
    mkdir -p runs/pack1
    cat > runs/gpu1.sh <<'EOF'
set -u
export CUDA_VISIBLE_DEVICES=1
for v in "64 1000" "128 500"; do
  set -- $v
  python3 -m filmweaver.train configs/synth-small.yaml -o runs/vae_b$1 --set stop_after=probe \
    --set vae.batch_size=$1 --set vae.steps=$2 --set data.cache_dir=runs/sh/data-cache > runs/vae_b$1.log 2>&1
done
tar czf runs/pack1/vae_check.tgz runs/vae_b*/summary.json runs/vae_b*.log
echo GPU1-DONE
EOF
    setsid nohup taskset -c 16-31 bash runs/gpu1.sh > runs/gpu1.out 2>&1 < /dev/null &
    ;;
  gpu1)
    R=runs/shipped
    mkdir -p $R/full && cp -r src/filmweaver/weights/synth-small $R/full/model
    ARMS="full memory_guidance_4 k2_memory_guidance_3"
    SHARDS=5
    cat > runs/gpu1.sh <<EOF
set -u
export CUDA_VISIBLE_DEVICES=1
bash tools/device/synth_eval.sh $R $R/eval "$ARMS" $SHARDS
tar czf runs/pack/report-shipped.tgz $R/eval/report.* $R/eval/ablation.png $R/*.log
echo EVAL-DONE
FA4=1 . tools/device/device_setup.sh
bash tools/device/bench_one_gpu.sh 1 runs/bench runs/pack/bench.tgz 14b_flash4_compile_fuse_ffn 14b_flash4_compile_plain
echo GPU1-DONE
EOF
    . tools/device/device_setup.sh
    setsid nohup taskset -c 16-31 bash runs/gpu1.sh > runs/gpu1.out 2>&1 < /dev/null &
    ;;
esac
