#!/usr/bin/env bash
# cli_files.sh MOEJIT: `moejit cache` against the files an unlucky operator meets: an export onto a
# FIFO, a folder, a link and a full disk; records that are a FIFO. Each check says what it wants;
# the script exits 1 when any failed.
set -u
moejit=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MOEJIT_CACHE_DIR=$work/cache
failed=0
check() { # check DESCRIPTION WANTED_STATUS GOT_STATUS [CONDITION...]
  local what=$1 want=$2 got=$3
  shift 3
  if [ "$got" != "$want" ] || { [ $# -gt 0 ] && ! "$@"; }; then
    echo "FAIL: $what (exit $got, wanted $want${*:+; and: $*})"
    failed=1
  else
    echo "ok: $what"
  fi
}
run() { timeout 60 "$moejit" "$@" >"$work/out" 2>&1; }
says() { grep -Eq -- "$1" "$work/out" || { cat "$work/out"; false; }; }

# a cache with cubins in it: compile fills it
run compile --hidden 64 --intermediate 64 --experts 4 --top-k 2
check "compile fills the cache" 0 $? test -n "$(ls "$MOEJIT_CACHE_DIR"/cubin)"

mkfifo "$work/fifo"
run cache export "$work/fifo"
check "export refuses a FIFO and leaves it" 2 $? test -p "$work/fifo"
says "is a FIFO; not replaced" || failed=1

mkdir "$work/folder"
run cache export "$work/folder"
check "export refuses a folder" 2 $? test -d "$work/folder"

ln -s nowhere "$work/dangling"
run cache export "$work/dangling"
check "export refuses a link to nothing" 2 $? test -L "$work/dangling"

touch "$work/real.mjc"
ln -s real.mjc "$work/link"
run cache export "$work/link"
check "export writes through a link" 0 $? test -L "$work/link" -a -s "$work/real.mjc"

# a full disk: writes past 1 KiB fail (EFBIG, the signal ignored)
bash -c "trap '' XFSZ; ulimit -f 1; exec timeout 60 \"$moejit\" cache export \"$work/full.mjc\"" \
  >"$work/out" 2>&1
check "export on a full disk fails and leaves nothing" 1 $? test ! -e "$work/full.mjc" -a \
  -z "$(ls "$work" | grep tmp)"
says "cannot write .*full.mjc: File too large; nothing was written" || failed=1

timeout 60 "$moejit" cache export - >/dev/full 2>"$work/out"
check "export to a full standard output fails" 1 $?
says "cannot write -: No space left on device" || failed=1

timeout 60 "$moejit" cache export - >"$work/piped.mjc" 2>"$work/out"
check "export to standard output" 0 $? test -s "$work/piped.mjc"
MOEJIT_CACHE_DIR=$work/other timeout 60 "$moejit" cache import - <"$work/piped.mjc" >"$work/out" 2>&1
check "import from standard input" 0 $? test -n "$(ls "$work/other/cubin")"

mkfifo "$MOEJIT_CACHE_DIR/records.txt"
run cache ls
check "ls reports records that are a FIFO, without blocking" 1 $?
says "records .*records.txt: not a regular file" || failed=1
rm "$MOEJIT_CACHE_DIR/records.txt"

exit $failed
