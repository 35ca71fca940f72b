"""What is measured: the candidates and the objects their operations are called on.

Contract:

* Candidates (the names used in benchmark keys ``<candidate>.<op>`` and in
  ``bench/gates.toml``): ``floor`` (no-op methods with the hot-path
  signatures), ``fastmetrics_c`` / ``fastmetrics_py`` (each core, in one
  process), ``prometheus_client``, ``pycti`` (pycti's real handler).
* :class:`Subjects` builds a candidate's subject on demand, or raises
  :class:`Unavailable` with the reason (no extension, no pycti, no such
  operation for that candidate).
* pycti's ``connector/opencti_metric_handler.py`` is loaded from its file
  alone (it only needs prometheus_client), never importing the ``pycti``
  package: :func:`find_pycti_handler_file`, :func:`load_pycti_handler_module`.
* An activated handler starts an HTTP server that is never stopped (as
  pycti's does): ours on 127.0.0.1 on a free port, pycti's on 0.0.0.0 on an
  OS-chosen port; at most one per candidate and process, reused.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Enum as PromEnum

from ... import _core_py, metrics

FLOOR = "floor"
FM_C = "fastmetrics_c"
FM_PY = "fastmetrics_py"
PROM = "prometheus_client"
PYCTI = "pycti"
#: fastmetrics' own candidates (the rows the ratios are about).
OURS: Tuple[str, ...] = (FM_C, FM_PY)
#: Display names, in table order.
LABELS: Dict[str, str] = {
    FM_C: "cython",
    FM_PY: "python",
    FLOOR: "floor",
    PROM: "prometheus_client",
    PYCTI: "pycti",
}
METRIC_CANDIDATES: Tuple[str, ...] = (FLOOR, FM_C, FM_PY, PROM)
HANDLER_CANDIDATES: Tuple[str, ...] = (FLOOR, FM_C, FM_PY, PYCTI)
SCRAPE_CANDIDATES: Tuple[str, ...] = (FM_C, FM_PY, PROM)

STATES = ("idle", "running", "stopped")
PYCTI_NOT_INSTALLED = "n/a (pycti not installed)"
PYCTI_HANDLER_PATH = ("connector", "opencti_metric_handler.py")


class Unavailable(Exception):
    """A candidate cannot provide a subject (e.g. no floor for a scrape)."""


# -- the floor: no-op methods with the hot-path signatures ------------------------


class FloorMetric:
    """No-op ``Counter``/``Enum`` stand-in: what a Python method call costs."""

    def inc(self, amount: Any = 1, exemplar: Any = None) -> None:
        pass

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> FloorMetric:
        return self

    def state(self, state: Any) -> None:
        pass


class FloorHandler:
    """No-op ``OpenCTIMetricHandler`` stand-in (same ``inc``/``state`` signatures)."""

    def inc(self, name: str, n: Any = 1) -> None:
        pass

    def state(self, state: str, name: str = "state") -> None:
        pass


class NullLogger:
    """The connector logger interface the handlers call (``info``/``error``), silent."""

    def info(self, message: str, meta: Any = None) -> None:
        pass

    def error(self, message: str, meta: Any = None) -> None:
        pass


# -- pycti's handler, from its file ------------------------------------------------


def load_pycti_handler_module(path: str) -> ModuleType:
    """Load pycti's ``opencti_metric_handler.py`` from ``path`` as a standalone module.

    The file only imports prometheus_client and typing, so the ``pycti``
    package (and its many dependencies) is never imported.  The module is not
    put in ``sys.modules``.  ``ImportError`` if it defines no
    ``OpenCTIMetricHandler``; whatever executing the file raises otherwise.
    """
    spec = importlib.util.spec_from_file_location("_fastmetrics_bench_pycti_metric_handler", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "OpenCTIMetricHandler"):
        raise ImportError(f"{path} defines no OpenCTIMetricHandler")
    return module


def find_pycti_handler_file() -> Optional[str]:
    """Path of the installed pycti's handler module, found without importing pycti."""
    try:
        spec = importlib.util.find_spec("pycti")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = os.path.join(base, *PYCTI_HANDLER_PATH)
        if os.path.isfile(path):
            return path
    return None


def pycti_version(path: str) -> Optional[str]:
    """pycti's version for its handler file at ``path``, best effort (None if unknown).

    From the distribution metadata next to an installed ``pycti`` package
    (``<site-packages>/pycti/connector/opencti_metric_handler.py``), or from
    a file named ``pycti-<version>-opencti_metric_handler.py`` (the ``bench/``
    suite's download cache).
    """
    match = re.fullmatch(r"pycti-(?P<version>[^-]+)-opencti_metric_handler\.py", os.path.basename(path))
    if match:
        return match["version"]
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    if parts[-3:] != ["pycti", *PYCTI_HANDLER_PATH]:
        return None
    site = os.sep.join(parts[:-3]) or os.sep
    for dist in importlib.metadata.distributions(path=[site]):
        name = dist.metadata["Name"] or ""
        if name.lower() == "pycti":
            return str(dist.version)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- the subjects ---------------------------------------------------------------------

# Activated handlers start an HTTP server that is never stopped (as pycti's
# does), so each process builds at most one per candidate and reuses it.
_ACTIVE_HANDLERS: Dict[str, Any] = {}
_ACTIVE_LOCK = threading.Lock()


@dataclass
class ScrapeTarget:
    """A private registry holding ``counters`` (each incremented once)."""

    registry: CollectorRegistry
    counters: List[Any]


@dataclass
class Subjects:
    """Builds, per candidate, the object an operation is called on.

    ``pycti_module`` is pycti's loaded handler module, or None with the reason
    in ``pycti_reason``; or ``pycti_loader`` returns ``(module or None,
    where or reason)`` the first time a pycti subject is asked for (so runs
    without pycti cases never fetch it).  Every metric lives in a fresh
    private ``CollectorRegistry``; only the handlers use the default one, as
    in production.
    """

    pycti_module: Optional[ModuleType] = None
    pycti_reason: str = PYCTI_NOT_INSTALLED
    pycti_loader: Optional[Callable[[], Tuple[Optional[ModuleType], str]]] = None
    _cores: Dict[str, Any] = field(default_factory=dict)

    # -- cores ---------------------------------------------------------------

    def core(self, candidate: str) -> Any:
        """The core module behind a fastmetrics candidate (Unavailable if not built)."""
        if candidate not in self._cores:
            if candidate == FM_PY:
                self._cores[candidate] = _core_py
            elif candidate == FM_C:
                try:
                    self._cores[candidate] = importlib.import_module("fastmetrics._core_c")
                except ImportError as exc:
                    raise Unavailable(f"Cython extension not built ({exc})") from None
            else:
                raise Unavailable(f"{candidate} is not a fastmetrics candidate")
        return self._cores[candidate]

    def classes(self, candidate: str) -> Tuple[type, type]:
        """``(Counter, Enum)`` of a metric candidate."""
        if candidate == PROM:
            return PromCounter, PromEnum
        if candidate in OURS:
            return metrics.classes_for(self.core(candidate))
        raise Unavailable(f"{candidate} has no Counter/Enum")

    # -- metric subjects -----------------------------------------------------

    def counter(self, candidate: str) -> Any:
        """An unlabelled counter (floor: :class:`FloorMetric`)."""
        if candidate == FLOOR:
            return FloorMetric()
        counter_cls, _ = self.classes(candidate)
        return counter_cls("bench_events", "Events.", registry=CollectorRegistry())

    def parent(self, candidate: str) -> Any:
        """A counter with one label whose child ``'x'`` already exists."""
        if candidate == FLOOR:
            return FloorMetric()
        counter_cls, _ = self.classes(candidate)
        parent = counter_cls("bench_events", "Events.", ["kind"], registry=CollectorRegistry())
        parent.labels("x")
        return parent

    def child(self, candidate: str) -> Any:
        """The ``'x'`` child of :meth:`parent`."""
        if candidate == FLOOR:
            return FloorMetric()
        return self.parent(candidate).labels("x")

    def enum(self, candidate: str) -> Any:
        """An unlabelled enum over idle/running/stopped."""
        if candidate == FLOOR:
            return FloorMetric()
        _, enum_cls = self.classes(candidate)
        return enum_cls("bench_state", "State.", states=list(STATES), registry=CollectorRegistry())

    def scrape_target(self, candidate: str, metrics_count: int) -> ScrapeTarget:
        """``metrics_count`` unlabelled counters in a private registry."""
        if candidate not in SCRAPE_CANDIDATES:
            raise Unavailable(f"{candidate} has no scrape")
        counter_cls, _ = self.classes(candidate)
        registry = CollectorRegistry()
        counters = [counter_cls(f"bench_m{i}", f"Metric {i}.", registry=registry) for i in range(metrics_count)]
        for counter in counters:
            counter.inc()
        return ScrapeTarget(registry, counters)

    # -- handler subjects ------------------------------------------------------

    def handler(self, candidate: str, activated: bool) -> Any:
        """An ``OpenCTIMetricHandler``; activated ones are built once per process.

        All handlers register in the default REGISTRY, as in production.  Two
        handlers with identical metric names cannot both do that (pycti's
        duplicate-timeseries error), so each candidate gets its own namespace
        (``bench_<candidate>``): names change nothing on the hot path, which
        is a dict lookup plus the metric's own ``inc``/``state``.
        """
        if candidate == FLOOR:
            return FloorHandler()
        cls = self._handler_class(candidate)
        if not activated:
            return self._construct(candidate, cls, False)
        with _ACTIVE_LOCK:
            key = f"{candidate}:{cls.__module__}:{cls.__qualname__}"
            if key not in _ACTIVE_HANDLERS:
                _ACTIVE_HANDLERS[key] = self._construct(candidate, cls, True)
            return _ACTIVE_HANDLERS[key]

    def _handler_class(self, candidate: str) -> Any:
        if candidate == PYCTI:
            if self.pycti_module is None and self.pycti_loader is not None:
                loader, self.pycti_loader = self.pycti_loader, None
                self.pycti_module, self.pycti_reason = loader()
            if self.pycti_module is None:
                raise Unavailable(self.pycti_reason)
            return self.pycti_module.OpenCTIMetricHandler
        if candidate in OURS:
            core = self.core(candidate)
            try:
                opencti = importlib.import_module("fastmetrics.opencti")
            except ImportError as exc:
                raise Unavailable(f"fastmetrics.opencti not importable ({exc})") from None
            return opencti.handler_class_for(core)
        raise Unavailable(f"{candidate} has no OpenCTIMetricHandler")

    @staticmethod
    def _construct(candidate: str, cls: Any, activated: bool) -> Any:
        namespace, subsystem = f"bench_{candidate}", "connector"
        if candidate == PYCTI:
            # pycti's own signature; port 0 lets the OS pick a free port for
            # the 0.0.0.0 server its constructor starts.
            return cls(NullLogger(), activated, namespace, subsystem, 0)
        port = free_port() if activated else 9095
        return cls(NullLogger(), activated, namespace, subsystem, port, addr="127.0.0.1")
