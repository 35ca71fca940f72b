"""Pure-Python twin of :mod:`fastmetrics._core_c`: same API, same semantics.

It is the reference model in the tests and what runs where the extension is not
built (``FASTMETRICS_NO_EXTENSIONS=1``).  The design mirrors the C store:

- shards are chunks of 512 floats, one per slot, and bounded by the CPUs
  (:mod:`fastmetrics._shard_limits`): the first threads each increment an
  *exclusive* shard of their own, without a lock; the threads beyond share
  *stripes* (created at import), each increment under the stripe's small lock;
  a thread finds its shard through :class:`threading.local`;
- an exclusive shard goes back to a pool, with its counts, when its thread's
  locals are destroyed, and the next thread adopts it;
- reads sum every shard's float for the slot (O(shards), not threads);
- enum words live in a table of chunks indexed by the enum's slot;
- ``reset()`` swaps in a zeroed spare slot, waits until no other thread is
  inside an increment that may have read the old one (each thread's *ticket*
  has a ``seq`` that is odd while it increments; tickets are pooled), then
  zeroes the old one for next time;
- a chunk provider (the multiprocess arena, :mod:`fastmetrics._arena_py`) can
  supply chunks instead of the heap; the store reaches it only on its cold
  allocation paths and in fork (see the C twin's "Chunk providers").

Every structure shared between threads is a list or dict touched only with
operations that are atomic in CPython, with or without the GIL (``append``,
``pop``, item get/set); nothing relies on the GIL for correctness.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import weakref
from types import MappingProxyType
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple,
                    TypeVar, cast)

from . import _fork, _promfile_py
from ._shard_limits import shard_limits
from ._upcalls import CounterUpcalls, MetricUpcalls

implementation = "python"
CHUNK_BITS = 9
CHUNK_SLOTS = 1 << CHUNK_BITS
_CHUNK_MASK = CHUNK_SLOTS - 1
MAX_CHUNKS = 2048
MAX_SLOTS = CHUNK_SLOTS * MAX_CHUNKS
_CHUNK_BYTES = 8 * CHUNK_SLOTS


_NEGATIVE = "Counters can only be incremented by non-negative amounts."

Chunk = Any  # list of floats/ints, or a memoryview of the mapped file


class _Shard:
    """Partial sums.  An exclusive shard (``lock`` None) is written only by
    the thread that owns it; a stripe's words and chunks only under its
    ``lock``."""

    __slots__ = ("chunks", "lock", "owner")

    def __init__(self, lock: Optional[threading.Lock] = None) -> None:
        self.chunks: List[Optional[Chunk]] = []
        self.lock = lock
        self.owner: Optional[object] = None  # the owning lease's token (never the lease:
                                             # that cycle would keep the lease alive)


class _Ticket:
    """A thread's increment record: ``seq`` (owner-only writes) is odd while
    the thread is inside an increment.  Pooled when the thread ends."""

    __slots__ = ("owner", "seq", "stripe")

    def __init__(self) -> None:
        self.seq = 0
        self.owner: Optional[object] = None
        self.stripe = False   # its lease's shard is a stripe


class _Lease:
    """A thread's claim on a ticket and a shard (exclusive, or a stripe),
    held in its thread-locals.

    When the thread ends its locals are destroyed and ``__del__`` returns the
    ticket and an exclusive shard to their pools (counts kept).  ``busy``
    marks an increment in progress: a signal handler re-entering ``inc`` on
    the same thread appends to ``pending`` instead of racing with the
    interrupted read-modify-write (or waiting for the stripe lock it holds),
    and the interrupted increment applies it before returning.
    """

    __slots__ = ("busy", "pending", "shard", "ticket", "token")

    def __init__(self, ticket: _Ticket, shard: _Shard) -> None:
        self.ticket = ticket
        self.shard = shard
        self.busy = False
        # (counter, amount): the slot is read when the increment is applied,
        # inside the ticket's seq bracket, so a concurrent reset waits for it
        self.pending: List[Tuple[CounterCore, float]] = []
        self.token = object()
        ticket.owner = self.token
        ticket.stripe = shard.lock is not None
        if shard.lock is None:
            shard.owner = self.token

    def __del__(self) -> None:
        shard, ticket = self.shard, self.ticket
        if shard.owner is self.token:
            shard.owner = None
            free = _free_shards
            if free is not None:  # None once the module is torn down at exit
                free.append(shard)
        if ticket.owner is self.token:
            ticket.owner = None
            tickets = _free_tickets
            if tickets is not None:
                tickets.append(ticket)


_limits = shard_limits()          # ValueError for a bad FASTMETRICS_EXCLUSIVE_SHARDS
_stripes: List[_Shard] = [_Shard(threading.Lock()) for _ in range(_limits.stripes)]
_all_shards: List[_Shard] = list(_stripes)   # append-only; scrapers iterate it
_free_shards: List[_Shard] = []   # pool of exclusive shards; list.append / list.pop are atomic
_exclusive_budget: List[None] = [None] * _limits.exclusive   # one item per exclusive shard not yet made
_probe = itertools.count()        # round-robin stripe choice (a duplicate value is harmless)
_all_tickets: List[_Ticket] = []  # append-only; _quiesce iterates it
_free_tickets: List[_Ticket] = []
if TYPE_CHECKING:
    class _Locals(threading.local):
        lease: _Lease

    _local = _Locals()
else:
    _local = threading.local()   # exactly threading.local: its attribute reads take a fast path
_slot_lock = threading.Lock()    # slot allocation and enum words (cold paths)
_slots_issued = 0
_free_slots: List[int] = []       # __del__ appends without a lock
_words: List[Chunk] = [None] * MAX_CHUNKS  # enum words by slot >> CHUNK_BITS (None: not yet ensured)


class ChunkProvider(Protocol):
    """A source of persistent chunks (the C twin's ``fm_provider``).  ``chunk``
    and ``words`` run on cold paths (``words`` with the store's lock held:
    lock order store, then provider) and raise ``MemoryError``/``OSError``
    when they cannot supply; the fork hooks run inside the store's."""

    def chunk(self, c: int) -> Chunk: ...
    def words(self, c: int, initial: Optional[Chunk]) -> Chunk: ...
    def before_fork(self) -> None: ...
    def after_fork_parent(self) -> None: ...
    def after_fork_child(self) -> None: ...


# Set once, before any slot exists (set_provider); read without a lock.
_provider: Optional[ChunkProvider] = None
_stamp_bits = 0                   # 0: enum words hold the bare index


def set_provider(provider: ChunkProvider, stamp_bits: int) -> None:
    """Take chunks from ``provider`` from now on; enum words carry a
    wall-clock stamp (ms) above ``stamp_bits`` of state.  ``RuntimeError``
    once a slot exists (its chunks would be on the heap)."""
    global _provider, _stamp_bits
    with _slot_lock:
        if _slots_issued or _provider is not None:
            raise RuntimeError("fastmetrics: enable multiprocess mode before creating any metric")
        _stamp_bits, _provider = stamp_bits, provider


# The prometheus_client-compatible mode (PROMETHEUS_MULTIPROC_DIR), the twin
# of _core_c's pf_* functions: counters go to _promfile_py's per-thread files
# instead of the shards (set once, before any slot exists).
_promfile_on = False


def pf_enable(directory: str) -> None:
    """Write counters to prometheus_client's files in ``directory`` from now
    on.  ``RuntimeError`` once a metric exists."""
    global _promfile_on
    with _slot_lock:
        if _slots_issued or _provider is not None or _promfile_on:
            raise RuntimeError("fastmetrics: PROMETHEUS_MULTIPROC_DIR must be set before any metric is created "
                               "(and not together with fastmetrics' own multiprocess mode)")
        _promfile_py.enable(directory)
        _promfile_on = True


def _pf_no_enum_hook(slot: int, index: int) -> None:
    raise RuntimeError("fastmetrics: no enum writer for the prometheus_client-compatible mode")


_pf_enum_hook: Callable[[int, int], None] = _pf_no_enum_hook


def pf_set_enum_hook(hook: Callable[[int, int], None]) -> None:
    """``hook(slot, index)`` runs after every enum state store in this mode:
    it writes the files."""
    global _pf_enum_hook
    _pf_enum_hook = hook


def pf_set_key(slot: int, key: bytes) -> None:
    """Record ``slot``'s series key (prometheus_client's ``mmap_key``, utf-8)."""
    _promfile_py.set_key(slot, key)


def pf_touch(slot: int) -> None:
    """Write ``slot``'s entry (value 0) to the calling thread's file."""
    _promfile_py.touch(slot)


def pf_files() -> int:
    """How many files this process has written (tests)."""
    return _promfile_py.file_count()


def words_rehome() -> None:
    """Hand every enum words chunk (all on the heap: none exist yet, or a
    fork child copied them there) to the provider."""
    with _slot_lock:
        provider = _provider
        for c, words in enumerate(_words):
            if words is not None and provider is not None:
                _words[c] = provider.words(c, words)

def _take_shard() -> _Shard:
    """A pooled exclusive shard, a new one while the budget lasts, else the
    next stripe.  Lock-free (list pops)."""
    try:
        return _free_shards.pop()
    except IndexError:
        pass
    try:
        _exclusive_budget.pop()
    except IndexError:
        return _stripes[next(_probe) % len(_stripes)]
    shard = _Shard()
    _all_shards.append(shard)
    return shard


def _take_ticket() -> _Ticket:
    try:
        return _free_tickets.pop()
    except IndexError:
        ticket = _Ticket()
        _all_tickets.append(ticket)
        return ticket


def _lease() -> _Lease:
    try:
        return _local.lease
    except AttributeError:
        lease = _Lease(_take_ticket(), _take_shard())
        _local.lease = lease
        return lease


def _chunk_for(shard: _Shard, c: int) -> Chunk:
    """Cold path: allocate chunk ``c`` of the calling thread's shard."""
    chunks = shard.chunks
    if c >= len(chunks):
        chunks.extend([None] * (c + 1 - len(chunks)))
    provider = _provider
    chunk = provider.chunk(c) if provider is not None else [0.0] * CHUNK_SLOTS
    chunks[c] = chunk
    return chunk


def _store_add(shard: _Shard, slot: int, amount: float) -> None:
    if _promfile_on:   # prometheus_client-compatible mode: the one branch of the add path
        _promfile_py.store_add(slot, amount)
        return
    lock = shard.lock
    if lock is not None:   # a stripe: its chunks and words under its lock
        with lock:
            _word_add(shard, slot, amount)
        return
    _word_add(shard, slot, amount)


def _word_add(shard: _Shard, slot: int, amount: float) -> None:
    c = slot >> CHUNK_BITS
    chunks = shard.chunks
    chunk = chunks[c] if c < len(chunks) else None
    if chunk is None:
        chunk = _chunk_for(shard, c)
    chunk[slot & _CHUNK_MASK] += amount


def _fold(slot: int) -> float:
    if _promfile_on:
        return _promfile_py.fold(slot)
    total = 0.0
    c, off = slot >> CHUNK_BITS, slot & _CHUNK_MASK
    for shard in _all_shards:
        chunks = shard.chunks
        chunk = chunks[c] if c < len(chunks) else None
        if chunk is not None:
            total += chunk[off]
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


def _quiesce() -> None:
    """Wait until no other thread is inside an increment that may have read a
    slot index before this call (see the C twin's ``fm_quiesce``)."""
    lease = getattr(_local, "lease", None)
    own = lease.ticket if lease is not None else None
    for ticket in list(_all_tickets):
        seq = ticket.seq
        if ticket is own or not seq & 1:
            continue
        while ticket.seq == seq:
            time.sleep(0)


def _slot_zero(slot: int) -> None:
    """Zero ``slot`` in every shard and its enum word (no writer may touch it)."""
    if _promfile_on:
        _promfile_py.zero(slot)
    c, off = slot >> CHUNK_BITS, slot & _CHUNK_MASK
    for shard in _all_shards:
        chunks = shard.chunks
        chunk = chunks[c] if c < len(chunks) else None
        if chunk is not None:
            chunk[off] = 0.0
    words = _words[c]
    if words is not None:
        words[off] = 0


def _slot_free(slot: int) -> None:
    """Zero ``slot`` everywhere and recycle it; never with a provider (the
    counts outlive the object, e.g. in cross-process totals).  Takes no lock."""
    if _provider is not None:
        return
    _slot_zero(slot)
    _free_slots.append(slot)


def _counter_slot_free(slot: int) -> None:
    """A counter's ``_slot_free``; the compatible mode never recycles one (its
    file entries outlive the object, as upstream's do)."""
    if not _promfile_on:
        _slot_free(slot)


def _words_ensure(slot: int) -> None:
    """Cold path: make sure the enum word of ``slot`` exists."""
    c = slot >> CHUNK_BITS
    with _slot_lock:
        if _words[c] is not None:
            return
        provider = _provider
        _words[c] = provider.words(c, None) if provider is not None else [0] * CHUNK_SLOTS


if TYPE_CHECKING:   # the contract, for type checkers only: at run time the base is object
    _MetricBase = MetricUpcalls
else:
    _MetricBase = object

_M = TypeVar("_M", bound="MetricCore")


class MetricCore(_MetricBase):
    """Label-child cache shared by counters and enums (see the C twin).  The
    upward calls it makes are :class:`fastmetrics._upcalls.MetricUpcalls`."""

    # label values -> child (a metric of the parent's class); parents only
    _metrics_map: Optional[Dict[Tuple[str, ...], Any]] = None
    _single_map: Optional[Dict[str, Any]] = None
    _nlabels = 0

    def _init_parent(self, labelnames: Sequence[str]) -> None:
        nlabels = len(labelnames)
        self._metrics_map = {}
        self._single_map = {} if nlabels == 1 else None
        self._nlabels = nlabels

    # The three below are called on a parent only (after _init_parent), with
    # the children lock held; like the C twin they fail with TypeError on a
    # value that is not a parent.
    def _child_added(self, key: Tuple[str, ...], child: Any) -> None:
        cast("Dict[Tuple[str, ...], Any]", self._metrics_map)[key] = child
        if self._single_map is not None:
            self._single_map[key[0]] = child

    def _child_removed(self, key: Tuple[str, ...]) -> None:
        if self._single_map is not None:
            self._single_map.pop(key[0], None)
        cast("Dict[Tuple[str, ...], Any]", self._metrics_map).pop(key, None)

    def _children_cleared(self) -> None:
        if self._single_map is not None:
            self._single_map.clear()
        cast("Dict[Tuple[str, ...], Any]", self._metrics_map).clear()

    def _instance_dict(self) -> Optional[Dict[str, Any]]:
        """The instance dict (this twin keeps its fields there too)."""
        return self.__dict__

    def _share_children(self, other: MetricCore) -> None:
        """Make ``other`` share this parent's children (``copy.copy``)."""
        other._metrics_map = self._metrics_map
        other._single_map = self._single_map
        other._nlabels = self._nlabels

    @property
    def _metrics(self) -> Dict[Tuple[str, ...], Any]:
        if self._metrics_map is None:
            raise AttributeError("_metrics")
        return self._metrics_map

    def labels(self: _M, *labelvalues: Any, **labelkwargs: Any) -> _M:
        """The child for these label values (created on first use): a metric
        of this one's class.  Exact ``str`` values naming an existing child
        are one dict lookup, without a lock; everything else goes to
        ``_labels_slow`` (upstream's conversions and errors)."""
        children = self._metrics_map
        if (children is not None and not labelkwargs and len(labelvalues) == self._nlabels
                and all(v.__class__ is str for v in labelvalues)):
            single = self._single_map
            child: Optional[_M] = single.get(labelvalues[0]) if single is not None else children.get(labelvalues)
            if child is not None:
                return child
        return self._labels_slow(labelvalues, labelkwargs)


if TYPE_CHECKING:
    class _CounterBase(MetricCore, CounterUpcalls):
        pass
else:
    _CounterBase = MetricCore


def _bracketed_add(lease: _Lease, counter: CounterCore, amount: float) -> None:
    """Add to ``counter``'s current slot inside the lease's ticket's seq
    bracket (odd while it runs): the slot is read inside it, so a reset's
    :func:`_quiesce` waits for this store or makes it read the new slot."""
    ticket = lease.ticket
    ticket.seq += 1
    try:
        _store_add(lease.shard, counter._slot, amount)
    finally:
        ticket.seq += 1


class SharedSlot:
    """Owns the slot that a metric shares with its copies (``copy.copy``):
    ``members`` are weak references to them, which a counter's ``reset()``
    moves to the new slot.  Frees the slot when the last of them is gone."""

    __slots__ = ("members", "slot")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.members: List[Any] = []

    def __del__(self) -> None:
        _counter_slot_free(self.slot)

    def live(self) -> List[Any]:
        """The members still alive (dead references pruned); children lock held."""
        alive = [m for m in (ref() for ref in self.members) if m is not None]
        self.members = [weakref.ref(m) for m in alive]
        return alive


class CounterCore(_CounterBase):
    """A counter value: one slot, summed over every thread's shard on read."""

    _slot = -1
    _spare = -1
    _slot_owner: Optional[SharedSlot] = None   # owns _slot when shared with copies

    def __del__(self) -> None:
        if self._slot >= 0 and self._slot_owner is None:
            _counter_slot_free(self._slot)
        self._slot = -1
        if self._spare >= 0:
            _counter_slot_free(self._spare)
            self._spare = -1

    def _share_value(self, other: CounterCore) -> None:
        """Make ``other`` (a new counter of this class) count into this one's
        value and share its children (see the C twin).  Callers hold the
        children lock."""
        self._share_children(other)
        other._spare = -1
        if self._slot >= 0:
            if self._slot_owner is None:
                self._slot_owner = SharedSlot(self._slot)
                self._slot_owner.members.append(weakref.ref(self))
            self._slot_owner.members.append(weakref.ref(other))
            other._slot_owner = self._slot_owner
            other._slot = self._slot

    def _init_value(self) -> None:
        if self._slot < 0:
            self._slot = _slot_alloc()

    def _add(self, amount: float) -> None:
        if self._slot < 0:
            raise ValueError(f"{self._type} metric is missing label values")
        a = _amount(amount)
        lease = _lease()
        if lease.busy:  # a signal handler interrupted an increment on this thread
            lease.pending.append((self, a))
            return
        pending = lease.pending
        lease.busy = True
        try:
            _bracketed_add(lease, self, a)
        finally:
            lease.busy = False
        while pending:  # increments made by handlers while we were busy
            lease.busy = True
            try:
                while pending:
                    counter, x = pending.pop()
                    _bracketed_add(lease, counter, x)
            finally:
                lease.busy = False

    def inc(self, amount: float = 1, exemplar: Optional[Dict[str, str]] = None) -> None:
        """Increment by ``amount`` (int, float or bool, >= 0). Lock-free."""
        self._add(amount)
        if exemplar:
            self._set_exemplar(exemplar, amount)

    def _slot_index(self) -> int:
        return self._slot

    def _get(self) -> float:
        slot = self._slot
        if slot < 0:
            return 0.0
        return _fold(slot)

    def _spare_slot(self) -> int:
        if self._spare < 0:
            self._spare = _slot_alloc()
        return self._spare

    def _reset_value(self) -> None:
        # Serialised by the caller (Counter.reset holds the children lock).
        if self._slot < 0 or self._spare < 0:
            return
        old, self._slot = self._slot, self._spare
        if self._slot_owner is not None:   # copies share the value: all move, as upstream's share one
            self._slot_owner.slot = self._spare
            for member in self._slot_owner.live():
                member._slot = self._spare
        _quiesce()
        _slot_zero(old)
        self._spare = old


class EnumCore(MetricCore):
    """An enum value: the word of its slot in the word table holds the index of
    the current state (stamped with the wall clock in multiprocess mode)."""

    _slot = -1
    _nstates = -1
    _state_index: Mapping[Any, int] = MappingProxyType({})   # state -> index (first match)
    _states_list: Sequence[Any] = ()
    _slot_owner: Optional[SharedSlot] = None   # owns _slot when shared with copies

    def __del__(self) -> None:
        if self._slot >= 0 and self._slot_owner is None:
            _slot_free(self._slot)
        self._slot = -1

    def _share_value(self, other: EnumCore) -> None:
        """Make ``other`` share this enum's state word and children (see the C twin)."""
        self._share_children(other)
        if self._slot >= 0:
            if self._slot_owner is None:
                self._slot_owner = SharedSlot(self._slot)
            other._slot_owner = self._slot_owner
            other._slot = self._slot
            other._state_index = self._state_index
            other._states_list = self._states_list
            other._nstates = self._nstates

    def _init_value(self, states: Iterable[str]) -> None:
        self._states_list = list(states)
        index: Dict[Any, int] = {}
        for i, s in enumerate(self._states_list):
            with contextlib.suppress(TypeError):   # unhashable: the slow path finds it
                index.setdefault(s, i)
        self._state_index = index
        if self._slot < 0:
            slot = _slot_alloc()
            try:
                _words_ensure(slot)
            except MemoryError:
                _slot_free(slot)
                raise
            self._slot = slot
        self._nstates = len(self._states_list)

    def _set(self, state: str) -> None:
        if self._nstates < 0:
            raise ValueError(f"{self._type} metric is missing label values")
        try:
            index = self._state_index.get(state)
        except TypeError:
            index = None
        if index is None:
            index = self._states_list.index(state)
        slot = self._slot
        bits = _stamp_bits
        if _promfile_on:   # prometheus_client-compatible mode: the files too
            _words[slot >> CHUNK_BITS][slot & _CHUNK_MASK] = index
            _pf_enum_hook(slot, index)
            return
        if bits:
            index |= (time.time_ns() // 1_000_000) << bits
        _words[slot >> CHUNK_BITS][slot & _CHUNK_MASK] = index

    def state(self, state: str) -> None:
        """Set the current state; ``ValueError`` for an unknown one. Lock-free."""
        self._set(state)

    def _get_index(self) -> int:
        slot = self._slot
        if self._nstates < 0:
            return 0
        word: int = _words[slot >> CHUNK_BITS][slot & _CHUNK_MASK]
        bits = _stamp_bits
        return word & ((1 << bits) - 1) if bits else word

    def _slot_index(self) -> int:
        return self._slot


def stats() -> Dict[str, int]:
    """Shard-store counters (see the C twin)."""
    shards = list(_all_shards)
    tickets = list(_all_tickets)
    return {
        "shards_total": len(shards),
        "shards_live": sum(1 for s in shards if s.owner is not None),
        "chunks": sum(1 for s in shards for c in s.chunks if c is not None),
        "slots_used": _slots_issued - len(_free_slots),
        "slots_free": len(_free_slots),
        "exclusive_max": _limits.exclusive,
        "stripes_max": _limits.stripes,
        "stripes": len(_stripes),   # all made at import (they hold no chunk until used)
        "threads_live": sum(1 for t in tickets if t.owner is not None),
        "stripe_threads": sum(1 for t in tickets if t.owner is not None and t.stripe),
    }


# Fork hooks, registered with fastmetrics._fork (which owns the lock order).
def _before_fork() -> None:
    _slot_lock.acquire()
    if _provider is not None:
        _provider.before_fork()


def _after_fork_parent() -> None:
    if _provider is not None:
        _provider.after_fork_parent()
    _slot_lock.release()


def _after_fork_child() -> None:
    """Return the shards of threads that do not exist in the child to the pool,
    with their counts, and release the lock.  With a provider, its chunks are
    the parent's, so the child starts from zero, and enum words move to the
    heap until :func:`words_rehome`."""
    lease = getattr(_local, "lease", None)
    current = lease.token if lease is not None else None
    provider = _provider
    for ticket in _all_tickets:
        if ticket.owner is not current:
            if ticket.owner is not None:
                ticket.owner = None
                _free_tickets.append(ticket)
            if ticket.seq & 1:   # its thread was inside an increment: it is gone
                ticket.seq += 1
    for shard in _all_shards:
        if shard.lock is not None:
            # another thread may have held it at fork(): it is gone
            shard.lock = threading.Lock()
        elif shard.owner is not current and shard.owner is not None:
            shard.owner = None
            _free_shards.append(shard)
        if provider is not None:
            shard.chunks = []
    if provider is not None:
        for c, words in enumerate(_words):
            if words is not None:
                _words[c] = list(words)
        provider.after_fork_child()
    _slot_lock.release()


_fork.register(_fork.TWIN_STORE, _before_fork, _after_fork_parent, _after_fork_child)


def bind_hot_methods(counter_class: type, enum_class: type) -> None:
    """The C twin binds ``labels``/``inc``/``state`` as method descriptors of
    the public classes so CPython specialises their calls; Python methods are
    specialised as they are, so here this only checks the classes
    (``TypeError`` unless subclasses of CounterCore and EnumCore)."""
    if not (isinstance(counter_class, type) and issubclass(counter_class, CounterCore)):
        raise TypeError("counter_class must be a subclass of CounterCore")
    if not (isinstance(enum_class, type) and issubclass(enum_class, EnumCore)):
        raise TypeError("enum_class must be a subclass of EnumCore")
