#!/usr/bin/env bash
# The multi-character model candidate (configs/synth-cast.yaml) in one call on a lent H200 (carry .carryA:
# diffusers + pydantic are all training needs). Renders, copies the shipped VAE/embedder/attribute probe,
# trains the cast probe, then the DiT for what is left of dit.max_minutes; packs the model (15 MB parts),
# the log, the summary and the loss plot into $OUT. Unpack here with: cat model-*.part-* | tar xz -C DEST
#   bash tools/device/synth_cast.sh            (SETS="--set ..." adds overrides, RUN the output directory,
#                                               CARRY the carried piece: A, or T = the training wheels alone)
set -uo pipefail
OUT=${OUT:?}
export PYTHONUNBUFFERED=1
# (at most 8 files come back: the logs of the set-up go to the output tail, not to $OUT)
bash tools/device/device_carry.sh ${CARRY:-A} > /tmp/carry.log 2>&1
. tools/device/device_setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
RUN=${RUN:-runs/synth-cast}
python3 -m filmweaver.train configs/synth-cast.yaml -o $RUN ${SETS:-} 2>&1 | grep -v "it/s]" > "$OUT/train.log"
echo "train rc=${PIPESTATUS[0]}"
tail -5 "$OUT/train.log"
for f in log.jsonl summary.json loss.png; do [ -f $RUN/$f ] && cp $RUN/$f "$OUT/"; done
if [ -d $RUN/model ]; then
  tar czf - -C $RUN model | split -b 15m - "$OUT/model-synth-cast.tgz.part-"
fi
ls -la "$OUT"
