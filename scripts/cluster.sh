#!/usr/bin/env bash
# The native distributed Airflow cluster, without Docker: PostgreSQL 15 (a private cluster),
# Redis, and Airflow's api-server, scheduler, dag-processor, triggerer and a Celery worker
# (CeleryExecutor), all on AR_CLUSTER_HOST (default 127.0.0.1), all state in AR_CLUSTER_HOME.
#
#   scripts/cluster.sh up       start what is not running, wait until every part is ready, print
#                               the URL, the login and the start-up time (idempotent)
#   scripts/cluster.sh down     stop everything, Celery's task processes included (idempotent)
#   scripts/cluster.sh status   one line per part; exit 0 if all run, 3 otherwise
#   scripts/cluster.sh purge    down, then delete AR_CLUSTER_HOME (database included)
#
# Settings (ports, secrets, AIRFLOW__*): scripts/cluster-env.sh. Also: AR_CLUSTER_START_TIMEOUT
# (default 180 s), AR_CLUSTER_STOP_TIMEOUT (per part, default 20 s), AR_CLUSTER_PG_BIN (default
# the newest /usr/lib/postgresql/*/bin), AR_CLUSTER_S3=1 (also run a local S3 server, moto, on
# AR_CLUSTER_S3_PORT with bucket AR_CLUSTER_S3_BUCKET, default t120, and point
# AIRFLOW_CONN_AWS_DEFAULT at it). The components inherit the caller's environment, so an exported
# AIRFLOW_CONN_AWS_DEFAULT (S3 endpoint and keys) reaches the workers.
#
# As root, PostgreSQL runs as the `postgres` user (runuser) in AR_CLUSTER_HOME/pg, owned by
# postgres; if postgres cannot reach AR_CLUSTER_HOME (e.g. under /root), pg/ is a symbolic link to
# ~postgres/ar-cluster-<hash>. As another user, everything runs as that user.
#
# Each part runs detached in its own session (setsid); AR_CLUSTER_HOME/run/<part>.pid holds
# "<pid = session id> <start time in clock ticks>", so a recycled PID is never signalled. Stopping
# sends SIGTERM to every process group of the session (Celery's pool children and the task
# processes, which run in process groups of their own, included), then SIGKILL after the timeout,
# in the order worker, scheduler, triggerer, dag-processor, api-server, S3, Redis; PostgreSQL
# stops with `pg_ctl -m fast`. Logs: AR_CLUSTER_HOME/logs/<part>.log (previous start: .log.1).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
caller_roots="${AR_RAW_ROOT:-}${AR_PRODUCTS_ROOT:-}" # the caller's (before airflow-env.sh's defaults)
if [[ -n "${AR_CLUSTER_HOME:-}" && "$AR_CLUSTER_HOME" != /* ]]; then
  AR_CLUSTER_HOME="$PWD/$AR_CLUSTER_HOME"
fi
# shellcheck source=scripts/cluster-env.sh
source "$here/cluster-env.sh"

H="$AR_CLUSTER_HOME"
HOST="$AR_CLUSTER_HOST"
RUN="$H/run"
LOGS="$H/logs"
START_TIMEOUT="${AR_CLUSTER_START_TIMEOUT:-180}"
STOP_TIMEOUT="${AR_CLUSTER_STOP_TIMEOUT:-20}"
S3_BUCKET="${AR_CLUSTER_S3_BUCKET:-t120}"
URL="http://$HOST:$AR_CLUSTER_API_PORT"
PASSWORDS_FILE="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
PG_BIN="${AR_CLUSTER_PG_BIN:-$(find /usr/lib/postgresql -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)}"
AIRFLOW_PARTS=(api-server scheduler dag-processor triggerer worker)
STOP_ORDER=(worker scheduler triggerer dag-processor api-server s3 redis)
STARTED=() # parts started by this invocation (stopped again if `up` fails)
IS_ROOT=0
[[ "$(id -u)" == 0 ]] && IS_ROOT=1

say() { echo "cluster: $*"; }
die() {
  echo "cluster: error: $*" >&2
  exit 1
}
now() { echo "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

# ---------------------------------------------------------------------------------------------
# Processes

# shellcheck source=scripts/proc-lib.sh
source "$here/proc-lib.sh"

# Live (non-zombie) processes of session $1, one "pid pgid" per line.
session_procs() {
  ps -e -o pid=,pgid=,sid=,stat= | awk -v s="$1" '$3 == s && $4 !~ /^Z/ {print $1, $2}'
}

# Sets `pid` from run/$1.pid if that part is alive (a stale file is removed); else returns 1.
live() {
  local file="$RUN/$1.pid" ticks now_ticks
  pid=""
  [[ -f "$file" ]] || return 1
  read -r pid ticks <"$file" || true
  now_ticks="$(start_ticks "${pid:-0}")"
  if [[ ! "$pid" =~ ^[0-9]+$ ]] || { [[ -n "$now_ticks" && "$now_ticks" != "$ticks" ]]; } ||
    [[ -z "$(session_procs "$pid")" ]]; then
    rm -f "$file"
    pid=""
    return 1
  fi
}

# Run "$@" detached in a new session as part $1 (log logs/$1.log, PID file run/$1.pid).
start_part() {
  local name="$1" log="$LOGS/$1.log" p pgid=""
  shift
  if [[ -f "$log" ]]; then mv -f "$log" "$log.1"; fi
  # Without job control the background child is not a group leader, so setsid does not fork:
  # $! is the command itself, leader of its new session and process group.
  AR_CLUSTER_MEMBER="$H" setsid "$@" </dev/null >"$log" 2>&1 &
  p=$!
  for _ in {1..50}; do
    pgid="$(ps -o pgid= -p "$p" | tr -d ' ')"
    [[ "$pgid" == "$p" ]] && break
    sleep 0.1
  done
  if [[ "$pgid" != "$p" ]]; then
    kill -KILL "$p" 2>/dev/null || true
    die "could not start $name in a session of its own"
  fi
  echo "$p $(start_ticks "$p")" >"$RUN/$name.pid"
  STARTED+=("$name")
}

# Signal every process group of session $2 with signal $1.
signal_session() {
  local g
  for g in $(session_procs "$2" | awk '{print $2}' | sort -u); do
    kill "-$1" -- "-$g" 2>/dev/null || true
  done
}

# Wait up to $2 seconds for session $1 to be empty; returns 1 on timeout.
wait_session_gone() {
  local deadline=$((SECONDS + $2))
  while [[ -n "$(session_procs "$1")" ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.3
  done
}

# Stop part $1 if it runs: SIGTERM to its session, SIGKILL after STOP_TIMEOUT.
stop_part() {
  local name="$1" t0 n
  live "$name" || return 0
  t0="$(now)"
  n="$(session_procs "$pid" | wc -l)"
  signal_session TERM "$pid"
  if wait_session_gone "$pid" "$STOP_TIMEOUT"; then
    say "stopped $name ($n processes) in $(elapsed "$t0") s"
  else
    n="$(session_procs "$pid" | wc -l)"
    signal_session KILL "$pid"
    wait_session_gone "$pid" 10 || {
      ps -o pid,pgid,sid,stat,cmd -s "$pid" >&2 || true
      die "processes of $name (session $pid) survived SIGKILL"
    }
    say "stopped $name: $n processes killed (SIGKILL) after ${STOP_TIMEOUT} s"
  fi
  rm -f "$RUN/$name.pid"
}

# Processes started by this cluster (the AR_CLUSTER_MEMBER mark in their environment) that are
# still alive: a last resort for anything that left its session.
marked_procs() {
  local p
  for p in /proc/[0-9]*; do
    [[ "${p#/proc/}" == "$$" ]] && continue
    grep -qzxF "AR_CLUSTER_MEMBER=$H" "$p/environ" 2>/dev/null || continue
    [[ "$(awk '{print $3}' "$p/stat" 2>/dev/null)" == Z ]] && continue
    echo "${p#/proc/}"
  done
}

sweep() {
  local left
  left="$(marked_procs | tr '\n' ' ')"
  [[ -n "${left// /}" ]] || return 0
  say "killing leftover processes of this cluster: $left" >&2
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null || true
  sleep 0.5
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# PostgreSQL

# PostgreSQL's commands run as the postgres user when root, with the cluster's mark.
PG_AS=(env AR_CLUSTER_MEMBER="$H")
((IS_ROOT)) && PG_AS=(runuser -u postgres -- "${PG_AS[@]}")
as_pg() { "${PG_AS[@]}" "$@"; }

# Sets PG_BASE (pg/ or the directory its link points to), PGDATA and PG_LOG.
pg_paths() {
  PG_BASE="$H/pg"
  [[ -L "$PG_BASE" ]] && PG_BASE="$(readlink -f "$PG_BASE")"
  PGDATA="$PG_BASE/data"
  PG_LOG="$PG_BASE/postgres.log"
}

pg_running() {
  pg_paths
  [[ -f "$PGDATA/postmaster.pid" ]] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

psql_admin() {
  PGPASSWORD="$(secret PG_SUPERUSER_PASSWORD)" "$PG_BIN/psql" -h "$HOST" -p "$AR_CLUSTER_PG_PORT" \
    -U postgres -d postgres -v ON_ERROR_STOP=1 -qtAX "$@"
}

pg_prepare() {
  [[ -x "$PG_BIN/pg_ctl" ]] || die "PostgreSQL not found (AR_CLUSTER_PG_BIN=$PG_BIN): run make install"
  if [[ ! -e "$H/pg" ]]; then
    if ((IS_ROOT)); then
      chmod o+x "$H"
      if runuser -u postgres -- test -x "$H"; then
        mkdir "$H/pg"
      else
        local alt
        alt="$(getent passwd postgres | cut -d: -f6)/ar-cluster-$(printf %s "$H" | sha1sum | cut -c1-12)"
        say "the postgres user cannot reach $H: database in $alt (linked from $H/pg)"
        runuser -u postgres -- mkdir -p "$alt"
        ln -s "$alt" "$H/pg"
      fi
      chown postgres: "$H/pg"
    else
      mkdir "$H/pg"
    fi
    chmod 700 "$H/pg"
  fi
  pg_paths
  if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    local pwfile="$PG_BASE/.initdb-password" t0
    t0="$(now)"
    (umask 077 && secret PG_SUPERUSER_PASSWORD >"$pwfile")
    ((IS_ROOT)) && chown postgres: "$pwfile"
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A scram-sha-256 -E UTF8 --pwfile="$pwfile" \
      >"$LOGS/initdb.log" 2>&1 || {
      rm -f "$pwfile"
      tail -n 20 "$LOGS/initdb.log" >&2
      die "initdb failed (log $LOGS/initdb.log)"
    }
    rm -f "$pwfile"
    say "initialised PostgreSQL in $PGDATA ($(elapsed "$t0") s)"
  fi
  if [[ "$HOST" != 127.0.0.1 ]] && ! grep -q "^host all all samenet" "$PGDATA/pg_hba.conf"; then
    echo "host all all samenet scram-sha-256" | as_pg tee -a "$PGDATA/pg_hba.conf" >/dev/null
  fi
}

pg_start() {
  pg_running && return 0
  ((IS_ROOT)) && [[ ! -e "$PG_LOG" ]] && install -o postgres -m 600 /dev/null "$PG_LOG"
  ln -sfn "$PG_LOG" "$LOGS/postgres.log"
  STARTED+=(postgres)
  # No Unix socket (its path length is limited): TCP on HOST only.
  # pg_ctl in a session of its own, so that the server is detached from the caller's terminal.
  if ! setsid -w "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PG_LOG" -w -t 60 \
    -o "-c listen_addresses=$HOST -p $AR_CLUSTER_PG_PORT -c unix_socket_directories=''" \
    start >"$LOGS/pg_ctl.log" 2>&1; then
    fail postgres "PostgreSQL did not start"
  fi
}

pg_stop() {
  pg_running || return 0
  local t0
  t0="$(now)"
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t "$STOP_TIMEOUT" stop >/dev/null 2>&1; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 10 stop >/dev/null 2>&1 ||
      die "could not stop PostgreSQL ($PGDATA)"
    say "stopped PostgreSQL (immediate mode) in $(elapsed "$t0") s"
    return 0
  fi
  say "stopped PostgreSQL in $(elapsed "$t0") s"
}

# The airflow role and database, with the current password (idempotent).
pg_database() {
  local pw
  pw="$(secret PG_PASSWORD)"
  if [[ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'airflow'")" ]]; then
    psql_admin -c "CREATE ROLE airflow LOGIN PASSWORD '$pw'"
  else
    psql_admin -c "ALTER ROLE airflow PASSWORD '$pw'"
  fi
  if [[ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'airflow'")" ]]; then
    psql_admin -c "CREATE DATABASE airflow OWNER airflow ENCODING 'UTF8'"
  fi
}

# ---------------------------------------------------------------------------------------------
# Secrets, Redis, S3

secret() { sed -n "s/^$1=//p" "$AR_CLUSTER_SECRETS"; }

ensure_secrets() {
  [[ -s "$AR_CLUSTER_SECRETS" ]] && return 0
  if [[ -e "$H/pg/data/PG_VERSION" ]]; then
    die "$AR_CLUSTER_SECRETS is missing but the database exists; restore it or start afresh" \
      "with: scripts/cluster.sh purge"
  fi
  (
    umask 077
    python - >"$AR_CLUSTER_SECRETS.tmp" <<'EOF'
import secrets

from cryptography.fernet import Fernet

print("FERNET_KEY=" + Fernet.generate_key().decode())
print("JWT_SECRET=" + secrets.token_urlsafe(48))
print("API_SECRET_KEY=" + secrets.token_urlsafe(32))
for name in ("PG_PASSWORD", "PG_SUPERUSER_PASSWORD", "REDIS_PASSWORD"):
    print(f"{name}={secrets.token_hex(16)}")
EOF
  )
  mv "$AR_CLUSTER_SECRETS.tmp" "$AR_CLUSTER_SECRETS"
  say "generated secrets in $AR_CLUSTER_SECRETS (mode 600)"
}

redis_start() {
  live redis && return 0
  mkdir -p "$H/redis"
  (
    umask 077
    cat >"$H/redis/redis.conf" <<EOF
bind $HOST
port $AR_CLUSTER_REDIS_PORT
protected-mode yes
requirepass $(secret REDIS_PASSWORD)
save ""
appendonly no
daemonize no
dir $H/redis
logfile ""
EOF
  )
  start_part redis redis-server "$H/redis/redis.conf"
}

redis_ready() {
  [[ "$(REDISCLI_AUTH="$(secret REDIS_PASSWORD)" redis-cli -h "$HOST" -p "$AR_CLUSTER_REDIS_PORT" \
    ping 2>/dev/null)" == PONG ]]
}

s3_start() {
  live s3 && return 0
  start_part s3 moto_server -H "$HOST" -p "$AR_CLUSTER_S3_PORT"
}

s3_ready() {
  [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$HOST:$AR_CLUSTER_S3_PORT/")" == 200 ]] ||
    return 1
  python - "http://$HOST:$AR_CLUSTER_S3_PORT" "$S3_BUCKET" <<'EOF' >/dev/null 2>&1
import sys

import boto3

s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
if sys.argv[2] not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket=sys.argv[2])
EOF
}

# ---------------------------------------------------------------------------------------------
# Airflow

start_airflow_part() {
  case "$1" in
    api-server) start_part api-server airflow api-server --host "$HOST" --port "$AR_CLUSTER_API_PORT" ;;
    scheduler) start_part scheduler airflow scheduler --skip-serve-logs ;;
    dag-processor) start_part dag-processor airflow dag-processor ;;
    # The log servers of the triggerer and of the worker would listen on every interface; the
    # API server reads this machine's task logs from AIRFLOW_HOME/logs directly.
    triggerer) start_part triggerer airflow triggerer --skip-serve-logs ;;
    worker)
      start_part worker airflow celery worker --concurrency "$AR_CLUSTER_WORKER_CONCURRENCY" \
        --skip-serve-logs
      ;;
  esac
}

# The parts among dag-processor and triggerer whose heartbeat (in the API's health report) is
# newer than $1 (epoch seconds; 0: any healthy one).
heartbeats_after() {
  curl -s -m 3 "$URL/api/v2/monitor/health" 2>/dev/null | python -c '
import json, sys
from datetime import datetime
try:
    health = json.load(sys.stdin)
except ValueError:
    sys.exit()
for name, key in (("dag-processor", "dag_processor"), ("triggerer", "triggerer")):
    info = health.get(key) or {}
    beat = info.get(f"latest_{key}_heartbeat")
    if info.get("status") == "healthy" and beat and datetime.fromisoformat(beat).timestamp() > float(sys.argv[1]):
        print(name)
' "$1"
}

ready() {
  case "$1" in
    postgres) pg_running ;;
    redis) redis_ready ;;
    s3) s3_ready ;;
    api-server)
      [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$URL/api/v2/monitor/health")" == 200 &&
        -s "$PASSWORDS_FILE" ]]
      ;;
    scheduler)
      [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' \
        "http://$HOST:$AR_CLUSTER_SCHEDULER_HEALTH_PORT/health")" == 200 ]]
      ;;
    dag-processor | triggerer)
      local since=0 beating
      [[ " ${STARTED[*]} " == *" $1 "* ]] && since="$UP_T0"
      beating="$(heartbeats_after "$since" || true)"
      [[ $'\n'"$beating"$'\n' == *$'\n'"$1"$'\n'* ]]
      ;;
    worker) grep -q "celery@.* ready\." "$LOGS/worker.log" 2>/dev/null ;;
  esac
}

# Start-up failed in part $1: show its log, stop what this invocation started, exit 1.
fail() {
  local name="$1" log="$LOGS/$1.log"
  shift
  echo "cluster: error: $name: $*" >&2
  if [[ -e "$log" ]]; then
    echo "--- last lines of $log ---" >&2
    tail -n 40 "$log" >&2
    echo "---" >&2
  fi
  [[ "$name" == postgres && -s "$LOGS/pg_ctl.log" ]] && tail -n 20 "$LOGS/pg_ctl.log" >&2
  stop_started >&2
  exit 1
}

stop_started() {
  local part
  ((${#STARTED[@]})) || return 0
  say "stopping what this start-up started: ${STARTED[*]}"
  for part in "${STOP_ORDER[@]}"; do
    [[ " ${STARTED[*]} " == *" $part "* ]] && stop_part "$part"
  done
  [[ " ${STARTED[*]} " == *" postgres "* ]] && pg_stop
  sweep
  STARTED=()
}

print_login() {
  echo
  echo "  Airflow UI and REST API: $URL/"
  python - "$PASSWORDS_FILE" <<'EOF'
import json
import sys

for user, password in json.load(open(sys.argv[1])).items():
    print(f"  User: {user}   Password: {password}")
EOF
  echo "  (passwords file: $PASSWORDS_FILE)"
  echo "  PostgreSQL $HOST:$AR_CLUSTER_PG_PORT, Redis $HOST:$AR_CLUSTER_REDIS_PORT," \
    "scheduler health http://$HOST:$AR_CLUSTER_SCHEDULER_HEALTH_PORT/health"
  if live s3; then
    echo "  S3 (moto, in memory): http://$HOST:$AR_CLUSTER_S3_PORT, keys testing/testing," \
      "bucket s3://$S3_BUCKET (connection aws_default)"
    [[ "${AR_CLUSTER_S3:-0}" == 1 ]] &&
      echo "  DAG defaults: raw_root $AR_RAW_ROOT, products_root $AR_PRODUCTS_ROOT"
  fi
  echo "  Celery worker concurrency $AR_CLUSTER_WORKER_CONCURRENCY; logs $LOGS/; state $H/"
  echo "  CLI (same AR_CLUSTER_* settings): source scripts/cluster-env.sh && airflow dags list"
  echo "  Stop: scripts/cluster.sh down   (or: make cluster-down)"
}

# The ports of the parts that are not running must be free (before anything is started).
check_ports() {
  local spec name port var busy=()
  for spec in postgres:PG redis:REDIS s3:S3 api-server:API scheduler:SCHEDULER_HEALTH; do
    IFS=: read -r name var <<<"$spec"
    var="AR_CLUSTER_${var}_PORT"
    port="${!var}"
    case "$name" in
      postgres) [[ -e "$H/pg" ]] && pg_running && continue ;;
      s3) [[ "${AR_CLUSTER_S3:-0}" == 1 ]] || continue ;&
      *) live "$name" && continue ;;
    esac
    port_open "$port" && busy+=("$port ($name; $var)")
  done
  ((${#busy[@]} == 0)) || die "ports in use (another cluster or Airflow?): ${busy[*]}"
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_up() {
  UP_T0="$(now)"
  mkdir -p "$H" "$RUN" "$LOGS" "$AIRFLOW_HOME"
  ensure_secrets
  # shellcheck source=scripts/cluster-env.sh
  source "$here/cluster-env.sh" # again, with the secrets
  if [[ "${AR_CLUSTER_S3:-0}" == 1 ]]; then
    [[ -n "${AIRFLOW_CONN_AWS_DEFAULT:-}" ]] && say "AR_CLUSTER_S3=1: AIRFLOW_CONN_AWS_DEFAULT replaced"
    export AIRFLOW_CONN_AWS_DEFAULT="{\"conn_type\": \"aws\", \"login\": \"testing\", \
\"password\": \"testing\", \"extra\": {\"endpoint_url\": \"http://$HOST:$AR_CLUSTER_S3_PORT\", \
\"region_name\": \"us-east-1\"}}"
    if [[ -z "$caller_roots" ]]; then # the DAG's param defaults
      export AR_RAW_ROOT="s3://$S3_BUCKET/raw" AR_PRODUCTS_ROOT="s3://$S3_BUCKET/products"
    fi
  fi

  local all_running=1 part
  pg_running || all_running=0
  live redis || all_running=0
  for part in "${AIRFLOW_PARTS[@]}"; do live "$part" || all_running=0; done
  if [[ "${AR_CLUSTER_S3:-0}" == 1 ]] && ! live s3; then all_running=0; fi
  if ((all_running)); then
    say "already running ($URL/, AR_CLUSTER_HOME=$H)"
    print_login
    return 0
  fi

  check_ports
  trap 'echo >&2; say "interrupted: stopping what was started" >&2; stop_started >&2; exit 130' INT TERM
  pg_prepare
  pg_start
  redis_start
  [[ "${AR_CLUSTER_S3:-0}" == 1 ]] && s3_start
  pg_database || fail postgres "could not create the airflow role and database"
  local t0
  t0="$(now)"
  if ! airflow db migrate >"$LOGS/migrate.log" 2>&1; then
    fail migrate "airflow db migrate failed"
  fi
  say "database ready (migrated in $(elapsed "$t0") s)"

  for part in "${AIRFLOW_PARTS[@]}"; do
    live "$part" || start_airflow_part "$part"
  done
  ((${#STARTED[@]})) && say "started ${STARTED[*]}; waiting until ready (logs in $LOGS/)"

  # Pools while the components boot (a missing pool silently blocks its tasks).
  local spec name slots description
  IFS=';' read -ra pools <<<"$AR_POOLS"
  for spec in "${pools[@]}"; do
    IFS=':' read -r name slots description <<<"$spec"
    airflow pools set "$name" "$slots" "$description" >>"$LOGS/pools.log" 2>&1 ||
      fail pools "could not create pool $name"
  done

  local pending=(postgres redis)
  [[ "${AR_CLUSTER_S3:-0}" == 1 ]] && pending+=(s3)
  pending+=("${AIRFLOW_PARTS[@]}")
  local deadline=$((SECONDS + START_TIMEOUT)) left
  while ((${#pending[@]})); do
    left=()
    for part in "${pending[@]}"; do
      if ready "$part"; then
        say "$part ready after $(elapsed "$UP_T0") s"
      elif [[ "$part" != postgres ]] && ! live "$part"; then
        fail "$part" "exited during start-up"
      else
        left+=("$part")
      fi
    done
    pending=("${left[@]}")
    ((${#pending[@]})) || break
    ((SECONDS < deadline)) || fail "${pending[0]}" "not ready after ${START_TIMEOUT} s"
    sleep 1
  done
  trap - INT TERM
  say "cluster up in $(elapsed "$UP_T0") s"
  print_login
}

cmd_down() {
  local part any=0 t0
  t0="$(now)"
  if [[ -d "$RUN" ]]; then
    for part in "${STOP_ORDER[@]}"; do
      if live "$part"; then
        any=1
        stop_part "$part"
      fi
    done
  fi
  if [[ -e "$H/pg" ]] && pg_running; then
    any=1
    pg_stop
  fi
  sweep
  if [[ -n "$(marked_procs)" ]]; then
    die "processes of this cluster survived: $(marked_procs | tr '\n' ' ')"
  fi
  if ((any)); then
    say "cluster down in $(elapsed "$t0") s (state kept in $H)"
  else
    say "not running (AR_CLUSTER_HOME=$H); nothing to stop"
  fi
}

cmd_status() {
  local part n=0 total=0
  for part in postgres redis s3 "${AIRFLOW_PARTS[@]}"; do
    if [[ "$part" == postgres ]]; then
      total=$((total + 1))
      if [[ -e "$H/pg" ]] && pg_running; then
        n=$((n + 1))
        say "postgres running ($HOST:$AR_CLUSTER_PG_PORT, data $PGDATA)"
      else
        say "postgres not running"
      fi
      continue
    fi
    if [[ -d "$RUN" ]] && live "$part"; then
      n=$((n + 1))
      total=$((total + 1))
      say "$part running (session $pid, $(session_procs "$pid" | wc -l) processes)"
    elif [[ "$part" != s3 ]]; then
      total=$((total + 1))
      say "$part not running"
    fi
  done
  if ((n == total)); then
    say "running: $URL/ (AR_CLUSTER_HOME=$H)"
    return 0
  fi
  if ((n == 0)); then
    say "not running (AR_CLUSTER_HOME=$H)"
  else
    say "partly running ($n of $total parts)"
  fi
  return 3
}

cmd_purge() {
  cmd_down
  [[ -d "$H" ]] || return 0
  if [[ -L "$H/pg" ]]; then rm -rf "$(readlink -f "$H/pg")"; fi
  rm -rf "$H"
  say "removed $H"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  purge) cmd_purge ;;
  *)
    echo "usage: $0 up|down|status|purge" >&2
    exit 2
    ;;
esac
