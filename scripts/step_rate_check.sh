#!/usr/bin/env bash
# Stage-2 step rate of the DiT, eager against compiled blocks, one per GPU at once (2-GPU lease): what
# the 15-minute budget buys with each. Stage 2 only (memory batches), the shipped VAE and embedder,
# 300 stories. Writes runs/ck_{eager,compiled}/log.jsonl; prints steps/s between logged steps.
#   . scripts/device_setup.sh; bash scripts/step_rate_check.sh 2.5 "--set model.transformer=null --set dit.context_attention=full"
set -uo pipefail
MIN=${1:-2.5}; EXTRA=${2:-}
STAGE='dit.stages=[{name: memory, steps: 100000, modes: {text: 0.15, temporal: 0.15, shot: 0.35, both: 0.35}, long_takes: 0.2}]'
COMMON=(--set data.num_stories=300 --set data.num_long_takes=60 --set probe=null --set log_every=50 --set dit.fit_steps_to_time=false)
for arm in ck_eager ck_compiled; do mkdir -p runs/$arm && cp -r src/filmweaver/weights/synth-small/{vae,embedder} runs/$arm/; done
python3 -m filmweaver.train configs/synth-small.yaml -o runs/ck_eager "${COMMON[@]}" --set stop_after=embedder > runs/ck_render.log 2>&1
i=0
for arm in ck_eager ck_compiled; do
  C=false; [ $arm = ck_compiled ] && C=true
  CUDA_VISIBLE_DEVICES=$i OMP_NUM_THREADS=4 python3 -m filmweaver.train configs/synth-small.yaml -o runs/$arm "${COMMON[@]}" \
    --set "$STAGE" --set dit.max_minutes=$MIN --set dit.compile_blocks=$C $EXTRA > runs/$arm.log 2>&1 &
  i=$((i + 1))
done
wait
for arm in ck_eager ck_compiled; do
  echo "== $arm"; python3 -c "
import json, sys
rows = [json.loads(l) for l in open('runs/$arm/log.jsonl')]
for a, b in zip(rows, rows[1:]):
    print(b['step'], round(b['loss'], 4), round((b['step'] - a['step']) / (b['seconds'] - a['seconds']), 2), 'steps/s')
print('first logged step at', rows[0]['seconds'], 's; last', rows[-1]['step'], 'at', rows[-1]['seconds'])"
  tail -c 300 runs/$arm.log | tr '\r' '\n' | tail -2
done
