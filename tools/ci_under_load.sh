#!/usr/bin/env bash
# .ci/run from a fresh clone of HEAD beside BUSY (default 2) CPU-bound processes, RUNS (default 3) times
# in a row: CI's contract is a pass in under 15 minutes each, also on a busy 2-core machine.
#   bash tools/ci_under_load.sh [RUNS] [BUSY]     (results: /tmp/filmweaver-ci-load/results.txt)
# The clone sits beside a `shared` link to this checkout's ../shared (the ST-Bench scripts).
set -uo pipefail
RUNS=${1:-3}; BUSY=${2:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=/tmp/filmweaver-ci-load
mkdir -p $work
ln -sfn "$(cd "$repo/../shared" && pwd)" $work/shared
for run in $(seq 1 "$RUNS"); do
  rm -rf $work/repo && git clone -q "$repo" $work/repo
  pids=()
  for _ in $(seq 1 "$BUSY"); do python3 -c "while True: pass" & pids+=($!); done
  s=$(date +%s)
  CI=true bash $work/repo/.ci/run > $work/run$run.log 2>&1
  rc=$?
  e=$(date +%s)
  kill "${pids[@]}" 2>/dev/null
  echo "run $run busy=$BUSY rc=$rc wall_s=$((e - s)) $(tail -1 $work/run$run.log)" | tee -a $work/results.txt
done
