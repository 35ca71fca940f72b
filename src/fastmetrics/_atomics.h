/*
 * fastmetrics atomics: relaxed word loads/stores, acquire/release pointer and
 * word publication, CAS (pointer, and a double's add), an exchange, and the thread-local storage
 * class.  Header-only, no state: included by the shard store (_shards.h) and
 * by every extension module that reads a flag another thread may write.
 * Py_ssize_t must be defined before inclusion (Python.h, or the C harness).
 */
#ifndef FASTMETRICS_ATOMICS_H
#define FASTMETRICS_ATOMICS_H

#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Atomics: relaxed word loads/stores, acquire/release pointer publication.  */
/* ------------------------------------------------------------------------ */
#if defined(_MSC_VER) && !defined(__clang__)
#  include <windows.h>
#  include <intrin.h>
   /* Aligned 64-bit accesses are single-copy atomic on x64 and ARM64. */
static inline double fm_load_double(const double *p) {
    return *(const volatile double *)p;
}
static inline void fm_store_double(double *p, double v) {
    *(volatile double *)p = v;
}
static inline Py_ssize_t fm_load_ssize(const Py_ssize_t *p) {
    return *(const volatile Py_ssize_t *)p;
}
static inline void fm_store_ssize(Py_ssize_t *p, Py_ssize_t v) {
    *(volatile Py_ssize_t *)p = v;
}
static inline Py_ssize_t fm_exchange_ssize(Py_ssize_t *p, Py_ssize_t v) {
#  if defined(_WIN64)
    return (Py_ssize_t)InterlockedExchange64((volatile LONG64 *)p, (LONG64)v);
#  else
    return (Py_ssize_t)InterlockedExchange((volatile LONG *)p, (LONG)v);
#  endif
}
static inline void *fm_load_ptr_acquire(void *const *p) {
    void *v = *(void *const volatile *)p;
    _ReadWriteBarrier();
#  if defined(_M_ARM64)
    __dmb(_ARM64_BARRIER_ISH);
#  endif
    return v;
}
static inline void fm_store_ptr_release(void **p, void *v) {
    InterlockedExchangePointer(p, v);
}
static inline void fm_store_i64_release(int64_t *p, int64_t v) {
    InterlockedExchange64((volatile LONG64 *)p, (LONG64)v);
}
static inline Py_ssize_t fm_load_ssize_acquire(const Py_ssize_t *p) {
    Py_ssize_t v = *(const volatile Py_ssize_t *)p;
    _ReadWriteBarrier();
#  if defined(_M_ARM64)
    __dmb(_ARM64_BARRIER_ISH);
#  endif
    return v;
}
static inline void fm_store_ssize_release(Py_ssize_t *p, Py_ssize_t v) {
#  if defined(_M_ARM64)
    __dmb(_ARM64_BARRIER_ISH);
#  endif
    _ReadWriteBarrier();
    *(volatile Py_ssize_t *)p = v;
}
/* Lock-free push onto a stack whose only other operation is take-all. */
static inline void *fm_cas_ptr(void **p, void *expected, void *desired) {
    return InterlockedCompareExchangePointer(p, desired, expected);
}
static inline void *fm_exchange_ptr(void **p, void *v) {
    return InterlockedExchangePointer(p, v);
}
/* Add `amount` to the double at `p` shared by several writers (a CAS loop on
 * its 64-bit pattern, relaxed).  Returns how many CAS attempts failed. */
static inline int fm_cas_add_double(double *p, double amount) {
    volatile LONG64 *w = (volatile LONG64 *)p;
    LONG64 seen = *w, desired, found;
    int failures = 0;
    for (;;) {
        double old, next;
        memcpy(&old, &seen, 8);
        next = old + amount;
        memcpy(&desired, &next, 8);
        found = InterlockedCompareExchange64(w, desired, seen);
        if (found == seen) return failures;
        seen = found;
        failures++;
    }
}
#  define FM_COMPILER_BARRIER() _ReadWriteBarrier()
#  define FM_FULL_FENCE() MemoryBarrier()
#  define FM_THREAD_LOCAL __declspec(thread)
#else
static inline double fm_load_double(const double *p) {
    double v;
    __atomic_load(p, &v, __ATOMIC_RELAXED);
    return v;
}
static inline void fm_store_double(double *p, double v) {
    __atomic_store(p, &v, __ATOMIC_RELAXED);
}
static inline Py_ssize_t fm_load_ssize(const Py_ssize_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void fm_store_ssize(Py_ssize_t *p, Py_ssize_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
static inline Py_ssize_t fm_exchange_ssize(Py_ssize_t *p, Py_ssize_t v) {
    return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}
static inline void *fm_load_ptr_acquire(void *const *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void fm_store_ptr_release(void **p, void *v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void fm_store_i64_release(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline Py_ssize_t fm_load_ssize_acquire(const Py_ssize_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void fm_store_ssize_release(Py_ssize_t *p, Py_ssize_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
/* Lock-free push onto a stack whose only other operation is take-all (no ABA:
 * nothing is ever popped one by one).  Returns the value seen. */
static inline void *fm_cas_ptr(void **p, void *expected, void *desired) {
    __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    return expected;
}
static inline void *fm_exchange_ptr(void **p, void *v) {
    return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}
/* Add `amount` to the double at `p` shared by several writers (a CAS loop on
 * its 64-bit pattern, relaxed: the word's own modification order is all a
 * sum needs).  Returns how many CAS attempts failed (contention). */
static inline int fm_cas_add_double(double *p, double amount) {
    double seen, next;
    int failures = 0;
    __atomic_load(p, &seen, __ATOMIC_RELAXED);
    for (;;) {
        next = seen + amount;
        if (__atomic_compare_exchange(p, &seen, &next, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return failures;
        failures++;
    }
}
#  define FM_COMPILER_BARRIER() __atomic_signal_fence(__ATOMIC_SEQ_CST)
#  define FM_FULL_FENCE() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#  if defined(__linux__) && defined(__GLIBC__)
     /* initial-exec: one fs-relative load instead of a __tls_get_addr call per
      * increment; glibc reserves static-TLS surplus for dlopen'ed modules and
      * this needs 8 bytes of it. */
#    define FM_THREAD_LOCAL __thread __attribute__((tls_model("initial-exec")))
#  else
#    define FM_THREAD_LOCAL __thread
#  endif
#endif

#endif /* FASTMETRICS_ATOMICS_H */
