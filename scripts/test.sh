#!/usr/bin/env bash
# The README's test command.  Tests what a user installs, not this tree:
#
#   1. builds the sdist and a wheel with `python -m build` into dist/ (the
#      wheel from the sdist), checks them with `twine check --strict` and
#      scripts/check_dist.py (the sdist holds the .pyx/.pxd/.h sources and no
#      generated C);
#   2. installs the wheel with its `test` extra in a fresh venv, .venv-test
#      (FASTMETRICS_VENV to change it);
#   3. runs `pytest tests` from there: every core test against the Cython
#      extension and the pure-Python twin, then again with
#      FASTMETRICS_NO_EXTENSIONS=1 (the twin selected at import).
#
# No timing gate runs here (a busy machine must not fail a correct change):
# tests/test_bench_gates.py checks the gate machinery with a self-comparison;
# the gates themselves are `bash scripts/bench.sh`.
#
# Real servers and pycti are used when present: .ci/servers.sh installs
# Prometheus and the Pushgateway, .ci/pycti-venv.sh builds pycti's venv (export
# FASTMETRICS_PYCTI_PYTHON to its python; the wheel built here is installed
# there too, so the differential tests run the same build).  Without them those
# tests skip, with the reason, except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_dist.sh

VENV=${FASTMETRICS_VENV:-.venv-test}
start=$SECONDS

echo "== build: sdist and wheel (python -m build), twine check, contents"
fm_build_dist dist
wheel=$(fm_wheel dist)

echo "== install: $wheel[test] in a fresh $VENV"
fm_install_wheel "$VENV" "$wheel"
"$VENV/bin/python" -c 'import fastmetrics as f; assert f.implementation == "cython", f.implementation'

if [[ -n ${FASTMETRICS_PYCTI_PYTHON:-} ]]; then
  echo "== pycti's venv ($FASTMETRICS_PYCTI_PYTHON): the same wheel"
  "$FASTMETRICS_PYCTI_PYTHON" -m pip install -q --force-reinstall --no-deps "$wheel" || {
    echo "cannot install $wheel with $FASTMETRICS_PYCTI_PYTHON: make pycti's venv with the same Python ($PYTHON)" >&2
    exit 1
  }
fi

# The suite imports the installed package (tests/ never puts src/ on sys.path).
echo "== tests: Cython extension and pure-Python twin"
"$VENV/bin/python" -m pytest tests -q -p no:cacheprovider
echo "== tests: FASTMETRICS_NO_EXTENSIONS=1 (pure-Python twin selected at import)"
FASTMETRICS_NO_EXTENSIONS=1 "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider -m "not e2e"
echo "== scripts/test.sh: OK in $((SECONDS - start)) s"
