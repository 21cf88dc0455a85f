#!/usr/bin/env bash
# Bring packages to a device machine in pieces: the working tree (~34 MiB with the shipped weights) plus
# one carried piece must stay under the 64 MiB a call may send, so the wheels travel as one tar stream
# cut into .carry1 .. .carryN (made here with `tar cf - FILES | split -b 29000000 -d -a 1 - .carryK/part`),
# one piece per call, on one warm machine. Each call appends its piece and extracts every member that is
# complete so far into /tmp/carry/files (a member cut at the end is rewritten whole by a later call).
# Without FlashAttention-4 two pieces suffice (lease G): .carryA/part0 and .carryB/part1 from
# `tar cf - diffusers-*.whl pydantic-*.whl pydantic_core-*.whl annotated_types-*.whl typing_inspection-*.whl
# av-*.whl | split -b 29000000 -d -a 1 - lite` (PyAV last, so piece A alone brings what training needs).
#   bash tools/device/device_carry.sh K
set -uo pipefail
K=$1
mkdir -p /tmp/carry/files
cp .carry$K/part* /tmp/carry/
(cd /tmp/carry/files && cat /tmp/carry/part* | tar x 2>/dev/null)
ls -la /tmp/carry/files
