# Packing on a device machine: what comes back through $OUT (at most 8 files of 16 MiB a call).
# Sourced by the lease scripts. PACK: the folder tools/device/device_wait.sh copies to $OUT on every call.
#   pack_model RUN [TAR_OPTION ...]   RUN/model as $PACK/model-$(basename RUN).tgz.part-aa, -ab, ...
#                                     (15 MB pieces; device_wait.sh stops returning RUN's EMA snapshot
#                                     once they exist). Here: cat PARTS | tar xz -C DEST
PACK=${PACK:-runs/pack}
pack_model() {
  local run=$1; shift
  mkdir -p "$PACK"
  tar czf - -C "$run" "$@" model | split -b 15m - "$PACK/model-$(basename "$run").tgz.part-"
}
