"""The calls the cores make *up* into the Python layer, declared in one place.

The cores (``_core_c`` / ``_core_py`` and ``_dispatch_c`` / ``_dispatch_py``)
hold only the hot path.  Whatever needs prometheus_client's behaviour
(validation, errors worded as upstream, creating children, exemplars) they
call on ``self``, which the subclass in :mod:`fastmetrics.metrics` or
:mod:`fastmetrics.opencti` implements.  These protocols are that contract:
the twins (the callers) and the Python layer (the implementers) both inherit
them for type checkers only, so mypy checks each side against it; a class
built on a core that lacks one fails its first cold path with
``AttributeError``.
"""

from __future__ import annotations

from typing import Any, Dict, Protocol, Tuple, TypeVar

__all__ = ["CounterUpcalls", "DispatchUpcalls", "MetricUpcalls"]

_Self = TypeVar("_Self", bound="MetricUpcalls")


class MetricUpcalls(Protocol):
    """Implemented by ``fastmetrics.metrics._MetricWrapper``."""

    _type: str   # "counter" or "stateset": names the metric kind in error messages

    def _labels_slow(self: _Self, labelvalues: Tuple[Any, ...], labelkwargs: Dict[str, Any]) -> _Self:
        """``labels()`` whenever the core's lock-free cache misses: validates,
        raises as prometheus_client does, creates the child (thread-safe) and
        returns it: a metric of ``self``'s class."""
        ...


class CounterUpcalls(MetricUpcalls, Protocol):
    """What a counter core calls besides; implemented by ``fastmetrics.metrics._CounterAPI``."""

    def _set_exemplar(self, exemplar: Dict[str, str], amount: float) -> None:
        """Validate and store ``inc``'s exemplar (only called when one is given)."""
        ...


class DispatchUpcalls(Protocol):
    """Implemented by a :class:`fastmetrics._dispatch_py.Dispatcher` subclass
    (``fastmetrics.opencti.OpenCTIMetricHandler``)."""

    def _inc_miss(self, name: str, n: float) -> None:
        """``inc(name, n)`` for a name that is not a dispatched counter."""
        ...

    def _state_miss(self, state: str, name: str) -> None:
        """``state(state, name)`` for a name that is not a dispatched enum."""
        ...
