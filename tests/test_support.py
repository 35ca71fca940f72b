"""The shared test helpers (``_support.py``) keep their promises: the pycti
pin is the same everywhere, and an :class:`~_support.Impl`'s environment makes
a child process run that implementation."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from _support import PYCTI_VERSION, ROOT, Impl, free_port, skip_or_fail

from fastmetrics.multiprocess import ENV_CAPACITY, ENV_DIR

# pycti's versions are <major>.<yymmdd>.<patch>: every such string names pycti.
PYCTI_VERSION_RE = re.compile(r"\b\d+\.\d{6}\.\d+\b")


def _mentions() -> Dict[str, List[str]]:
    """``{file: [pycti versions it names]}`` over the checkout's text files."""
    paths = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob(".ci/*"), *ROOT.glob("bench/**/*.py"),
             *ROOT.glob("src/fastmetrics/**/*.py"), *ROOT.glob("tests/**/*.py")]
    found = {}
    for path in paths:
        versions = PYCTI_VERSION_RE.findall(path.read_text(errors="replace")) if path.is_file() else []
        if versions:
            found[str(path.relative_to(ROOT))] = versions
    return found


def test_the_pycti_pin_is_the_same_everywhere() -> None:
    """``_support.PYCTI_VERSION`` is the tests' pin; ``.ci/pycti-venv.sh``
    (shell) and ``bench/_harness.py`` (which must not import the tests) each
    have a copy, and the docs name it: all must agree."""
    script = ROOT / ".ci" / "pycti-venv.sh"
    if not script.is_file():
        pytest.skip("not a checkout: no .ci/pycti-venv.sh")
    assert re.findall(r"^pycti_version=(\S+)$", script.read_text(), re.M) == [PYCTI_VERSION]
    harness = (ROOT / "bench" / "_harness.py").read_text()
    assert re.findall(r'^PYCTI_VERSION = "([^"]+)"', harness, re.M) == [PYCTI_VERSION]
    mentions = _mentions()
    assert {".ci/pycti-venv.sh", "bench/_harness.py", "README.md"} <= set(mentions)
    assert {f: v for f, v in mentions.items() if set(v) != {PYCTI_VERSION}} == {}


def test_impl_env_selects_the_implementation_in_a_child(impl: Impl, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("FASTMETRICS_NO_EXTENSIONS", "0" if impl.name == "python" else "1")
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "not-this-one"))
    monkeypatch.setenv(ENV_CAPACITY, "65536")
    env = impl.env()
    assert (ENV_DIR in env, ENV_CAPACITY in env) == (False, False)
    assert env.get("FASTMETRICS_NO_EXTENSIONS") == ("1" if impl.name == "python" else None)
    assert impl.env(**{ENV_DIR: str(tmp_path)})[ENV_DIR] == str(tmp_path)
    code = impl.prologue + "from fastmetrics import multiprocess; print(multiprocess.directory())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "None\n"), proc.stderr


def test_impl_parts_are_of_one_implementation(impl: Impl) -> None:
    suffix = {"c": "_c", "python": "_py"}[impl.name]
    assert (impl.core.__name__, impl.dispatch.__name__) == ("fastmetrics._core" + suffix,
                                                             "fastmetrics._dispatch" + suffix)
    assert impl.implementation == impl.core.implementation
    assert issubclass(impl.Handler, impl.dispatch.Dispatcher)
    assert (impl.Handler._counter_class, impl.Handler._enum_class) == (impl.Counter, impl.Enum)


def test_free_port_is_free_on_loopback() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_skip_or_fail(monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no such server"):
        skip_or_fail("no such server")
