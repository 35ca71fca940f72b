"""Selects the implementation: the Cython extensions, or the pure-Python twins
when ``FASTMETRICS_NO_EXTENSIONS`` is on (1/true/yes/on) or the extension is not
built.  Type checkers always see the twins, whose signatures are the contract.

A missing extension on CPython without that opt-out is a ``RuntimeWarning``
(once, at import): the install went wrong (setup.py refuses to build without
it), and the pure-Python core is no faster than prometheus_client.  Other
interpreters (PyPy, GraalPy) get the twins without a warning: setup.py builds
no extension for them.

- ``core``: the shard store and the hot path (``_core_c`` / ``_core_py``);
- ``dispatch``: name -> metric dispatch (``_dispatch_c`` / ``_dispatch_py``);
- ``arena()``: the multiprocess arena writer (``_core_c`` / ``_arena_py``),
  imported on first use (only multiprocess mode needs it).
"""

from __future__ import annotations

import importlib
import os
import platform
import warnings
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["CounterCore", "Dispatcher", "EnumCore", "arena", "core", "dispatch", "dispatch_for", "implementation",
           "stats"]


def _env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is on: 1, true, yes or on, in
    any case, spaces around ignored.  The one parser of the package's switches,
    also used by the tests and the bench (``setup.py`` keeps its own copy: it
    runs before the package can be imported)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _warn_missing_extension(exc: ImportError) -> None:
    if platform.python_implementation() != "CPython":
        return
    warnings.warn(
        f"fastmetrics: the C extension is not available ({exc}); using the pure-Python core, which is "
        "much slower (no faster than prometheus_client). Reinstall from a wheel or with a C "
        "compiler (pip install --force-reinstall --no-cache-dir prometheus-fastmetrics), or set "
        "FASTMETRICS_NO_EXTENSIONS=1 to choose the pure-Python core deliberately (no warning then).",
        RuntimeWarning,
        stacklevel=3,
    )


if TYPE_CHECKING:
    from . import _core_py as core
    from . import _dispatch_py as dispatch
    from ._core_py import CounterCore, EnumCore
    from ._dispatch_py import Dispatcher
else:
    if not _env_flag("FASTMETRICS_NO_EXTENSIONS"):
        try:  # import_module: its ImportError names the real cause (a missing or broken .so)
            core = importlib.import_module("._core_c", __package__)
            dispatch = importlib.import_module("._dispatch_c", __package__)
        except ImportError as exc:  # not compiled: a broken install on CPython
            from . import _core_py as core
            from . import _dispatch_py as dispatch

            _warn_missing_extension(exc)
    else:
        from . import _core_py as core
        from . import _dispatch_py as dispatch
    CounterCore, EnumCore, Dispatcher = core.CounterCore, core.EnumCore, dispatch.Dispatcher

implementation: str = core.implementation
stats = core.stats


def dispatch_for(core_module: ModuleType) -> ModuleType:
    """The dispatch module that goes with ``core_module`` (for tests and
    benchmarks that run both implementations in one process)."""
    if core_module.implementation == "cython":
        # the compiled extension: no stub for type checkers, which see the twin
        return importlib.import_module("._dispatch_c", __package__)
    from . import _dispatch_py

    return _dispatch_py


def arena() -> ModuleType:
    """The multiprocess arena writer of the selected implementation."""
    if core.implementation == "cython":
        return core
    from . import _arena_py

    return _arena_py
