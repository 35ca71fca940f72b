# Public C-level API of fastmetrics (``cimport fastmetrics._core_c``).
#
# A Cython module takes a reference to a counter child or enum child while it
# holds the GIL, then counts without the GIL:
#
#     from fastmetrics._core_c cimport CounterCore, EnumCore, counter_add, enum_set
#
#     cdef CounterCore c = my_counter.labels("parsed")   # keeps the child alive
#     with nogil:
#         for i in range(n):
#             counter_add(c, 1.0)
#
# The reference keeps the metric alive: after ``remove()``/``clear()`` the
# child is no longer exported, and counts made through it go to that removed
# child, never to freed memory.

from cpython.object cimport PyObject

cdef class MetricCore:
    # A dict slot (tp_dictoffset > 0), so Python subclasses get no managed
    # dict (whose values Cython's tp_new never initialises).  It stays NULL on
    # CPython 3.12+ (fm_drop_instance_dict; the public classes keep every
    # attribute in __slots__), which lets the interpreter specialise ``o.inc``
    # / ``o.state`` (LOAD_ATTR_METHOD_LAZY_DICT); 3.11 needs it to exist
    # (LOAD_METHOD_WITH_DICT).  Other attributes still work: they create the
    # dict and cost the specialisation.
    cdef dict __dict__
    cdef object _metrics_map          # dict: label values -> child (parents only)
    cdef object _single_map           # dict: value -> child, for one-label parents
    cdef tuple _labelnames_t          # label names (parents only; () otherwise)
    cdef Py_ssize_t _nlabels


cdef class CounterCore(MetricCore):
    cdef Py_ssize_t _slot             # -1 for a labelled parent; relaxed atomic
    cdef Py_ssize_t _spare            # zeroed slot the next reset() swaps in (-1: none yet)
    cdef object _slot_owner           # None, or the SharedSlot owning _slot (shared with copies)
    cdef int _add(self, object amount) except -1


cdef class EnumCore(MetricCore):
    cdef Py_ssize_t _slot             # index of the state word (-1 for a parent)
    cdef Py_ssize_t _nstates
    cdef object _state_index          # dict: state -> index
    cdef object _states_list
    cdef PyObject *_state_ptrs[8]     # first 8 states by identity (NULL: use the dict)
    cdef object _slot_owner           # None, or the SharedSlot owning _slot (shared with copies)
    cdef int _set(self, object state) except -1


# Exported through Cython's C-API table: a cimporting module calls these
# through a function pointer into this module's shard store.
cdef int counter_add(CounterCore counter, double amount) noexcept nogil
cdef int enum_set(EnumCore enum, Py_ssize_t index) noexcept nogil
