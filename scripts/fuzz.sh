#!/usr/bin/env bash
# fuzz.sh [SECONDS]: builds the libFuzzer targets of tests/fuzz with clang (build-fuzz/) and runs
# each for SECONDS (default 30) from its seed corpus (tests/fuzz/corpus/<target>, copied: new
# inputs stay in build-fuzz/corpus). A crash, a leak or a trap fails the script and leaves the
# input in build-fuzz/artifacts. Without clang it says so and exits 0, unless
# MOEJIT_FUZZ_REQUIRED=1 (CI), which installs clang or fails.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
if ! command -v clang >/dev/null; then
  if [ "${MOEJIT_FUZZ_REQUIRED:-0}" != 1 ]; then
    echo "fuzz.sh: no clang; the fuzz targets are not built"
    exit 0
  fi
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "fuzz.sh: installing clang (MOEJIT_FUZZ_REQUIRED=1)"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clang \
    >/dev/null || { echo "fuzz.sh: no clang, and it could not be installed" >&2; exit 1; }
fi
CC=clang cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEJIT_FUZZ=ON \
  -DMOEJIT_BUILD_TESTS=OFF >/dev/null
cmake --build build-fuzz --target fuzz_records fuzz_cubin fuzz_template
mkdir -p build-fuzz/artifacts
for t in records cubin template; do
  corpus=build-fuzz/corpus/$t
  mkdir -p "$corpus"
  cp -n tests/fuzz/corpus/$t/* "$corpus"/
  echo "fuzz_$t: ${seconds} s"
  log=build-fuzz/fuzz_$t.log
  rc=0
  build-fuzz/tests/fuzz/fuzz_$t "$corpus" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix=build-fuzz/artifacts/$t- >"$log" 2>&1 || rc=$?
  grep -E "stat::number_of_executed_units" "$log" || true
  if [ "$rc" != 0 ]; then
    tail -40 "$log"
    echo "fuzz_$t failed (exit $rc); the input is in build-fuzz/artifacts"
    exit 1
  fi
done
