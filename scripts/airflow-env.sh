# Source this file: the embedded Airflow configuration of the project (SQLite, local storage).
# AIRFLOW_HOME defaults to .airflow/ in the repository; override any variable before sourcing.
_ar_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$_ar_repo/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$_ar_repo/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$_ar_repo/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"   # 2 cores: 4 workers
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}"
# A task's supervisor waits up to this long between looks at its task (default 5 s), and often
# saw a 0.2 s task end only then: 1 s took bench-cluster's first pass from 80 s to 55 s. Costs
# at most one heartbeat a second per running task to the API server.
export AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL="${AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL:-1}"
export AR_RAW_ROOT="${AR_RAW_ROOT:-$_ar_repo/demo_data/raw}"
export AR_PRODUCTS_ROOT="${AR_PRODUCTS_ROOT:-$_ar_repo/demo_data/products}"
export PATH="$_ar_repo/.venv/bin:$PATH"
# Pools the DAG uses; a missing pool silently blocks its tasks, so setup creates them.
export AR_POOLS="astrometry:2:plate solving (CPU and memory heavy)"
unset _ar_repo
