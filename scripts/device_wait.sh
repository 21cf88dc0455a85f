#!/usr/bin/env bash
# Keep a device call alive while a background pipeline runs: print progress every 60 s, stop after
# $1 seconds or when $RUNS/pipeline.out says ALL-DONE, and copy $RUNS/pack/* to $OUT if it exists.
R=${RUNS:-runs}
end=$((SECONDS + ${1:-540}))
while [ $SECONDS -lt $end ] && ! grep -q ALL-DONE $R/pipeline.out 2>/dev/null; do
  sleep 30
done
echo "== $(date +%T) pipeline:"; tail -3 $R/pipeline.out 2>/dev/null
for f in $R/*.log; do echo "== $f"; tail -c 400 $f | tr '\r' '\n' | tail -2; done
for f in $R/*/log.jsonl; do echo "== $f"; tail -1 $f; done
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader
[ -d $R/pack ] && [ -n "${OUT:-}" ] && cp $R/pack/* $OUT/ 2>/dev/null
exit 0
