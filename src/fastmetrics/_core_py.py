"""Pure-Python twin of :mod:`fastmetrics._core_c`: same API, same semantics.

It is the reference model in the tests and what runs where the extension is not
built (``FASTMETRICS_NO_EXTENSIONS=1``).  The design mirrors the C store:

- each thread increments only its own shard (a list of floats, one per slot),
  found through :class:`threading.local`; no lock on the increment;
- a shard goes back to a pool, with its counts, when its thread's locals are
  destroyed, and the next thread adopts it;
- reads sum every shard's float for the slot.

Every structure shared between threads is a list or dict touched only with
operations that are atomic in CPython, with or without the GIL (``append``,
``pop``, item get/set); nothing relies on the GIL for correctness.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

implementation = "python"
MAX_SLOTS = 1 << 20

_NEGATIVE = "Counters can only be incremented by non-negative amounts."


class _Shard:
    """One thread's partial sums.  Only the owning thread writes ``values``."""

    __slots__ = ("values", "owner")

    def __init__(self) -> None:
        self.values: List[float] = []
        self.owner: Optional[object] = None  # the owning lease's token (never the lease:
                                             # that cycle would keep the lease alive)


class _Lease:
    """A thread's claim on a shard, held in its thread-locals.

    When the thread ends its locals are destroyed and ``__del__`` returns the
    shard to the pool (counts kept).  ``busy`` marks an increment in progress so
    that a signal handler re-entering ``inc`` on the same thread writes to a
    spare shard instead of racing with the interrupted read-modify-write.
    """

    __slots__ = ("shard", "busy", "token")

    def __init__(self, shard: _Shard) -> None:
        self.shard = shard
        self.busy = False
        self.token = object()
        shard.owner = self.token

    def __del__(self) -> None:
        shard = self.shard
        if shard.owner is self.token:
            shard.owner = None
            free = _free_shards
            if free is not None:  # None once the module is torn down at exit
                free.append(shard)


_all_shards: List[_Shard] = []    # append-only; scrapers iterate it
_free_shards: List[_Shard] = []   # pool; list.append / list.pop are atomic
_local = threading.local()
_slot_lock = threading.Lock()    # slot allocation (cold path)
_slots_issued = 0
_free_slots: List[int] = []       # __del__ appends without a lock


def _take_shard() -> _Shard:
    try:
        return _free_shards.pop()
    except IndexError:
        shard = _Shard()
        _all_shards.append(shard)
        return shard


def _lease() -> _Lease:
    try:
        return _local.lease  # type: ignore[no-any-return]
    except AttributeError:
        lease = _Lease(_take_shard())
        _local.lease = lease
        return lease


def _store_add(values: List[float], slot: int, amount: float) -> None:
    if slot >= len(values):
        values.extend([0.0] * (slot + 1 - len(values)))
    values[slot] += amount


def _fold(slot: int) -> float:
    total = 0.0
    for shard in _all_shards:
        values = shard.values
        if slot < len(values):
            total += values[slot]
    return total


def _amount(amount: Any) -> float:
    if amount.__class__ is float:
        a = amount
    elif isinstance(amount, int):
        a = float(amount)  # OverflowError beyond float range, as upstream
    else:
        if amount < 0:  # TypeError for non-numbers, as upstream
            raise ValueError(_NEGATIVE)
        total = 0.0
        total += amount  # upstream's `value += amount`: same TypeErrors
        a = float(total)
    if not a >= 0.0:  # negative, or NaN (would poison the total)
        raise ValueError(_NEGATIVE)
    return a


def _slot_alloc() -> int:
    global _slots_issued
    try:
        return _free_slots.pop()
    except IndexError:
        pass
    with _slot_lock:
        if _slots_issued >= MAX_SLOTS:
            raise MemoryError(f"fastmetrics: all {MAX_SLOTS} counter slots are in use")
        _slots_issued += 1
        return _slots_issued - 1


def _slot_free(slot: int) -> None:
    for shard in _all_shards:
        values = shard.values
        if slot < len(values):
            values[slot] = 0.0
    _free_slots.append(slot)


class MetricCore:
    """Label-child cache shared by counters and enums (see the C twin)."""

    _metrics_map: Optional[Dict[Any, Any]] = None
    _single_map: Optional[Dict[Any, Any]] = None
    _nlabels = 0

    def _init_parent(self, nlabels: int) -> None:
        self._metrics_map = {}
        self._single_map = {} if nlabels == 1 else None
        self._nlabels = nlabels

    def _child_added(self, key: Any, child: Any) -> None:
        self._metrics_map[key] = child  # type: ignore[index]
        if self._single_map is not None:
            self._single_map[key[0]] = child

    def _child_removed(self, key: Any) -> None:
        if self._single_map is not None:
            self._single_map.pop(key[0], None)
        self._metrics_map.pop(key, None)  # type: ignore[union-attr]

    def _children_cleared(self) -> None:
        if self._single_map is not None:
            self._single_map.clear()
        self._metrics_map.clear()  # type: ignore[union-attr]

    @property
    def _metrics(self) -> Dict[Any, Any]:
        if self._metrics_map is None:
            raise AttributeError("_metrics")
        return self._metrics_map

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        children = self._metrics_map
        if (children is not None and not labelkwargs and len(labelvalues) == self._nlabels
                and all(v.__class__ is str for v in labelvalues)):
            single = self._single_map
            child = single.get(labelvalues[0]) if single is not None else children.get(labelvalues)
            if child is not None:
                return child
        return self._labels_slow(labelvalues, labelkwargs)  # type: ignore[attr-defined]


class CounterCore(MetricCore):
    """A counter value: one slot, summed over every thread's shard on read."""

    _slot = -1
    _retired: Optional[List[int]] = None

    def __del__(self) -> None:
        if self._slot >= 0:
            _slot_free(self._slot)
            self._slot = -1
        for slot in self._retired or ():
            _slot_free(slot)

    def _init_value(self) -> None:
        if self._slot < 0:
            self._slot = _slot_alloc()

    def _add(self, amount: Any) -> None:
        slot = self._slot
        if slot < 0:
            raise ValueError(f"{self._type} metric is missing label values")  # type: ignore[attr-defined]
        a = _amount(amount)
        lease = _lease()
        if lease.busy:  # re-entered from a signal handler mid-increment
            spare = _take_shard()
            _store_add(spare.values, slot, a)
            _free_shards.append(spare)
            return
        lease.busy = True
        try:
            _store_add(lease.shard.values, slot, a)
        finally:
            lease.busy = False

    def inc(self, amount: Any = 1, exemplar: Optional[Dict[str, str]] = None) -> None:
        self._add(amount)
        if exemplar:
            self._set_exemplar(exemplar, amount)  # type: ignore[attr-defined]

    def _get(self) -> float:
        slot = self._slot
        if slot < 0:
            return 0.0
        return _fold(slot)

    def _reset_value(self) -> None:
        if self._slot < 0:
            return
        # Serialised by the caller (Counter.reset holds the children lock).
        old, self._slot = self._slot, _slot_alloc()
        if self._retired is None:
            self._retired = []
        self._retired.append(old)


class EnumCore(MetricCore):
    """An enum value: one attribute holding the index of the current state."""

    _index = 0
    _nstates = -1
    _state_index: Dict[Any, int] = {}
    _states_list: List[Any] = []

    def _init_value(self, states: Any) -> None:
        self._states_list = list(states)
        index: Dict[Any, int] = {}
        for i, s in enumerate(self._states_list):
            try:
                index.setdefault(s, i)
            except TypeError:
                pass
        self._state_index = index
        self._nstates = len(self._states_list)

    def _set(self, state: Any) -> None:
        if self._nstates < 0:
            raise ValueError(f"{self._type} metric is missing label values")  # type: ignore[attr-defined]
        try:
            index = self._state_index.get(state)
        except TypeError:
            index = None
        if index is None:
            index = self._states_list.index(state)
        self._index = index

    def state(self, state: Any) -> None:
        self._set(state)

    def _get_index(self) -> int:
        return self._index


class HandlerCore:
    """Name-dispatch hot path of the OpenCTI handler (see the C twin)."""

    _counter_map: Optional[Dict[Any, CounterCore]] = None
    _enum_map: Optional[Dict[Any, EnumCore]] = None
    _on = False

    @property
    def activated(self) -> Any:
        return self.__dict__.get("activated", False)

    @activated.setter
    def activated(self, value: Any) -> None:
        self.__dict__["activated"] = value
        self._on = bool(value)

    def _set_dispatch(self, counters: Dict[Any, CounterCore], enums: Dict[Any, EnumCore]) -> None:
        """Install the name -> metric maps, once, before the handler is shared."""
        if self._counter_map is not None:
            raise RuntimeError("dispatch maps are already installed")
        if not all(isinstance(c, CounterCore) for c in counters.values()):
            raise TypeError("counters must be fastmetrics counters")
        if not all(isinstance(e, EnumCore) for e in enums.values()):
            raise TypeError("enums must be fastmetrics enums")
        self._counter_map = dict(counters)
        self._enum_map = dict(enums)

    def inc(self, name: Any, n: Any = 1) -> None:
        if not self._on:
            return
        counters = self._counter_map
        if counters is not None:
            counter = counters.get(name)
            if counter is not None:
                counter._add(n)
                return
        self._inc_miss(name, n)  # type: ignore[attr-defined]

    def state(self, state: Any, name: Any = "state") -> None:
        if not self._on:
            return
        enums = self._enum_map
        if enums is not None:
            enum = enums.get(name)
            if enum is not None:
                enum._set(state)
                return
        self._state_miss(state, name)  # type: ignore[attr-defined]


def stats() -> Dict[str, int]:
    """Shard-store counters (see the C twin)."""
    shards = list(_all_shards)
    return {
        "shards_total": len(shards),
        "shards_live": sum(1 for s in shards if s.owner is not None),
        "chunks": sum(1 for s in shards if s.values),  # value arrays allocated
        "slots_used": _slots_issued - len(_free_slots),
        "slots_free": len(_free_slots),
    }


# Fork hooks, called by fastmetrics.metrics (the one place that registers them,
# so every lock is taken in one order: the children lock, then this one).
def _before_fork() -> None:
    _slot_lock.acquire()


def _after_fork_parent() -> None:
    _slot_lock.release()


def _after_fork_child() -> None:
    """Release the lock, and return the shards of threads that do not exist in
    the child to the pool, with their counts."""
    _slot_lock.release()
    lease = getattr(_local, "lease", None)
    current = lease.token if lease is not None else None
    for shard in _all_shards:
        if shard.owner is not None and shard.owner is not current:
            shard.owner = None
            _free_shards.append(shard)
