# Source this file: points Airflow at this bundle with the embedded defaults
# (SQLite metadata DB and local files under .airflow/ and data/).
TAMIS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$TAMIS_ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$TAMIS_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$TAMIS_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
export GX_ANALYTICS_ENABLED=False
export PATH="$TAMIS_ROOT/.venv/bin:$PATH"
