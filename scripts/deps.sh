#!/usr/bin/env bash
# deps.sh: installs what building moejit needs on Debian (compiler, CMake, Ninja, Lua 5.4, cmocka)
# when it is missing. The CUDA toolkit (12 or newer, for NVRTC) is expected under /usr/local/cuda.
set -euo pipefail
pkgs="build-essential cmake ninja-build pkg-config liblua5.4-dev libcmocka-dev"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi
# The Python binding's tests (no torch needed for the struct-layout ones) run in a venv.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-venv >/dev/null
fi
# NVRTC: the CUDA toolkit's (CUDA_HOME, /usr/local/cuda, the loader's path); without a toolkit, the
# nvidia-cuda-nvrtc wheel from PyPI into the build venv, which scripts/nvrtc_env.sh points
# MOEJIT_NVRTC_SEARCH at.
toolkit_nvrtc() {
  local f
  for f in "${CUDA_HOME:-/usr/local/cuda}"/lib64/libnvrtc.so.1[23] /usr/local/cuda/lib64/libnvrtc.so.1[23] \
    $(ldconfig -p | awk '/libnvrtc\.so\.1[23] /{print $NF}'); do
    [ -e "$f" ] && return 0
  done
  return 1
}
if ! toolkit_nvrtc; then
  [ -x build/pyenv/bin/python ] || python3 -m venv build/pyenv
  if ! ls build/pyenv/lib/python3*/site-packages/nvidia/*/lib/libnvrtc.so.1[23] >/dev/null 2>&1; then
    echo "deps.sh: no CUDA toolkit NVRTC; installing nvidia-cuda-nvrtc into build/pyenv"
    build/pyenv/bin/python -m pip install -q nvidia-cuda-nvrtc || {
      echo "deps.sh: NVRTC not found (no CUDA toolkit under \${CUDA_HOME:-/usr/local/cuda}, none on" \
        "the loader's path) and pip could not install nvidia-cuda-nvrtc" >&2
      exit 1
    }
  fi
fi
