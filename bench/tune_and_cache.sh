#!/usr/bin/env bash
# tune_and_cache.sh: measures, on the GPU of this machine, for gpt-oss-20b bf16 (H = I = 2880,
# E = 32, top-4): moejit_plan_create cold (empty cache) and warm (everything cached), the forward at
# 4096 tokens before and after tuning, and `moejit tune` over six token counts. Prints the command
# outputs and writes JSON lines to $1 (default bench/results/<date>-<device>-tune.jsonl).
# Needs a built `moejit` in $MOEJIT_BIN (default build/moejit).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MOEJIT_BIN:-$root/build/moejit}
export MOEJIT_CACHE_DIR=${MOEJIT_CACHE_DIR:-$(mktemp -d /tmp/moejit-bench-XXXXXX)}
commit=${MOEJIT_COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}
date=$(date -u +%Y-%m-%d)
"$bin" cache clear >/dev/null
run() { "$bin" run --tokens 4096 --check 16 "$@"; }
cold=$(run); echo "$cold"
warm=$(run); echo "$warm"
tune=$("$bin" tune --tokens 1,8,64,512,4096,65536); echo "$tune"
tuned=$(run); echo "$tuned"
device=$(echo "$cold" | awk '/^device/ {sub(/^device +/, ""); sub(/ \(.*/, ""); print; exit}')
slug=$(echo "$device" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
out=${1:-$root/bench/results/$date-$slug-tune.jsonl}
plan_s() { echo "$1" | awk '/^plan/ {for (i = 1; i <= NF; i++) if ($i == "in") print $(i + 1)}'; }
fwd_ms() { echo "$1" | awk '/^forward/ {print $2}'; }
base="\"device\": \"$device\", \"commit\": \"$commit\", \"date\": \"$date\", \"dtype\": \"bf16\", \"hidden\": 2880, \"intermediate\": 2880, \"experts\": 32, \"top_k\": 4"
{
  echo "{$base, \"what\": \"plan_create\", \"cache\": \"cold\", \"seconds\": $(plan_s "$cold")}"
  echo "{$base, \"what\": \"plan_create\", \"cache\": \"warm\", \"seconds\": $(plan_s "$warm")}"
  echo "{$base, \"what\": \"forward\", \"tuned\": false, \"tokens\": 4096, \"ms\": $(fwd_ms "$warm")}"
  echo "{$base, \"what\": \"forward\", \"tuned\": true, \"tokens\": 4096, \"ms\": $(fwd_ms "$tuned")}"
  echo "$tune" | awk -v base="$base" '
    /^ *[0-9]+  / && NF >= 8 {printf "{%s, \"what\": \"tune\", \"tokens\": %s, \"winner\": \"%s\", \"ms\": %s, \"heuristic\": \"%s\", \"heuristic_ms\": %s, \"speedup\": %s, \"candidates\": %s}\n", base, $1, $2, $3, $4, $5, substr($6, 1, length($6) - 1), $7}
    /^tuned [0-9]+ token counts in/ {printf "{%s, \"what\": \"tune_total\", \"seconds\": %s}\n", base, $(NF - 1)}'
} >"$out"
echo "wrote $out"
