#!/usr/bin/env bash
# fastmetrics against the prometheus_client versions it declares: the minimum
# of pyproject.toml's `prometheus_client>=X,<1` and the latest release.
#
#   bash .ci/prometheus-client.sh WHEEL [minimum|latest]...   (default: both)
#
# For each, WHEEL[test] and that prometheus_client go into a fresh venv
# (.venv-prometheus-client-<which>), then the API suite and the byte-identical
# exposition tests run against it: tests/test_api.py, tests/test_statemachine.py
# (a model-based test against prometheus_client itself), tests/test_opencti.py,
# and the prometheus_client-compatible multiprocess mode's differential tests
# against that version's own MultiProcessCollector
# (tests/multiprocess/test_prometheus_compat.py, and under gunicorn
# tests/e2e/test_gunicorn_prometheus.py); each core case on the extension and
# on the twin, then again with FASTMETRICS_NO_EXTENSIONS=1 (the twin selected
# at import).
# Used by .ci/run and by the prometheus-client job of .github/workflows/ci.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_dist.sh

[[ $# -ge 1 && -f $1 ]] || { echo "usage: $0 WHEEL [minimum|latest]..." >&2; exit 2; }
wheel=$1
shift
which_ones=("$@")
[[ ${#which_ones[@]} -gt 0 ]] || which_ones=(minimum latest)

minimum=$(sed -n 's/.*"prometheus_client>=\([0-9.]*\)[,"].*/\1/p' pyproject.toml)
[[ -n $minimum ]] || { echo "no prometheus_client>=X in pyproject.toml" >&2; exit 1; }
files=(tests/test_api.py tests/test_class_design.py tests/test_statemachine.py tests/test_opencti.py
       tests/multiprocess/test_prometheus_compat.py tests/e2e/test_gunicorn_prometheus.py)

for which in "${which_ones[@]}"; do
  case $which in
    minimum) spec="prometheus_client==$minimum" ;;
    latest) spec="prometheus_client" ;;   # the newest release the <1 bound admits
    *) echo "unknown version set: $which (minimum or latest)" >&2; exit 2 ;;
  esac
  venv=.venv-prometheus-client-$which
  echo "== prometheus_client, $which ($spec), in $venv"
  fm_install_wheel "$venv" "$wheel" "$spec"
  "$venv/bin/python" -m pytest "${files[@]}" -q -p no:cacheprovider
  FASTMETRICS_NO_EXTENSIONS=1 "$venv/bin/python" -m pytest "${files[@]}" -q -p no:cacheprovider
done
