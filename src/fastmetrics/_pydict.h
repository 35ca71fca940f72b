/* fastmetrics: a dict lookup that is safe on free-threaded CPython.  Shared
 * by the extension modules (header-only, no state). */
#ifndef FASTMETRICS_PYDICT_H
#define FASTMETRICS_PYDICT_H

#include <Python.h>

/* New reference to d[key], a new reference to None when missing, NULL on
 * error.  Uses PyDict_GetItemRef where it exists: a borrowed reference is
 * not safe against a concurrent delete on free-threaded builds. */
static PyObject *fm_dict_get(PyObject *d, PyObject *key) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *res = NULL;
    int rc = PyDict_GetItemRef(d, key, &res);
    if (rc < 0) return NULL;
    if (rc == 0) { Py_INCREF(Py_None); return Py_None; }
    return res;
#else
    PyObject *res = PyDict_GetItemWithError(d, key);
    if (res == NULL) {
        if (PyErr_Occurred()) return NULL;
        res = Py_None;
    }
    Py_INCREF(res);
    return res;
#endif
}

/* Empty the `cdef dict __dict__` slot of a new object (from __cinit__).
 * Cython's tp_new fills it with a new empty dict, but CPython 3.12+ only
 * specialises a method call on an object whose type has tp_dictoffset > 0
 * when that slot is NULL (LOAD_ATTR_METHOD_LAZY_DICT).  3.11 is the
 * opposite: LOAD_METHOD_WITH_DICT needs the dict to exist, so it is kept
 * there.  Before 3.11 nothing is specialised and the slot is emptied (one
 * dict less per metric).  Generic setattr and the __dict__ getter recreate
 * it on demand. */
static void fm_drop_instance_dict(PyObject *o) {
#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030C0000
    Py_ssize_t offset = Py_TYPE(o)->tp_dictoffset;
    if (offset > 0) {
        PyObject **slot = (PyObject **)((char *)o + offset);
        Py_CLEAR(*slot);
    }
#else
    (void)o;
#endif
}

/* New reference to o's instance dict, or to None while it does not exist
 * (reading __dict__ would create it). */
static PyObject *fm_instance_dict(PyObject *o) {
    Py_ssize_t offset = Py_TYPE(o)->tp_dictoffset;
    PyObject *d = NULL;
    if (offset > 0) d = *(PyObject **)((char *)o + offset);
    if (d == NULL) d = Py_None;
    Py_INCREF(d);
    return d;
}

#endif /* FASTMETRICS_PYDICT_H */
