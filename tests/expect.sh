#!/usr/bin/env bash
# expect.sh STATUS PATTERN [NOT_PATTERN] -- COMMAND...: runs COMMAND and passes when it exits with
# STATUS and its output (stdout and stderr together) matches the extended regex PATTERN, and not
# NOT_PATTERN where given. Every CLI case of ctest goes through it, so none ignores the status.
set -u
want=$1 pattern=$2
shift 2
not=
if [ "$1" != "--" ]; then
  not=$1
  shift
fi
shift # --
out=$("$@" 2>&1)
got=$?
printf '%s\n' "$out"
fail=0
if [ "$got" != "$want" ]; then
  echo "expect.sh: exit status $got, wanted $want" >&2
  fail=1
fi
if ! grep -Eq -- "$pattern" <<<"$out"; then
  echo "expect.sh: no line matches: $pattern" >&2
  fail=1
fi
if [ -n "$not" ] && grep -Eq -- "$not" <<<"$out"; then
  echo "expect.sh: a line matches what must not be there: $not" >&2
  fail=1
fi
exit $fail
