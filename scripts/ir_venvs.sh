#!/usr/bin/env bash
# The interpreters of the instruction-count gates (bench/test_bench_instructions.py):
# for each CPython in FASTMETRICS_IR_VERSIONS (default 3.9 3.10 3.11 3.12 3.13)
# found as pythonX.Y on PATH or in ~/.pyenv/versions, a venv .venv-ir-X.Y with
# SOURCE installed, built for that interpreter: this tree's sdist, as users
# get it (the bench command), or "." (scripts/refresh_docs.sh).  Prints their interpreters joined with ':' on stdout (what
# FASTMETRICS_BENCH_IR_PYTHONS takes); progress on stderr.  A version not found
# is skipped with a note, and fails under CI=true (CI installs them all).
#
#   FASTMETRICS_BENCH_IR_PYTHONS=$(bash scripts/ir_venvs.sh dist/*.tar.gz)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_dist.sh
SOURCE=${1:?usage: scripts/ir_venvs.sh SOURCE}
VERSIONS=${FASTMETRICS_IR_VERSIONS:-3.9 3.10 3.11 3.12 3.13}

pythons=()
for v in $VERSIONS; do
  if ! py=$(fm_find_python "$v"); then
    if [[ ${CI:-} == true ]]; then echo "CI=true: CPython $v not found" >&2; exit 1; fi
    echo "ir_venvs: CPython $v not found, skipped" >&2
    continue
  fi
  venv=.venv-ir-$v
  start=$SECONDS
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --no-cache-dir "$SOURCE" >&2   # never a wheel cached from an older tree
  echo "ir_venvs: $venv ($("$venv/bin/python" --version)) in $((SECONDS - start)) s" >&2
  pythons+=("$PWD/$venv/bin/python")
done
(IFS=:; echo "${pythons[*]}")
