#!/usr/bin/env bash
# The GPU run behind the built-in model and its ablation (see BENCHMARKS.md / reports/ablation.md).
# 1. render + VAE + embedder once; 2. three DiT arms in parallel on one GPU, same data and VAE:
#    full, no noise augmentation, no negative sampling. Run from the repo root.
set -euo pipefail
R=${RUNS:-runs}
PY="python3 -m filmweaver.train configs/synth-small.yaml"
$PY -o $R/base --set stop_after=embedder
for arm in full no_noise no_negatives; do
  mkdir -p $R/$arm && cp -r $R/base/vae $R/base/embedder $R/$arm/
done
$PY -o $R/full > $R/full.log 2>&1 &
$PY -o $R/no_noise --set dit.augment.noise_shot_cache=null --set dit.augment.noise_temporal_cache=null \
    --set probe=null > $R/no_noise.log 2>&1 &
$PY -o $R/no_negatives --set dit.augment.negative_sampling=0 --set probe=null > $R/no_negatives.log 2>&1 &
wait
echo PIPELINE-DONE
