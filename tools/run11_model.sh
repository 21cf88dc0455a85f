#!/usr/bin/env bash
# The one-character built-in model (run 11, shipped until 2026-12-07) from the repository's history: the
# starting point of configs/synth-cast.yaml's recipe, to reproduce today's built-in weights from it
# (docs/training-history.md, "The multi-character built-in model").
#   bash tools/run11_model.sh runs/run11-model
set -euo pipefail
DEST=${1:?usage: tools/run11_model.sh DEST}
RUN11=d5e37ce3dbc6a47768ec3ac7730b7d4429e0f0cb  # the last commit that shipped run 11's weights
mkdir -p "$DEST"
git -C "$(dirname "$0")/.." archive "$RUN11" src/filmweaver/weights/synth-small | tar x -C "$DEST" --strip-components=4
ls "$DEST"
