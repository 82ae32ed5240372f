#!/usr/bin/env bash
# Sets up tamis and builds the corpus from the bundled sample through Airflow itself:
# `airflow dags test corpus_build` on SQLite and local files, then prints the funnel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/airflow_env.sh
airflow db migrate >/dev/null
airflow dags reserialize >/dev/null
started=$(date +%s)
log="$AIRFLOW_HOME/corpus_build_demo.log"
if ! airflow dags test corpus_build >"$log" 2>&1; then
  tail -40 "$log"; echo "demo: corpus_build failed; full log: $log" >&2; exit 1
fi
finished=$(grep -o "DagRun Finished: dag_id=corpus_build.*" "$log" | tail -1)
case "$finished" in *state=success*) ;; *) tail -40 "$log"; echo "demo: the run did not succeed; log: $log" >&2; exit 1 ;; esac
run_id=$(echo "$finished" | sed -E 's/.*run_id=([^,]+),.*/\1/')
tamis summary --run-id "$run_id"
echo "wall time (airflow dags test): $(( $(date +%s) - started ))s; Airflow log: $log"
