/*
 * fastmetrics shard store: per-thread counter shards, slot allocator, fork hooks.
 *
 * Memory model
 * ------------
 * Every counter (and labelled child) owns a *slot* index.  Every OS thread that
 * increments owns one *shard*: a table of chunk pointers; chunk k holds the
 * thread's partial sums for slots [k*FM_CHUNK_SLOTS, (k+1)*FM_CHUNK_SLOTS).
 *
 *  - One writer per shard: only the owning thread stores into its chunks, so an
 *    increment is a relaxed load + relaxed store of its own word (no lock, no
 *    atomic read-modify-write).  The scraper reads the same words with relaxed
 *    loads, so it never sees a torn value, and read-read coherence makes every
 *    word it reads non-decreasing between scrapes.
 *  - Chunks are allocated lazily by the owner, cache-line aligned, and never
 *    move or get freed; the pointer is published with a release store and read
 *    with an acquire load.  Growing never invalidates a reader.
 *  - Shards are linked into an append-only list that scrapers walk without a
 *    lock.  A shard is never freed: when its thread exits it goes back to a pool
 *    *with its counts*, and the next new thread adopts it.  Memory is therefore
 *    bounded by the peak number of live threads.
 *  - The pool and the slot free list are guarded by one C mutex that is only
 *    taken on cold paths (a thread's first increment, thread exit, slot
 *    allocation/release, fork) and never while calling into Python.
 *
 * Nothing here relies on the GIL.  This header is included by exactly one
 * translation unit (_core_c.pyx); everything is static.
 */
#ifndef FASTMETRICS_SHARDS_H
#define FASTMETRICS_SHARDS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FM_CACHE_LINE 128              /* covers adjacent-line prefetch pairs */
#define FM_CHUNK_BITS 9
#define FM_CHUNK_SLOTS (1 << FM_CHUNK_BITS)  /* 512 slots = 4 KiB per chunk */
#define FM_CHUNK_MASK (FM_CHUNK_SLOTS - 1)
#define FM_MAX_CHUNKS 2048
#define FM_MAX_SLOTS ((Py_ssize_t)FM_CHUNK_SLOTS * FM_MAX_CHUNKS)

#if defined(__GNUC__) || defined(__clang__)
#  define FM_LIKELY(x) __builtin_expect(!!(x), 1)
#  define FM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#  define FM_LIKELY(x) (x)
#  define FM_UNLIKELY(x) (x)
#endif

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
#  if defined(__linux__) && defined(__GLIBC__)
     /* initial-exec: one fs-relative load instead of a __tls_get_addr call per
      * increment; glibc reserves static-TLS surplus for dlopen'ed modules and
      * this needs 8 bytes of it. */
#    define FM_THREAD_LOCAL __thread __attribute__((tls_model("initial-exec")))
#  else
#    define FM_THREAD_LOCAL __thread
#  endif
#endif

/* ------------------------------------------------------------------------ */
/* Mutex and thread-exit hook.                                               */
/* ------------------------------------------------------------------------ */
#if defined(_WIN32)
#  include <windows.h>
typedef SRWLOCK fm_mutex_t;
#  define FM_MUTEX_INIT SRWLOCK_INIT
static inline void fm_mutex_lock(fm_mutex_t *m) { AcquireSRWLockExclusive(m); }
static inline void fm_mutex_unlock(fm_mutex_t *m) { ReleaseSRWLockExclusive(m); }
#else
#  include <pthread.h>
typedef pthread_mutex_t fm_mutex_t;
#  define FM_MUTEX_INIT PTHREAD_MUTEX_INITIALIZER
static inline void fm_mutex_lock(fm_mutex_t *m) { pthread_mutex_lock(m); }
static inline void fm_mutex_unlock(fm_mutex_t *m) { pthread_mutex_unlock(m); }
#endif

typedef struct fm_shard {
    double *chunks[FM_MAX_CHUNKS];   /* owner writes (release); anyone reads (acquire) */
    struct fm_shard *next_all;       /* immutable once published */
    struct fm_shard *next_free;      /* guarded by fm_lock */
    int in_use;                      /* guarded by fm_lock */
} fm_shard;

static fm_mutex_t fm_lock = FM_MUTEX_INIT;
static fm_shard *fm_all_shards = NULL;   /* head, release-published */
static fm_shard *fm_free_shards = NULL;  /* guarded by fm_lock */
static Py_ssize_t fm_shards_total = 0;   /* guarded by fm_lock */
static Py_ssize_t fm_shards_live = 0;    /* guarded by fm_lock */
static Py_ssize_t fm_chunks_total = 0;   /* relaxed counter, stats only */

static Py_ssize_t fm_next_slot = 0;      /* guarded by fm_lock */
static Py_ssize_t *fm_free_slots = NULL; /* guarded by fm_lock */
static Py_ssize_t fm_free_slots_len = 0, fm_free_slots_cap = 0;

static FM_THREAD_LOCAL fm_shard *fm_tls_shard = NULL;
static int fm_initialized = 0;

static void fm_release_shard_locked(fm_shard *s) {
    if (s->in_use) {
        s->in_use = 0;
        s->next_free = fm_free_shards;
        fm_free_shards = s;
        fm_shards_live--;
    }
}

static void fm_thread_exit(void *value) {
    fm_shard *s = (fm_shard *)value;
    if (s == NULL) return;
    fm_mutex_lock(&fm_lock);
    fm_release_shard_locked(s);
    fm_mutex_unlock(&fm_lock);
    fm_tls_shard = NULL;
}

#if defined(_WIN32)
static DWORD fm_fls_index = FLS_OUT_OF_INDEXES;
static void WINAPI fm_fls_callback(void *value) { fm_thread_exit(value); }
static int fm_tls_init(void) {
    fm_fls_index = FlsAlloc(fm_fls_callback);
    return fm_fls_index == FLS_OUT_OF_INDEXES ? -1 : 0;
}
static int fm_tls_register(fm_shard *s) {
    return FlsSetValue(fm_fls_index, s) ? 0 : -1;
}
#else
static pthread_key_t fm_key;
static int fm_tls_init(void) { return pthread_key_create(&fm_key, fm_thread_exit); }
static int fm_tls_register(fm_shard *s) { return pthread_setspecific(fm_key, s); }
#endif

static void *fm_aligned_zalloc(size_t size) {
    void *p = NULL;
#if defined(_WIN32)
    p = _aligned_malloc(size, FM_CACHE_LINE);
#else
    if (posix_memalign(&p, FM_CACHE_LINE, size) != 0) p = NULL;
#endif
    if (p) memset(p, 0, size);
    return p;
}

/* Called once at module import, with the GIL held. Returns 0 or -1. */
static int fm_init(void) {
    if (fm_initialized) return 0;
    if (fm_tls_init() != 0) return -1;
    fm_initialized = 1;
    return 0;
}

/* Cold path: give the calling thread a shard (a pooled one if any).
 * Returns NULL when out of memory.  Safe without the GIL. */
static fm_shard *fm_acquire_shard(void) {
    fm_shard *s;
    fm_mutex_lock(&fm_lock);
    s = fm_free_shards;
    if (s != NULL) {
        fm_free_shards = s->next_free;
    } else {
        s = (fm_shard *)fm_aligned_zalloc(sizeof(fm_shard));
        if (s == NULL) { fm_mutex_unlock(&fm_lock); return NULL; }
        s->next_all = fm_all_shards;
        fm_store_ptr_release((void **)&fm_all_shards, s);
        fm_shards_total++;
    }
    s->next_free = NULL;
    s->in_use = 1;
    fm_shards_live++;
    fm_mutex_unlock(&fm_lock);
    if (fm_tls_register(s) != 0) {
        /* Thread-exit hook unavailable: keep the shard owned forever rather than
         * risk two writers; counts stay correct, only pooling is lost. */
    }
    fm_tls_shard = s;
    return s;
}

/* Cold path: allocate chunk `c` of the calling thread's shard. */
static double *fm_alloc_chunk(fm_shard *s, Py_ssize_t c) {
    double *chunk = (double *)fm_aligned_zalloc(sizeof(double) * FM_CHUNK_SLOTS);
    if (chunk == NULL) return NULL;
    fm_store_ptr_release((void **)&s->chunks[c], chunk);
#if defined(_MSC_VER) && !defined(__clang__)
    InterlockedIncrement64((volatile LONG64 *)&fm_chunks_total);
#else
    __atomic_fetch_add(&fm_chunks_total, 1, __ATOMIC_RELAXED);
#endif
    return chunk;
}

/* Hot path: the calling thread's word for `slot` (0 <= slot < FM_MAX_SLOTS).
 * NULL only when out of memory.  Safe without the GIL. */
static inline double *fm_slot_ptr(Py_ssize_t slot) {
    fm_shard *s = fm_tls_shard;
    double *chunk;
    Py_ssize_t c = slot >> FM_CHUNK_BITS;
    if (FM_UNLIKELY(s == NULL)) {
        s = fm_acquire_shard();
        if (s == NULL) return NULL;
    }
    chunk = s->chunks[c];   /* only this thread ever stores this pointer */
    if (FM_UNLIKELY(chunk == NULL)) {
        chunk = fm_alloc_chunk(s, c);
        if (chunk == NULL) return NULL;
    }
    return chunk + (slot & FM_CHUNK_MASK);
}

/* Hot path: add `amount` to the calling thread's partial sum.  0 or -1 (OOM). */
static inline int fm_add(Py_ssize_t slot, double amount) {
    double *w = fm_slot_ptr(slot);
    if (FM_UNLIKELY(w == NULL)) return -1;
    fm_store_double(w, fm_load_double(w) + amount);
    return 0;
}

/* Scrape: sum of every shard's partial sum for `slot`.  Lock-free, never
 * decreases between calls while the slot is live. */
static double fm_fold(Py_ssize_t slot) {
    double total = 0.0;
    Py_ssize_t c = slot >> FM_CHUNK_BITS, off = slot & FM_CHUNK_MASK;
    fm_shard *s = (fm_shard *)fm_load_ptr_acquire((void *const *)&fm_all_shards);
    for (; s != NULL; s = s->next_all) {
        double *chunk = (double *)fm_load_ptr_acquire((void *const *)&s->chunks[c]);
        if (chunk != NULL) total += fm_load_double(chunk + off);
    }
    return total;
}

/* Slots: allocate a zeroed slot; -1 when the table is full or on OOM. */
static Py_ssize_t fm_slot_alloc(void) {
    Py_ssize_t slot = -1;
    fm_mutex_lock(&fm_lock);
    if (fm_free_slots_len > 0) {
        slot = fm_free_slots[--fm_free_slots_len];
    } else if (fm_next_slot < FM_MAX_SLOTS) {
        slot = fm_next_slot++;
    }
    fm_mutex_unlock(&fm_lock);
    return slot;
}

/* Release a slot whose owner object is gone (no writer can still hold it):
 * zero it in every shard so the next owner starts at 0, then recycle it. */
static void fm_slot_free(Py_ssize_t slot) {
    Py_ssize_t c = slot >> FM_CHUNK_BITS, off = slot & FM_CHUNK_MASK;
    fm_shard *s;
    if (slot < 0) return;
    fm_mutex_lock(&fm_lock);
    for (s = fm_all_shards; s != NULL; s = s->next_all) {
        double *chunk = (double *)fm_load_ptr_acquire((void *const *)&s->chunks[c]);
        if (chunk != NULL) fm_store_double(chunk + off, 0.0);
    }
    if (fm_free_slots_len == fm_free_slots_cap) {
        Py_ssize_t cap = fm_free_slots_cap ? fm_free_slots_cap * 2 : 64;
        Py_ssize_t *grown = (Py_ssize_t *)realloc(fm_free_slots, sizeof(Py_ssize_t) * cap);
        if (grown == NULL) {  /* leak the slot rather than fail a dealloc */
            fm_mutex_unlock(&fm_lock);
            return;
        }
        fm_free_slots = grown;
        fm_free_slots_cap = cap;
    }
    fm_free_slots[fm_free_slots_len++] = slot;
    fm_mutex_unlock(&fm_lock);
}

/* Fork: hold the lock across fork() so the child never inherits it mid-update;
 * in the child, shards of threads that do not exist there go back to the pool
 * with their counts. */
static void fm_before_fork(void) { fm_mutex_lock(&fm_lock); }
static void fm_after_fork_parent(void) { fm_mutex_unlock(&fm_lock); }
static void fm_after_fork_child(void) {
    fm_shard *s;
    for (s = fm_all_shards; s != NULL; s = s->next_all) {
        if (s != fm_tls_shard) fm_release_shard_locked(s);
    }
    fm_mutex_unlock(&fm_lock);
}

typedef struct {
    Py_ssize_t shards_total, shards_live, chunks, slots_used, slots_free;
} fm_stats_t;

static fm_stats_t fm_stats(void) {
    fm_stats_t st;
    fm_mutex_lock(&fm_lock);
    st.shards_total = fm_shards_total;
    st.shards_live = fm_shards_live;
    st.slots_used = fm_next_slot - fm_free_slots_len;
    st.slots_free = fm_free_slots_len;
    fm_mutex_unlock(&fm_lock);
    st.chunks = fm_load_ssize(&fm_chunks_total);
    return st;
}

#endif /* FASTMETRICS_SHARDS_H */
