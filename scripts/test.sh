#!/usr/bin/env bash
# test.sh: installs what is needed, builds moejit and runs every cmocka suite with ctest.
# Without a GPU the GPU suites skip; the CPU suites (templates rendered and compiled with NVRTC for
# sm_80 and sm_90a, the sandbox, the API's validation, the CPU reference against the golden vectors)
# run everywhere; then the Python binding's tests. The golden vectors are read from ../shared/golden
# and ../shared/golden-mxfp4 (or $MOEJIT_GOLDEN_DIR, $MOEJIT_GOLDEN_MXFP4_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
source scripts/nvrtc_env.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build
ctest --test-dir build --output-on-failure
# The Python binding: struct layouts against the header and the offline path through the library
# (the torch tests skip without torch and a GPU).
[ -x build/pyenv/bin/python ] || python3 -m venv build/pyenv
build/pyenv/bin/python -m pip install -q pytest
MOEJIT_LIBRARY="$PWD/build/libmoejit.so" build/pyenv/bin/python -m pytest -q python/tests
