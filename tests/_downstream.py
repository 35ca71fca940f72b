"""A downstream Cython module built against fastmetrics' public C API, exactly as
a user would: a ``.pyx`` and a ``setup.py`` calling ``cythonize(...,
include_path=[fastmetrics.get_include()])``, compiled with ``python setup.py
build_ext --inplace`` in a subprocess, then imported.

Shared by ``tests/test_nogil_api.py`` (plain import) and
``bench/test_bench_nogil.py`` (loaded by path): one copy of the source.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

MODULE = "fm_downstream"

PYX = r'''
# cython: language_level=3
# A user's module: counts into fastmetrics metrics without holding the GIL.
from fastmetrics._core_c cimport CounterCore, EnumCore, counter_add, enum_set

cdef extern from *:
    """
    /* A deliberately shared counter, for contrast: one word, one atomic add
       per increment, every thread on the same cache line. */
    #if defined(_MSC_VER)
    #include <intrin.h>
    static volatile __int64 fm_demo_shared = 0;
    static void fm_demo_shared_add(long long v) { _InterlockedExchangeAdd64(&fm_demo_shared, v); }
    static long long fm_demo_shared_get(void) { return _InterlockedOr64(&fm_demo_shared, 0); }
    static void fm_demo_shared_set(long long v) { _InterlockedExchange64(&fm_demo_shared, v); }
    #else
    static long long fm_demo_shared = 0;
    static void fm_demo_shared_add(long long v) { __atomic_fetch_add(&fm_demo_shared, v, __ATOMIC_RELAXED); }
    static long long fm_demo_shared_get(void) { return __atomic_load_n(&fm_demo_shared, __ATOMIC_RELAXED); }
    static void fm_demo_shared_set(long long v) { __atomic_store_n(&fm_demo_shared, v, __ATOMIC_RELAXED); }
    #endif
    """
    void fm_demo_shared_add(long long v) nogil
    long long fm_demo_shared_get() nogil
    void fm_demo_shared_set(long long v) nogil

cdef extern from *:
    """
    /* The control for thread scaling: the same shape of loop as hammer()'s
       (an indirect call per increment, as counter_add is reached through the
       C-API table, then a load and a store of a double) on private memory, a
       word on the calling thread's own stack: nothing shared. */
    static void fm_demo_private_add(volatile double *word, double amount) { *word = *word + amount; }
    static void (*volatile fm_demo_private_add_fn)(volatile double *, double) = fm_demo_private_add;
    static void fm_demo_private_loop(long n) {
        volatile double word = 0;
        long i;
        for (i = 0; i < n; i++) fm_demo_private_add_fn(&word, 1.0);
    }
    """
    void fm_demo_private_loop(long n) nogil


def hammer(CounterCore c not None, long n, double amount=1.0):
    """``n`` x ``counter_add(c, amount)`` without the GIL; returns how many failed (-1)."""
    cdef long i, failed = 0
    with nogil:
        for i in range(n):
            if counter_add(c, amount) < 0:
                failed += 1
    return failed


def set_state(EnumCore e not None, Py_ssize_t index):
    """One ``enum_set(e, index)`` without the GIL; its return value (0 or -1)."""
    cdef int rc
    with nogil:
        rc = enum_set(e, index)
    return rc


def set_states(EnumCore e not None, long n, Py_ssize_t nstates):
    """``n`` x ``enum_set(e, i % nstates)`` without the GIL; returns how many failed."""
    cdef long i, failed = 0
    with nogil:
        for i in range(n):
            if enum_set(e, i % nstates) < 0:
                failed += 1
    return failed


cdef CounterCore unset_counter   # module-level handles never assigned: None
cdef EnumCore unset_enum


def add_to_unset(double amount):
    """``counter_add`` on a handle that is still None; its return value."""
    cdef int rc
    with nogil:
        rc = counter_add(unset_counter, amount)
    return rc


def set_unset(Py_ssize_t index):
    """``enum_set`` on a handle that is still None; its return value."""
    cdef int rc
    with nogil:
        rc = enum_set(unset_enum, index)
    return rc


def hammer_shared(long n):
    """``n`` x one atomic add on a single process-wide word, without the GIL."""
    cdef long i
    with nogil:
        for i in range(n):
            fm_demo_shared_add(1)


def hammer_private(long n):
    """``n`` x an add to a word on this thread's own stack, without the GIL: no
    shared state, so it scales with free cores (the bench's control)."""
    with nogil:
        fm_demo_private_loop(n)


def shared_value():
    return fm_demo_shared_get()


def shared_reset():
    fm_demo_shared_set(0)
'''

SETUP_PY = r'''
import fastmetrics
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    name="fm-downstream",
    ext_modules=cythonize(
        [Extension("fm_downstream", ["fm_downstream.pyx"])],
        include_path=[fastmetrics.get_include()],
        compiler_directives={"language_level": "3"},
    ),
)
'''


class BuildError(RuntimeError):
    """The downstream module did not compile (message carries the build output's tail)."""


def _environment() -> dict:
    """This process's environment; a relative ``PYTHONPATH`` entry (``PYTHONPATH=src``
    in a checkout) is made absolute, since the build runs in another directory."""
    env = os.environ.copy()
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p else p
                                            for p in env["PYTHONPATH"].split(os.pathsep))
    return env


def build(dest: Path, timeout: float = 300.0) -> ModuleType:
    """Write the ``.pyx`` and ``setup.py`` into ``dest``, build in place in a
    subprocess (this interpreter, this environment), import and return it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{MODULE}.pyx").write_text(PYX)
    (dest / "setup.py").write_text(SETUP_PY)
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
    try:
        proc = subprocess.run(cmd, cwd=str(dest), env=_environment(), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"`{' '.join(cmd)}` timed out after {timeout:g} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise BuildError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}) in {dest}:\n{tail}")
    if str(dest) not in sys.path:
        sys.path.insert(0, str(dest))
    importlib.invalidate_caches()
    return importlib.import_module(MODULE)
