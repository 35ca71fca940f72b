# cython: language_level=3, freethreading_compatible=True
# cython: boundscheck=False, wraparound=False, cdivision=True
"""Hot path of fastmetrics in C: per-thread counter shards and enum words.

See ``_shards.h`` for the memory model.  The classes here are bases: the
prometheus_client-compatible behaviour (naming, validation, registration,
exposition) lives in :mod:`fastmetrics.metrics`, shared with the pure-Python
twin :mod:`fastmetrics._core_py`, which has the same API and semantics.
"""
cimport cython
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_AsDouble, PyLong_AsSsize_t, PyLong_Check
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_CheckExact

from fastmetrics._fastcall cimport PyMethodDef, fm_bind_method, fm_fastcall_impl, fm_kwargs_dict, fm_tuple_from_array


cdef extern from "_shards.h":
    ctypedef struct fm_stats_t:
        Py_ssize_t shards_total, shards_live, chunks, slots_used, slots_free
        Py_ssize_t exclusive_max, stripes_max, stripes, threads_live, stripe_threads
    Py_ssize_t FM_MAX_SLOTS
    const void *fm_provider_active
    int fm_init()
    int fm_configure(Py_ssize_t exclusive, Py_ssize_t stripes)
    Py_ssize_t fm_slot_alloc() nogil
    void fm_slot_free(Py_ssize_t slot) nogil
    fm_stats_t fm_stats() nogil
    int fm_words_ensure(Py_ssize_t slot) nogil
    void fm_word_set(Py_ssize_t slot, Py_ssize_t index) nogil
    Py_ssize_t fm_word_get(Py_ssize_t slot) nogil
    Py_ssize_t fm_load_ssize(const Py_ssize_t *p) nogil
    void fm_store_ssize(Py_ssize_t *p, Py_ssize_t v) nogil
    Py_ssize_t fm_exchange_ssize(Py_ssize_t *p, Py_ssize_t v) nogil


# prometheus_client-compatible mode (PROMETHEUS_MULTIPROC_DIR): counters go
# to _promfile.h's store instead of the shards (driven by
# fastmetrics.multiprocess._prometheus).  Counter values are reached only
# through fm_counter_*, which pick the store; fm_counter_add is the one
# branch on the add path.
cdef extern from "_promfile.h":
    int fm_pf_on
    int fm_pf_errno
    int fm_pf_enable(const char *dir)
    int fm_pf_set_key(Py_ssize_t slot, const char *data, size_t length)
    int fm_pf_touch(Py_ssize_t slot) nogil
    int fm_counter_add(const Py_ssize_t *slot_ref, double amount) nogil
    double fm_counter_fold(Py_ssize_t slot) nogil
    void fm_counter_retire(Py_ssize_t old) nogil
    void fm_counter_slot_free(Py_ssize_t slot) nogil
    Py_ssize_t fm_pf_files() nogil


cdef extern from "_pydict.h":
    object fm_dict_get(object d, object key)
    void fm_drop_instance_dict(object o)
    object fm_instance_dict(object o)


cdef extern from *:
    """
    FM_FASTCALL_METHOD(labels, "labels",
        "Return the child for the given labelset, creating it on first use. "
        "A hit (positional or keyword str values) is one dict lookup, lock-free.")
    FM_FASTCALL_METHOD(inc, "inc",
        "inc(amount=1, exemplar=None): increment by amount (int, float or bool, >= 0). Lock-free.")
    FM_FASTCALL_METHOD(state, "state",
        "state(state): set the current state; ValueError for an unknown one. Lock-free.")

    static void fm_tuple_set(PyObject *t, Py_ssize_t i, PyObject *v) {
        Py_INCREF(v);
        PyTuple_SET_ITEM(t, i, v);
    }
    """
    fm_fastcall_impl fm_labels_impl, fm_inc_impl, fm_state_impl
    PyMethodDef fm_labels_def, fm_inc_def, fm_state_def
    tuple fm_tuple_new "PyTuple_New" (Py_ssize_t n)
    PyObject *fm_tuple_get "PyTuple_GET_ITEM" (object t, Py_ssize_t i)
    void fm_tuple_set(object t, Py_ssize_t i, object v)


implementation = "cython"
MAX_SLOTS = FM_MAX_SLOTS

cdef str _NEGATIVE = "Counters can only be incremented by non-negative amounts."

if fm_init() != 0:
    raise ImportError("fastmetrics: cannot create the thread-exit hook for shards")

from fastmetrics._shard_limits import shard_limits as _shard_limits

_limits = _shard_limits()   # ValueError for a bad FASTMETRICS_EXCLUSIVE_SHARDS
if fm_configure(_limits.exclusive, _limits.stripes) != 0:
    raise ImportError("fastmetrics: cannot configure the shard store")


cdef inline double _amount(object amount) except? -1.0:
    """Validated increment as a double; ValueError/TypeError as prometheus_client."""
    cdef double a
    if PyFloat_CheckExact(amount):
        a = PyFloat_AS_DOUBLE(amount)
    elif PyLong_Check(amount):             # int, bool, IntEnum
        a = PyLong_AsDouble(amount)        # OverflowError beyond float range
    else:
        if amount < 0:                     # TypeError for non-numbers, as upstream
            raise ValueError(_NEGATIVE)
        total = 0.0
        total += amount                    # upstream's `value += amount`: same TypeErrors
        a = float(total)
    if not (a >= 0.0):                     # negative, or NaN (would poison the total)
        raise ValueError(_NEGATIVE)
    return a


cdef class MetricCore:
    """Label-child cache shared by counters and enums.

    ``labels(*values)`` with exact ``str`` values that name an existing child
    is one dict lookup, without a lock; everything else (kwargs, conversion,
    errors, creating a child) goes to ``self._labels_slow``.  Thread-safe.
    """

    def __cinit__(self, *args, **kwargs):
        fm_drop_instance_dict(self)
        self._metrics_map = None
        self._single_map = None
        self._labelnames_t = ()
        self._nlabels = 0

    def _init_parent(self, labelnames):
        """Make this a labelled parent over ``labelnames`` (a sequence of str):
        an empty child map, no value of its own."""
        self._labelnames_t = tuple(labelnames)
        self._nlabels = len(self._labelnames_t)
        self._metrics_map = {}
        self._single_map = {} if self._nlabels == 1 else None

    def _child_added(self, key, child):
        """Record a new child (caller holds the children lock)."""
        self._metrics_map[key] = child
        if self._single_map is not None:
            self._single_map[key[0]] = child

    def _child_removed(self, key):
        """Forget a child (caller holds the children lock)."""
        if self._single_map is not None:
            self._single_map.pop(key[0], None)
        self._metrics_map.pop(key, None)

    def _children_cleared(self):
        """Forget every child (caller holds the children lock)."""
        if self._single_map is not None:
            self._single_map.clear()
        self._metrics_map.clear()

    def _instance_dict(self):
        """The instance dict (attributes set beyond the slots), or None while
        there is none: unlike ``__dict__``, never creates it."""
        return fm_instance_dict(self)

    def _share_children(self, MetricCore other):
        """Make ``other`` (a new object) share this parent's children, as a
        shallow copy of prometheus_client's metric shares its ``_metrics``."""
        other._metrics_map = self._metrics_map
        other._single_map = self._single_map
        other._labelnames_t = self._labelnames_t
        other._nlabels = self._nlabels

    @property
    def _metrics(self):
        if self._metrics_map is None:
            raise AttributeError("_metrics")
        return self._metrics_map

    # labels() is installed below as a METH_FASTCALL method (_labels_impl):
    # Cython would compile *args/**kwargs as METH_VARARGS and allocate an
    # empty kwargs dict on every call.  bind_hot_methods() binds it again,
    # with inc/state, to the public classes.


cdef object _kw_key(MetricCore metric, PyObject **values, Py_ssize_t n, tuple kwnames):
    """The child key for keyword label values (in label-name order), or None
    unless every name is one of the labels and every value an exact str (the
    slow path then converts or raises exactly as prometheus_client).  ``n``
    distinct keywords (a call cannot repeat one) each matching one of ``n``
    label names fill every position exactly once."""
    cdef tuple names = metric._labelnames_t
    cdef Py_ssize_t i, j
    cdef object value
    key = fm_tuple_new(n)
    for i in range(n):
        value = <object>values[i]
        if not PyUnicode_CheckExact(value):
            return None
        for j in range(n):               # interned identifiers: a pointer compare
            if <PyObject *>names[j] == <PyObject *>kwnames[i]:
                break
        else:
            for j in range(n):
                if names[j] == kwnames[i]:
                    break
            else:
                return None
        if fm_tuple_get(key, j) != NULL:  # a repeated label name: let the slow path decide
            return None
        fm_tuple_set(key, j, value)
    return key


cdef object _labels_impl(object self, PyObject **args, Py_ssize_t nargs, object kwnames):
    """``labels(*values)`` / ``labels(**values)``: a hit with exact str values is
    one dict lookup, lock-free; anything else goes to ``_labels_slow``."""
    cdef MetricCore metric = <MetricCore>self
    cdef Py_ssize_t i, n = metric._nlabels
    if metric._metrics_map is not None:
        if kwnames is None:
            if nargs == n:
                if nargs == 1:
                    if PyUnicode_CheckExact(<object>args[0]):
                        child = fm_dict_get(metric._single_map, <object>args[0])
                        if child is not None:
                            return child
                else:
                    for i in range(nargs):
                        if not PyUnicode_CheckExact(<object>args[i]):
                            break
                    else:
                        child = fm_dict_get(metric._metrics_map, fm_tuple_from_array(args, nargs))
                        if child is not None:
                            return child
        elif nargs == 0 and len(<tuple>kwnames) == n:
            if n == 1:
                if (PyUnicode_CheckExact(<object>args[0])
                        and (<PyObject *>(<tuple>kwnames)[0] == <PyObject *>metric._labelnames_t[0]
                             or (<tuple>kwnames)[0] == metric._labelnames_t[0])):
                    child = fm_dict_get(metric._single_map, <object>args[0])
                    if child is not None:
                        return child
            else:
                key = _kw_key(metric, args, n, <tuple>kwnames)
                if key is not None:
                    child = fm_dict_get(metric._metrics_map, key)
                    if child is not None:
                        return child
    return self._labels_slow(fm_tuple_from_array(args, nargs), fm_kwargs_dict(args + nargs, kwnames))


fm_labels_impl = _labels_impl
fm_bind_method(MetricCore, &fm_labels_def)


cdef int _raise_no_chunk() except -1:
    """The error of an increment whose thread could not get a chunk (cold path)."""
    if fm_pf_on:
        _raise_pf_error()
    if fm_provider_active != NULL:
        _raise_arena_error()
    raise MemoryError("fastmetrics: cannot allocate a counter chunk")


cdef class CounterCore(MetricCore):
    """A counter value: one slot, summed over every shard on read.

    ``inc`` is lock-free and O(1); ``_get`` is O(shards), bounded by the CPUs
    (exclusive shards + stripes), not by the threads.
    """

    def __cinit__(self, *args, **kwargs):
        self._slot = -1
        self._spare = -1
        self._slot_owner = None

    def __dealloc__(self):
        # No thread can be inside inc() on a dead object: the slots it owns
        # can be zeroed and recycled.  Lock-free (safe inside any collection).
        # A slot shared with copies is freed by its SharedSlot, with the last.
        if self._slot >= 0 and self._slot_owner is None:
            fm_counter_slot_free(self._slot)
        if self._spare >= 0:
            fm_counter_slot_free(self._spare)

    def _share_value(self, CounterCore other):
        """Make ``other`` (a new counter of this class) count into this one's
        value and share its children: ``copy.copy`` as prometheus_client's
        metrics give it (one value object).  The slot is then owned by a
        :class:`SharedSlot` and freed with the last of them; ``reset()`` of
        any moves all of them to the zeroed spare.  Callers hold the
        children lock (it serialises against reset)."""
        cdef SharedSlot owner
        self._share_children(other)
        if self._slot >= 0:
            if self._slot_owner is None:
                owner = SharedSlot(self._slot)
                owner.members.append(_weakref(self))
                self._slot_owner = owner
            owner = <SharedSlot>self._slot_owner
            owner.members.append(_weakref(other))
            other._slot_owner = owner
            other._slot = self._slot

    def _init_value(self):
        """Give this counter (unlabelled, or a child) its slot, starting at 0."""
        if self._slot < 0:
            fm_store_ssize(&self._slot, _new_slot())

    cdef int _add(self, object amount) except -1:
        if fm_load_ssize(&self._slot) < 0:   # a parent: upstream's error comes first
            raise ValueError(f"{self._type} metric is missing label values")
        # _amount may run Python code, so _store_add reads the slot again
        return _store_add(self, _amount(amount))

    def inc(self, amount=1, exemplar=None):
        """Increment by ``amount`` (int, float or bool, >= 0). Lock-free."""
        self._add(amount)
        if exemplar:
            self._set_exemplar(exemplar, amount)

    def _slot_index(self):
        """This value's slot (-1 for a labelled parent); multiprocess metadata."""
        return fm_load_ssize(&self._slot)

    def _get(self):
        """The current total (since creation or the last reset)."""
        cdef Py_ssize_t slot = fm_load_ssize(&self._slot)
        if slot < 0:
            return 0.0
        return fm_counter_fold(slot)

    def _spare_slot(self):
        """The zeroed slot the next ``_reset_value`` swaps in (allocated on the
        first call; ``MemoryError`` when the table is full, changing nothing)."""
        if self._spare < 0:
            self._spare = _new_slot()
        return self._spare

    def _reset_value(self):
        """Restart from zero: swap the spare slot in, wait until no increment
        can still store into the old one (``fm_counter_retire``), zero it and keep it
        as the next spare.  Increments racing with the reset land on either
        side; every one made after it returns counts.  Two slots per counter
        however often it runs.  Callers serialise resets of one counter and
        call ``_spare_slot`` first."""
        cdef Py_ssize_t old
        cdef CounterCore member
        if fm_load_ssize(&self._slot) < 0 or self._spare < 0:
            return
        old = fm_exchange_ssize(&self._slot, self._spare)
        if self._slot_owner is not None:   # copies share the value: all move, as upstream's share one
            (<SharedSlot>self._slot_owner).slot = self._spare
            for member in (<SharedSlot>self._slot_owner).live():
                fm_store_ssize(&member._slot, self._spare)
        with nogil:
            fm_counter_retire(old)
        self._spare = old


cdef inline int _store_add(CounterCore counter, double a) except -1:
    """Add a validated amount to the counter's slot (ValueError for a parent).
    Every Python-level increment ends here: ``CounterCore._add`` (``inc(n)``,
    the handler) and ``_inc_impl``'s ``inc()`` without arguments, which skips
    ``_add``; the nogil ``counter_add`` calls ``fm_counter_add`` directly.
    ``fm_counter_add`` is the one branch between the shards and the
    prometheus_client-compatible store."""
    cdef int rc = fm_counter_add(&counter._slot, a)
    if rc == 0:
        return 0
    if rc == -2:
        raise ValueError(f"{counter._type} metric is missing label values")
    return _raise_no_chunk()


cdef object _core_inc = CounterCore.inc   # a C static: no module-dict lookup


cdef object _inc_impl(object self, PyObject **args, Py_ssize_t nargs, object kwnames):
    """``inc(amount=1, exemplar=None)`` bound to a public class: positional
    calls without an exemplar go straight to the store; every other call to
    ``CounterCore.inc`` (its argument parsing and errors)."""
    if kwnames is None:
        if nargs == 0:
            _store_add(<CounterCore>self, 1.0)
            return None
        if nargs == 1:
            (<CounterCore>self)._add(<object>args[0])
            return None
    return _core_inc(self, *fm_tuple_from_array(args, nargs), **fm_kwargs_dict(args + nargs, kwnames))


fm_inc_impl = _inc_impl


cdef class SharedSlot:
    """Owns the slot that a metric shares with its copies (``copy.copy``):
    ``members`` are weak references to them; a counter's ``reset()`` moves
    them all to the new slot.  Frees the slot when the last of them is gone
    (lock-free, as a metric's own)."""

    cdef Py_ssize_t slot
    cdef list members

    def __cinit__(self, Py_ssize_t slot):
        self.slot = slot
        self.members = []

    def __dealloc__(self):
        fm_counter_slot_free(self.slot)

    cdef list live(self):
        """The members still alive (dead references pruned); children lock held."""
        alive = [m for m in (ref() for ref in self.members) if m is not None]
        self.members = [_weakref(m) for m in alive]
        return alive


from weakref import ref as _weakref


cdef Py_ssize_t _new_slot() except -1:
    cdef Py_ssize_t slot = fm_slot_alloc()
    if slot < 0:
        raise MemoryError(f"fastmetrics: all {FM_MAX_SLOTS} counter slots are in use")
    return slot


cdef class EnumCore(MetricCore):
    """An enum value: one word (in the shard store's word table, indexed by the
    enum's slot) holding the index of the current state.

    ``state(s)`` is a dict lookup and a relaxed atomic store. Lock-free.
    """

    def __cinit__(self, *args, **kwargs):
        self._slot = -1
        self._nstates = -1
        self._state_index = None
        self._states_list = None
        self._slot_owner = None

    def __dealloc__(self):
        if self._slot >= 0 and self._slot_owner is None:
            fm_slot_free(self._slot)

    def _share_value(self, EnumCore other):
        """Make ``other`` (a new enum of this class) share this one's state word
        and children (``copy.copy``; see CounterCore._share_value).  Unlike
        prometheus_client's copies, whose state is then their own, a copy's
        ``state()`` moves both: a second word would be exported as a second
        series in multiprocess mode."""
        cdef Py_ssize_t i
        self._share_children(other)
        if self._slot >= 0:
            if self._slot_owner is None:
                self._slot_owner = SharedSlot(self._slot)
            other._slot_owner = self._slot_owner
            other._slot = self._slot
            other._state_index = self._state_index
            other._states_list = self._states_list
            for i in range(8):
                other._state_ptrs[i] = self._state_ptrs[i]
            other._nstates = self._nstates

    def _init_value(self, states):
        """Make this enum observable over ``states`` (declaration order), at state 0."""
        cdef Py_ssize_t i, slot
        self._states_list = list(states)
        self._state_index = {}
        for i, s in enumerate(self._states_list):
            if i < 8:
                self._state_ptrs[i] = NULL
            try:
                if self._state_index.setdefault(s, i) == i and i < 8:   # first match, as list.index
                    self._state_ptrs[i] = <PyObject *>s
            except TypeError:                        # unhashable: slow path finds it
                pass
        if self._slot < 0:
            slot = _new_slot()
            if fm_words_ensure(slot) < 0:
                fm_slot_free(slot)
                raise MemoryError("fastmetrics: cannot allocate the enum word")
            self._slot = slot
        self._nstates = len(self._states_list)

    cdef int _set(self, object state) except -1:
        cdef Py_ssize_t i, n = self._nstates
        if n < 0:
            raise ValueError(f"{self._type} metric is missing label values")
        for i in range(n if n < 8 else 8):   # interned literals: a pointer compare
            if self._state_ptrs[i] == <PyObject *>state:
                return _store_state(self._slot, i)
        if PyUnicode_CheckExact(state):
            index = fm_dict_get(self._state_index, state)
        else:
            try:
                index = fm_dict_get(self._state_index, state)
            except TypeError:               # unhashable: list.index decides
                index = None
        if index is None:
            index = self._states_list.index(state)   # ValueError, worded as upstream
        return _store_state(self._slot, PyLong_AsSsize_t(index))

    def state(self, state):
        """Set the current state; ``ValueError`` for an unknown one. Lock-free."""
        self._set(state)

    def _get_index(self):
        return fm_word_get(self._slot) if self._nstates >= 0 else 0

    def _slot_index(self):
        """This enum's slot (-1 for a labelled parent); multiprocess metadata."""
        return self._slot


cdef inline int _store_state(Py_ssize_t slot, Py_ssize_t index) except -1:
    """Store a validated state index in the enum word of ``slot``; in the
    prometheus_client-compatible mode, the files too (``_pf_enum_hook``).
    Every Python-level ``state()`` ends here (``EnumCore._set``: the public
    classes and the handler); the nogil ``enum_set`` hooks without the GIL."""
    fm_word_set(slot, index)
    if fm_pf_on:
        _pf_enum_hook(slot, index)
    return 0


cdef object _core_state = EnumCore.state


cdef object _state_impl(object self, PyObject **args, Py_ssize_t nargs, object kwnames):
    """``state(state)`` bound to a public class: a positional call goes
    straight to the enum word; any other call to ``EnumCore.state``."""
    if kwnames is None and nargs == 1:
        (<EnumCore>self)._set(<object>args[0])
        return None
    return _core_state(self, *fm_tuple_from_array(args, nargs), **fm_kwargs_dict(args + nargs, kwnames))


fm_state_impl = _state_impl


def bind_hot_methods(counter_class, enum_class):
    """Bind ``labels``/``inc`` to ``counter_class`` and ``labels``/``state`` to
    ``enum_class`` (subclasses of CounterCore and EnumCore: ``TypeError``
    otherwise) as method descriptors of those very classes, so that CPython
    3.11+ specialises calls on their instances (see ``_fastcall.h``).  Same
    signatures, results and errors as the core methods."""
    if not (isinstance(counter_class, type) and issubclass(counter_class, CounterCore)):
        raise TypeError("counter_class must be a subclass of CounterCore")
    if not (isinstance(enum_class, type) and issubclass(enum_class, EnumCore)):
        raise TypeError("enum_class must be a subclass of EnumCore")
    fm_bind_method(counter_class, &fm_labels_def)
    fm_bind_method(counter_class, &fm_inc_def)
    fm_bind_method(enum_class, &fm_labels_def)
    fm_bind_method(enum_class, &fm_state_def)


cdef int counter_add(CounterCore counter, double amount) noexcept nogil:
    if counter is None or not (amount >= 0.0):
        return -1
    return -1 if fm_counter_add(&counter._slot, amount) < 0 else 0


cdef int enum_set(EnumCore enum, Py_ssize_t index) noexcept nogil:
    if enum is None or index < 0 or index >= enum._nstates:
        return -1
    fm_word_set(enum._slot, index)
    if fm_pf_on:   # prometheus_client-compatible mode: the files are written from Python
        return _pf_enum_set_nogil(enum._slot, index)
    return 0


cdef int _pf_enum_set_nogil(Py_ssize_t slot, Py_ssize_t index) noexcept nogil:
    with gil:
        try:
            _pf_enum_hook(slot, index)
        except BaseException:   # noexcept: the error is reported as -1
            return -1
    return 0


def stats():
    """Shard-store counters: shards ever created (exclusive + stripes) /
    exclusive ones owned by a live thread, chunks allocated, slots in use / on
    the free list, the bounds (exclusive_max, stripes_max), stripes created,
    threads holding a ticket (threads_live) and those of them on a stripe."""
    cdef fm_stats_t st = fm_stats()
    return {
        "shards_total": st.shards_total,
        "shards_live": st.shards_live,
        "chunks": st.chunks,
        "slots_used": st.slots_used,
        "slots_free": st.slots_free,
        "exclusive_max": st.exclusive_max,
        "stripes_max": st.stripes_max,
        "stripes": st.stripes,
        "threads_live": st.threads_live,
        "stripe_threads": st.stripe_threads,
    }


# fork(): the shard store's lock is taken and released by C pthread_atfork
# handlers that fm_init registered (no Python code runs while it is held).


# Multiprocess arena (_arena.h): the chunk provider of multiprocess mode, driven
# by fastmetrics.multiprocess through fastmetrics._core.arena.  It lives in this
# extension because it shares the shard store's C state.
from os import strerror as _strerror

from cpython.ref cimport Py_DECREF, Py_INCREF

cdef extern from "_arena.h":
    int FM_HDR_USED, FM_REC_META_OFF, FM_REC_DATA_OFF, FM_REC_ALIGN, FM_REC_CHUNK, FM_REC_WORDS
    int FM_STATE_BITS, FM_CHUNK_SLOTS, FM_MAX_CHUNKS
    int fm_arena_errno
    int fm_arena_enable() nogil
    int fm_arena_attach(char *base, long long cap, int fd) nogil
    void fm_arena_detach() nogil
    int fm_arena_record(unsigned int kind, long long arg, const void *data, unsigned int length) nogil

STATE_BITS = FM_STATE_BITS   # multiprocess enum word: index | (stamp_ms << STATE_BITS)


def arena_layout():
    """The file-layout constants this writer uses (the tests assert they
    equal ``fastmetrics.multiprocess._format``'s)."""
    return {"HDR_USED": FM_HDR_USED, "REC_META_OFF": FM_REC_META_OFF, "REC_DATA_OFF": FM_REC_DATA_OFF,
            "REC_ALIGN": FM_REC_ALIGN, "REC_CHUNK": FM_REC_CHUNK, "REC_WORDS": FM_REC_WORDS,
            "STATE_BITS": FM_STATE_BITS, "CHUNK_SLOTS": FM_CHUNK_SLOTS, "MAX_CHUNKS": FM_MAX_CHUNKS}

# The mapped file's buffer, exported while attached.  It holds one extra
# reference, so that module teardown at exit cannot unmap memory a late
# (daemon or nogil) thread may still increment into; only _mp_detach drops it.
cdef object _arena_view = None
cdef object _arena_path = None


cdef int _raise_arena_error() except -1:
    """Why the multiprocess file could not take a record: its pages could not
    be reserved (``OSError`` with the errno, e.g. ENOSPC), or it is full or
    detached (``MemoryError``).  Both name the file."""
    cdef int err = fm_arena_errno
    if err:
        raise OSError(err, f"fastmetrics: cannot reserve space in the multiprocess file "
                           f"({_strerror(err)}); what was counted stays valid", _arena_path)
    raise MemoryError(f"fastmetrics: the multiprocess file {_arena_path} is full or detached "
                      f"(set FASTMETRICS_MULTIPROC_CAPACITY higher)")


def _mp_enable():
    """Switch the shard store to multiprocess mode, before any slot exists."""
    if fm_arena_enable() < 0:
        raise RuntimeError("fastmetrics: enable multiprocess mode before creating any metric")


def _mp_attach(buffer, int fd, path):
    """Take chunks from ``buffer`` (a writable mapping of ``path``, open as
    ``fd``, zero past its header) from now on; enum words move there too.
    Pages are reserved through ``fd`` before each append."""
    global _arena_view, _arena_path
    cdef unsigned char[::1] view = buffer
    _arena_path = path
    if fm_arena_attach(<char *>&view[0], view.shape[0], fd) < 0:
        try:
            _raise_arena_error()
        finally:
            fm_arena_detach()
    _mp_release_view()
    _arena_view = view
    Py_INCREF(_arena_view)


cdef _mp_release_view():
    global _arena_view
    if _arena_view is not None:
        Py_DECREF(_arena_view)
        _arena_view = None


def _mp_detach():
    """Stop using the mapped file (before it is closed)."""
    fm_arena_detach()
    _mp_release_view()


def _mp_record(unsigned int kind, long long arg, const unsigned char[::1] payload):
    """Append a metadata record to this process's file."""
    cdef const unsigned char *data = &payload[0] if payload.shape[0] else NULL
    if fm_arena_record(kind, arg, data, payload.shape[0]) < 0:
        _raise_arena_error()


# prometheus_client-compatible mode (_promfile.h), driven by
# fastmetrics.multiprocess._prometheus; the twin is fastmetrics._promfile_py.
cdef object _pf_directory = None


cdef int _raise_pf_error() except -1:
    """Why a counter's entry could not be written to its thread's
    prometheus_client file: ``OSError`` with the errno and the directory, or
    ``MemoryError``."""
    cdef int err = fm_pf_errno
    if err:
        raise OSError(err, f"fastmetrics: cannot write a prometheus_client multiprocess file in "
                           f"PROMETHEUS_MULTIPROC_DIR ({_strerror(err)})", _pf_directory)
    raise MemoryError("fastmetrics: cannot allocate a prometheus_client multiprocess entry")


def pf_enable(directory):
    """Write counters to prometheus_client's files in ``directory`` from now
    on.  Before any metric exists (``RuntimeError`` otherwise)."""
    global _pf_directory
    cdef bytes path = directory.encode("utf-8", "surrogateescape") if isinstance(directory, str) else directory
    if fm_pf_enable(path) < 0:
        if fm_pf_errno:
            raise OSError(fm_pf_errno, _strerror(fm_pf_errno), directory)
        raise RuntimeError("fastmetrics: PROMETHEUS_MULTIPROC_DIR must be set before any metric is created "
                           "(and not together with fastmetrics' own multiprocess mode)")
    _pf_directory = directory


def _pf_no_enum_hook(slot, index):
    raise RuntimeError("fastmetrics: no enum writer for the prometheus_client-compatible mode")


cdef object _pf_enum_hook = _pf_no_enum_hook


def pf_set_enum_hook(hook):
    """``hook(slot, index)`` runs after every enum state store (``state()``,
    the dispatcher, ``enum_set``) in this mode: it writes the files."""
    global _pf_enum_hook
    _pf_enum_hook = hook


def pf_set_key(Py_ssize_t slot, const unsigned char[::1] key):
    """Record ``slot``'s series key (prometheus_client's ``mmap_key``, utf-8)."""
    if fm_pf_set_key(slot, <const char *>&key[0] if key.shape[0] else NULL, key.shape[0]) < 0:
        raise MemoryError("fastmetrics: cannot record a series key")


def pf_touch(Py_ssize_t slot):
    """Write ``slot``'s entry (value 0) to the calling thread's file, as
    prometheus_client does when a value is created."""
    if fm_pf_touch(slot) < 0:
        _raise_pf_error()


def pf_files():
    """How many files this process has written (tests)."""
    return fm_pf_files()
