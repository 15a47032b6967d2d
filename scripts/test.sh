#!/usr/bin/env bash
# test.sh: installs what is needed, builds moejit and runs every cmocka suite with ctest.
# Without a GPU the GPU suites skip; the CPU suites (templates rendered and compiled with NVRTC for
# sm_80 and sm_90a, the sandbox, the API's validation, the CPU reference against the golden vectors)
# run everywhere. The golden vectors are read from ../shared/golden (or $MOEJIT_GOLDEN_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build
ctest --test-dir build --output-on-failure
