#!/usr/bin/env bash
# Here, after a device call answered NO PIPELINE (the machine went back mid-training, lease I): put the
# EMA snapshot the last call brought back into the shipped model's files *in the working tree*, so the
# next call can continue training from it (continue_x2.sh's INIT default) or evaluate it. The weights
# keep their file sizes, so the tree plus one carried piece still fits the 64 MiB a call may send, which
# a second model directory would not. Restore the shipped weights afterwards with
#   git checkout -- src/filmweaver/weights/synth-small
#   bash tools/device/ema_into_tree.sh /work/.device/N/ema-ARM-stepS.safetensors
set -euo pipefail
EMA=$1
W=src/filmweaver/weights/synth-small
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
filmweaver export-ema "$EMA" "$W" "$TMP/model" | tail -1
# the trained weights and the model id export-ema recorded (BASE's + the file name); the VAE, embedder,
# tokenizer and probe are the base's own files already
for f in transformer/diffusion_pytorch_model.safetensors transformer/context_projections.safetensors \
         text_encoder/model.safetensors transformer/config.json filmweaver.json; do
  cp "$TMP/model/$f" "$W/$f"
done
git status --short -- "$W"
echo "the working tree's synth-small now holds $EMA; restore: git checkout -- $W"
