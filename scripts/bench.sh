#!/usr/bin/env bash
# The benchmark command: the ratio gates of bench/gates.toml in quick mode,
# against the wheel of this tree, built and installed as scripts/test.sh does
# (dist/, a fresh .venv-test; FASTMETRICS_VENV to change it).
#
#   bash scripts/bench.sh                    # pytest bench --bench-quick --bench-reps 7
#   bash scripts/bench.sh -k nogil           # extra arguments go to pytest
#
# Timings need idle cores: a gate that misses fails this command (exit 1), not
# the test command.  The instruction-count gates (bench/instructions.toml,
# callgrind: needs valgrind) run on every CPython 3.9-3.13 found
# (scripts/ir_venvs.sh) and do not depend on load.  Thread-scaling gates are normalised by a control loop with
# no shared state measured in the same run, and report INCONCLUSIVE (never a
# failure) when that control shows no free core or unsteady load.  pycti's handler is downloaded once
# (pip download) for its gates; offline, FASTMETRICS_BENCH_PYCTI_FILE names it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_dist.sh

VENV=${FASTMETRICS_VENV:-.venv-test}

echo "== build and install the wheel"
fm_build_dist dist
fm_install_wheel "$VENV" "$(fm_wheel dist)"

echo "== interpreters of the instruction-count gates (a venv per CPython 3.9-3.13, the sdist in each)"
FASTMETRICS_BENCH_IR_PYTHONS=$(bash scripts/ir_venvs.sh "$(echo dist/*.tar.gz)")
export FASTMETRICS_BENCH_IR_PYTHONS

echo "== benchmark gates (quick mode): timing, then instruction counts (callgrind)"
"$VENV/bin/python" -m pytest bench -q -p no:cacheprovider --bench-quick --bench-reps 7 "$@"
