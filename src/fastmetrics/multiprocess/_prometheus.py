"""The prometheus_client-compatible multiprocess mode: with
``PROMETHEUS_MULTIPROC_DIR`` set when :mod:`fastmetrics` is imported, metrics
are written to the files prometheus_client's own, unmodified
``MultiProcessCollector`` reads (its ``MmapedDict`` format, 0.20 to 0.26), so
an application already running prometheus_client's multiprocess mode changes
only its import line.

- **Counters** (values, labelled children, ``reset()``): the store is
  ``_promfile.h`` (twin: :mod:`fastmetrics._promfile_py`).  Each thread
  writes only its own ``counter_<pid>_<n>.db`` files; the collector sums a
  series over every entry it reads.  A value's entry is written when it is
  created (value 0, as upstream writes one), in the creating thread's file.
  ``reset()`` zeroes this process's value, as upstream's ``set(0)`` does;
  ``remove()``/``clear()`` forget the child here and warn as upstream does,
  its entries stay in the files (so the collector keeps serving them).
- **Enums** (prometheus_client has no multiprocess enum): one
  ``gauge_mostrecent`` entry per state (1 for the current state, 0 for the
  others, one wall-clock stamp), so the collector serves a gauge per state
  holding the most recently set state over every process, exited ones
  included (:class:`fastmetrics._promfile_py.EnumSeries`).  The core calls
  :meth:`_PromRecorder.enum_state` after every state store (``state()``, the
  OpenCTI dispatcher, the nogil ``enum_set``, which takes the GIL for it).
- **Errors** (at import, naming the variable): both this variable and
  ``FASTMETRICS_MULTIPROC_DIR`` set (``RuntimeError``); the variable empty or
  not a writable directory (``ValueError``); Windows
  (``NotImplementedError``).  A file that cannot be created later is an
  ``OSError`` naming the directory from the metric's creation or increment.

The :class:`_PromRecorder` is :mod:`fastmetrics.metrics`'s ``Recorder``: it
gives each counter slot its series key and writes each enum's entries.
Windows is refused: the C store is POSIX (``_promfile.h``).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Protocol

from prometheus_client.mmap_dict import mmap_key

from .. import _promfile_py
from ._directory import ENV_DIR

if TYPE_CHECKING:
    from ..metrics import _MetricWrapper

__all__ = ["ENV_PROMETHEUS", "LEGACY_ENV_PROMETHEUS", "directory", "enable_from_environment"]

ENV_PROMETHEUS = "PROMETHEUS_MULTIPROC_DIR"
LEGACY_ENV_PROMETHEUS = "prometheus_multiproc_dir"   # upstream's deprecated spelling, still honoured


class _PromCore(Protocol):
    """What this mode needs of the selected core (``_core_c`` or ``_core_py``)."""

    def pf_enable(self, directory: str) -> None: ...
    def pf_set_key(self, slot: int, key: bytes) -> None: ...
    def pf_touch(self, slot: int) -> None: ...
    def pf_set_enum_hook(self, hook: Callable[[int, int], None]) -> None: ...


class _PromRecorder:
    """Gives every counter slot its prometheus_client series key (and writes
    its entry, value 0, in the calling thread's file); makes every enum value
    write its states' gauge entries.  Any string is accepted, as upstream:
    the keys are JSON with non-ASCII escaped.  Thread-safe."""

    def __init__(self, core: _PromCore) -> None:
        self.core = core
        self.enums: Dict[int, _promfile_py.EnumSeries] = {}   # enum slot -> its gauges
        core.pf_set_enum_hook(self.enum_state)

    @staticmethod
    def check_strings(what: str, strings: Iterable[Any]) -> None:
        """Nothing to refuse (the key is ASCII JSON)."""

    @staticmethod
    def check_labelvalues(values: Iterable[str]) -> None:
        """Nothing to refuse (the key is ASCII JSON)."""

    @staticmethod
    def check_states(states: Iterable[Any]) -> None:
        """Nothing to refuse: any number of states, any string."""

    def counter_slot(self, metric: _MetricWrapper, slot: int) -> None:
        """``slot`` holds ``metric``'s value (or is the spare ``reset()``
        swaps in): the key prometheus_client's ``MultiProcessValue`` writes."""
        key = mmap_key(metric._name, metric._name + "_total", list(metric._labelnames), list(metric._labelvalues),
                       metric._documentation)
        self.core.pf_set_key(slot, key.encode("utf-8"))
        self.core.pf_touch(slot)

    def enum_slot(self, metric: Any, slot: int) -> None:
        """``slot`` is ``metric``'s state word: write its states as gauges
        (state 0, stamped older than any ``state()``)."""
        name = metric._name
        labelnames = [*metric._labelnames, name]
        keys = [mmap_key(name, name, labelnames, [*metric._labelvalues, str(s)], metric._documentation).encode("utf-8")
                for s in metric._states]
        self.enums[slot] = _promfile_py.EnumSeries(keys)   # a recycled enum slot: the new enum's

    def enum_state(self, slot: int, index: int) -> None:
        """The core's hook after every enum state store (``state()``, the
        OpenCTI dispatcher, the nogil ``enum_set``): write the gauges."""
        self.enums[slot].write(index)


_enabled: Optional[str] = None
_enable_lock = threading.Lock()


def directory() -> Optional[str]:
    """The directory this process writes prometheus_client's files to, or None."""
    return _enabled


def _usable(path: str, variable: str) -> str:
    if not path:
        raise ValueError(f"{variable} is set but empty: set it to a writable directory, or unset it")
    if not os.path.isdir(path):
        raise ValueError(f"{variable}={path!r} is not a directory (prometheus_client's multiprocess mode "
                         "needs it to exist before the processes start)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{variable}={path!r} is not writable by this process")
    return os.path.abspath(path)


def enable_from_environment() -> None:
    """At import: turn the mode on if ``PROMETHEUS_MULTIPROC_DIR`` (or the
    deprecated lower-case spelling) is set.  Errors name the variable."""
    global _enabled
    variable = ENV_PROMETHEUS if ENV_PROMETHEUS in os.environ else (
        LEGACY_ENV_PROMETHEUS if LEGACY_ENV_PROMETHEUS in os.environ else None)
    if variable is None:
        return
    if os.environ.get(ENV_DIR) is not None:
        raise RuntimeError(f"both {variable} and {ENV_DIR} are set: choose one multiprocess mode "
                           f"({variable} writes prometheus_client's files for its MultiProcessCollector, "
                           f"{ENV_DIR} fastmetrics' own)")
    if sys.platform == "win32":
        raise NotImplementedError(f"{variable}: fastmetrics' prometheus_client-compatible multiprocess mode "
                                  "needs POSIX")
    path = _usable(os.environ[variable], variable)
    from .. import _core, metrics   # here: fastmetrics is imported by now

    with _enable_lock:
        if _enabled is not None:
            return
        core: _PromCore = _core.core
        core.pf_enable(path)
        _promfile_py.enable(path)
        metrics.set_recorder(_PromRecorder(core))
        _enabled = path
