#!/usr/bin/env bash
# Creates benchmarks/.peer-venv with datatrove, the peer of the cleaning and PII speed
# benchmarks. It is kept apart from .venv because datatrove's pins conflict with Airflow's.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .peer-venv/bin/python ] || python3 -m venv .peer-venv
.peer-venv/bin/pip install -q datatrove==0.10.1 regex==2026.11.15 nltk==3.10.4 spacy==3.8.18 tokenizers==0.23.3 xxhash==3.6.0 orjson==3.13.0
echo "peer virtualenv: $(pwd)/.peer-venv"
