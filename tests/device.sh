#!/usr/bin/env bash
# device.sh: builds moejit on a GPU machine that lacks Lua and cmocka (the debs unpacked under .deps)
# and sets up the environment; then runs the command given, if any.
#   bash tests/device.sh [command ...]
# Needs: .deps/usr (dpkg -x of liblua5.4-0, liblua5.4-dev, libcmocka0, libcmocka-dev), .golden (a
# copy of ../shared/golden). Builds into build-dev.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export LD_LIBRARY_PATH=$root/.deps/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export MOEJIT_GOLDEN_DIR=$root/.golden
export PATH=/usr/local/cuda/bin:$PATH
cmake -S "$root" -B "$root/build-dev" -G Ninja -DCMAKE_PREFIX_PATH="$root/.deps/usr" \
  -DCMAKE_C_FLAGS="-I$root/.deps/usr/include/x86_64-linux-gnu" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$root/build-dev" >"$root/build-dev.log" 2>&1 || { tail -40 "$root/build-dev.log"; exit 1; }
if [ $# -gt 0 ]; then "$@"; fi
