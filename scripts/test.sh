#!/usr/bin/env bash
# Sets up tamis and runs the whole test suite (unit, DAG integrity, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# House rules first: lint, format and types (configured in pyproject.toml).
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "$@"
