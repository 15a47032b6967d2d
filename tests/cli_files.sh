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

# imports that were cut: inside an entry, at an entry's end (no end mark), a claimed 4 GiB entry
head -c 11 "$work/piped.mjc" >"$work/cut.mjc"
run cache import "$work/cut.mjc" --dir "$work/other"
check "import of an export cut inside an entry fails" 1 $?
says "is truncated" || failed=1
size=$(stat -c %s "$work/piped.mjc")
head -c $((size - 24)) "$work/piped.mjc" >"$work/noend.mjc" # without its end mark
run cache import "$work/noend.mjc" --dir "$work/other"
check "import of an export cut at an entry's end fails" 1 $?
says "is truncated \(no end mark\)" || failed=1
{ printf 'MJCACHE2cubin\0\0\0'; printf '\0\0\0\0\1\0\0\0'; } >"$work/huge.mjc"
run cache import "$work/huge.mjc" --dir "$work/other"
check "import refuses an entry longer than the file" 1 $?
says "truncated or damaged \(an entry of 4294967296 bytes\)" || failed=1

mkfifo "$MOEJIT_CACHE_DIR/records.txt"
run cache ls
check "ls reports records that are a FIFO, without blocking" 1 $?
says "records .*records.txt: not a regular file" || failed=1
cp "$work/piped.mjc" "$work/kept.mjc"
run cache export "$work/kept.mjc"
check "export with records that are a FIFO fails, without blocking, and keeps FILE" 1 $? \
  cmp -s "$work/piped.mjc" "$work/kept.mjc"
says "cannot read .*records.txt: not a regular file" || failed=1
rm "$MOEJIT_CACHE_DIR/records.txt"
mv "$MOEJIT_CACHE_DIR/cubin" "$work/cubin.saved"
touch "$MOEJIT_CACHE_DIR/cubin"
run cache export "$work/kept.mjc"
check "export with an unreadable cubin folder fails and keeps FILE" 1 $? \
  cmp -s "$work/piped.mjc" "$work/kept.mjc"
rm "$MOEJIT_CACHE_DIR/cubin"
mv "$work/cubin.saved" "$MOEJIT_CACHE_DIR/cubin"

exit $failed
