#!/usr/bin/env bash
# nvrtc_search.sh MOEJIT: where the library looks for NVRTC, with the CUDA toolkit hidden (a
# private mount namespace binds an empty folder over it; skipped where unshare is not allowed).
# Checks: with nothing found the error lists the places tried; a folder of $MOEJIT_NVRTC_SEARCH
# holding NVRTC serves; $MOEJIT_NVRTC alone decides when set.
set -u
moejit=$1
if [ "${MJ_IN_NAMESPACE:-}" != 1 ]; then
  # an NVRTC that is there: the loader's, the toolkit's, or a MOEJIT_NVRTC_SEARCH folder's
  real=
  for f in $(ldconfig -p | awk '/libnvrtc\.so\.1[23] /{print $NF}') \
    /usr/local/cuda/lib64/libnvrtc.so.1[23] \
    $(tr ':' '\n' <<<"${MOEJIT_NVRTC_SEARCH:-}" | sed 's|$|/libnvrtc.so.13|'); do
    if [ -e "$f" ]; then real=$(readlink -f "$f"); break; fi
  done
  if [ -z "$real" ]; then echo "skipped: no NVRTC on this machine"; exit 0; fi
  if ! unshare -m true 2>/dev/null && ! unshare -rm true 2>/dev/null; then
    echo "skipped: unshare is not allowed here"
    exit 0
  fi
  flag=-m
  unshare -m true 2>/dev/null || flag=-rm
  exec unshare $flag env MJ_IN_NAMESPACE=1 MJ_NVRTC_REAL="$real" bash "$0" "$moejit"
fi
work=$(mktemp -d)
mounts=()
trap 'for m in "${mounts[@]}"; do umount "$m"; done; rm -rf "$work"' EXIT
mkdir -p "$work/empty" "$work/wheel"
lib=$(dirname "$MJ_NVRTC_REAL")
# the wheel's folder: NVRTC (under its soname) and its builtins, bound in before the toolkit goes
soname=$(basename "$MJ_NVRTC_REAL" | grep -o '^libnvrtc\.so\.[0-9]*')
for f in "$MJ_NVRTC_REAL" "$lib"/libnvrtc-builtins.so.*.*; do
  [ -e "$f" ] || continue
  base=$(basename "$f")
  [ "$f" = "$MJ_NVRTC_REAL" ] && base=$soname
  touch "$work/wheel/$base"
  mount --bind "$f" "$work/wheel/$base" && mounts=("$work/wheel/$base" "${mounts[@]}")
done
for d in /usr/local/cuda "$(readlink -f /usr/local/cuda)" "$lib"; do
  [ -d "$d" ] && mount --bind "$work/empty" "$d" 2>/dev/null && mounts=("$d" "${mounts[@]}")
done
export MOEJIT_CACHE_DIR=$work/cache
unset CUDA_HOME MOEJIT_NVRTC MOEJIT_NVRTC_SEARCH
failed=0
out=$("$moejit" compile --hidden 64 --intermediate 64 --experts 4 --top-k 2 2>&1)
if [ $? = 1 ] && grep -q "NVRTC not found; tried: /usr/local/cuda/lib64/libnvrtc.so.13" <<<"$out" &&
  grep -q "libnvrtc.so.12 (" <<<"$out"; then
  echo "ok: with the toolkit hidden, the error lists where it looked"
else
  echo "FAIL: the error without NVRTC: $out"
  failed=1
fi
out=$(MOEJIT_NVRTC_SEARCH=/nowhere:$work/wheel "$moejit" compile --hidden 64 --intermediate 64 \
  --experts 4 --top-k 2 2>&1)
if [ $? = 0 ] && grep -q "modules compiled" <<<"$out"; then
  echo "ok: a folder of MOEJIT_NVRTC_SEARCH serves"
else
  echo "FAIL: MOEJIT_NVRTC_SEARCH: $out"
  failed=1
fi
out=$(MOEJIT_NVRTC=$work/none.so MOEJIT_NVRTC_SEARCH=$work/wheel "$moejit" compile \
  --hidden 64 --intermediate 64 --experts 4 --top-k 2 2>&1)
if [ $? = 1 ] && grep -q "MOEJIT_NVRTC=$work/none.so cannot be loaded" <<<"$out"; then
  echo "ok: MOEJIT_NVRTC alone decides: nothing stands in for it"
else
  echo "FAIL: MOEJIT_NVRTC: $out"
  failed=1
fi
exit $failed
