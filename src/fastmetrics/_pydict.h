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

#endif /* FASTMETRICS_PYDICT_H */
