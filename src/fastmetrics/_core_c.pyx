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


cdef extern from "_shards.h":
    ctypedef struct fm_stats_t:
        Py_ssize_t shards_total, shards_live, chunks, slots_used, slots_free
        Py_ssize_t exclusive_max, stripes_max, stripes, threads_live, stripe_threads
    Py_ssize_t FM_MAX_SLOTS
    const void *fm_provider_active
    int fm_init()
    int fm_configure(Py_ssize_t exclusive, Py_ssize_t stripes)
    int fm_add(const Py_ssize_t *slot_ref, double amount) nogil
    void fm_quiesce() nogil
    double fm_fold(Py_ssize_t slot) nogil
    Py_ssize_t fm_slot_alloc() nogil
    void fm_slot_free(Py_ssize_t slot) nogil
    void fm_slot_zero(Py_ssize_t slot) nogil
    fm_stats_t fm_stats() nogil
    int fm_words_ensure(Py_ssize_t slot) nogil
    void fm_word_set(Py_ssize_t slot, Py_ssize_t index) nogil
    Py_ssize_t fm_word_get(Py_ssize_t slot) nogil
    Py_ssize_t fm_load_ssize(const Py_ssize_t *p) nogil
    void fm_store_ssize(Py_ssize_t *p, Py_ssize_t v) nogil
    Py_ssize_t fm_exchange_ssize(Py_ssize_t *p, Py_ssize_t v) nogil


# prometheus_client-compatible mode (PROMETHEUS_MULTIPROC_DIR): counters go
# to _promfile.h's store instead of the shards; fm_counter_add is the one
# branch on the add path (driven by fastmetrics.multiprocess._prometheus).
cdef extern from "_promfile.h":
    int fm_pf_on
    int fm_pf_errno
    int fm_pf_enable(const char *dir)
    int fm_pf_set_key(Py_ssize_t slot, const char *data, size_t length)
    int fm_pf_touch(Py_ssize_t slot) nogil
    int fm_counter_add(const Py_ssize_t *slot_ref, double amount) nogil
    void fm_pf_quiesce() nogil
    double fm_pf_fold(Py_ssize_t slot) nogil
    void fm_pf_zero(Py_ssize_t slot) nogil
    Py_ssize_t fm_pf_files() nogil


cdef extern from "_pydict.h":
    object fm_dict_get(object d, object key)


cdef extern from *:
    """
    /* labels(): METH_FASTCALL|METH_KEYWORDS entry point forwarding to a Cython
     * function, installed into MetricCore's type dict at import. */
    typedef PyObject *(*fm_fastcall_impl)(PyObject *, PyObject **, Py_ssize_t, PyObject *);
    static fm_fastcall_impl fm_labels_impl = NULL;

    static PyObject *fm_labels_fastcall(PyObject *self, PyObject *const *args,
                                        Py_ssize_t nargs, PyObject *kwnames) {
        return fm_labels_impl(self, (PyObject **)args, nargs, kwnames ? kwnames : Py_None);
    }

    static PyMethodDef fm_labels_def = {
        "labels", (PyCFunction)(void (*)(void))fm_labels_fastcall, METH_FASTCALL | METH_KEYWORDS,
        "Return the child for the given labelset, creating it on first use. "
        "A hit with str values is one dict lookup, lock-free."
    };

    static int fm_install_labels(PyObject *type, fm_fastcall_impl impl) {
        PyObject *descr;
        fm_labels_impl = impl;
        descr = PyDescr_NewMethod((PyTypeObject *)type, &fm_labels_def);
        if (descr == NULL) return -1;
        if (PyDict_SetItemString(((PyTypeObject *)type)->tp_dict, "labels", descr) < 0) {
            Py_DECREF(descr);
            return -1;
        }
        Py_DECREF(descr);
        PyType_Modified((PyTypeObject *)type);
        return 0;
    }

    static PyObject *fm_tuple_from_array(PyObject **items, Py_ssize_t n) {
        Py_ssize_t i;
        PyObject *t = PyTuple_New(n);
        if (t == NULL) return NULL;
        for (i = 0; i < n; i++) {
            Py_INCREF(items[i]);
            PyTuple_SET_ITEM(t, i, items[i]);
        }
        return t;
    }
    """
    ctypedef object (*fm_fastcall_impl)(object, PyObject **, Py_ssize_t, object)
    int fm_install_labels(object type, fm_fastcall_impl impl) except -1
    tuple fm_tuple_from_array(PyObject **items, Py_ssize_t n)


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
        self._metrics_map = None
        self._single_map = None
        self._nlabels = 0

    def _init_parent(self, Py_ssize_t nlabels):
        """Make this a labelled parent: an empty child map, no value of its own."""
        self._metrics_map = {}
        self._single_map = {} if nlabels == 1 else None
        self._nlabels = nlabels

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

    @property
    def _metrics(self):
        if self._metrics_map is None:
            raise AttributeError("_metrics")
        return self._metrics_map

    # labels() is installed below as a METH_FASTCALL method (_labels_fastcall):
    # Cython would compile *args/**kwargs as METH_VARARGS and allocate an
    # empty kwargs dict on every call.


cdef object _labels_impl(object self, PyObject **args, Py_ssize_t nargs, object kwnames):
    cdef MetricCore metric = <MetricCore>self
    cdef Py_ssize_t i
    if kwnames is None and metric._metrics_map is not None and nargs == metric._nlabels:
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
    kwargs = {}
    if kwnames is not None:
        for i in range(len(kwnames)):
            kwargs[kwnames[i]] = <object>args[nargs + i]
    return self._labels_slow(fm_tuple_from_array(args, nargs), kwargs)


fm_install_labels(MetricCore, _labels_impl)


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

    def __dealloc__(self):
        # No thread can be inside inc() on a dead object: both slots it owns
        # can be zeroed and recycled.  Lock-free (safe inside any collection).
        # In the prometheus_client-compatible mode a slot's file entries
        # outlive the object (as upstream's do): never recycled.
        if fm_pf_on:
            return
        if self._slot >= 0:
            fm_slot_free(self._slot)
        if self._spare >= 0:
            fm_slot_free(self._spare)

    def _init_value(self):
        """Give this counter (unlabelled, or a child) its slot, starting at 0."""
        if self._slot < 0:
            fm_store_ssize(&self._slot, _new_slot())

    cdef int _add(self, object amount) except -1:
        cdef double a
        cdef int rc
        if fm_load_ssize(&self._slot) < 0:   # a parent: upstream's error comes first
            raise ValueError(f"{self._type} metric is missing label values")
        a = _amount(amount)   # may run Python code, so fm_add reads the slot again
        rc = fm_counter_add(&self._slot, a)
        if rc == 0:
            return 0
        if rc == -2:
            raise ValueError(f"{self._type} metric is missing label values")
        return _raise_no_chunk()

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
        return fm_pf_fold(slot) if fm_pf_on else fm_fold(slot)

    def _spare_slot(self):
        """The zeroed slot the next ``_reset_value`` swaps in (allocated on the
        first call; ``MemoryError`` when the table is full, changing nothing)."""
        if self._spare < 0:
            self._spare = _new_slot()
        return self._spare

    def _reset_value(self):
        """Restart from zero: swap the spare slot in, wait until no increment
        can still store into the old one (``fm_quiesce``), zero it and keep it
        as the next spare.  Increments racing with the reset land on either
        side; every one made after it returns counts.  Two slots per counter
        however often it runs.  Callers serialise resets of one counter and
        call ``_spare_slot`` first."""
        cdef Py_ssize_t old
        if fm_load_ssize(&self._slot) < 0 or self._spare < 0:
            return
        old = fm_exchange_ssize(&self._slot, self._spare)
        with nogil:
            if fm_pf_on:
                fm_pf_quiesce()
                fm_pf_zero(old)
            else:
                fm_quiesce()
                fm_slot_zero(old)
        self._spare = old


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

    def __dealloc__(self):
        if self._slot >= 0:
            fm_slot_free(self._slot)

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
                fm_word_set(self._slot, i)
                if fm_pf_on:
                    _pf_enum_hook(self._slot, i)
                return 0
        if PyUnicode_CheckExact(state):
            index = fm_dict_get(self._state_index, state)
        else:
            try:
                index = fm_dict_get(self._state_index, state)
            except TypeError:               # unhashable: list.index decides
                index = None
        if index is None:
            index = self._states_list.index(state)   # ValueError, worded as upstream
        fm_word_set(self._slot, PyLong_AsSsize_t(index))
        if fm_pf_on:
            _pf_enum_hook(self._slot, index)
        return 0

    def state(self, state):
        """Set the current state; ``ValueError`` for an unknown one. Lock-free."""
        self._set(state)

    def _get_index(self):
        return fm_word_get(self._slot) if self._nstates >= 0 else 0

    def _slot_index(self):
        """This enum's slot (-1 for a labelled parent); multiprocess metadata."""
        return self._slot


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


def pf_enabled():
    return bool(fm_pf_on)


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
