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
ctest --test-dir build-asan --output-on-failure && exit 0
# A case fails. One cause is no finding of ours: LeakSanitizer's own tracer can crash ("Tracer
# caught signal 11 ... LeakSanitizer has encountered a fatal error") while it reads the thread
# storage of libraries NVRTC opens and closes. Such a case is run again with leak detection off,
# and must pass so; it is named. Any other failure fails the run.
status=0
while IFS=: read -r _ name; do
  [ -n "$name" ] || continue
  out=$(ctest --test-dir build-asan -R "^${name}\$" --output-on-failure 2>&1) && continue
  if grep -q "LeakSanitizer has encountered a fatal error" <<<"$out"; then
    if ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:strict_string_checks=1 \
       ctest --test-dir build-asan -R "^${name}\$" --output-on-failure >/dev/null 2>&1; then
      echo "sanitize.sh: $name: LeakSanitizer's tracer crashed (a sanitizer fault, not a leak);" \
        "without leak detection it passes under ASan and UBSan"
      continue
    fi
  fi
  echo "sanitize.sh: $name fails" >&2
  status=1
done < build-asan/Testing/Temporary/LastTestsFailed.log
exit $status
