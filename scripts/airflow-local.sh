#!/usr/bin/env bash
# Local Airflow 3 on this project's DAGs, plugins and embedded default (the demo warehouse).
#   scripts/airflow-local.sh              -> `airflow standalone` (UI on http://localhost:8080)
#   scripts/airflow-local.sh dags list    -> any other airflow command, same configuration
# SQLite metadata in .airflow/, no examples; the CLV config is demo/config (created if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${VENV:-$ROOT/.venv}"

export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__CORE__MAX_MAP_LENGTH=100000          # more than 1,024 accounts map
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export CLV_CONFIG_DIR="${CLV_CONFIG_DIR:-$ROOT/demo/config}"
export PATH="$VENV/bin:$PATH"   # standalone starts its parts as `airflow …`
mkdir -p "$AIRFLOW_HOME"

if [ ! -f "$CLV_CONFIG_DIR/clv.yaml" ]; then
  echo "No CLV config in $CLV_CONFIG_DIR: creating the sample project (demo warehouse, 3 accounts)."
  "$VENV/bin/clv" demo --workdir "$(dirname "$CLV_CONFIG_DIR")" --no-run
fi

if [ "$#" -eq 0 ]; then
  cat <<MSG
Airflow UI: http://localhost:8080   user: admin
password:   printed below by Airflow, and kept in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated
DAGs:       clv_daily_eligibility, clv_monthly_refit (paused: unpause them in the UI, or trigger with a conf)
CLV config: $CLV_CONFIG_DIR    Stop: Ctrl-C
MSG
  exec "$VENV/bin/airflow" standalone
fi
exec "$VENV/bin/airflow" "$@"
