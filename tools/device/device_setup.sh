#!/usr/bin/env bash
# Source on a device machine after `bash tools/device/device_carry.sh K`: installs every carried package that
# has fully arrived (a wheel or archive cut at the end of a piece fails to open and is retried on the next
# call), and sets PYTHONPATH. The stream's order: diffusers + pydantic wheels, the FlashAttention-4 site
# bundle (fa4bundle.tar.xz, fa4meta.tar, the cutlass-dsl libs-core wheel), then PyAV.
#   . tools/device/device_setup.sh            # base packages (+ PyAV once it is there)
#   FA4=1 . tools/device/device_setup.sh      # also FlashAttention-4 on the path (bench --attention flash4)
F=/tmp/carry/files
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir"
mkdir -p /tmp/site /tmp/fa4site
# one compressed bundle instead (tools/device/make_site_bundle.sh): the base packages and PyAV, unpacked
if [ ! -f /tmp/site/.av ] && [ -f $F/site.tar.xz ] && tar xJf $F/site.tar.xz -C /tmp/site; then
  touch /tmp/site/.base /tmp/site/.av
fi
if [ ! -f /tmp/site/.base ] && $PIP --target /tmp/site $F/diffusers-*.whl $F/pydantic-*.whl $F/pydantic_core-*.whl \
     $F/annotated_types-*.whl $F/typing_inspection-*.whl $(ls $F/typing_extensions-*.whl 2>/dev/null) 2>/dev/null; then touch /tmp/site/.base; fi
if [ ! -f /tmp/site/.av ] && ls $F/av-*.whl >/dev/null 2>&1 && $PIP --target /tmp/avsite $F/av-*.whl 2>/dev/null; then
  cp -r /tmp/avsite/* /tmp/site/ && touch /tmp/site/.av
fi
if [ ! -f /tmp/fa4site/.fa4 ] && [ -f $F/fa4meta.tar ] && ls $F/av-*.whl >/dev/null 2>&1 \
   && tar xJf $F/fa4bundle.tar.xz -C /tmp/fa4site 2>/dev/null && tar xf $F/fa4meta.tar -C /tmp/fa4site \
   && $PIP --target /tmp/fa4core $F/nvidia_cutlass_dsl_libs_core-*.whl 2>/dev/null; then
  cp -r /tmp/fa4core/* /tmp/fa4site/ && touch /tmp/fa4site/.fa4
fi
export PYTHONPATH=/tmp/site:$PWD/src
if [ -n "${FA4:-}" ]; then
  export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH
fi
echo "device_setup: base $([ -f /tmp/site/.base ] && echo yes || echo no), av $([ -f /tmp/site/.av ] && echo yes || echo no), fa4 $([ -f /tmp/fa4site/.fa4 ] && echo yes || echo no)"
