#!/usr/bin/env bash
# Create a virtualenv holding the real pycti next to this checkout's fastmetrics,
# for tests/test_opencti_differential.py:
#
#   export FASTMETRICS_PYCTI_PYTHON="$(bash .ci/pycti-venv.sh /tmp/venv-pycti)"
#
# DIR is created if missing and reused if it already has pycti; pip runs quietly
# (its output goes to stderr) and the venv's python is the only line on stdout.
set -euo pipefail

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
# The pin: tests/_support.py's PYCTI_VERSION (tests/test_support.py checks they agree).
pycti_version=7.261026.0

if [ ! -x "$dir/bin/python" ]; then
    "$python" -m venv "$dir" >&2
fi
"$dir/bin/python" -m pip install -q --disable-pip-version-check "pycti==$pycti_version" >&2
# Always reinstall fastmetrics: the checkout may have changed since the venv was made.
"$dir/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$root" >&2
"$dir/bin/python" -c 'import pycti, fastmetrics' >&2
echo "$dir/bin/python"
