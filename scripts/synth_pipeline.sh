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
# 3. the ablation on 50 held-out stories, one process per arm, then the merged report
for arm in full no_shot_cache no_temporal_cache no_noise_aug no_negative_sampling sink_window; do
  python3 -m filmweaver.synth.evaluate $R $R/eval --arms $arm > $R/eval_$arm.log 2>&1 &
done
wait
python3 -m filmweaver.synth.evaluate $R $R/eval --report-only > $R/eval_report.log 2>&1
# 4. pack what comes back: the model (split in <16 MB parts) and the report
mkdir -p $R/pack
tar czf - -C $R/full model | split -b 15m - $R/pack/model.tgz.part-
P=$R/eval/projects/full
tar czf $R/pack/report.tgz $R/eval/report.* $R/eval/ablation.png $R/full/loss.png $R/*/summary.json $R/*/log.jsonl \
  $R/*.log $(ls -d $P/*/storyboard.png $P/*/memory.png | head -8)
echo ALL-DONE
