#!/usr/bin/env bash
# Issue-4 benchmark cases on one GPU of a lease that trains on another (synth_pipeline.sh runs beside it):
# each case's JSON/markdown lands in $2 and the folder is tarred into $3 after every case, so whatever
# finished comes back with the next tools/device/device_wait.sh call if the lease ends.
#   FA4=1 . tools/device/device_setup.sh; bash tools/device/bench_one_gpu.sh 1 runs/bench runs/pack/bench.tgz tflops
set -uo pipefail
GPU=$1; D=$2; PACK=$3; shift 3
mkdir -p "$D" "$(dirname "$PACK")"
CASES=$(python3 -c "import sys; sys.path.insert(0, 'tools/device'); import gpu_bench as g
print(*[n for a in sys.argv[1:] for n, _ in g.GROUPS.get(a, [(a, None)])])" "$@")
for c in $CASES; do
  CUDA_VISIBLE_DEVICES=$GPU python3 tools/device/gpu_bench.py "$D" "$c" >> "$D/bench.log" 2>&1
  tar czf "$PACK.tmp" -C "$(dirname "$D")" "$(basename "$D")" && mv "$PACK.tmp" "$PACK"
done
echo BENCH-DONE >> "$D/bench.log"
