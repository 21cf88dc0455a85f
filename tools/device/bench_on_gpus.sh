#!/usr/bin/env bash
# Issue-4 GPU benchmarks on two GPUs of a lease that is busy elsewhere (synth_pipeline.sh's BENCH_GPUS):
# one story on both GPUs (context parallelism), then the single-GPU causal-context cases, one per GPU.
# Results are tarred into $3 after every group, so whatever finished comes back if the lease ends.
#   bash tools/device/bench_on_gpus.sh "2 3" runs/bench runs/pack/bench.tgz
set -uo pipefail
read -r A B <<< "$1"
D=$2
PACK=$3
mkdir -p "$D"
pack() { tar czf "$PACK.tmp" -C "$(dirname "$D")" "$(basename "$D")" && mv "$PACK.tmp" "$PACK"; }
CUDA_VISIBLE_DEVICES=$A,$B python3 -m torch.distributed.run --nproc_per_node 2 tools/device/gpu_bench.py "$D" cp > "$D/cp.log" 2>&1
pack
CUDA_VISIBLE_DEVICES=$A python3 tools/device/gpu_bench.py "$D" 13b_causal_compile_pool2 13b_story_causal > "$D/gpu_a.log" 2>&1 &
CUDA_VISIBLE_DEVICES=$B python3 tools/device/gpu_bench.py "$D" 14b_causal_compile > "$D/gpu_b.log" 2>&1 &
wait
pack
