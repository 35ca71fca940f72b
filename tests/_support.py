"""What the tests share, in one place.  Imported as the top-level module
``_support`` (pytest puts ``tests/`` on ``sys.path`` for ``tests/conftest.py``,
as for ``_parity`` and ``_downstream``); a child process a test starts does not
import it: it gets what it needs through its environment (:meth:`Impl.env`).

- :func:`free_port`: a TCP port on 127.0.0.1 that was free a moment ago.
- :func:`env_flag`: the package's on/off parser (1/true/yes/on), the library's own.
- :func:`in_ci` / :func:`skip_or_fail`: a missing external (server binary,
  pycti, gunicorn, root) skips the test here and fails it under ``CI=true``,
  where CI provides it.
- :class:`Impl` / :func:`load` / :data:`IMPL_PARAMS`: the implementation
  switch.  An :class:`Impl` has the classes to use in this process and the
  environment a child process needs to run the same implementation.
- :func:`clean_env` / :func:`package_env`: environments for child processes.
- :func:`under_asan` / :data:`fork_with_threads`: the AddressSanitizer run
  (``.ci/sanitizers.sh``) and the fork() tests it cannot run.
- :func:`in_forked_child`: run a function in a forked child and get its
  report back, failing on a crash or a deadlock.
- :func:`bench_gates`: ``bench/_gates.py``, the benchmark gates' code.
- :data:`PYCTI_VERSION`: the pycti the differential tests run against (also
  pinned in ``.ci/pycti-venv.sh``; ``test_support.py`` keeps them equal).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Mapping, NoReturn, Optional

import pytest

import fastmetrics
from fastmetrics import _core, metrics, opencti
from fastmetrics._core import _env_flag as env_flag
from fastmetrics.multiprocess import ENV_CAPACITY, ENV_DIR

__all__ = ["IMPL_PARAMS", "NO_EXTENSIONS", "PYCTI_VERSION", "ROOT", "Impl", "bench_gates", "clean_env", "env_flag",
           "extensions_disabled", "fork_with_threads", "free_port", "in_ci", "in_forked_child", "load", "package_env",
           "skip_or_fail", "under_asan"]

ROOT = Path(__file__).resolve().parent.parent
PYCTI_VERSION = "7.261026.0"
NO_EXTENSIONS = "FASTMETRICS_NO_EXTENSIONS"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def in_ci() -> bool:
    """``CI`` is on (CI sets ``CI=true``)."""
    return env_flag("CI")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for want of something external (``reason`` says what and
    how to get it); under ``CI=true`` fail it instead, since CI provides it."""
    if in_ci():
        pytest.fail(f"{reason} (required when CI=true)", pytrace=False)
    pytest.skip(reason)


def under_asan() -> bool:
    """This process runs with the AddressSanitizer runtime preloaded
    (``.ci/sanitizers.sh``); child processes inherit it."""
    return "libasan" in os.environ.get("LD_PRELOAD", "")


#: A test that forks while other threads run.  Skipped under ASan only: GCC
#: 12's libasan does not take its allocator's locks across fork() (LLVM added
#: that in 18, llvm/llvm-project#75290), so a child whose parent had another
#: thread inside malloc deadlocks in its first malloc, whatever the code under
#: test does (llvm/llvm-project#63224; seen in CI: the child blocked in
#: SizeClassAllocator64::GetFromAllocator called from Python's at-fork hooks).
#: Every such test runs unsanitized in the README test command.
fork_with_threads = pytest.mark.skipif(
    under_asan(), reason="fork() with threads under ASan: GCC 12's libasan allocator is not fork-safe "
                         "(llvm/llvm-project#75290); runs unsanitized in the README test command")


def in_forked_child(child: Callable[[], Dict[str, Any]], timeout: float = 30.0) -> Dict[str, Any]:
    """Fork; in the child (where only this thread exists) run ``child`` and
    send its small JSON-able report back through a pipe (read once the child
    has exited: it must fit the pipe buffer).  The report, or fail the
    test if the child raised, died or did not exit within ``timeout`` s (it is
    killed: a deadlock fails the test instead of hanging the suite)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(child()).encode())
            code = 0
        except BaseException:
            traceback.print_exc()   # to the test's captured stderr
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            pytest.fail("child process deadlocked after fork()")
        time.sleep(0.01)
    with os.fdopen(read_fd) as f:
        data = f.read()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed (wait status {status})"
    report: Dict[str, Any] = json.loads(data)
    return report


@functools.cache
def bench_gates() -> ModuleType:
    """``bench/_gates.py`` (gate files and their arithmetic), loaded by path:
    ``bench/`` is not a package."""
    name = "fm_bench_gates"
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "_gates.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def extensions_disabled() -> bool:
    """``FASTMETRICS_NO_EXTENSIONS`` is on: the ``c`` cases are skipped
    (``tests/conftest.py`` also honours ``--no-c-extensions``)."""
    return env_flag(NO_EXTENSIONS)


def clean_env(**extra: str) -> Dict[str, str]:
    """This process's environment for a child process, without the variables
    that select an implementation or turn multiprocess mode on (so the child
    runs the default implementation in the usual single-process mode), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in (NO_EXTENSIONS, ENV_DIR, ENV_CAPACITY, "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")}
    env.update(extra)
    return env


def package_env(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``base`` (default: this process's environment) with the directory holding
    the imported ``fastmetrics`` first on ``PYTHONPATH``, so that a child
    ``python -m fastmetrics`` imports it too, from a src checkout or installed."""
    env = dict(os.environ if base is None else base)
    root = str(Path(fastmetrics.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@dataclass(frozen=True)
class Impl:
    """One implementation, in this process and in a child process."""

    name: str               #: the test id: "c" or "python"
    implementation: str     #: ``fastmetrics.implementation`` where it runs: "cython" or "python"
    core: ModuleType        #: ``fastmetrics._core_c`` or ``fastmetrics._core_py``
    dispatch: ModuleType    #: ``fastmetrics._dispatch_c`` or ``fastmetrics._dispatch_py``
    Counter: type
    Enum: type
    Handler: type           #: ``OpenCTIMetricHandler`` on this core

    def stats(self) -> Dict[str, Any]:
        return self.core.stats()  # type: ignore[no-any-return]

    def env(self, **extra: str) -> Dict[str, str]:
        """This process's environment for a child process that must run this
        implementation: ``FASTMETRICS_NO_EXTENSIONS=1`` for the twin, unset
        for the extension; multiprocess mode off unless ``extra`` sets its
        variables (``FASTMETRICS_MULTIPROC_DIR``, ...); plus ``extra``."""
        env = clean_env()
        if self.name == "python":
            env[NO_EXTENSIONS] = "1"
        env.update(extra)
        return env

    @property
    def prologue(self) -> str:
        """Python source a child process runs first: it imports fastmetrics
        and fails unless it selected this implementation."""
        return ("import fastmetrics\n"
                f"assert fastmetrics.implementation == {self.implementation!r}, fastmetrics.implementation\n")


@functools.cache
def load(name: str) -> Impl:
    """The :class:`Impl` named ``name`` ("c" or "python").  A missing extension
    raises ImportError: only the switches skip the ``c`` cases."""
    if name == "python":
        from fastmetrics import _core_py as core
    elif name == "c":
        from fastmetrics import _core_c as core
    else:
        raise ValueError(f"no implementation {name!r}: 'c' or 'python'")
    counter, enum = metrics.classes_for(core)
    return Impl(name, core.implementation, core, _core.dispatch_for(core), counter, enum,
                opencti.handler_class_for(core))


#: ``params`` of a fixture over both implementations: the ``c`` case carries
#: the ``c_extension`` marker (skipped under the switches, see ``conftest.py``).
IMPL_PARAMS = [pytest.param("c", marks=pytest.mark.c_extension), pytest.param("python")]
