#!/usr/bin/env bash
# The closed loop (python -m filmweaver.synth.closed_loop) on one lent GPU machine: the films rendered again
# (the same seeds), their truth dataset made, both models trained side by side for MINUTES of DiT each, then
# both evaluated on STORIES held-out one-character stories. The curated dataset comes carried
# (runs/closed-loop/datasets/curated, made here by `python -m filmweaver.synth.closed_loop runs/closed-loop
# --films 36 --phase data`: TransNetV2's wheel does not fit beside PyAV in a call), with PyAV as .carryS
# (`SLIM=1 bash tools/device/make_site_bundle.sh`); the tree travels without reports/, the shipped
# transformer and the cast and camera probes (the closed loop trains its own DiT; the attribute probe judges:
# `bash tools/device/slim_tree.sh` here first, then remove the transformer and probe/cast).
# The device image lacks webdataset (the shards' reader): its wheels travel as .carryW (`python3 -m pip download
# --no-deps --only-binary=:all: -d .carryW webdataset==1.0.2 braceexpand==0.1.7`; name .carryW in carry).
# Back in $OUT: closed_loop.json, the logs and the evaluation report, and the two models (transformer and
# text encoder: the rest is the shipped model's) in 15 MB parts.
#   FILMS=36 MINUTES=4 STORIES=30 bash tools/device/closed_loop.sh
set -uo pipefail
OUT=${OUT:?}
export PYTHONUNBUFFERED=1
[ -f /tmp/site/.base ] || bash tools/device/device_carry.sh ${CARRY:-S} > /tmp/carry.log 2>&1
. tools/device/device_setup.sh
[ -d .carryW ] && python3 -m pip install -q --no-index --no-deps --target /tmp/site .carryW/*.whl
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
CL=runs/closed-loop
cl() { python3 -m filmweaver.synth.closed_loop $CL --films ${FILMS:-36} --device cuda "$@"; }
T0=$SECONDS
cl --phase data > /tmp/data.log 2>&1; echo "data rc=$? $((SECONDS - T0)) s"; tail -3 /tmp/data.log
cl --phase train --minutes ${MINUTES:-4} > /tmp/train.log 2>&1; echo "train rc=$? $((SECONDS - T0)) s"
for a in curated truth; do grep -v "it/s\]" $CL/runs/$a/train.log | tail -4; done
cl --phase eval --stories ${STORIES:-30} --eval-shards ${SHARDS:-14} > /tmp/eval.log 2>&1; echo "eval rc=$? $((SECONDS - T0)) s"
tail -5 /tmp/eval.log
cat $CL/closed_loop.json | head -80
(cd $CL && tar czf "$OUT/closed-loop-reports.tgz" closed_loop.json $(ls eval/report.* eval/*.png 2>/dev/null) \
   $(ls runs/*/train.log runs/*/log.jsonl runs/*/summary.json runs/*/loss.png 2>/dev/null))
cp /tmp/data.log /tmp/train.log /tmp/eval.log "$OUT/" 2>/dev/null
(cd $CL && find eval/runs -name metrics.json | tar czf "$OUT/closed-loop-metrics.tgz" -T -)
(cd $CL/runs && tar czf - $(ls -d */model/transformer */model/text_encoder */model/filmweaver.json 2>/dev/null)) \
  | split -b 15m - "$OUT/closed-loop-models.tgz.part-"
ls -la "$OUT"
