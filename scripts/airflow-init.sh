#!/usr/bin/env bash
# Migrate the metadata database and create the project's pools (idempotent).
set -euo pipefail
source "$(dirname "$0")/airflow-env.sh"
airflow db migrate >/dev/null
IFS=';' read -ra pools <<< "$AR_POOLS"
for spec in "${pools[@]}"; do
  IFS=':' read -r name slots description <<< "$spec"
  airflow pools set "$name" "$slots" "$description" >/dev/null
done
echo "Airflow home $AIRFLOW_HOME ready; pools: $(airflow pools list -o plain | awk 'NR>1{print $1}' | tr '\n' ' ')"
