#!/usr/bin/env bash
# The main job on a CPU that other processes also use: wall seconds with N busy single-thread processes
# beside it, for OpenMP waiting policies (BENCHMARKS.md, "CPU threads under load"). The CLI waits
# passively by default; OMP_WAIT_POLICY= (empty) gives libgomp's own default (spin, then sleep).
#   bash tools/cpu_contention.sh OUT "NAME:BUSY:ENV ..."   e.g. "default:1:OMP_WAIT_POLICY= passive:1:X=1" (ENV: A=1,B=2)
set -uo pipefail
OUT=$1; CASES=$2
mkdir -p $OUT
for c in $CASES; do
  IFS=: read -r name busy envs <<< "$c"; envs=${envs//,/ }  # several variables: A=1,B=2
  pids=()
  for _ in $(seq 1 $busy); do python3 -c "while True: pass" & pids+=($!); done
  sleep 1
  rm -rf $OUT/$name
  s=$(date +%s.%N)
  env $envs filmweaver generate examples/synth_story.json -o $OUT/$name > $OUT/$name.log 2>&1
  rc=$?
  e=$(date +%s.%N)
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}"
  echo "$name busy=$busy env=$envs rc=$rc wall_s=$(python3 -c "print(round($e - $s, 1))")" | tee -a $OUT/results.txt
done
