"""Run the test suite against the installed fastmetrics (a built wheel).

cibuildwheel's test-command for every wheel (``[tool.cibuildwheel]`` in
pyproject.toml, ``.github/workflows/wheels.yml``), and the Windows and sdist
jobs of the workflows::

    python tests/run_installed.py [PYTEST_ARGS...]    # from the directory holding tests/

1. fastmetrics is imported from site-packages, not from a source tree, and
   runs its C extension; on a free-threaded build importing it leaves the GIL
   off;
2. ``pytest tests -m "not e2e"``: every core case on the extension and on the
   pure-Python twin;
3. the same with ``FASTMETRICS_NO_EXTENSIONS=1`` (the twin selected at import).

Plain Python, no shell syntax, so it runs the same under cmd.exe.  Exits with
the first failing step's status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECK = """
import os, sys, sysconfig
import fastmetrics
where = os.path.realpath(fastmetrics.__file__)
print(f"fastmetrics {fastmetrics.__version__} ({fastmetrics.implementation}) from {where}")
assert "site-packages" in where.split(os.sep), f"not an installed fastmetrics: {where}"
assert fastmetrics.implementation == "cython", fastmetrics.implementation
if sysconfig.get_config_var("Py_GIL_DISABLED"):
    assert not sys._is_gil_enabled(), "importing fastmetrics re-enabled the GIL"
    print("free-threaded build: the GIL stays off")
"""


def run(argv: list, **env: str) -> None:
    print("==", " ".join(f"{k}={v}" for k, v in env.items()), " ".join(argv), flush=True)
    code = subprocess.call(argv, cwd=str(HERE.parent), env=dict(os.environ, **env))
    if code:
        sys.exit(code)


def main() -> None:
    extra = sys.argv[1:]
    env = {k: v for k, v in os.environ.items() if k != "FASTMETRICS_NO_EXTENSIONS"}
    os.environ.clear()
    os.environ.update(env)
    run([sys.executable, "-c", CHECK])
    pytest = [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", "-m", "not e2e", *extra]
    run(pytest)
    run(pytest, FASTMETRICS_NO_EXTENSIONS="1")
    print(f"run_installed: OK ({sysconfig.get_platform()}, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
