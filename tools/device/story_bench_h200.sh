#!/usr/bin/env bash
# Per-shot wall time along a story on one GPU (BENCHMARKS.md, "Flat per-shot cost"): the 1.3B shape with
# random weights, 480p, 81 frames, 2 steps, 10 shots, every phase timed. Run on a device machine after
# `bash tools/device/device_carry.sh A` in the previous call (this call brings piece B):
#   bash tools/device/story_bench_h200.sh OUT_DIR [METHODS] [RUNS]    (default: filmweaver, 2 runs)
# METHODS: comma-separated (`independent` has no memory: what remains is the cost of the bookkeeping)
set -uo pipefail
OUT=${1:-$OUT}; METHODS=${2:-filmweaver}; RUNS=${3:-2}
bash tools/device/device_carry.sh B > "$OUT/carry.log" 2>&1
. tools/device/device_setup.sh > "$OUT/setup.log" 2>&1
cat "$OUT/setup.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv" 2>&1
python3 -c "import torch, diffusers, av; print(torch.__version__, diffusers.__version__, av.__version__)" > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"
for method in ${METHODS//,/ }; do
  for run in $(seq 1 "$RUNS"); do
    name=story10_${method}_run$run
    python3 -m filmweaver.cli -q bench --shape 1.3b --story 10 --steps 2 --method "$method" -o "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    echo "$name rc=$?"; tail -3 "$OUT/$name.log"
  done
done
