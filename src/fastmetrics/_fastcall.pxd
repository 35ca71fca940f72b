# The fast-call method descriptors of ``_fastcall.h`` (see there), declared
# once for the extension modules that bind them (``_core_c``, ``_dispatch_c``).
# Extern declarations only: cimported at build time, nothing to import.

from cpython.object cimport PyObject


cdef extern from "_fastcall.h":
    ctypedef object (*fm_fastcall_impl)(object, PyObject **, Py_ssize_t, object)
    ctypedef struct PyMethodDef:
        pass
    int fm_bind_method(object type, PyMethodDef *method) except -1
    tuple fm_tuple_from_array(PyObject **items, Py_ssize_t n)
    dict fm_kwargs_dict(PyObject **values, object kwnames)
