# shellcheck shell=bash
# Source this file: process helpers shared by airflow-standalone.sh and cluster.sh.

# Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), or nothing.
# Stored beside a PID, it tells a live process from a recycled PID.
start_ticks() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }" # the command name may contain spaces and parentheses
  # shellcheck disable=SC2086
  set -- $stat
  echo "${20}"
}
