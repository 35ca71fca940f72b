#!/usr/bin/env bash
# The README's test command: builds a venv in .venv, installs fastmetrics with
# its test extras (compiling the extension), then runs the whole suite against
# both implementations and the benchmark gates in quick mode.
#
# Real servers and pycti are used when present: .ci/servers.sh installs
# Prometheus and the Pushgateway, .ci/pycti-venv.sh builds pycti's venv (export
# FASTMETRICS_PYCTI_PYTHON to its python).  Without them those tests skip, with
# the reason, except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${FASTMETRICS_VENV:-.venv}

if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q ".[test]"
# Always rebuild from this tree (a reused venv must not keep a stale extension).
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps .
"$VENV/bin/python" -c 'import fastmetrics as f; assert f.implementation == "cython", f.implementation; print("fastmetrics", f.__version__, f.implementation)'

# The suite imports the installed package: run it from outside the source tree's
# src/ (tests/ never puts src/ on sys.path).
echo "== tests: Cython extension and pure-Python twin"
"$VENV/bin/python" -m pytest tests -q -p no:cacheprovider
echo "== tests: FASTMETRICS_NO_EXTENSIONS=1 (pure-Python twin selected at import)"
FASTMETRICS_NO_EXTENSIONS=1 "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider -m "not e2e"
echo "== benchmark gates (quick mode)"
"$VENV/bin/python" -m pytest bench -q -p no:cacheprovider --bench-quick --bench-reps 7
