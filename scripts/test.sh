#!/usr/bin/env bash
# Sets up tamis and runs the whole test suite (unit, DAG integrity, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "$@"
