#!/usr/bin/env bash
# Sets up tamis and runs the whole test suite (unit, DAG integrity, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# House rules first: lint, format and types (configured in pyproject.toml).
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Two test processes, each taking whole files (a file's fixtures are built once) in the
# order collected (slow files first, tests/conftest.py): most of the end-to-end tests wait
# on the servers and processes they start, so two run in the time of about one and a half.
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 -n "${TAMIS_TEST_PROCESSES:-2}" --dist loadfile --no-loadscope-reorder "$@"
