#!/usr/bin/env bash
# The built-in model's weights, made again by one command on one GPU: run 11 (the one-character model,
# from the repository's history) -> configs/synth-cast.yaml (the multi-character recipe) ->
# configs/synth-cast-slots.yaml (slot regions and text slots). Every part resumes where it stopped, so
# after a lost machine the same command continues the same recipe (on a fresh machine, copy each run's
# compact checkpoint, `filmweaver compact-checkpoint`, to its checkpoint/ first). The result is
# DEST/synth-cast-slots/model; SETS adds --set overrides to both trainings (e.g. a time budget per call:
# SETS="--set time_budget_minutes=8.5"), CAST_SETS to the first alone (its probe: the second trains none).
# The camera probe of curation (probe/camera) is not part of it: `python -m filmweaver.synth.captioner`.
#   bash tools/builtin_model.sh runs
set -euo pipefail
DEST=${1:-runs}
[ -f "$DEST/run11-model/filmweaver.json" ] || bash "$(dirname "$0")/run11_model.sh" "$DEST/run11-model"
R11="$DEST/run11-model"
filmweaver train configs/synth-cast.yaml -o "$DEST/synth-cast" --set dit.init_from="$R11" \
  --set vae.init_from="$R11" --set embedder.init_from="$R11" --set probe.init_from="$R11" ${SETS:-} ${CAST_SETS:-}
filmweaver train configs/synth-cast-slots.yaml -o "$DEST/synth-cast-slots" \
  --set dit.init_from="$DEST/synth-cast/model" --set vae.init_from="$R11" --set embedder.init_from="$R11" ${SETS:-}
cp -r "$DEST/synth-cast/model/probe" "$DEST/synth-cast-slots/model/"  # the probes that judge it
ls "$DEST/synth-cast-slots/model"
