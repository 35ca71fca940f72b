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
 *    allocation, fork) and never while calling into Python.  fork() takes it
 *    in a C pthread_atfork handler, so no Python code ever runs while it is
 *    held.  Releasing a slot (a metric's dealloc, possibly inside a garbage
 *    collection anywhere) takes no lock: it pushes onto a lock-free pending
 *    list that the next allocation drains.
 *  - Each increment brackets itself with the shard's `seq` word (odd while it
 *    runs; owner-only stores).  fm_quiesce() waits, after an asymmetric
 *    barrier, until no increment that may have read a slot index before a
 *    swap is still in flight: reset() swaps in a zeroed spare slot, quiesces,
 *    then zeroes the old one, so memory stays flat however often it runs.
 *  - Enum words live in a second table of chunks indexed by the enum's slot:
 *    one word per state machine, shared by all threads (last store wins).
 *    In-process the word is the state index, unbounded; in multiprocess
 *    mode it is index | (stamp_ms << FM_STATE_BITS).
 *
 * Multiprocess mode (fastmetrics.multiprocess) changes only where chunks come
 * from: fm_alloc_chunk and fm_words_ensure append them as records to this
 * process's memory-mapped file (the *arena*; format in _mpfile.py) instead of
 * the heap, so other processes can read them.  The hot path is unchanged.
 * Every append first reserves its pages with posix_fallocate (in 64 KiB
 * steps), so a full filesystem is an error at allocation time, never a
 * SIGBUS on a later store.
 * Slots are then never recycled (their counts stay in the file), enum words
 * carry a wall-clock stamp for "most recent" folding, and a forked child
 * drops every chunk pointer (they point into its parent's file) before
 * attaching a file of its own.
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
#define FM_CHUNK_BYTES (8 * FM_CHUNK_SLOTS)

/* Arena file layout (must match _mpfile.py). */
#define FM_HDR_USED 64           /* int64: end of the published records */
#define FM_REC_META_OFF 16       /* payload offset of metadata records */
#define FM_REC_DATA_OFF 128      /* payload offset of chunk records (cache-line aligned) */
enum { FM_REC_CHUNK = 1, FM_REC_WORDS = 2 };
#define FM_STATE_BITS 16         /* multiprocess enum word = index | (stamp_ms << FM_STATE_BITS) */
#define FM_RESERVE_STEP (64 * 1024)  /* bytes of the arena reserved per posix_fallocate */

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

/* ------------------------------------------------------------------------ */
/* Mutex, thread-exit hook, asymmetric barrier.                              */
/* ------------------------------------------------------------------------ */
#if defined(_WIN32)
#  include <windows.h>
typedef SRWLOCK fm_mutex_t;
#  define FM_MUTEX_INIT SRWLOCK_INIT
static inline void fm_mutex_lock(fm_mutex_t *m) { AcquireSRWLockExclusive(m); }
static inline void fm_mutex_unlock(fm_mutex_t *m) { ReleaseSRWLockExclusive(m); }
static inline void fm_yield(void) { SwitchToThread(); }
#else
#  include <pthread.h>
#  include <sched.h>
#  include <errno.h>
#  include <fcntl.h>
typedef pthread_mutex_t fm_mutex_t;
#  define FM_MUTEX_INIT PTHREAD_MUTEX_INITIALIZER
static inline void fm_mutex_lock(fm_mutex_t *m) { pthread_mutex_lock(m); }
static inline void fm_mutex_unlock(fm_mutex_t *m) { pthread_mutex_unlock(m); }
static inline void fm_yield(void) { sched_yield(); }
#endif
#if defined(__linux__)
#  include <unistd.h>
#  include <sys/syscall.h>
#  if defined(__NR_membarrier)
#    include <linux/membarrier.h>
#    define FM_HAVE_MEMBARRIER 1
#  endif
#endif

/* 1 when fm_heavy_barrier() cannot make other threads' stores visible by
 * itself: increments then pay a full fence (set once, at fm_init). */
static int fm_writer_fence = 1;

/* Asymmetric barrier: on return, every other thread has passed a full memory
 * barrier since this call started (or increments fence themselves). */
static void fm_heavy_barrier(void) {
#if defined(_WIN32)
    FlushProcessWriteBuffers();
#elif defined(FM_HAVE_MEMBARRIER)
    if (!fm_writer_fence) {
        if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0) return;
        /* Cannot fail once registered; if it ever does, fall through. */
    }
    FM_FULL_FENCE();
#else
    FM_FULL_FENCE();
#endif
}

static void fm_heavy_barrier_init(void) {
#if defined(_WIN32)
    fm_writer_fence = 0;
#elif defined(FM_HAVE_MEMBARRIER)
    long cmds = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds >= 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED)
        && syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
        fm_writer_fence = 0;
#endif
}

typedef struct fm_shard {
    double *chunks[FM_MAX_CHUNKS];   /* owner writes (release); anyone reads (acquire) */
    Py_ssize_t seq;                  /* owner-only stores: odd while an increment runs */
    struct fm_shard *next_all;       /* immutable once published */
    struct fm_shard *next_free;      /* guarded by fm_lock */
    int in_use;                      /* guarded by fm_lock */
} fm_shard;

/* A slot released by a dealloc, waiting for the next allocation to zero it. */
typedef struct fm_pending_slot {
    struct fm_pending_slot *next;
    Py_ssize_t slot;
} fm_pending_slot;

static fm_mutex_t fm_lock = FM_MUTEX_INIT;
static fm_shard *fm_all_shards = NULL;   /* head, release-published */
static fm_shard *fm_free_shards = NULL;  /* guarded by fm_lock */
static Py_ssize_t fm_shards_total = 0;   /* guarded by fm_lock */
static Py_ssize_t fm_shards_live = 0;    /* guarded by fm_lock */
static Py_ssize_t fm_chunks_total = 0;   /* relaxed counter, stats only */

static Py_ssize_t fm_next_slot = 0;      /* guarded by fm_lock */
static Py_ssize_t *fm_free_slots = NULL; /* guarded by fm_lock */
static Py_ssize_t fm_free_slots_len = 0, fm_free_slots_cap = 0;
static fm_pending_slot *fm_pending_slots = NULL;  /* lock-free push, take-all */

static FM_THREAD_LOCAL fm_shard *fm_tls_shard = NULL;
static int fm_initialized = 0;

static Py_ssize_t *fm_words[FM_MAX_CHUNKS];  /* enum words; release-published */

/* Multiprocess arena: this process's mapped file, or NULL (all under fm_lock;
 * fm_mp is set once, before any slot exists). */
static int fm_mp = 0;
static char *fm_arena = NULL;
static int64_t fm_arena_cap = 0;
static int fm_arena_fd = -1;             /* the file, for reserving pages */
static int64_t fm_arena_reserved = 0;    /* bytes known to be backed */
static int fm_arena_errno = 0;           /* why the last append failed (0: full or detached) */

/* Back [fm_arena_reserved, end) with real pages, in FM_RESERVE_STEP steps, so
 * that a store never faults on a full filesystem.  The range lies past
 * `used`: nothing is stored there yet, so even an emulated posix_fallocate
 * (which writes zero bytes) cannot race with a writer.  0 or -1 (errno saved). */
static int fm_arena_reserve_locked(int64_t end) {
#if defined(_WIN32)
    (void)end;
    return 0;
#else
    int64_t want;
    int rc;
    if (end <= fm_arena_reserved) return 0;
    want = (end + FM_RESERVE_STEP - 1) & ~(int64_t)(FM_RESERVE_STEP - 1);
    if (want > fm_arena_cap) want = fm_arena_cap;
    if (fm_arena_fd < 0) return 0;
    do {
        rc = posix_fallocate(fm_arena_fd, (off_t)fm_arena_reserved, (off_t)(want - fm_arena_reserved));
    } while (rc == EINTR);
    if (rc != 0) {
        fm_arena_errno = rc;
        return -1;
    }
    fm_arena_reserved = want;
    return 0;
#endif
}

/* Append a record to the arena and publish it (header last, then `used` with
 * a release store, so a reader that sees `used` sees the whole record).
 * Copies `length` bytes of `data`, or leaves them zero (a fresh file is zero).
 * Returns the payload, or NULL when detached, full (fm_arena_errno 0) or the
 * pages cannot be reserved (fm_arena_errno set).  Caller holds fm_lock. */
static char *fm_arena_append_locked(uint32_t kind, int64_t arg, int64_t payload_off,
                                    const void *data, uint32_t length) {
    int64_t used, size;
    char *rec;
    fm_arena_errno = 0;
    if (fm_arena == NULL) return NULL;
    memcpy(&used, fm_arena + FM_HDR_USED, 8);    /* only this process writes it */
    size = (payload_off + (int64_t)length + FM_CACHE_LINE - 1) & ~(int64_t)(FM_CACHE_LINE - 1);
    if (used < 0 || size > fm_arena_cap - used) return NULL;
    if (fm_arena_reserve_locked(used + size) < 0) return NULL;
    rec = fm_arena + used;
    if (data != NULL) memcpy(rec + payload_off, data, length);
    memcpy(rec + 4, &length, 4);
    memcpy(rec + 8, &arg, 8);
    memcpy(rec, &kind, 4);
    fm_store_i64_release((int64_t *)(fm_arena + FM_HDR_USED), used + size);
    return rec + payload_off;
}

/* Wall-clock milliseconds for enum stamps (multiprocess mode only): an int64
 * word with FM_STATE_BITS of state stays positive for another ~4,000 years. */
#if defined(_WIN32)
static inline int64_t fm_now_ms(void) { return 0; }   /* multiprocess mode is POSIX-only */
#else
#  include <time.h>
static inline int64_t fm_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
#endif

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

/* Fork: the lock is taken by the C handlers below, inside fork(), where no
 * Python code can run while it is held.  In the child, shards of threads that
 * do not exist there go back to the pool with their counts. */
static void fm_before_fork(void) { fm_mutex_lock(&fm_lock); }
static void fm_after_fork_parent(void) { fm_mutex_unlock(&fm_lock); }
static void fm_after_fork_child(void) {
    fm_shard *s;
    Py_ssize_t c;
    for (s = fm_all_shards; s != NULL; s = s->next_all) {
        if (s != fm_tls_shard) {
            fm_release_shard_locked(s);
            /* Its thread may have been inside an increment: it is gone. */
            if (s->seq & 1) s->seq++;
        }
        /* Multiprocess: these chunks are the parent's, in the parent's file.
         * The child starts from zero in a file of its own. */
        if (fm_mp) memset(s->chunks, 0, sizeof(s->chunks));
    }
    if (fm_mp) {
        /* Enum states carry over: move the words to the heap until the child
         * attaches its file (fm_arena_attach copies them there). */
        for (c = 0; c < FM_MAX_CHUNKS; c++) {
            if (fm_words[c] != NULL) {
                Py_ssize_t *copy = (Py_ssize_t *)fm_aligned_zalloc(FM_CHUNK_BYTES);
                if (copy != NULL) memcpy(copy, fm_words[c], FM_CHUNK_BYTES);
                fm_words[c] = copy;   /* NULL on OOM: that state restarts at 0 */
            }
        }
        fm_arena = NULL;
        fm_arena_cap = 0;
        fm_arena_fd = -1;
        fm_arena_reserved = 0;
        fm_chunks_total = 0;
    }
    fm_mutex_unlock(&fm_lock);   /* taken by fm_before_fork in this same thread */
}

/* Called once at module import, with the GIL held. Returns 0 or -1. */
static int fm_init(void) {
    if (fm_initialized) return 0;
    if (fm_tls_init() != 0) return -1;
#if !defined(_WIN32)
    if (pthread_atfork(fm_before_fork, fm_after_fork_parent, fm_after_fork_child) != 0) return -1;
#endif
    fm_heavy_barrier_init();
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

/* Cold path: allocate chunk `c` of the calling thread's shard, from the heap
 * or, in multiprocess mode, from this process's file.  Safe without the GIL. */
static double *fm_alloc_chunk(fm_shard *s, Py_ssize_t c) {
    double *chunk;
    if (fm_mp) {
        fm_mutex_lock(&fm_lock);
        chunk = (double *)fm_arena_append_locked(FM_REC_CHUNK, c, FM_REC_DATA_OFF, NULL, FM_CHUNK_BYTES);
        fm_mutex_unlock(&fm_lock);
    } else {
        chunk = (double *)fm_aligned_zalloc(FM_CHUNK_BYTES);
    }
    if (chunk == NULL) return NULL;
    fm_store_ptr_release((void **)&s->chunks[c], chunk);
#if defined(_MSC_VER) && !defined(__clang__)
    InterlockedIncrement64((volatile LONG64 *)&fm_chunks_total);
#else
    __atomic_fetch_add(&fm_chunks_total, 1, __ATOMIC_RELAXED);
#endif
    return chunk;
}

/* Hot path: add `amount` to the calling thread's partial sum of the slot that
 * `*slot_ref` names *now* (read inside the shard's seq bracket, so that a
 * concurrent reset's fm_quiesce() waits for this store).
 * 0; -1 out of memory (or the multiprocess file full); -2 no slot (`*slot_ref`
 * < 0, a labelled parent).  Safe without the GIL; not async-signal-safe. */
static inline int fm_add(const Py_ssize_t *slot_ref, double amount) {
    fm_shard *s = fm_tls_shard;
    double *chunk, *w;
    Py_ssize_t slot, seq;
    int rc = 0;
    if (FM_UNLIKELY(s == NULL)) {
        s = fm_acquire_shard();
        if (s == NULL) return -1;
    }
    seq = s->seq;
    fm_store_ssize(&s->seq, seq + 1);
    if (FM_UNLIKELY(fm_writer_fence)) FM_FULL_FENCE();
    else FM_COMPILER_BARRIER();
    slot = fm_load_ssize(slot_ref);
    if (FM_UNLIKELY(slot < 0)) {
        rc = -2;
    } else {
        chunk = s->chunks[slot >> FM_CHUNK_BITS];   /* only this thread stores it */
        if (FM_UNLIKELY(chunk == NULL)) chunk = fm_alloc_chunk(s, slot >> FM_CHUNK_BITS);
        if (FM_UNLIKELY(chunk == NULL)) {
            rc = -1;
        } else {
            w = chunk + (slot & FM_CHUNK_MASK);
            fm_store_double(w, fm_load_double(w) + amount);
        }
    }
    fm_store_ssize_release(&s->seq, seq + 2);
    return rc;
}

/* Wait until every increment that may have read a slot index before this
 * call has stored its word: after it, an index swapped out before the call
 * is touched by no writer.  Lock-free; spins (yielding) only while another
 * thread is inside its few-instruction increment. */
static void fm_quiesce(void) {
    fm_shard *s;
    fm_heavy_barrier();
    for (s = (fm_shard *)fm_load_ptr_acquire((void *const *)&fm_all_shards); s != NULL; s = s->next_all) {
        Py_ssize_t seq = fm_load_ssize_acquire(&s->seq);
        if (s == fm_tls_shard || !(seq & 1)) continue;
        while (fm_load_ssize_acquire(&s->seq) == seq) fm_yield();
    }
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

/* Zero `slot` in every shard and its enum word.  Only for a slot no writer
 * can touch (its owner is dead, or fm_quiesce() ran after it was swapped out). */
static void fm_slot_zero(Py_ssize_t slot) {
    Py_ssize_t c = slot >> FM_CHUNK_BITS, off = slot & FM_CHUNK_MASK;
    fm_shard *s;
    Py_ssize_t *words;
    for (s = (fm_shard *)fm_load_ptr_acquire((void *const *)&fm_all_shards); s != NULL; s = s->next_all) {
        double *chunk = (double *)fm_load_ptr_acquire((void *const *)&s->chunks[c]);
        if (chunk != NULL) fm_store_double(chunk + off, 0.0);
    }
    words = (Py_ssize_t *)fm_load_ptr_acquire((void *const *)&fm_words[c]);
    if (words != NULL) fm_store_ssize(words + off, 0);
}

static void fm_pending_push(fm_pending_slot *p) {
    fm_pending_slot *head = (fm_pending_slot *)fm_load_ptr_acquire((void *const *)&fm_pending_slots);
    for (;;) {
        fm_pending_slot *seen;
        p->next = head;
        seen = (fm_pending_slot *)fm_cas_ptr((void **)&fm_pending_slots, head, p);
        if (seen == head) return;
        head = seen;
    }
}

/* Move the slots released since the last call onto the free list, zeroed. */
static void fm_drain_pending_locked(void) {
    fm_pending_slot *p = (fm_pending_slot *)fm_exchange_ptr((void **)&fm_pending_slots, NULL);
    while (p != NULL) {
        fm_pending_slot *next = p->next;
        if (fm_free_slots_len == fm_free_slots_cap) {
            Py_ssize_t cap = fm_free_slots_cap ? fm_free_slots_cap * 2 : 64;
            Py_ssize_t *grown = (Py_ssize_t *)realloc(fm_free_slots, sizeof(Py_ssize_t) * cap);
            if (grown == NULL) {   /* keep the rest pending for the next drain */
                while (p != NULL) {
                    next = p->next;
                    fm_pending_push(p);
                    p = next;
                }
                return;
            }
            fm_free_slots = grown;
            fm_free_slots_cap = cap;
        }
        fm_slot_zero(p->slot);
        fm_free_slots[fm_free_slots_len++] = p->slot;
        free(p);
        p = next;
    }
}

/* Slots: allocate a zeroed slot; -1 when the table is full or on OOM. */
static Py_ssize_t fm_slot_alloc(void) {
    Py_ssize_t slot = -1;
    fm_mutex_lock(&fm_lock);
    if (fm_load_ptr_acquire((void *const *)&fm_pending_slots) != NULL) fm_drain_pending_locked();
    if (fm_free_slots_len > 0) {
        slot = fm_free_slots[--fm_free_slots_len];
    } else if (fm_next_slot < FM_MAX_SLOTS) {
        slot = fm_next_slot++;
    }
    fm_mutex_unlock(&fm_lock);
    return slot;
}

/* Release a slot whose owner object is gone (no writer can still hold it).
 * Lock-free, so it is safe from any dealloc, including one run by a garbage
 * collection inside a cold path: the slot goes onto a pending list and the
 * next fm_slot_alloc zeroes and recycles it.  In multiprocess mode a slot
 * keeps its counts (they are part of the cross-process totals) and is never
 * reused. */
static void fm_slot_free(Py_ssize_t slot) {
    fm_pending_slot *p;
    if (slot < 0 || fm_mp) return;
    p = (fm_pending_slot *)malloc(sizeof(fm_pending_slot));
    if (p == NULL) return;   /* out of memory: the slot is lost, never misused */
    p->slot = slot;
    fm_pending_push(p);
}

/* Multiprocess: attach this process's freshly created file (zero past its
 * header; `fd` is kept to reserve pages) and move the enum words into it.
 * Only while no other thread can touch enum words: at enable() (no slot
 * exists yet) or in a fork child's hook (one thread).  0, or -1 when the file
 * is too small or its pages cannot be reserved. */
static int fm_arena_attach(char *base, int64_t cap, int fd) {
    Py_ssize_t c;
    int rc = 0;
    int64_t used;
    fm_mutex_lock(&fm_lock);
    fm_arena = base;
    fm_arena_cap = cap;
    fm_arena_fd = fd;
    memcpy(&used, base + FM_HDR_USED, 8);
    fm_arena_reserved = used;   /* the header (and what precedes `used`) is written */
    for (c = 0; c < FM_MAX_CHUNKS && rc == 0; c++) {
        Py_ssize_t *old = fm_words[c];
        if (old != NULL) {
            char *p = fm_arena_append_locked(FM_REC_WORDS, c, FM_REC_DATA_OFF, old, FM_CHUNK_BYTES);
            if (p == NULL) { rc = -1; break; }
            fm_store_ptr_release((void **)&fm_words[c], p);
            free(old);   /* the heap copy made by fm_after_fork_child */
        }
    }
    fm_mutex_unlock(&fm_lock);
    return rc;
}

/* Multiprocess: forget the arena (its mapping is about to be closed). */
static void fm_arena_detach(void) {
    fm_mutex_lock(&fm_lock);
    fm_arena = NULL;
    fm_arena_cap = 0;
    fm_arena_fd = -1;
    fm_arena_reserved = 0;
    fm_mutex_unlock(&fm_lock);
}

/* Switch to multiprocess mode; -1 if a slot was ever allocated (its chunks
 * would be on the heap, invisible to other processes). */
static int fm_mp_enable(void) {
    int rc = 0;
    fm_mutex_lock(&fm_lock);
    if (fm_next_slot != 0) rc = -1;
    else fm_mp = 1;
    fm_mutex_unlock(&fm_lock);
    return rc;
}

/* Multiprocess: append a metadata record (payload copied). -1 when full
 * (fm_arena_errno 0) or the pages cannot be reserved (fm_arena_errno set). */
static int fm_arena_record(uint32_t kind, int64_t arg, const void *data, uint32_t length) {
    char *p;
    fm_mutex_lock(&fm_lock);
    p = fm_arena_append_locked(kind, arg, FM_REC_META_OFF, data, length);
    fm_mutex_unlock(&fm_lock);
    return p == NULL ? -1 : 0;
}

/* Cold path: make sure the enum word of `slot` exists (at enum creation). */
static int fm_words_ensure(Py_ssize_t slot) {
    Py_ssize_t c = slot >> FM_CHUNK_BITS;
    Py_ssize_t *words;
    int rc = 0;
    fm_mutex_lock(&fm_lock);
    if (fm_words[c] == NULL) {
        words = fm_mp
            ? (Py_ssize_t *)fm_arena_append_locked(FM_REC_WORDS, c, FM_REC_DATA_OFF, NULL, FM_CHUNK_BYTES)
            : (Py_ssize_t *)fm_aligned_zalloc(FM_CHUNK_BYTES);
        if (words == NULL) rc = -1;
        else fm_store_ptr_release((void **)&fm_words[c], words);
    }
    fm_mutex_unlock(&fm_lock);
    return rc;
}

/* Hot path: the enum word of `slot` (fm_words_ensure ran at creation). */
static inline Py_ssize_t *fm_word_ptr(Py_ssize_t slot) {
    return (Py_ssize_t *)fm_load_ptr_acquire((void *const *)&fm_words[slot >> FM_CHUNK_BITS])
           + (slot & FM_CHUNK_MASK);
}

/* Hot path: store state `index`; in multiprocess mode (index < 2**FM_STATE_BITS,
 * checked at creation) stamped with the wall clock. */
static inline void fm_word_set(Py_ssize_t slot, Py_ssize_t index) {
    Py_ssize_t word = index;
    if (fm_mp) word |= (Py_ssize_t)(fm_now_ms() << FM_STATE_BITS);
    fm_store_ssize(fm_word_ptr(slot), word);
}

static inline Py_ssize_t fm_word_get(Py_ssize_t slot) {
    Py_ssize_t word = fm_load_ssize(fm_word_ptr(slot));
    return fm_mp ? (word & (((Py_ssize_t)1 << FM_STATE_BITS) - 1)) : word;
}

typedef struct {
    Py_ssize_t shards_total, shards_live, chunks, slots_used, slots_free;
} fm_stats_t;

static fm_stats_t fm_stats(void) {
    fm_stats_t st;
    fm_mutex_lock(&fm_lock);
    if (fm_load_ptr_acquire((void *const *)&fm_pending_slots) != NULL) fm_drain_pending_locked();
    st.shards_total = fm_shards_total;
    st.shards_live = fm_shards_live;
    st.slots_used = fm_next_slot - fm_free_slots_len;
    st.slots_free = fm_free_slots_len;
    fm_mutex_unlock(&fm_lock);
    st.chunks = fm_load_ssize(&fm_chunks_total);
    return st;
}

#endif /* FASTMETRICS_SHARDS_H */
