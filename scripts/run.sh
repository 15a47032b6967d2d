#!/usr/bin/env bash
# run.sh: installs what is needed, builds moejit and runs the main job: a random gpt-oss-20b layer
# (H = I = 2880, 32 experts, top-4, bf16, 4096 tokens) through the JIT on the GPU, timed and checked
# against the CPU reference. Without a GPU it generates and compiles the kernels and says so.
# Extra arguments go to `moejit run` (see `build/moejit run --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
source scripts/nvrtc_env.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build
./build/moejit run "$@"
