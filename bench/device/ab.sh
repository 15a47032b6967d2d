#!/usr/bin/env bash
# ab.sh: an earlier build against this one in one device call, the runs interleaved (old, new, old,
# new) so that what differs between calls (clocks, power, the machine) falls on both alike.
#   bash bench/device/ab.sh OLD_TREE [ROUNDS]
# OLD_TREE: the source of the earlier build (e.g. `git archive REV | tar -x -C .base`, carried);
# ROUNDS: how many old/new pairs (default 2). Builds OLD_TREE into OLD_TREE/build-dev and this
# tree with tests/device.sh (so .deps must be carried), then per round and build runs `moejit
# bench` for gpt-oss-20b and gpt-oss-120b at 1, 8, 64, 512, 4096 and 16384 tokens (graph replay,
# floor measured in the same run), JSON lines to $OUT/ab-{old,new}.jsonl (commit: $OLD_COMMIT and
# $NEW_COMMIT, default old and new) and every run's table to $OUT/ab.log, and prints one row per
# model and token count: each run's ms in order, and new / old of the medians.
set -eu
OLD=${1:?usage: ab.sh OLD_TREE [ROUNDS]}
ROUNDS=${2:-2}
OUT=${OUT:-/tmp/ab-out}
mkdir -p "$OUT"
root=$(cd "$(dirname "$0")/../.." && pwd)
OLD=$(cd "$OLD" && pwd)
bash "$root/tests/device.sh" true
export LD_LIBRARY_PATH=$root/.deps/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64
cmake -S "$OLD" -B "$OLD/build-dev" -G Ninja -DCMAKE_PREFIX_PATH="$root/.deps/usr" \
  -DCMAKE_C_FLAGS="-I$root/.deps/usr/include/x86_64-linux-gnu" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMOEJIT_BUILD_TESTS=OFF >/dev/null
ninja -C "$OLD/build-dev" moejit_cli >/tmp/ab-old-build.log 2>&1 || { tail -20 /tmp/ab-old-build.log; exit 1; }
rm -f "$OUT/ab-old.jsonl" "$OUT/ab-new.jsonl" "$OUT/ab.log"
for round in $(seq "$ROUNDS"); do
  for which in old new; do
    bin=$root/build-dev/moejit
    [ "$which" = old ] && bin=$OLD/build-dev/moejit
    for model in gpt-oss-20b gpt-oss-120b; do
      commit=${NEW_COMMIT:-new}
      [ "$which" = old ] && commit=${OLD_COMMIT:-old}
      MOEJIT_CACHE_DIR=/tmp/ab-cache-$which MOEJIT_COMMIT=$commit "$bin" bench --model "$model" \
        --tokens 1,8,64,512,4096,16384 --json "$OUT/ab-$which.jsonl" >/tmp/ab-run.txt 2>&1 ||
        { tail -5 /tmp/ab-run.txt; exit 1; }
      { echo "== $which, round $round, $model"; cat /tmp/ab-run.txt; } >>"$OUT/ab.log"
    done
  done
done
python3 - "$OUT/ab-old.jsonl" "$OUT/ab-new.jsonl" <<'EOF'
import json, statistics, sys
runs = {}
for path, which in zip(sys.argv[1:], ("old", "new")):
    for line in open(path):
        r = json.loads(line)
        runs.setdefault((r["experts"], r["tokens"]), {}).setdefault(which, []).append(r["ms"])
print(f"{'E':>4} {'tokens':>6}  {'old runs, ms':<22} {'new runs, ms':<22} new/old")
for (e, t), v in sorted(runs.items()):
    old, new = v.get("old", []), v.get("new", [])
    ratio = statistics.median(new) / statistics.median(old) if old and new else float("nan")
    print(f"{e:>4} {t:>6}  {' '.join(f'{x:.4f}' for x in old):<22} "
          f"{' '.join(f'{x:.4f}' for x in new):<22} {ratio:.4f}")
EOF
