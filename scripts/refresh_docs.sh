#!/usr/bin/env bash
# Refresh the measured numbers of the docs from one run of the bench command:
# the README's <!-- bench:headline --> and <!-- bench:handler --> blocks,
# docs/benchmarks.md's <!-- bench:results --> block and docs/bench.png; then
# the README's <!-- instructions:table --> (fastmetrics._cli.bench.instructions).
#
#   bash scripts/refresh_docs.sh                # extra arguments go to `fastmetrics bench`
#
# pycti's real handler comes from a venv of its own (.ci/pycti-venv.sh;
# FASTMETRICS_PYCTI_VENV, default .venv-pycti, reused if it has pycti).  The
# benchmark runs under PYTHON (default: .venv/bin/python, else python3), which
# needs this tree's fastmetrics with its Cython core and matplotlib (the
# `plot` extra).  Run it on an otherwise idle machine; commit the three files
# together.  The gates table of docs/benchmarks.md is generated from
# bench/gates.toml separately: python bench/_gates.py --update-docs docs/benchmarks.md
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
pycti_python=$(bash .ci/pycti-venv.sh "${FASTMETRICS_PYCTI_VENV:-.venv-pycti}")
# The handler's file, found without importing pycti (the bench loads that file alone).
handler=$("$pycti_python" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("pycti")
print(os.path.join(list(spec.submodule_search_locations)[0], "connector", "opencti_metric_handler.py"))
PY
)
set -x
"$PYTHON" -m fastmetrics bench --pycti "$handler" --plot docs/bench.png --update-docs README.md docs/benchmarks.md "$@"

# The README's instruction-count table: every CPython 3.9-3.13 found, a venv
# each with this tree installed (scripts/ir_venvs.sh), counted under callgrind
# (valgrind needed).
set +x
ir_list=$(bash scripts/ir_venvs.sh .)   # its own line: a failure stops here (not inside <<<)
IFS=: read -r -a ir_pythons <<<"$ir_list"
ir_args=()
for p in "${ir_pythons[@]}"; do ir_args+=(--python "$p"); done
set -x
"$PYTHON" -m fastmetrics._cli.bench.instructions --pycti "$handler" "${ir_args[@]}" --update-docs README.md
