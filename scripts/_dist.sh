# Sourced by scripts/test.sh, scripts/bench.sh, scripts/ir_venvs.sh, .ci/run and
# .ci/pythons.sh (not run directly).
#
#   fm_build_dist DIST       sdist + wheel of this tree with `python -m build`
#                            into DIST (emptied first), `twine check --strict`,
#                            scripts/check_dist.py (sources in, generated C out)
#   fm_wheel DIST            the path of the wheel in DIST
#   fm_install_wheel VENV WHEEL [PIP_ARGS...]
#                            a fresh VENV (removed first) with WHEEL[test]
#                            installed (PIP_ARGS added to that pip install), and
#                            a check that fastmetrics is imported from VENV
#   fm_find_python X.Y       the path of a working CPython X.Y (pythonX.Y on
#                            PATH, else ~/.pyenv/versions/X.Y.*), or status 1
#
# build and twine live in their own venv, $FASTMETRICS_TOOLS_VENV (default
# .venv-tools), made on first use.  PYTHON (default python3) makes the venvs
# and so decides the wheel's Python version.

PYTHON=${PYTHON:-python3}
FASTMETRICS_TOOLS_VENV=${FASTMETRICS_TOOLS_VENV:-.venv-tools}
# build: PEP 517 sdist and wheel in isolated build environments (what pip and
# cibuildwheel do); twine: the metadata check PyPI applies at upload (metadata
# 2.4, as setuptools>=77 writes for license = "Apache-2.0", needs twine 6.1).
FASTMETRICS_TOOLS=("build>=1.2" "twine>=6.1")

fm_tools() {
  if [[ ! -x $FASTMETRICS_TOOLS_VENV/bin/python ]]; then
    "$PYTHON" -m venv "$FASTMETRICS_TOOLS_VENV"
  fi
  "$FASTMETRICS_TOOLS_VENV/bin/python" -m pip install -q --upgrade pip "${FASTMETRICS_TOOLS[@]}"
}

fm_build_dist() {
  local dist=$1 start=$SECONDS log=build/python-m-build.log
  fm_tools
  rm -rf "$dist"
  mkdir -p build
  # An sdist first, then the wheel built from that sdist (not from this tree):
  # a file missing from the sdist fails here, not on a user's machine.
  "$FASTMETRICS_TOOLS_VENV/bin/python" -m build --outdir "$dist" . >"$log" 2>&1 || {
    tail -n 60 "$log" >&2
    echo "python -m build failed (full log: $log)" >&2
    return 1
  }
  "$FASTMETRICS_TOOLS_VENV/bin/python" -m twine check --strict "$dist"/*
  "$FASTMETRICS_TOOLS_VENV/bin/python" scripts/check_dist.py "$dist"
  echo "built $(cd "$dist" && echo *) in $((SECONDS - start)) s"
}

fm_find_python() {
  local v=$1 candidate
  # The first candidate that runs (a pyenv shim on PATH may not).
  for candidate in "$(command -v "python$v" 2>/dev/null || true)" "$HOME"/.pyenv/versions/"$v".*/bin/python"$v"; do
    if [[ -n $candidate && -x $candidate ]] && "$candidate" -c "import venv" >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

fm_wheel() {
  local wheels=("$1"/*.whl)
  [[ ${#wheels[@]} -eq 1 && -f ${wheels[0]} ]] || { echo "expected one wheel in $1: ${wheels[*]}" >&2; return 1; }
  echo "${wheels[0]}"
}

fm_install_wheel() {
  local venv=$1 wheel=$2
  shift 2
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$wheel[test]" "$@"
  # Imported from the venv's site-packages, never from this tree's src/.
  venv=$(cd "$venv" && pwd)
  (cd / && "$venv/bin/python" - "$venv" <<'PY'
import os, sys
import importlib.metadata
import fastmetrics
venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(fastmetrics.__file__)
assert where.startswith(venv + os.sep), f"fastmetrics imported from {where}, not from {venv}"
print(f"fastmetrics {fastmetrics.__version__} ({fastmetrics.implementation}) from {where}; "
      f"prometheus_client {importlib.metadata.version('prometheus_client')}")
PY
  )
}
