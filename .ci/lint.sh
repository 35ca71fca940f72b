#!/usr/bin/env bash
# Lint gate, before the tests: `ruff check src tests bench` and
# `mypy --strict src/fastmetrics`; non-zero on any finding.
#
# Installs the package with its lint extra into VENV (first argument, default
# .venv-lint; created if missing).  Pure-Python install (no compile: neither
# tool needs the extension).  The test suite's own mypy run
# (tests/test_typing.py) gets mypy from the `test` extra.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${1:-.venv-lint}

echo "== lint: the lint extra into $VENV"
if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -m venv "$VENV"
fi
FASTMETRICS_NO_EXTENSIONS=1 "$VENV/bin/python" -m pip install -q ".[lint]"

echo "== lint: ruff check src tests bench"
"$VENV/bin/python" -m ruff check src tests bench
echo "== lint: mypy --strict src/fastmetrics"
"$VENV/bin/python" -m mypy --strict src/fastmetrics
