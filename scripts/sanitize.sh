#!/usr/bin/env bash
# sanitize.sh: builds moejit and its suites with AddressSanitizer and UBSan (build-asan/) and runs
# every ctest case there: leaks reported, any UBSan finding fatal. The CLI cases check exit
# statuses, so a leak at the CLI's exit fails them too. (GPU suites skip without a GPU.)
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEJIT_SANITIZE=ON >/dev/null
cmake --build build-asan
source scripts/nvrtc_env.sh
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-asan --output-on-failure
