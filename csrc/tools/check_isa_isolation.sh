#!/usr/bin/env bash
# Checks that instruction-set-specific code stays in the files compiled for it.
#
# *_avx2.cpp / *_avx512.cpp are compiled with -mavx2 / -mavx512*, and their functions are only
# called after a CPU check. Two ways that can break silently, both caught here on the object
# files of a Release build of the core (BUILD_DIR from `cmake -B BUILD_DIR -DCMAKE_BUILD_TYPE=Release`):
#   1. an AVX file defines a weak (inline / template) function - the linker may keep that copy
#      for every caller, portable ones included, and a CPU without the instructions crashes;
#   2. a portable file contains AVX (VEX/EVEX-encoded) instructions.
set -euo pipefail
build="${1:?usage: check_isa_isolation.sh BUILD_DIR}"
objects="$build/CMakeFiles/autoweld_core.dir/csrc"
[ -d "$objects" ] || { echo "no object files under $objects" >&2; exit 2; }
status=0
for object in "$objects"/*.o; do
  name=$(basename "$object")
  case "$name" in
    *_avx2.cpp.o | *_avx512.cpp.o)
      weak=$(nm -C --defined-only "$object" | awk '$2 == "W" || $2 == "w"' || true)
      if [ -n "$weak" ]; then
        echo "FAIL $name defines weak functions (the linker may use them for portable callers):"
        echo "$weak" | sed 's/^/    /'
        status=1
      fi
      ;;
    *)
      vex=$(objdump -d --no-show-raw-insn "$object" | grep -cE $'^ +[0-9a-f]+:\tv[a-z]' || true)
      if [ "$vex" != 0 ]; then
        echo "FAIL $name is portable code but has $vex AVX instructions"
        status=1
      fi
      ;;
  esac
done
[ "$status" = 0 ] && echo "ISA isolation: $(ls "$objects"/*.o | wc -l) object files checked, OK"
exit "$status"
