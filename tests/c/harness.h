/*
 * What the C harnesses (tsan_*.c) share.  Include it first, after defining
 * HARNESS (the program's name for its messages), then the store's header.
 *
 * The store headers need Py_ssize_t only (ssize_t on POSIX, as in CPython's
 * pyport.h).  Should one start using the C API, include <Python.h> instead
 * (`python3-config --includes`); nothing here calls into Python.
 */
#ifndef FM_HARNESS_H
#define FM_HARNESS_H

#ifndef _GNU_SOURCE
#  define _GNU_SOURCE
#endif
#include <sys/types.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef ssize_t Py_ssize_t;

/* Abort with the failed condition and a printf-style detail. */
#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, HARNESS ": FAIL %s:%d: %s: ", __FILE__,          \
                    __LINE__, #cond);                                        \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            abort();                                                         \
        }                                                                    \
    } while (0)

#endif /* FM_HARNESS_H */
