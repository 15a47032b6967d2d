#!/usr/bin/env bash
# wheel_install.sh WHEEL: installs the wheel into a fresh venv and, with no MOEJIT_LIBRARY, from a
# folder outside the source tree and with the system's Lua hidden (a private mount namespace binds
# an empty file over it where unshare is allowed), compiles a small layer offline for sm_90a
# through the package. Exits 1 when anything fails.
set -euo pipefail
wheel=$(readlink -f "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel"
source "$(dirname "$0")/../scripts/nvrtc_env.sh" # the build venv's NVRTC wheel, where no toolkit
cat >"$work/offline.py" <<'PY'
import moejit
from moejit import _capi

lib = _capi.load_library()
print("library:", lib.path)
assert "site-packages/moejit/" in lib.path, lib.path
ctx = lib.create_context(offline_arch="sm_90a")
d = lib.layer_desc()
d.hidden, d.intermediate, d.experts, d.top_k, d.max_tokens = 64, 96, 5, 2, 64
plan = ctx.create_plan(d)
print("offline plan compiled, workspace for 64 tokens:", plan.workspace_size(64), "bytes")
plan.close()
ctx.close()
PY
run='cd "$0" && env -u MOEJIT_LIBRARY "$0/venv/bin/python" offline.py'
hide=""
for f in $(ldconfig -p | awk '/liblua5\.4\.so\.0 /{print $NF}'); do
  [ -e "$f" ] && hide="$hide mount --bind /dev/null $(readlink -f "$f");"
done
if [ -n "$hide" ] && unshare -m true 2>/dev/null; then
  echo "system Lua hidden"
  unshare -m bash -c "$hide $run" "$work"
else
  echo "system Lua not hidden (no unshare here)"
  bash -c "$run" "$work"
fi
