#!/usr/bin/env bash
# check_layers.sh: checks that the project's #include "..." lines point down the layers of DESIGN.md
# section 2, lowest first: include/, base/, gen/, tune/, runtime/, tools/, then the tops cli/,
# tests/, examples/ and bench/. A .c or .h file may include headers of its own layer and of the
# layers below it, never above; cli/ may include only moejit.h, cli/cli.h and tools/tools.h, and
# examples/ only moejit.h. An include resolves as the compiler finds it: next to the file, then
# from the root, then from include/; one that names no file of the tree (a generated header under
# build/) is skipped, as are build*/ and hidden folders. A C file in a folder with no layer fails.
# Usage: bash scripts/check_layers.sh [ROOT]   (ROOT: the repository, by default this script's parent)
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"

declare -A rank=([include]=0 [base]=1 [gen]=2 [tune]=3 [runtime]=4 [tools]=5
                 [cli]=6 [tests]=6 [examples]=6 [bench]=6)
declare -A only=([cli]="include/moejit.h cli/cli.h tools/tools.h" [examples]="include/moejit.h")

# The path from the root of the file `#include "$2"` in file $1 names; nothing when there is none.
resolve() {
  local f
  for f in "$(dirname "$1")/$2" "$2" "include/$2"; do
    if [ -f "$f" ]; then realpath -s --relative-to=. "$f"; return; fi
  done
}

files=0 includes=0 bad=0
while IFS= read -r -d '' file; do
  file=${file#./} from=${file%%/*}
  if [ -z "${rank[$from]+set}" ]; then
    echo "$file: folder $from/ has no layer in scripts/check_layers.sh" >&2
    bad=$((bad + 1))
    continue
  fi
  files=$((files + 1))
  while IFS=: read -r line name; do
    header=$(resolve "$file" "$name")
    to=${header%%/*}
    if [ -z "$header" ] || [ -z "${rank[$to]+set}" ]; then continue; fi
    includes=$((includes + 1))
    if [ -n "${only[$from]+set}" ] && [[ " ${only[$from]} " != *" $header "* ]]; then
      echo "$file:$line: $from includes $header; $from/ may include only ${only[$from]}" >&2
      bad=$((bad + 1))
    elif ((${rank[$to]} > ${rank[$from]})); then
      echo "$file:$line: $from includes $header of a layer above it ($to)" >&2
      bad=$((bad + 1))
    fi
  done < <(grep -n -E '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$file" |
             sed -E 's/^([0-9]+):[^"]*"([^"]*)".*/\1:\2/')
done < <(find . -type d \( -path './build*' -o -name '.?*' \) -prune -o \
              -type f \( -name '*.c' -o -name '*.h' \) -print0 | sort -z)

if ((bad)); then
  echo "check_layers: $files files, $includes includes, $bad wrong" >&2
  exit 1
fi
echo "check_layers: $files files, $includes includes, no upward include"
