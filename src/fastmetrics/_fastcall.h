/* fastmetrics: hot methods as METH_FASTCALL|METH_KEYWORDS method descriptors
 * bound to the public classes.  Shared by the extension modules (header-only).
 *
 * Why: CPython 3.11+ specialises `o.inc()` on a method descriptor only when
 * type(o) is exactly the descriptor's d_type (CALL_METHOD_DESCRIPTOR_*), so a
 * method defined on a Cython base class is never specialised for instances
 * of the Python subclasses users get; and Cython's own argument parsing
 * costs more than the call.  Each FM_FASTCALL_METHOD defines a PyMethodDef
 * whose C entry forwards (self, args, nargs, kwnames or None) to a Cython
 * function; fm_bind_method installs a descriptor for it in a class's dict
 * with that class as d_type. */
#ifndef FASTMETRICS_FASTCALL_H
#define FASTMETRICS_FASTCALL_H

#include <Python.h>

typedef PyObject *(*fm_fastcall_impl)(PyObject *, PyObject **, Py_ssize_t, PyObject *);

#define FM_FASTCALL_METHOD(ID, NAME, DOC)                                               \
    static fm_fastcall_impl fm_##ID##_impl = NULL;                                      \
    static PyObject *fm_##ID##_fastcall(PyObject *self, PyObject *const *args,          \
                                        Py_ssize_t nargs, PyObject *kwnames) {          \
        return fm_##ID##_impl(self, (PyObject **)args, nargs, kwnames ? kwnames : Py_None); \
    }                                                                                   \
    static PyMethodDef fm_##ID##_def = {                                                \
        NAME, (PyCFunction)(void (*)(void))fm_##ID##_fastcall,                          \
        METH_FASTCALL | METH_KEYWORDS, DOC                                              \
    };

/* A new tuple of the n items (the positional arguments of a fast call, for a
 * slow path that takes *args); NULL with an exception. */
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

/* The keyword arguments of a fast call (their values follow the positional
 * ones; kwnames is the tuple of names, or None) as a new dict; NULL with an
 * exception. */
static PyObject *fm_kwargs_dict(PyObject **values, PyObject *kwnames) {
    Py_ssize_t i;
    PyObject *d = PyDict_New();
    if (d == NULL || kwnames == Py_None) return d;
    for (i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        if (PyDict_SetItem(d, PyTuple_GET_ITEM(kwnames, i), values[i]) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

/* Install def as a method of type (d_type = type); 0, or -1 with an exception.
 * A Cython cdef class is immutable to setattr: its dict is written directly,
 * at module init, before any instance exists (then PyType_Modified). */
static int fm_bind_method(PyObject *type, PyMethodDef *def) {
    int rc;
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *descr = PyDescr_NewMethod(tp, def);
    if (descr == NULL) return -1;
    int immutable = !PyType_HasFeature(tp, Py_TPFLAGS_HEAPTYPE);
#ifdef Py_TPFLAGS_IMMUTABLETYPE
    immutable = immutable || PyType_HasFeature(tp, Py_TPFLAGS_IMMUTABLETYPE);
#endif
    if (immutable) {
        rc = PyDict_SetItemString(tp->tp_dict, def->ml_name, descr);
        if (rc == 0) PyType_Modified(tp);
    } else {
        rc = PyObject_SetAttrString(type, def->ml_name, descr);
    }
    Py_DECREF(descr);
    return rc;
}

#endif /* FASTMETRICS_FASTCALL_H */
