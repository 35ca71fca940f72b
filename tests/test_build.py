"""The build: a failed compile fails it on CPython, naming the opt-out
(``setup.py``); ``FASTMETRICS_NO_EXTENSIONS=1`` and other interpreters build
no extension and succeed.

Each case runs ``python setup.py build_ext`` in a subprocess on a copy of the
source tree (setup.py, pyproject.toml, README.md, LICENSE, src/ without built
or generated files), with ``CC=false``: a compiler that fails every
compile, as a missing or broken one does.  A few seconds each (Cython
translates the .pyx before the compile fails).

Marked ``build``: they need the source tree next to ``tests/`` (cibuildwheel
copies only ``tests/``), setup.py's build requirements (setuptools>=77,
Cython>=3.1, both in the ``test`` extra) and, for the failing compile, a
compiler driver that honours ``CC`` (not MSVC); without them they skip and
say which is missing.  ``-m "not build"`` leaves them out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREE = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "src")
OPT_OUT_HINT = "FASTMETRICS_NO_EXTENSIONS=1"

pytestmark = pytest.mark.build


def _build_toolchain_missing() -> Optional[str]:
    """Why setup.py cannot run here, or None."""
    missing = [name for name in TREE if not (ROOT / name).exists()]
    if missing:
        return f"no source tree next to tests/ (missing {', '.join(missing)}): the tests were copied alone"
    probe = ("import setuptools, Cython; v = tuple(int(p) for p in setuptools.__version__.split('.')[:2]); "
             "assert v >= (77, 0), setuptools.__version__")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"setup.py's build requirements (setuptools>=77, Cython) are not importable: {last}"
    return None


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _build_toolchain_missing()
    if reason:
        pytest.skip(reason)
    dest = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("*.so", "*.pyd", "*.c", "*.html", "__pycache__", "*.egg-info")
    for name in TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def _build_ext(tree: Path, tmp_path: Path, env: Dict[str, str], prelude: str = "") -> subprocess.CompletedProcess:
    """``setup.py build_ext`` in ``tree`` with ``CC=false`` and ``env`` added,
    build products in ``tmp_path``; ``prelude`` runs in the same process first."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FASTMETRICS_")}
    full_env.update(CC="false", **env)
    argv = ["setup.py", "build_ext", "--build-temp", str(tmp_path / "temp"), "--build-lib", str(tmp_path / "lib")]
    code = f"import runpy, sys\n{prelude}\nsys.argv = {argv!r}\nrunpy.run_path('setup.py', run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", code], cwd=str(tree), env=full_env, capture_output=True,
                          text=True, timeout=120)


def _built(tmp_path: Path) -> list:
    return sorted(p.name for p in (tmp_path / "lib").rglob("*") if p.suffix in (".so", ".pyd"))


@pytest.mark.skipif(sys.platform == "win32",
                    reason="MSVC ignores CC: the compiler cannot be broken from the environment")
def test_failed_compile_fails_the_build_and_names_the_opt_out(source_copy: Path, tmp_path: Path) -> None:
    proc = _build_ext(source_copy, tmp_path, {})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "error: fastmetrics: building the C extension fastmetrics._core_c failed" in out, out
    assert OPT_OUT_HINT in out and "deliberate pure-Python install" in out, out
    assert _built(tmp_path) == []


def test_opt_out_builds_no_extension(source_copy: Path, tmp_path: Path) -> None:
    proc = _build_ext(source_copy, tmp_path, {"FASTMETRICS_NO_EXTENSIONS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _built(tmp_path) == []


def test_other_interpreters_pick_the_twin(source_copy: Path, tmp_path: Path) -> None:
    prelude = "import platform; platform.python_implementation = lambda: 'PyPy'"
    proc = _build_ext(source_copy, tmp_path, {}, prelude)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "PyPy uses the pure-Python core; no C extension is built" in out, out
    assert _built(tmp_path) == []
