#!/usr/bin/env bash
# The test suite on the other CPythons this machine has (the README test
# command covers the default one):
#
#   bash .ci/pythons.sh SDIST            # CPython 3.9 3.10 3.12 3.13
#   FASTMETRICS_TEST_VERSIONS="3.12" bash .ci/pythons.sh SDIST
#
# For each, found as pythonX.Y on PATH or in ~/.pyenv/versions
# (scripts/_dist.sh fm_find_python), a fresh venv .venv-py-X.Y with SDIST[test]
# installed (the extension compiled for that interpreter, as users get it),
# then `pytest tests -m "not e2e"`: every core case on the extension and on the
# pure-Python twin.  Left out: the end-to-end tests and the pycti differential
# tests, which run on the default CPython (the servers and pycti's venv are
# set up for it).  A version not found is skipped with a note, and fails under
# CI=true (CI installs them all).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_dist.sh
SDIST=${1:?usage: .ci/pythons.sh SDIST}
VERSIONS=${FASTMETRICS_TEST_VERSIONS:-3.9 3.10 3.12 3.13}

for v in $VERSIONS; do
  if ! py=$(fm_find_python "$v"); then
    if [[ ${CI:-} == true ]]; then echo "CI=true: CPython $v not found" >&2; exit 1; fi
    echo "pythons: CPython $v not found, skipped" >&2
    continue
  fi
  venv=.venv-py-$v
  start=$SECONDS
  echo "== CPython $v ($py): $SDIST[test] in $venv"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q --no-cache-dir "$SDIST[test]"   # never a wheel cached from an older tree
  "$venv/bin/python" -c 'import fastmetrics as f; assert f.implementation == "cython", f.implementation; print(f.__file__)'
  "$venv/bin/python" -m pytest tests -q -p no:cacheprovider -m "not e2e" \
    --ignore=tests/test_opencti_differential.py
  echo "== CPython $v: OK in $((SECONDS - start)) s"
done
