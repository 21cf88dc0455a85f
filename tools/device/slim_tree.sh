#!/usr/bin/env bash
# Run HERE (not on the device) before a device call whose tree plus carried packages would pass the 64 MiB a
# call may send: removes the tracked files the device scripts do not read (reports, tests, docs, the camera
# probe, and with WEIGHTS=dit-free also the shipped transformer and probes: scripts that train their own
# DiT). `git checkout -- .` brings everything back after the call.
#   bash tools/device/slim_tree.sh && <device call with carry [".carryS"]> ; git checkout -- .
set -euo pipefail
cd "$(dirname "$0")/../.."
W=src/filmweaver/weights/synth-small
rm -rf reports tests docs examples BENCHMARKS.md $W/probe/camera
if [ "${WEIGHTS:-}" = dit-free ]; then rm -rf $W/transformer $W/probe; fi
echo "tracked files left: $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes"
