#!/usr/bin/env bash
# The packages a device machine lacks (diffusers, pydantic and its parts, typing_extensions, PyAV), for its
# Python 3.12, as one xz-compressed site folder in one carried piece: .carryS/part0 (about 29 MB; with the
# working tree's ~34 MiB it stays under the 64 MiB a call may send, where the wheels themselves do not).
# Run here (it downloads from the package registry); on the device, device_carry.sh S + device_setup.sh.
#   bash tools/device/make_site_bundle.sh
#   NO_AV=1 bash tools/device/make_site_bundle.sh   (.carryT/part0, 4 MB: no PyAV; what training and
#                                                    bench --train need, when the tree leaves no room for S)
#   SLIM=1 bash tools/device/make_site_bundle.sh     (.carryS, 27.7 MB: diffusers without the pipelines
#                                                    of other model families, which filmweaver never imports)
set -euo pipefail
W=$(mktemp -d); S=$(mktemp -d)
AV=av==18.1.0; K=S
if [ -n "${NO_AV:-}" ]; then AV=; K=T; fi
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$W" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  diffusers==0.42.1 pydantic pydantic_core annotated_types typing_inspection typing_extensions $AV
# pip download picks each package's newest: pydantic pins its pydantic_core exactly, so check they agree
(cd "$S" && for w in "$W"/*.whl; do unzip -q -o "$w"; done && find . -name __pycache__ -prune -exec rm -rf {} +)
if [ -n "${SLIM:-}" ]; then  # diffusers imports its pipelines lazily: only Wan's are ever loaded
  find "$S/diffusers/pipelines" "$S/diffusers/modular_pipelines" -mindepth 1 -maxdepth 1 -type d ! -name wan \
    -exec rm -rf {} +
fi
mkdir -p .carry$K
(cd "$S" && tar cf - . | xz -9e -T0) > "$W/site.tar.xz"
tar cf .carry$K/part0 -C "$W" site.tar.xz
ls -la .carry$K/part0
