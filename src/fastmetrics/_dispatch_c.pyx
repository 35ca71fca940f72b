# cython: language_level=3, freethreading_compatible=True
# cython: boundscheck=False, wraparound=False
"""Name -> metric dispatch in C, over the shard store's metrics (see
``_core_c.pxd``).  Knows no metric names: a subclass installs its maps with
``_set_dispatch`` and implements the miss hooks (``fastmetrics._upcalls``).
The pure-Python twin is :mod:`fastmetrics._dispatch_py`.
"""
cimport cython
from cpython.object cimport PyObject

from fastmetrics._core_c cimport CounterCore, EnumCore
from fastmetrics._fastcall cimport PyMethodDef, fm_bind_method, fm_fastcall_impl, fm_kwargs_dict, fm_tuple_from_array


cdef extern from "_atomics.h":
    Py_ssize_t fm_load_ssize(const Py_ssize_t *p) nogil
    void fm_store_ssize(Py_ssize_t *p, Py_ssize_t v) nogil


cdef extern from *:
    """
    FM_FASTCALL_METHOD(inc, "inc",
        "inc(name, n=1): add n to the counter named name. Lock-free for the built-in names.")
    FM_FASTCALL_METHOD(state, "state",
        "state(state, name='state'): set the enum named name. Lock-free for the built-in names.")
    """
    fm_fastcall_impl fm_inc_impl, fm_state_impl
    PyMethodDef fm_inc_def, fm_state_def


cdef extern from "_pydict.h":
    object fm_dict_get(object d, object key)
    void fm_drop_instance_dict(object o)


implementation = "cython"


cdef class Dispatcher:
    """Dispatches ``inc(name, n)`` / ``state(s, name)`` to the counter or enum
    registered under ``name``.

    Contract: ``_set_dispatch(counters, enums)`` once, before the object is
    shared (the maps are copied and never mutated); ``activated`` (any
    object, truth-tested) gates both calls.  A name found in the map costs an
    identity compare over the first eight names (interned literals) or one
    dict lookup, then the metric's lock-free update; anything else calls the
    subclass's ``_inc_miss(name, n)`` / ``_state_miss(state, name)``.
    Thread-safe; never relies on the GIL.
    """
    cdef dict __dict__                # stays NULL: see fm_drop_instance_dict
    cdef object _counter_map
    cdef object _enum_map
    cdef PyObject *_counter_names[8]  # identity caches over the maps' first entries;
    cdef PyObject *_counters[8]       # the maps own the references
    cdef Py_ssize_t _ncounters
    cdef PyObject *_enum_names[8]
    cdef PyObject *_enums[8]
    cdef Py_ssize_t _nenums
    cdef object _activated
    cdef Py_ssize_t _on               # truth of ``activated``; relaxed atomic

    def __cinit__(self, *args, **kwargs):
        fm_drop_instance_dict(self)
        self._counter_map = None
        self._enum_map = None
        self._ncounters = 0
        self._nenums = 0
        self._activated = False
        self._on = 0

    # The object field is only touched under the object's critical section
    # (a per-object lock on free-threaded builds, nothing with the GIL); the
    # hot path reads only the C flag.
    @property
    @cython.critical_section
    def activated(self):
        return self._activated

    @activated.setter
    @cython.critical_section
    def activated(self, value):
        self._activated = value
        fm_store_ssize(&self._on, 1 if value else 0)

    def _set_dispatch(self, counters, enums):
        """Install the name -> metric maps (fastmetrics counters and enums of
        this implementation; ``TypeError`` otherwise).  Once, before the
        object is shared (``RuntimeError`` the second time)."""
        if self._counter_map is not None:
            raise RuntimeError("dispatch maps are already installed")
        cdef Py_ssize_t i = 0
        counter_map, enum_map = dict(counters), dict(enums)
        # Check everything before installing anything (as the twin does).
        if not all(isinstance(c, CounterCore) for c in counter_map.values()):
            raise TypeError("counters must be fastmetrics counters")
        if not all(isinstance(e, EnumCore) for e in enum_map.values()):
            raise TypeError("enums must be fastmetrics enums")
        self._counter_map, self._enum_map = counter_map, enum_map
        for name, counter in self._counter_map.items():
            if i < 8:
                self._counter_names[i] = <PyObject *>name
                self._counters[i] = <PyObject *>counter
                i += 1
        self._ncounters = i
        i = 0
        for name, enum in self._enum_map.items():
            if i < 8:
                self._enum_names[i] = <PyObject *>name
                self._enums[i] = <PyObject *>enum
                i += 1
        self._nenums = i

    @cython.binding(False)   # a method_descriptor, which CPython 3.12+ specialises
    def inc(self, name, n=1):
        """Add ``n`` to the counter named ``name`` (``_inc_miss`` if none)."""
        self._inc(name, n)

    cdef int _inc(self, object name, object n) except -1:
        cdef Py_ssize_t i
        if not fm_load_ssize(&self._on):
            return 0
        for i in range(self._ncounters):
            if self._counter_names[i] == <PyObject *>name:
                return (<CounterCore>self._counters[i])._add(n)
        if self._counter_map is not None:
            counter = fm_dict_get(self._counter_map, name)
            if counter is not None:
                return (<CounterCore>counter)._add(n)
        self._inc_miss(name, n)
        return 0

    def state(self, state, name="state"):
        """Set the enum named ``name`` to ``state`` (``_state_miss`` if none)."""
        self._state(state, name)

    cdef int _state(self, object state, object name) except -1:
        cdef Py_ssize_t i
        if not fm_load_ssize(&self._on):
            return 0
        for i in range(self._nenums):
            if self._enum_names[i] == <PyObject *>name:
                return (<EnumCore>self._enums[i])._set(state)
        if self._enum_map is not None:
            enum = fm_dict_get(self._enum_map, name)
            if enum is not None:
                return (<EnumCore>enum)._set(state)
        self._state_miss(state, name)
        return 0


# C statics (a module global would cost a dict lookup per call).
cdef object _core_inc = Dispatcher.inc
cdef object _core_state = Dispatcher.state
cdef object _ONE = 1
cdef object _STATE = "state"


cdef object _inc_impl(object self, PyObject **args, Py_ssize_t nargs, object kwnames):
    """``inc(name, n=1)`` bound to the handler class: positional calls go
    straight to the dispatch; every other call to ``Dispatcher.inc``."""
    if kwnames is None:
        if nargs == 1:
            (<Dispatcher>self)._inc(<object>args[0], _ONE)
            return None
        if nargs == 2:
            (<Dispatcher>self)._inc(<object>args[0], <object>args[1])
            return None
    return _core_inc(self, *fm_tuple_from_array(args, nargs), **fm_kwargs_dict(args + nargs, kwnames))


cdef object _state_impl(object self, PyObject **args, Py_ssize_t nargs, object kwnames):
    """``state(state, name="state")`` bound to the handler class (as ``inc``)."""
    if kwnames is None:
        if nargs == 1:
            (<Dispatcher>self)._state(<object>args[0], _STATE)
            return None
        if nargs == 2:
            (<Dispatcher>self)._state(<object>args[0], <object>args[1])
            return None
    return _core_state(self, *fm_tuple_from_array(args, nargs), **fm_kwargs_dict(args + nargs, kwnames))


fm_inc_impl = _inc_impl
fm_state_impl = _state_impl


def bind_hot_methods(handler_class):
    """Bind ``inc``/``state`` to ``handler_class`` (a subclass of Dispatcher:
    ``TypeError`` otherwise) as method descriptors of that very class, so
    CPython 3.11+ specialises calls on its instances (see ``_fastcall.h``).
    Same signatures, results and errors as Dispatcher's."""
    if not (isinstance(handler_class, type) and issubclass(handler_class, Dispatcher)):
        raise TypeError("handler_class must be a subclass of Dispatcher")
    fm_bind_method(handler_class, &fm_inc_def)
    fm_bind_method(handler_class, &fm_state_def)
