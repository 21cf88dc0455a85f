#!/usr/bin/env bash
# Stage-2 step rate of the DiT under two settings, one per GPU at once (2-GPU lease): what the 15-minute
# budget buys with each. Stage 2 only (memory batches), the shipped VAE and embedder, 300 stories.
# Each arm is NAME:SETTINGS (train --set options, possibly none); default: eager against compiled blocks.
# Writes runs/ck_NAME/log.jsonl; prints steps/s between logged steps.
#   . tools/device/device_setup.sh; bash tools/device/step_rate_check.sh 2.5 "b128:" "b256:--set dit.batch_size=256"
set -uo pipefail
MIN=${1:-2.5}
A=${2:-"eager:--set dit.compile_blocks=false"}
B=${3:-"compiled:--set dit.compile_blocks=true"}
STAGE='dit.stages=[{name: memory, steps: 100000, modes: {text: 0.15, temporal: 0.15, shot: 0.35, both: 0.35}, long_takes: 0.2}]'
COMMON=(--set data.num_stories=300 --set data.num_long_takes=60 --set probe=null --set log_every=50 --set dit.fit_steps_to_time=false)
NAMES=("${A%%:*}" "${B%%:*}"); EXTRAS=("${A#*:}" "${B#*:}")
for n in "${NAMES[@]}"; do mkdir -p runs/ck_$n && cp -r src/filmweaver/weights/synth-small/{vae,embedder} runs/ck_$n/; done
python3 -m filmweaver.train configs/synth-small.yaml -o runs/ck_${NAMES[0]} "${COMMON[@]}" --set stop_after=embedder > runs/ck_render.log 2>&1
for i in 0 1; do
  CUDA_VISIBLE_DEVICES=$i OMP_NUM_THREADS=4 python3 -m filmweaver.train configs/synth-small.yaml -o runs/ck_${NAMES[$i]} \
    "${COMMON[@]}" --set "$STAGE" --set dit.max_minutes=$MIN ${EXTRAS[$i]} > runs/ck_${NAMES[$i]}.log 2>&1 &
done
wait
for n in "${NAMES[@]}"; do
  echo "== $n"; python3 -c "
import json
rows = [json.loads(l) for l in open('runs/ck_$n/log.jsonl')]
for a, b in zip(rows, rows[1:]):
    print(b['step'], round(b['loss'], 4), round((b['step'] - a['step']) / (b['seconds'] - a['seconds']), 2), 'steps/s')
print('first logged step at', rows[0]['seconds'], 's; last', rows[-1]['step'], 'at', rows[-1]['seconds'])"
  tail -c 300 runs/ck_$n.log | tr '\r' '\n' | tail -2
done
