"""prometheus_client-compatible ``Counter`` and ``Enum`` on the sharded core.

Naming, validation, errors, label handling, registration and exposition follow
``prometheus_client.metrics`` (0.20 to 0.26) exactly, reusing its own validators, so
swapping the import changes nothing but speed.  Each metric is a collector
(``describe()`` / ``collect()``) registered in a ``CollectorRegistry`` like the
originals; ``collect()`` folds the per-thread shards into the same ``Metric``
families prometheus_client builds, so every exporter renders identical bytes.

Thread-safety: ``inc``, ``state`` and ``labels`` on an existing child are
lock-free; creating or removing children takes one process-wide lock (held
across ``fork()`` so a child process never inherits it locked).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from types import ModuleType
from typing import (TYPE_CHECKING, Any, Dict, Iterable, NamedTuple, Optional, Protocol, Sequence, Tuple, Type,
                    TypeVar, Union, cast)

import prometheus_client
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.context_managers import ExceptionCounter
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar, Sample

from . import _core, _fork, _upstream
from ._core import stats
from ._upcalls import CounterUpcalls, MetricUpcalls

__all__ = ["Counter", "Enum", "disable_created_metrics", "enable_created_metrics", "shard_stats"]

T = TypeVar("T", bound="_MetricWrapper")

disable_created_metrics = _upstream.disable_created_metrics
enable_created_metrics = _upstream.enable_created_metrics


# Guards creating/removing label children and reset (never the hot path).
# Lock order: this lock, then a core's own lock (slot allocation).
_children_lock = threading.Lock()

# fork(): held across it (rank METRICS in fastmetrics._fork, which owns the
# order of every Python lock), so a child never inherits it mid-update.
def _lock_children() -> None:
    _children_lock.acquire()


_fork.register(_fork.METRICS, _lock_children, _children_lock.release, _children_lock.release)


class SeriesMeta(NamedTuple):
    """What a series is, for exporters that never saw the metric object (the
    multiprocess files): ``type`` is ``"counter"`` or ``"stateset"``."""

    type: str
    name: str
    documentation: str
    unit: str
    labelnames: Tuple[str, ...]
    labelvalues: Tuple[str, ...]
    states: Tuple[str, ...]      # enums only


class Recorder(Protocol):
    """A listener told of every metric value's life (multiprocess mode's
    metadata writer).  ``check_*`` run before anything is allocated and raise
    ``ValueError`` to refuse; the others run after the value exists and may
    raise ``MemoryError``/``OSError`` (the metric is then not created, or a
    ``reset()`` changes nothing)."""

    def check_strings(self, what: str, strings: Iterable[Any]) -> None: ...
    def check_labelvalues(self, values: Iterable[str]) -> None: ...
    def check_states(self, states: Iterable[Any]) -> None: ...
    def counter_slot(self, metric: _MetricWrapper, slot: int) -> None: ...
    def enum_slot(self, metric: _MetricWrapper, slot: int) -> None: ...


_recorder: Optional[Recorder] = None


def set_recorder(recorder: Optional[Recorder]) -> None:
    """Install (or remove, with None) the one :class:`Recorder`.  Call before
    any metric exists: values created earlier were never recorded."""
    global _recorder
    _recorder = recorder


def shard_stats() -> Dict[str, int]:
    """Shard-store counters: ``shards_total`` (created: exclusive + stripes),
    ``shards_live`` (exclusive ones owned by a running thread), ``chunks``,
    ``slots_used``, ``slots_free``, the bounds ``exclusive_max`` and
    ``stripes_max``, ``stripes`` (created), ``threads_live`` (threads holding
    a ticket) and ``stripe_threads`` (those of them on a stripe)."""
    return stats()


if TYPE_CHECKING:   # the upcall contract the core calls, for type checkers only
    _WrapperBase = MetricUpcalls
else:
    _WrapperBase = object


class _MetricWrapper(_WrapperBase):
    """The prometheus_client ``MetricWrapperBase`` contract, minus the hot path
    (``labels`` fast path, ``inc``, ``state`` come from the core base class)."""

    _type: str = ""
    _reserved_labelnames: Sequence[str] = ()

    if TYPE_CHECKING:   # supplied by the core base class (fastmetrics._core_py.MetricCore is the contract)
        def _init_parent(self, labelnames: Sequence[str]) -> None: ...
        def _child_added(self, key: Tuple[str, ...], child: Any) -> None: ...
        def _child_removed(self, key: Tuple[str, ...]) -> None: ...
        def _children_cleared(self) -> None: ...
        def _share_value(self, other: Any) -> None: ...
        def _instance_dict(self) -> Optional[Dict[str, Any]]: ...
        @property
        def _metrics(self) -> Dict[Tuple[str, ...], Any]: ...

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
        registry: Optional[CollectorRegistry] = REGISTRY,
        _labelvalues: Optional[Sequence[str]] = None,
    ) -> None:
        self._original_name = name
        self._namespace = namespace
        self._subsystem = subsystem
        self._name = _upstream.build_full_name(self._type, name, namespace, subsystem, unit)
        if _recorder is not None and not _labelvalues:
            labelnames = tuple(labelnames)
            _recorder.check_strings("metric name", (self._name,))
            _recorder.check_strings("label name", labelnames)
            _recorder.check_strings("documentation", (documentation,))
        self._labelnames = _upstream.validate_labelnames(self, labelnames)
        self._labelvalues = tuple(_labelvalues or ())
        self._kwargs: Dict[str, Any] = {}
        self._documentation = documentation
        self._unit = unit

        _upstream.validate_metric_name(self._name)

        if self._is_parent():
            self._init_parent(self._labelnames)

        if self._is_observable():
            self._metric_init()

        if not self._labelvalues and registry:
            registry.register(self)

    def _metric_init(self) -> None:
        raise NotImplementedError

    def _is_observable(self) -> bool:
        return not self._labelnames or bool(self._labelnames and self._labelvalues)

    def _raise_if_not_observable(self) -> None:
        if not self._is_observable():
            raise ValueError(f"{self._type} metric is missing label values")

    def _is_parent(self) -> bool:
        return bool(self._labelnames and not self._labelvalues)

    def _get_metric(self) -> Metric:
        return Metric(self._name, self._documentation, self._type, self._unit)

    def describe(self) -> Iterable[Metric]:
        return [self._get_metric()]

    def collect(self) -> Iterable[Metric]:
        metric = self._get_metric()
        name = self._name
        samples = metric.samples
        for suffix, labels, value, timestamp, exemplar in self._samples():
            samples.append(Sample(name + suffix, labels, value, timestamp, exemplar))
        return [metric]

    def series_meta(self) -> SeriesMeta:
        """This value's name, help, unit, labels and states (for exporters
        that never see the object).  O(labels + states); thread-safe."""
        states = tuple(str(s) for s in getattr(self, "_states", ()) or ())
        kind = "stateset" if self._type == "stateset" else "counter"
        return SeriesMeta(kind, self._name, self._documentation, self._unit, tuple(self._labelnames),
                          tuple(self._labelvalues), states)

    def __str__(self) -> str:
        return f"{self._type}:{self._name}"

    def __copy__(self: T) -> T:
        """``copy.copy``: as prometheus_client's shallow copy, a metric that
        counts into the same value (``reset()`` of either resets both) and
        shares the children, not registered.  An enum copy shares the state
        too (upstream's has its own; see README)."""
        cls = type(self)
        new: T = cls.__new__(cls)
        state = self._instance_dict()   # the twin's fields, or attributes users set
        if state:
            new.__dict__.update(state)
        for klass in cls.__mro__:
            for name in klass.__dict__.get("__slots__", ()):
                if not name.startswith("__") and hasattr(self, name):
                    setattr(new, name, getattr(self, name))
        with _children_lock:
            self._share_value(new)
        return new

    def _no_value(self) -> AttributeError:
        """prometheus_client's error for ``_value`` of a labelled parent (it has none)."""
        return upstream_attribute_error(self, "_value")

    def __repr__(self) -> str:
        metric_type = type(self)
        return f"{metric_type.__module__}.{metric_type.__name__}({self._name})"

    # -- labels: the slow path behind the core's lock-free cache hit ---------------

    def _labels_slow(self: T, labelvalues: Tuple[Any, ...], labelkwargs: Dict[str, Any]) -> T:
        if not self._labelnames:
            raise ValueError(f"No label names were set when constructing {self}")
        if self._labelvalues:
            raise ValueError(f"{self} already has labels set ({dict(zip(self._labelnames, self._labelvalues))}); "
                             "can not chain calls to .labels()")
        if labelvalues and labelkwargs:
            raise ValueError("Can't pass both *args and **kwargs")
        if labelkwargs:
            if sorted(labelkwargs) != sorted(self._labelnames):
                raise ValueError("Incorrect label names")
            key = tuple(str(labelkwargs[name]) for name in self._labelnames)
        else:
            if len(labelvalues) != len(self._labelnames):
                raise ValueError("Incorrect label count")
            key = tuple(str(value) for value in labelvalues)
        children = self._metrics
        child: Optional[T] = children.get(key)
        if child is not None:
            return child
        if _recorder is not None:
            _recorder.check_labelvalues(key)   # before anything is allocated or written
        with _children_lock:
            child = children.get(key)
            if child is None:
                child_kwargs = dict(self._kwargs)
                child = self.__class__(
                    self._original_name,
                    documentation=self._documentation,
                    labelnames=self._labelnames,
                    namespace=self._namespace,
                    subsystem=self._subsystem,
                    unit=self._unit,
                    _labelvalues=key,
                    **child_kwargs,
                )
                self._child_added(key, child)
            return child

    def remove(self, *labelvalues: Any) -> None:
        """Remove the given labelset from the metric."""
        _warn_multiprocess_removal()
        if not self._labelnames:
            raise ValueError(f"No label names were set when constructing {self}")
        if len(labelvalues) != len(self._labelnames):
            raise ValueError(f"Incorrect label count (expected {len(self._labelnames)}, got {labelvalues})")
        key = tuple(str(value) for value in labelvalues)
        strict = _upstream.removing_absent_raises()
        with _children_lock:
            if strict and key not in self._metrics:
                raise KeyError(key)
            self._child_removed(key)

    def remove_by_labels(self, labels: Dict[str, str]) -> None:
        """Remove all series whose labelset partially matches ``labels`` (as
        prometheus_client 0.24+ does; available with any version)."""
        _warn_multiprocess_removal()
        if not self._labelnames:
            raise ValueError(f"No label names were set when constructing {self}")
        if not isinstance(labels, dict):
            raise TypeError("labels must be a dict of {label_name: label_value}")
        if not labels:
            return
        invalid = [k for k in labels if k not in self._labelnames]
        if invalid:
            raise ValueError(f"Unknown label names: {invalid}; expected {self._labelnames}")
        pos_filter = {self._labelnames.index(k): str(v) for k, v in labels.items()}
        with _children_lock:
            children = self._metrics
            for key in list(children):
                if all(key[pos] == want for pos, want in pos_filter.items()):
                    self._child_removed(key)

    def clear(self) -> None:
        """Remove all labelsets from the metric (nothing to do without labels,
        as in prometheus_client 0.26; earlier versions raise AttributeError)."""
        if not self._labelnames:
            return
        if _upstream_multiprocess():
            warnings.warn("Clearing labels has not been implemented in multi-process mode yet", UserWarning,
                          stacklevel=2)
        with _children_lock:
            self._children_cleared()

    # -- exposition -------------------------------------------------------------

    def _samples(self) -> Iterable[Tuple[str, Dict[str, str], float, Any, Any]]:
        if self._is_parent():
            return self._multi_samples()
        return self._child_samples()

    def _multi_samples(self) -> Iterable[Tuple[str, Dict[str, str], float, Any, Any]]:
        children = self._metrics.copy()
        labelnames = self._labelnames
        for key, child in children.items():
            series_labels = list(zip(labelnames, key))
            for suffix, sample_labels, value, timestamp, exemplar in child._child_samples():
                yield suffix, dict(series_labels + list(sample_labels.items())), value, timestamp, exemplar

    def _child_samples(self) -> Iterable[Tuple[str, Dict[str, str], float, Any, Any]]:
        raise NotImplementedError


def _upstream_multiprocess() -> bool:
    """Whether prometheus_client's multiprocess variable is set (its test, in
    remove/clear, which warn that the series stay in the files)."""
    return "prometheus_multiproc_dir" in os.environ or "PROMETHEUS_MULTIPROC_DIR" in os.environ


def _warn_multiprocess_removal() -> None:
    if _upstream_multiprocess():   # upstream's words (sic: two spaces)
        warnings.warn("Removal of labels has not been implemented in  multi-process mode yet.", UserWarning,
                      stacklevel=3)


class _CounterValueView:
    """``counter._value`` as prometheus_client exposes it (``get()``), for code and
    tests that read it directly."""

    __slots__ = ("_counter",)

    def __init__(self, counter: _CounterAPI) -> None:
        self._counter = counter

    def get(self) -> float:
        return self._counter._get()

    def get_exemplar(self) -> Optional[Exemplar]:
        return self._counter._exemplar


if TYPE_CHECKING:
    class _CounterBase(_MetricWrapper, CounterUpcalls):
        pass
else:
    _CounterBase = _MetricWrapper


class _CounterAPI(_CounterBase):
    """Python-level half of ``Counter`` (the core base supplies inc/labels)."""

    _type = "counter"

    if TYPE_CHECKING:   # supplied by the core base class (fastmetrics._core_py.CounterCore is the contract)
        def _init_value(self) -> None: ...
        def _slot_index(self) -> int: ...
        def _get(self) -> float: ...
        def _spare_slot(self) -> int: ...
        def _reset_value(self) -> None: ...

    def _metric_init(self) -> None:
        self._exemplar: Optional[Exemplar] = None
        self._init_value()
        self._created = time.time()
        if _recorder is not None:
            _recorder.counter_slot(self, self._slot_index())

    def collect(self) -> Iterable[Metric]:
        """One family; O(children x live shards).  Builds each Sample once
        (the generic path builds a tuple, then a Sample)."""
        metric = self._get_metric()
        add = metric.samples.append
        total_name, created_name = self._name + "_total", self._name + "_created"
        use_created = _upstream.use_created()
        if not self._labelnames:
            add(Sample(total_name, {}, self._get(), None, self._exemplar))
            if use_created:
                add(Sample(created_name, {}, self._created, None, None))
            return [metric]
        labelnames = self._labelnames
        for key, child in self._metrics.copy().items():
            labels = dict(zip(labelnames, key))
            add(Sample(total_name, labels, child._get(), None, child._exemplar))
            if use_created:
                add(Sample(created_name, dict(labels), child._created, None, None))
        return [metric]

    def _set_exemplar(self, exemplar: Dict[str, str], amount: float) -> None:
        _upstream.validate_exemplar(exemplar)
        self._exemplar = Exemplar(exemplar, amount, time.time())

    @property
    def _value(self) -> _CounterValueView:
        if self._is_parent():
            raise self._no_value()
        return _CounterValueView(self)

    def reset(self) -> None:
        """Reset to zero (and ``_created`` to now), for a logical process restart.

        An increment racing with the reset may land on either side of it;
        every increment made after it returns counts.  Memory stays flat
        however often it runs (a counter alternates between two slots).
        ``MemoryError``/``OSError`` (no slot left, or the multiprocess file
        cannot take the spare slot's metadata) leave the counter unchanged."""
        if self._is_parent():   # upstream: self._value.set(0) on a parent
            raise self._no_value()
        with _children_lock:
            if self._slot_index() < 0:
                return
            spare = self._spare_slot()
            if _recorder is not None:
                _recorder.counter_slot(self, spare)   # before the swap: no unseen slot
            self._reset_value()
            self._created = time.time()

    def count_exceptions(
        self, exception: Union[Type[BaseException], Tuple[Type[BaseException], ...]] = Exception
    ) -> ExceptionCounter:
        """Count exceptions leaving a block or function (context manager or decorator)."""
        self._raise_if_not_observable()
        # ExceptionCounter only calls the counter's inc(): ours stands in for upstream's.
        return ExceptionCounter(cast("prometheus_client.Counter", self), exception)


class _EnumAPI(_MetricWrapper):
    """Python-level half of ``Enum`` (the core base supplies state/labels)."""

    _type = "stateset"

    if TYPE_CHECKING:   # supplied by the core base class (fastmetrics._core_py.EnumCore is the contract)
        def _init_value(self, states: Iterable[str]) -> None: ...
        def _slot_index(self) -> int: ...
        def _get_index(self) -> int: ...

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
        registry: Optional[CollectorRegistry] = REGISTRY,
        _labelvalues: Optional[Sequence[str]] = None,
        states: Optional[Sequence[str]] = None,
    ) -> None:
        if name in labelnames:
            raise ValueError(f"Overlapping labels for Enum metric: {name}")
        if not states:
            raise ValueError(f"No states provided for Enum metric: {name}")
        self._states = states
        super().__init__(
            name=name,
            documentation=documentation,
            labelnames=labelnames,
            namespace=namespace,
            subsystem=subsystem,
            unit=unit,
            registry=registry,
            _labelvalues=_labelvalues,
        )
        self._kwargs["states"] = states

    def _metric_init(self) -> None:
        if _recorder is not None:
            _recorder.check_states(self._states)
        self._init_value(self._states)
        if _recorder is not None:
            _recorder.enum_slot(self, self._slot_index())

    @property
    def _value(self) -> int:
        if self._is_parent():
            raise self._no_value()
        return self._get_index()

    def _child_samples(self) -> Iterable[Tuple[str, Dict[str, str], float, Any, Any]]:
        current = self._get_index()
        name = self._name
        return [("", {name: s}, 1 if i == current else 0, None, None) for i, s in enumerate(self._states)]


_COUNTER_DOC = """A monotonically increasing count, sharded per thread.

    Same constructor, methods and errors as ``prometheus_client.Counter``.
    ``inc(amount=1)`` is lock-free and O(1): it adds to the calling thread's own
    shard.  A scrape sums the shards (O(live threads) per child), so readings
    never go backwards.  Integer totals are exact up to 2**53.  NaN increments
    are rejected with the negative-amount ``ValueError``.
    """

_ENUM_DOC = """Which of a fixed set of states is current; one word per child.

    Same constructor, methods and errors as ``prometheus_client.Enum``; states are
    exposed in declaration order.  ``state(s)`` is a dict lookup plus an atomic
    store, lock-free; an unknown state raises ``ValueError`` (``"'s' is not in list"``).
    """

# Every attribute the public classes set, in __slots__: with the C core the
# instance dict is never created, which CPython 3.12+ needs to specialise
# ``o.inc`` / ``o.state`` (LOAD_ATTR_METHOD_LAZY_DICT; see _core_c.pxd).
# tests/test_specialisation.py checks that nothing else lands in the dict.
_WRAPPER_SLOTS = ("_original_name", "_namespace", "_subsystem", "_name", "_labelnames", "_labelvalues", "_kwargs",
                  "_documentation", "_unit")
_COUNTER_SLOTS = (*_WRAPPER_SLOTS, "_exemplar", "_created")
_ENUM_SLOTS = (*_WRAPPER_SLOTS, "_states")


_HEAPTYPE = 1 << 9   # Py_TPFLAGS_HEAPTYPE: a class made by a class statement


def slots_for(base: type, names: Tuple[str, ...]) -> Tuple[str, ...]:
    """The ``__slots__`` of a public class over the core class ``base``:
    ``names`` and ``__weakref__`` (weak references work as on
    prometheus_client's metrics) over a C core; none over a twin, whose
    fields live in the instance dict anyway (slots would only cost it
    CPython 3.13's inline values)."""
    if base.__flags__ & _HEAPTYPE:
        return ()
    return (*names, "__weakref__")


def upstream_attribute_error(obj: object, name: str) -> AttributeError:
    """The ``AttributeError`` CPython raises for a missing attribute of an
    ordinary object (prometheus_client's and pycti's), with ``name``/``obj``
    set where the interpreter has them (3.10+)."""
    error = AttributeError(f"'{type(obj).__name__}' object has no attribute '{name}'")
    if sys.version_info >= (3, 10):
        error.name, error.obj = name, obj
    return error

_classes: Dict[str, Tuple[type, type]] = {}
_classes_lock = threading.Lock()


def classes_for(core: ModuleType) -> Tuple[type, type]:
    """``(Counter, Enum)`` on ``core`` (``_core_c`` or ``_core_py``): the one way
    the public classes are made, for the selected core (``fastmetrics.Counter``)
    and for tests and benchmarks that run both implementations in one
    process.  Cached: one pair per implementation."""
    with _classes_lock:
        pair = _classes.get(core.implementation)
        if pair is None:
            # The base is the core chosen at run time (C or twin): type checkers see the
            # TYPE_CHECKING classes at the end of this module instead.
            class Counter(core.CounterCore, _CounterAPI, prometheus_client.Counter):  # type: ignore[name-defined,misc]  # run-time base
                __slots__ = slots_for(core.CounterCore, _COUNTER_SLOTS)
                __doc__ = _COUNTER_DOC
                __module__ = __name__
                __qualname__ = "Counter"

            class Enum(core.EnumCore, _EnumAPI, prometheus_client.Enum):  # type: ignore[name-defined,misc,override]  # run-time base, as above
                __slots__ = slots_for(core.EnumCore, _ENUM_SLOTS)
                __doc__ = _ENUM_DOC
                __module__ = __name__
                __qualname__ = "Enum"

            core.bind_hot_methods(Counter, Enum)
            pair = _classes[core.implementation] = (Counter, Enum)
        return pair


if TYPE_CHECKING:  # what the selector returns, as type checkers see it (the twin's API)
    # prometheus_client's classes are bases at run time too: a fastmetrics metric
    # type-checks wherever theirs is expected.  The ignores are about private
    # members only (ours are the core's, with other types).
    class Counter(_core.CounterCore, _CounterAPI, prometheus_client.Counter):  # type: ignore[misc]
        pass

    class Enum(_core.EnumCore, _EnumAPI, prometheus_client.Enum):  # type: ignore[misc,override]
        pass
else:
    Counter, Enum = classes_for(_core.core)
