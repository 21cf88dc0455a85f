#!/usr/bin/env bash
# One model of the closed loop (python -m filmweaver.synth.closed_loop) per call, alone on the lent GPU for
# MINUTES of DiT: call it twice on one warm machine (ARM=curated, then ARM=truth) so that both models get
# the same GPU minutes on the same card, each with the whole GPU. The arm's dataset comes carried
# (runs/closed-loop/datasets/ARM, made on the CPU with `python -m filmweaver.synth.closed_loop runs/closed-loop
# --films 36 --phase data`), with PyAV as .carryS and webdataset's wheels as .carryW (see closed_loop.sh);
# the tree travels slimmed (`WEIGHTS=dit-free bash tools/device/slim_tree.sh` here first: the closed loop trains
# its own DiT; the evaluation runs afterwards, elsewhere: --phase eval with both models back in runs/closed-loop/runs).
# Back in $OUT: the training log and summary, and the model (all but the shipped VAE and embedder it kept) in 15 MB parts.
#   ARM=curated MINUTES=7 bash tools/device/closed_loop_arm.sh
set -uo pipefail
OUT=${OUT:?}
ARM=${ARM:?curated or truth}
export PYTHONUNBUFFERED=1
[ -f /tmp/site/.base ] || bash tools/device/device_carry.sh ${CARRY:-S} > /tmp/carry.log 2>&1
. tools/device/device_setup.sh
[ -d .carryW ] && python3 -m pip install -q --no-index --no-deps --target /tmp/site .carryW/*.whl 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
CL=runs/closed-loop
T0=$SECONDS
python3 -m filmweaver.synth.closed_loop $CL --films ${FILMS:-36} --device cuda --phase train --arms $ARM \
  --minutes ${MINUTES:-7} > "$OUT/train-$ARM.log" 2>&1
echo "train rc=$? $((SECONDS - T0)) s"
grep -v "it/s\]" $CL/runs/$ARM/train.log | tail -6
(cd $CL/runs/$ARM && tar czf "$OUT/logs-$ARM.tgz" train.log $(ls log.jsonl summary.json loss.png 2>/dev/null))
[ -d $CL/runs/$ARM/model ] && tar czf - -C $CL/runs/$ARM --exclude model/vae --exclude model/embedder --exclude model/probe model \
  | split -b 15m - "$OUT/model-$ARM.tgz.part-"
ls -la "$OUT"
