#!/usr/bin/env bash
# Keep a device call alive while a background pipeline runs: print progress, stop after $1 seconds or
# when $RUNS/pipeline.out says ALL-DONE; every 2 minutes and at the end, copy $RUNS/pack/* to $OUT.
# - A fresh machine (no pipeline.out: the warm one went back between calls, as in lease H) ends the
#   call at once with rc 3 instead of waiting out the seconds on a machine where nothing runs.
# - While a training run has no packed model yet, its newest DiT checkpoint's EMA weights come back too,
#   in half precision (pack/ema-RUN-stepN.safetensors, ~15 MB for synth-small), so a lease that goes
#   away mid-run still leaves a model: `filmweaver export-ema FILE BASE_MODEL OUT` makes it loadable
#   (or tools/device/ema_into_tree.sh FILE, to continue it on the next call); pack/logs.tgz has the logs so far.
R=${RUNS:-runs}
if [ ! -f $R/pipeline.out ]; then
  echo "NO PIPELINE: $R/pipeline.out does not exist: this is a fresh machine (the earlier one went back);"
  echo "nothing runs here, so the call ends now. Start the pipeline again."
  exit 3
fi
snapshot_ema() {
  for ck in $R/*/checkpoint/state.json; do
    [ -f "$ck" ] || continue
    run=$(basename $(dirname $(dirname $ck)))
    ls $R/pack/model-$run.tgz.part-* >/dev/null 2>&1 && { rm -f $R/pack/ema-$run-*.safetensors; continue; }
    step=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" $ck 2>/dev/null) || continue
    [ -f $R/pack/ema-$run-step$step.safetensors ] && continue
    mkdir -p $R/pack
    python3 - $R/$run/checkpoint/ema.safetensors $R/pack/ema-$run-step$step.safetensors <<'PY' && \
      find $R/pack -name "ema-$run-step*.safetensors" ! -name "ema-$run-step$step.safetensors" -delete
import os, sys
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1:]
save_file({k: v.half() for k, v in load_file(src).items()}, dst + ".tmp")
os.replace(dst + ".tmp", dst)
PY
  done
}
# Put what exists so far in $OUT: EMA snapshots, the training logs (lease I lost them with the machine),
# and $R/pack. Done every 2 minutes, not only at the end: a call the device cuts at its limit (lease J:
# the limit had shrunk to the budget left, under this wait's seconds) still returns what is in $OUT.
deliver() {
  snapshot_ema
  ls $R/*/log.jsonl >/dev/null 2>&1 && mkdir -p $R/pack && tar czf $R/pack/logs.tgz.tmp $R/*/log.jsonl \
    $R/*/summary.json $R/*.log 2>/dev/null; [ -f $R/pack/logs.tgz.tmp ] && mv $R/pack/logs.tgz.tmp $R/pack/logs.tgz
  [ -d $R/pack ] && [ -n "${OUT:-}" ] || return 0
  for f in $OUT/*; do [ -e "$f" ] && [ ! -e "$R/pack/$(basename "$f")" ] && rm -f "$f"; done  # stale snapshots
  for f in $R/pack/*; do
    [ -f "$f" ] && ! cmp -s "$f" "$OUT/$(basename "$f")" && cp "$f" "$OUT/tmp-$(basename "$f")" \
      && mv "$OUT/tmp-$(basename "$f")" "$OUT/$(basename "$f")"
  done
}
end=$((SECONDS + ${1:-540}))
EVERY=${DELIVER_EVERY:-120}
next=$((SECONDS + EVERY))
while [ $SECONDS -lt $end ] && ! grep -q ALL-DONE $R/pipeline.out 2>/dev/null; do
  sleep 30
  [ $SECONDS -ge $next ] && { deliver; next=$((SECONDS + EVERY)); }
done
deliver
echo "== $(date +%T) pipeline:"; tail -3 $R/pipeline.out 2>/dev/null
for f in $R/*.log; do echo "== $f"; tail -c 400 $f | tr '\r' '\n' | tail -2; done
for f in $R/*/log.jsonl; do echo "== $f"; tail -1 $f; done
ls -la $R/pack 2>/dev/null
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader
exit 0
