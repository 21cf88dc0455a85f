#!/usr/bin/env bash
# BENCHMARKS.md's "Training a memory LoRA" rows in one call on a lent H200 (carry .carryS: diffusers,
# pydantic, PyAV; the image has torch, peft, typer): `filmweaver bench --train` per case, the 1.3B shape
# first, then one A14B expert (the 14B shape), each case's JSON and markdown into $OUT as it ends.
#   bash tools/device/train_bench.sh            (ONLY=PREFIX: the cases whose name starts with it, e.g. ONLY=5b)
#   GPUS=8 ONLY=fsdp bash tools/device/train_bench.sh   (a machine of several GPUs: the A14B expert sharded
#                                                        over them, dit.fsdp's step; rank 0's peak memory)
set -uo pipefail
OUT=${OUT:?}
export PYTHONUNBUFFERED=1
bash tools/device/device_carry.sh ${CARRY:-S} > /tmp/carry.log 2>&1
. tools/device/device_setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, diffusers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__)"
one() {  # NAME TIMEOUT ARGS...
  local name=$1 limit=$2; shift 2
  case "$name" in ${ONLY:-}*) ;; *) return ;; esac
  local launch="python3 -m filmweaver.cli"
  case "$name" in fsdp*) [ -n "${GPUS:-}" ] || return; launch="torchrun --nproc_per_node $GPUS -m filmweaver.cli" ;; esac
  timeout "$limit" $launch bench --train "$@" -o "$OUT/$name.json" > "$OUT/$name.md" 2> "$OUT/$name.err"
  echo "$name rc=$? $(tail -c 300 "$OUT/$name.err" | tr '\n' ' ')"
  cat "$OUT/$name.md"
}
one 13b_m1_3_10 150 --shape 1.3b --memory 1,3,10 --temporal no --warmup 2 --repeats 3
one 14b_m1 150 --shape 14b --memory 1 --temporal no --warmup 1 --repeats 2
one 14b_m10 170 --shape 14b --memory 10 --temporal no --warmup 1 --repeats 2
one 14b_m3 130 --shape 14b --memory 3 --temporal no --warmup 1 --repeats 2
# Wan2.2-TI2V-5B at its release resolution (704x1280, 121 frames = 31 latent frames at 16x in space)
one 5b_m1_3_10 240 --shape 5b --memory 1,3,10 --temporal no --height 704 --width 1280 --frames 121 --warmup 1 --repeats 2
# several GPUs (GPUS of them): one A14B expert sharded, 1-10 keyframes per rank's sample
one fsdp_14b_m1_3_10 400 --fsdp --shape 14b --memory 1,3,10 --temporal no --warmup 1 --repeats 2
ls -la "$OUT"
