"""A drop-in, faster ``pycti.OpenCTIMetricHandler`` (pycti 7.261026.0).

Every observable behaviour of pycti's class is kept: constructor signature and
``activated`` truth-testing, the ``"Exposing metrics on port"`` log line, the
HTTP server on the default ``REGISTRY``, the eight metrics (names, help texts,
order, keys of ``_metrics``), the ``connector_logger.error`` calls and their
meta dicts, and every exception.  Only the speed differs: ``inc`` / ``state``
on the built-in names are one dict lookup and a lock-free update in the core
(:class:`fastmetrics._dispatch_py.Dispatcher`, or its C twin) instead of pycti's lookup, type check
and locked update.

The one extension is the keyword-only ``addr`` (default ``"0.0.0.0"``, as
pycti) to bind the metrics server to a given interface.

Switch a connector over before it creates its ``OpenCTIConnectorHelper``::

    import fastmetrics.opencti
    fastmetrics.opencti.install()

fastmetrics does not depend on pycti: this module imports it only in
:func:`install` / :func:`uninstall`.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Tuple, Type

import prometheus_client
from prometheus_client import start_http_server

from . import _core, metrics
from ._upcalls import DispatchUpcalls

__all__ = ["OpenCTIMetricHandler", "install", "uninstall"]

# (key in _metrics, name passed to the constructor, help text), in pycti's order.
_COUNTERS: Tuple[Tuple[str, str, str], ...] = (
    ("bundle_send", "bundles_sent_total", "Number of bundles sent"),
    ("record_send", "records_sent_total", "Number of records (objects per bundle) sent"),
    ("run_count", "runs_total", "Number of runs"),
    ("ping_api_count", "ping_api_total", "Number of pings to the API"),
    ("ping_api_error", "ping_api_errors_total", "Number of errors when pinging the API"),
    ("error_count", "errors_total", "Number of errors"),
    ("client_error_count", "client_errors_total", "Number of client errors"),
)
_STATE = ("state", "state", "State of connector")
_STATES = ["idle", "running", "stopped"]


if TYPE_CHECKING:   # the upcall contract the core calls, for type checkers only
    _HandlerBase = DispatchUpcalls
else:
    _HandlerBase = object


class _HandlerAPI(_HandlerBase):
    """Python half of the handler: construction and pycti's slow paths.

    ``inc`` / ``state`` and the ``activated`` property come from the core base
    class, which calls ``_inc_miss`` / ``_state_miss`` for any name that is not
    one of the built-in metrics of the right kind (or when ``_metrics`` was never
    built); those reproduce pycti's code path exactly, logging included.
    """

    _counter_class: Type[metrics.Counter]
    _enum_class: Type[metrics.Enum]
    _metrics_dict: Dict[str, Any]

    @property
    def _metrics(self) -> Dict[str, Any]:
        """pycti's ``_metrics`` (connectors may add their own metrics); set only
        when activated, else pycti's ``AttributeError``."""
        try:
            return self._metrics_dict
        except AttributeError:
            raise metrics.upstream_attribute_error(self, "_metrics") from None

    @_metrics.setter
    def _metrics(self, value: Dict[str, Any]) -> None:
        self._metrics_dict = value

    if TYPE_CHECKING:   # supplied by the core base class (fastmetrics._dispatch_py.Dispatcher is the contract)
        activated: Any
        def _set_dispatch(self, counters: Mapping[str, _core.CounterCore],
                          enums: Mapping[str, _core.EnumCore]) -> None: ...

    def __init__(
        self,
        connector_logger: Any,
        activated: Any = False,
        namespace: str = "",
        subsystem: str = "",
        port: int = 9095,
        *,
        addr: str = "0.0.0.0",
    ) -> None:
        self.activated = activated
        self.connector_logger = connector_logger
        if self.activated:
            self.connector_logger.info("Exposing metrics on port", {"port": port})
            start_http_server(port, addr=addr)
            # Registered one by one in pycti's order: a duplicate fails at the same metric.
            counters = {
                key: self._counter_class(name, documentation, namespace=namespace, subsystem=subsystem)
                for key, name, documentation in _COUNTERS
            }
            state_key, name, documentation = _STATE
            enums = {
                state_key: self._enum_class(
                    name, documentation, states=list(_STATES), namespace=namespace, subsystem=subsystem
                )
            }
            self._metrics = {**counters, **enums}
            # The core trusts these maps' types (no check on the hot path): only
            # metrics built here, on the same core, go in.
            self._set_dispatch(counters, enums)

    def _metric_exists(self, name: str, expected_type: Any) -> bool:
        """True if ``_metrics[name]`` exists and is an ``expected_type``; otherwise
        log why with ``connector_logger.error`` (pycti's messages) and return False.

        ``expected_type`` may be prometheus_client's ``Counter`` / ``Enum`` (or any
        class or tuple ``isinstance`` accepts), or fastmetrics' own classes.
        ``AttributeError`` when the handler was never activated, as in pycti.
        """
        if name not in self._metrics:
            self.connector_logger.error("Metric does not exist.", {"name": name})
            return False
        metric = self._metrics[name]
        if not isinstance(metric, expected_type):   # our classes derive from prometheus_client's
            self.connector_logger.error(
                "Metric not of expected type",
                {"name": name, "expected_type": expected_type},
            )
            return False
        return True

    def _inc_miss(self, name: str, n: float) -> None:
        """pycti's ``inc`` body, for a name the core's dispatch map does not hold."""
        if self._metric_exists(name, prometheus_client.Counter):
            self._metrics[name].inc(n)

    def _state_miss(self, state: str, name: str) -> None:
        """pycti's ``state`` body, for a name the core's dispatch map does not hold."""
        if self._metric_exists(name, prometheus_client.Enum):
            self._metrics[name].state(state)


_HANDLER_DOC = """Prometheus metrics of an OpenCTI connector; same API and behaviour as pycti's.

    ``OpenCTIMetricHandler(connector_logger, activated=False, namespace="",
    subsystem="", port=9095, *, addr="0.0.0.0")``.  When ``activated`` is truthy:
    logs ``info("Exposing metrics on port", {"port": port})``, starts
    prometheus_client's HTTP server for the default ``REGISTRY`` on
    ``(addr, port)`` (``OSError`` if taken; it is never stopped), then registers
    seven counters and the ``state`` enum in the default ``REGISTRY``
    (``ValueError`` for a duplicate, e.g. a second activated handler).  Not
    activated: only ``activated`` and ``connector_logger`` are set, no
    ``_metrics``, and ``inc`` / ``state`` do nothing.

    ``inc(name, n=1)`` adds ``n`` (int, float or bool; ``ValueError`` if
    negative) to the counter keyed ``name`` in ``_metrics``; ``state(state,
    name="state")`` sets the enum (``ValueError`` for an unknown state).  An
    unknown name, or one of the other kind, is logged with
    ``connector_logger.error`` and ignored.  Both are thread-safe and lock-free
    for the built-in names.

    ``_metrics`` is read by the fast path once, at construction: replacing one
    of its eight entries later is not seen by ``inc`` / ``state`` (adding new
    keys is, through the pycti slow path).
    """

_handler_classes: Dict[str, type] = {}
_handler_classes_lock = threading.Lock()


def handler_class_for(core: ModuleType) -> type:
    """``OpenCTIMetricHandler`` on ``core`` (``_core_c`` or ``_core_py``) with that
    core's dispatcher, ``Counter`` and ``Enum``: the one way the class is made,
    for the selected core and for tests and benchmarks that run both
    implementations in one process.  Cached: one class per implementation."""
    with _handler_classes_lock:
        cls = _handler_classes.get(core.implementation)
        if cls is None:
            counter, enum = metrics.classes_for(core)

            # The base is the dispatcher chosen at run time (C or twin): type checkers see
            # the TYPE_CHECKING class below instead.
            dispatch = _core.dispatch_for(core)
            dispatcher: type = dispatch.Dispatcher

            class OpenCTIMetricHandler(dispatcher, _HandlerAPI):  # type: ignore[misc]  # run-time base
                # Every attribute pycti's handler has, in a slot: the core's
                # instance dict stays empty, so CPython 3.12+ specialises
                # ``handler.inc`` (see fastmetrics._core_c.pxd).
                __slots__ = metrics.slots_for(dispatcher, ("connector_logger", "_metrics_dict"))
                __doc__ = _HANDLER_DOC
                __module__ = __name__
                __qualname__ = "OpenCTIMetricHandler"
                _counter_class = counter
                _enum_class = enum

            dispatch.bind_hot_methods(OpenCTIMetricHandler)
            cls = _handler_classes[core.implementation] = OpenCTIMetricHandler
        return cls


if TYPE_CHECKING:
    class OpenCTIMetricHandler(_core.Dispatcher, _HandlerAPI):
        pass
else:
    OpenCTIMetricHandler = handler_class_for(_core.core)


# -- switching pycti over ---------------------------------------------------------

# Every module that holds the name: pycti re-exports it, and the helper module
# imports it at load time (so patching only the defining module is not enough).
_PYCTI_MODULES = (
    "pycti",
    "pycti.connector.opencti_metric_handler",
    "pycti.connector.opencti_connector_helper",
)
_ATTR = "OpenCTIMetricHandler"
_originals: Dict[str, Any] = {}  # module name -> what install() replaced
_install_lock = threading.Lock()


def _import_pycti() -> List[ModuleType]:
    try:
        return [importlib.import_module(name) for name in _PYCTI_MODULES]
    except ModuleNotFoundError as exc:
        if exc.name != "pycti":
            raise
        raise ImportError(
            "fastmetrics.opencti.install() needs pycti, which is not installed "
            "(pip install pycti); fastmetrics itself does not depend on it"
        ) from exc


def install() -> None:
    """Make pycti use :class:`OpenCTIMetricHandler`: rebind the name in ``pycti``,
    ``pycti.connector.opencti_metric_handler`` and
    ``pycti.connector.opencti_connector_helper``.

    Call it before creating the ``OpenCTIConnectorHelper`` (its handler is
    created in the helper's constructor).  Idempotent; thread-safe; undone by
    :func:`uninstall`.  ``ImportError`` if pycti is not installed.
    """
    with _install_lock:
        for module in _import_pycti():
            if module.__name__ not in _originals:
                _originals[module.__name__] = getattr(module, _ATTR)
            setattr(module, _ATTR, OpenCTIMetricHandler)


def uninstall() -> None:
    """Restore what :func:`install` replaced (pycti's own class, or whatever was
    bound there).  Idempotent, thread-safe; a no-op if ``install`` never ran.
    Handlers already created keep their class."""
    with _install_lock:
        for name, original in _originals.items():
            module = sys.modules.get(name)
            if module is not None:
                setattr(module, _ATTR, original)
        _originals.clear()
