#!/usr/bin/env bash
# Run `airflow standalone` (api-server, scheduler, dag-processor, triggerer; LocalExecutor on
# SQLite, SimpleAuthManager) detached, with the project's embedded configuration (airflow-env.sh).
#
#   scripts/airflow-standalone.sh start    migrate + pools, start, wait for the API, print the login
#   scripts/airflow-standalone.sh stop     stop everything it started (idempotent)
#   scripts/airflow-standalone.sh status   exit 0 if running, 3 if not
#
# Environment: AIRFLOW_HOME (default .airflow/), AIRFLOW_PORT (default 8080), AIRFLOW__API__HOST
# (default 127.0.0.1), AIRFLOW_START_TIMEOUT (default 120 s, counted once the DB is migrated),
# AIRFLOW_STOP_TIMEOUT (default 15 s). The login is user admin with a password generated once per
# AIRFLOW_HOME (printed by `start`).
#
# Standalone runs in its own session (setsid), so its process group and session id are its PID.
# Killing only the standalone PID orphans its components, and LocalExecutor workers may ignore
# SIGTERM; task processes run in process groups of their own, inside the session. So `stop` sends
# SIGTERM to every process group of the session, then SIGKILL to what is left after the timeout.
# Files: $AIRFLOW_HOME/standalone.log (previous run: standalone.log.1), $AIRFLOW_HOME/standalone.pid
# ("<pid> <pgid> <port> <start time in clock ticks>").
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/airflow-env.sh
source "$here/airflow-env.sh"

PORT="${AIRFLOW_PORT:-8080}"
START_TIMEOUT="${AIRFLOW_START_TIMEOUT:-120}"
STOP_TIMEOUT="${AIRFLOW_STOP_TIMEOUT:-15}"
export AIRFLOW__API__PORT="$PORT"
# Local only by default: SimpleAuthManager keeps its passwords in plain text.
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
# Task workers reach the execution API through base_url (default http://localhost:8080).
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://127.0.0.1:$PORT}"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
# "user:role" (not a password): the password is generated once per AIRFLOW_HOME.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS:-False}"

PID_FILE="$AIRFLOW_HOME/standalone.pid"
LOG_FILE="$AIRFLOW_HOME/standalone.log"
PASSWORDS_FILE="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}"
URL="http://127.0.0.1:$PORT"

say() { echo "airflow-standalone: $*"; }
die() {
  echo "airflow-standalone: error: $*" >&2
  exit 1
}

# shellcheck source=scripts/proc-lib.sh
source "$here/proc-lib.sh"

# Live (non-zombie) processes of session $1, one "pid pgid" per line.
session_procs() {
  ps -e -o pid=,pgid=,sid=,stat= | awk -v s="$1" '$3 == s && $4 !~ /^Z/ {print $1, $2}'
}

all_admins() { [[ "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS,,}" == true ]]; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Sets pid, pgid, port and ticks from the pid file; returns 1 if there is no live instance
# (a stale file, whose leader PID was reused or whose processes are all gone, is removed).
read_pid_file() {
  pid="" pgid="" port="" ticks=""
  [[ -f "$PID_FILE" ]] || return 1
  read -r pid pgid port ticks <"$PID_FILE" || true
  if [[ ! "$pid" =~ ^[0-9]+$ || ! "$pgid" =~ ^[0-9]+$ ]]; then
    say "removing unreadable pid file $PID_FILE"
    rm -f "$PID_FILE"
    return 1
  fi
  local now
  now="$(start_ticks "$pid")"
  if [[ -n "$now" && -n "$ticks" && "$now" != "$ticks" ]]; then
    say "removing stale pid file (PID $pid now belongs to another process)"
    rm -f "$PID_FILE"
    return 1
  fi
  if [[ -z "$(session_procs "$pgid")" ]]; then
    say "removing stale pid file (no process of session $pgid left)"
    rm -f "$PID_FILE"
    return 1
  fi
  return 0
}

# Signal every process group of session $2 with signal $1; prints how many processes.
signal_session() {
  local sig="$1" sid="$2" groups
  groups="$(session_procs "$sid" | awk '{print $2}' | sort -u)"
  for g in $groups; do
    kill "-$sig" -- "-$g" 2>/dev/null || true
  done
  session_procs "$sid" | wc -l
}

# Wait up to $2 seconds for session $1 to be empty; returns 1 on timeout.
wait_session_gone() {
  local sid="$1" deadline=$((SECONDS + $2))
  while [[ -n "$(session_procs "$sid")" ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# Stop session $1 (TERM, then KILL after STOP_TIMEOUT); returns 1 if something survives.
stop_session() {
  local sid="$1" n t0=$SECONDS
  n="$(session_procs "$sid" | wc -l)"
  say "sending SIGTERM to the $n processes of session/process group $sid"
  signal_session TERM "$sid" >/dev/null
  if wait_session_gone "$sid" "$STOP_TIMEOUT"; then
    say "all processes exited after SIGTERM in $((SECONDS - t0)) s"
  else
    n="$(signal_session KILL "$sid")"
    say "$n processes still alive after ${STOP_TIMEOUT} s: sent SIGKILL"
    if ! wait_session_gone "$sid" 10; then
      echo "airflow-standalone: error: processes of session $sid survived SIGKILL:" >&2
      ps -o pid,pgid,sid,stat,cmd -s "$sid" >&2 || true
      return 1
    fi
    say "all processes gone after $((SECONDS - t0)) s"
  fi
}

print_login() {
  echo
  echo "  Airflow UI and REST API: $URL/"
  if all_admins; then
    echo "  No login (AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True)"
  else
    python - "$PASSWORDS_FILE" <<'EOF'
import json
import sys

for user, password in json.load(open(sys.argv[1])).items():
    print(f"  User: {user}   Password: {password}")
EOF
    echo "  (passwords file: $PASSWORDS_FILE)"
  fi
  echo "  Log: $LOG_FILE"
  echo "  Stop: scripts/airflow-standalone.sh stop   (or: make airflow-stop)"
}

cmd_start() {
  if read_pid_file; then
    die "already running (PID $pid, http://127.0.0.1:$port/);" \
      "stop it first: scripts/airflow-standalone.sh stop"
  fi
  if port_open "$PORT"; then
    die "port $PORT is already in use (another Airflow?); choose another with AIRFLOW_PORT=..."
  fi
  # The scheduler's and triggerer's log servers listen on all interfaces; if their port is taken
  # (another Airflow), they exit and the rest runs on (local task logs are still readable).
  local spec var lport name
  for spec in WORKER:8793:scheduler TRIGGER:8794:triggerer; do
    IFS=: read -r var lport name <<<"$spec"
    var="AIRFLOW__LOGGING__${var}_LOG_SERVER_PORT"
    lport="${!var:-$lport}"
    if port_open "$lport"; then
      say "warning: port $lport is in use: the $name's log server will not start" \
        "(choose a free port with $var=...)" >&2
    fi
  done
  mkdir -p "$AIRFLOW_HOME"
  local t0=$SECONDS
  "$here/airflow-init.sh"

  if [[ -f "$LOG_FILE" ]]; then mv -f "$LOG_FILE" "$LOG_FILE.1"; fi
  # Without job control the background child is not a group leader, so setsid does not fork:
  # $! is the standalone process itself, and the leader of its new session and process group.
  setsid airflow standalone </dev/null >"$LOG_FILE" 2>&1 &
  pid=$!
  for _ in {1..20}; do # until setsid() has run in the child
    pgid="$(ps -o pgid= -p "$pid" | tr -d ' ')"
    [[ "$pgid" == "$pid" ]] && break
    sleep 0.1
  done
  if [[ "$pgid" != "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    die "could not start airflow standalone in its own process group"
  fi
  echo "$pid $pgid $PORT $(start_ticks "$pid")" >"$PID_FILE"
  say "started airflow standalone, PID/PGID $pid, log $LOG_FILE; waiting for $URL"

  # Ctrl-C while waiting stops what was started instead of leaving it behind.
  trap 'echo >&2; say "interrupted: stopping" >&2; stop_session "$pgid" >&2 && rm -f "$PID_FILE"
        exit 130' INT TERM
  local deadline=$((SECONDS + START_TIMEOUT)) code=""
  while :; do
    code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$URL/api/v2/monitor/health" || true)"
    if [[ "$code" == 200 ]] && { all_admins || [[ -s "$PASSWORDS_FILE" ]]; }; then break; fi
    if [[ -z "$(session_procs "$pgid")" ]]; then
      rm -f "$PID_FILE"
      echo "--- last lines of $LOG_FILE ---" >&2
      tail -n 40 "$LOG_FILE" >&2
      die "airflow standalone exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      echo "--- last lines of $LOG_FILE ---" >&2
      tail -n 40 "$LOG_FILE" >&2
      say "no answer from $URL after ${START_TIMEOUT} s: stopping what was started" >&2
      stop_session "$pgid" >&2 && rm -f "$PID_FILE"
      die "airflow standalone did not start within ${START_TIMEOUT} s"
    fi
    sleep 1
  done
  trap - INT TERM
  say "API server answering after $((SECONDS - t0)) s (DB migration and pools included)"
  say "new DAG files are picked up within ${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL} s"
  print_login
}

cmd_stop() {
  if ! read_pid_file; then
    say "not running (no live instance for AIRFLOW_HOME=$AIRFLOW_HOME); nothing to stop"
    return 0
  fi
  stop_session "$pgid" || die "could not stop everything; pid file $PID_FILE kept"
  rm -f "$PID_FILE"
  say "removed $PID_FILE"
  if port_open "$port"; then
    die "port $port still answers (another process is listening on it)"
  fi
  say "stopped; no process of session $pgid left, port $port closed"
}

cmd_status() {
  if read_pid_file; then
    local n
    n="$(session_procs "$pgid" | wc -l)"
    say "running: PID/PGID $pid, $n processes, http://127.0.0.1:$port/ (AIRFLOW_HOME=$AIRFLOW_HOME)"
    return 0
  fi
  say "not running (AIRFLOW_HOME=$AIRFLOW_HOME)"
  return 3
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
