#!/usr/bin/env bash
# Run a command (default: make test) beside busy CPU hogs, as on a loaded machine, to catch
# tests that depend on timing. Prints the command's wall time and exit status, and exits with
# it; the hogs are always killed (trap EXIT).
#   scripts/test-under-load.sh [command ...]      HOGS=N (default 2) hog processes
set -u
hogs=()
trap 'kill "${hogs[@]}" 2>/dev/null; wait "${hogs[@]}" 2>/dev/null' EXIT
trap 'exit 130' INT TERM
for _ in $(seq "${HOGS:-2}"); do
  (while :; do :; done) &
  hogs+=($!)
done
[ $# -gt 0 ] || set -- make test
start=${EPOCHREALTIME//[!0-9]/}  # microseconds, whatever the locale
"$@"
status=$?
awk -v s="$start" -v e="${EPOCHREALTIME//[!0-9]/}" -v n=${#hogs[@]} -v c="$*" -v x=$status \
  'BEGIN { printf "test-under-load: %s beside %d CPU hogs: exit %d in %.1f s\n", c, n, x, (e - s) / 1e6 }'
exit $status
