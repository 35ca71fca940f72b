/*
 * fastmetrics shard store: counter shards bounded by cores, slot allocator, fork hooks.
 *
 * Memory model
 * ------------
 * Every counter (and labelled child) owns a *slot* index.  A *shard* is a
 * table of chunk pointers; chunk k holds partial sums for slots
 * [k*FM_CHUNK_SLOTS, (k+1)*FM_CHUNK_SLOTS).  There are two kinds, and at most
 * fm_exclusive_max + fm_stripe_max of them whatever the number of threads
 * (LongAdder / per-CPU counters: memory and scrape cost follow the cores):
 *
 *  - Exclusive shards (at most fm_exclusive_max, default 2 x CPUs, at least
 *    4): owned by one live thread at a time, so an increment is a relaxed
 *    load + relaxed store of its own word (no lock, no atomic
 *    read-modify-write).  The first threads to increment get them; when a
 *    thread exits, its shard goes back to a pool *with its counts* and the
 *    next thread adopts it.
 *  - Stripes (at most fm_stripe_max, default max(2, CPUs)): shared by the
 *    threads beyond the exclusive ones, each picked by a per-thread probe
 *    (round-robin at the thread's first increment); an increment is a CAS
 *    loop on the 64-bit word (fm_cas_add_double), and a thread whose CAS
 *    failed moves on to the next stripe (Striped64's rehash).  A stripe's
 *    chunks are allocated under fm_lock (several threads may need one).
 *  - The scraper reads every word with relaxed loads, so it never sees a torn
 *    value, and read-read coherence makes every word it reads non-decreasing
 *    between scrapes.  A scrape walks the shards (exclusive + stripes), never
 *    the threads.
 *  - Chunks are allocated lazily, cache-line aligned, and never move or get
 *    freed; the pointer is published with a release store and read with an
 *    acquire load.  Growing never invalidates a reader.
 *  - Shards are linked into an append-only list that scrapers walk without a
 *    lock, and are never freed.
 *  - Every thread that increments holds a *ticket*: one cache line with its
 *    `seq` word (odd while an increment runs; owner-only stores) and the shard
 *    it writes.  Tickets are linked into an append-only list, pooled when
 *    their thread exits (so bounded by the peak number of live threads, 128
 *    bytes each) and walked only by fm_quiesce().
 *  - The pools (shards, tickets), stripe chunks and the slot free list are
 *    guarded by one C mutex that is only taken on cold paths (a thread's
 *    first increment, a stripe's new chunk, thread exit, slot allocation,
 *    fork) and never while calling into Python.  fork() takes it in a C
 *    pthread_atfork handler, so no Python code ever runs while it is held.
 *    Releasing a slot (a metric's dealloc, possibly inside a garbage
 *    collection anywhere) takes no lock: it pushes onto a lock-free pending
 *    list that the next allocation drains.
 *  - Each increment brackets itself with its ticket's `seq` word (odd while it
 *    runs; owner-only stores).  fm_quiesce() waits, after an asymmetric
 *    barrier, until no increment that may have read a slot index before a
 *    swap is still in flight: reset() swaps in a zeroed spare slot, quiesces,
 *    then zeroes the old one, so memory stays flat however often it runs.
 *  - Enum words live in a second table of chunks indexed by the enum's slot:
 *    one word per state machine, shared by all threads (last store wins).
 *    The word is the state index, unbounded, unless a provider asks for
 *    stamps: then index | (stamp_ms << fm_stamp_bits).
 *
 * Chunk providers.  By default chunks come from the heap.  A provider (the
 * multiprocess arena, _arena.h) can supply them instead, from memory other
 * processes read; the store reaches it only on its cold allocation paths and
 * in fork().  With a provider, slots are never recycled (their counts outlive
 * the objects), enum words may carry a wall-clock stamp above their state
 * bits, and a fork child forgets every provided chunk (they are the parent's),
 * keeping its enum words on the heap until fm_words_rehome() moves them.
 *
 * Nothing here relies on the GIL.  This header is included by exactly one
 * translation unit (_core_c.pyx, and tests/c/tsan_shards.c); everything is
 * static.  It knows no file format.
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


#if defined(__GNUC__) || defined(__clang__)
#  define FM_LIKELY(x) __builtin_expect(!!(x), 1)
#  define FM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#  define FM_LIKELY(x) (x)
#  define FM_UNLIKELY(x) (x)
#endif

#include "_atomics.h"

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
static inline void fm_sleep_us(unsigned us) { Sleep(us >= 1000 ? us / 1000 : 0); }
#else
#  include <pthread.h>
#  include <sched.h>
typedef pthread_mutex_t fm_mutex_t;
#  define FM_MUTEX_INIT PTHREAD_MUTEX_INITIALIZER
static inline void fm_mutex_lock(fm_mutex_t *m) { pthread_mutex_lock(m); }
static inline void fm_mutex_unlock(fm_mutex_t *m) { pthread_mutex_unlock(m); }
static inline void fm_yield(void) { sched_yield(); }
#  include <time.h>
static inline void fm_sleep_us(unsigned us) {
    struct timespec ts;
    ts.tv_sec = 0;
    ts.tv_nsec = (long)us * 1000;
    nanosleep(&ts, NULL);
}
#endif

/* One step of a waiting loop: yield for the first rounds, then sleep 4 us,
 * doubling to 128 us.  A thread that only ever yields can be starved: Linux's
 * EEVDF scheduler pushes a yielding thread's deadline back a slice per
 * sched_yield(), so a waiter beside busy threads on every core may not run
 * again for minutes; a sleeper is eligible as soon as it wakes. */
static void fm_backoff(unsigned *round) {
    unsigned r = (*round)++;
    if (r < 4) fm_yield();
    else fm_sleep_us(r < 9 ? 4u << (r - 4) : 128u);
}
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
    double *chunks[FM_MAX_CHUNKS];   /* release-published; anyone reads (acquire) */
    struct fm_shard *next_all;       /* immutable once published */
    struct fm_shard *next_free;      /* guarded by fm_lock (exclusive shards) */
    int in_use;                      /* guarded by fm_lock (exclusive shards) */
    int stripe;                      /* immutable: 1 for a shared stripe */
} fm_shard;

/* A thread's increment record (see "tickets" above); one cache line. */
typedef struct fm_ticket {
    Py_ssize_t seq;                  /* owner-only stores: odd while an increment runs */
    fm_shard *shard;                 /* owner-only: its exclusive shard, or its current stripe */
    Py_ssize_t probe;                /* owner-only: index of that stripe (stripe tickets) */
    int stripe;                      /* owner-only: 1 when `shard` is a stripe */
    int in_use;                      /* guarded by fm_lock */
    struct fm_ticket *next_all;      /* immutable once published */
    struct fm_ticket *next_free;     /* guarded by fm_lock */
} fm_ticket;

/* A slot released by a dealloc, waiting for the next allocation to zero it. */
typedef struct fm_pending_slot {
    struct fm_pending_slot *next;
    Py_ssize_t slot;
} fm_pending_slot;

/* A source of persistent chunks (see "Chunk providers" above).  Every hook is
 * called on a cold path only; `chunk` and `words` may be called with fm_lock
 * held (lock order: fm_lock, then the provider's own lock), the fork hooks
 * from inside fork() (prepare after fm_lock is taken, parent and child before
 * it is released). */
typedef struct fm_provider {
    double *(*chunk)(Py_ssize_t c);                   /* zeroed counter chunk c, or NULL */
    Py_ssize_t *(*words)(Py_ssize_t c, const Py_ssize_t *initial);  /* enum words (copied), or NULL */
    void (*before_fork)(void);
    void (*after_fork_parent)(void);
    void (*after_fork_child)(void);                   /* forget everything it handed out */
} fm_provider;

#define FM_MAX_SHARD_KINDS 4096          /* bound of either kind's count (fm_configure) */

static fm_mutex_t fm_lock = FM_MUTEX_INIT;
static fm_shard *fm_all_shards = NULL;   /* head, release-published */
static fm_shard *fm_free_shards = NULL;  /* guarded by fm_lock */
static Py_ssize_t fm_shards_total = 0;   /* guarded by fm_lock: exclusive shards + stripes */
static Py_ssize_t fm_shards_live = 0;    /* guarded by fm_lock: exclusive shards owned */
static Py_ssize_t fm_exclusive_total = 0;        /* guarded by fm_lock */
static Py_ssize_t fm_exclusive_max = 4;          /* set by fm_configure before any shard */
static Py_ssize_t fm_stripe_max = 2;             /* idem */
static fm_shard **fm_stripes = NULL;             /* fm_stripe_max entries, release-published */
static Py_ssize_t fm_stripe_next_probe = 0;      /* guarded by fm_lock: round-robin */
static fm_ticket *fm_all_tickets = NULL;         /* head, release-published */
static fm_ticket *fm_free_tickets = NULL;        /* guarded by fm_lock */
static Py_ssize_t fm_tickets_total = 0;          /* guarded by fm_lock */
static Py_ssize_t fm_tickets_live = 0;           /* guarded by fm_lock */
static Py_ssize_t fm_stripe_threads = 0;         /* guarded by fm_lock: live tickets on stripes */
static Py_ssize_t fm_chunks_total = 0;   /* relaxed counter, stats only */

static Py_ssize_t fm_next_slot = 0;      /* guarded by fm_lock */
static Py_ssize_t *fm_free_slots = NULL; /* guarded by fm_lock */
static Py_ssize_t fm_free_slots_len = 0, fm_free_slots_cap = 0;
static fm_pending_slot *fm_pending_slots = NULL;  /* lock-free push, take-all */

static FM_THREAD_LOCAL fm_ticket *fm_tls_ticket = NULL;
static int fm_initialized = 0;

static Py_ssize_t *fm_words[FM_MAX_CHUNKS];  /* enum words; release-published */

/* Set once, before any slot exists (fm_set_provider); read without a lock. */
static const fm_provider *fm_provider_active = NULL;
static int fm_stamp_bits = 0;            /* 0: enum words hold the bare index */

/* Wall-clock milliseconds for stamped enum words: with 16 state bits an int64
 * word stays positive for another ~4,000 years. */
#if defined(_WIN32)
static inline int64_t fm_now_ms(void) { return 0; }   /* no provider stamps words on Windows */
#else
#  include <time.h>
static inline int64_t fm_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
#endif

static void fm_release_ticket_locked(fm_ticket *t) {
    if (!t->in_use) return;
    if (t->stripe) {
        fm_stripe_threads--;
    } else {
        fm_shard *s = t->shard;      /* back to the pool, with its counts */
        if (s != NULL && s->in_use) {
            s->in_use = 0;
            s->next_free = fm_free_shards;
            fm_free_shards = s;
            fm_shards_live--;
        }
    }
    t->in_use = 0;
    t->next_free = fm_free_tickets;
    fm_free_tickets = t;
    fm_tickets_live--;
}

static void fm_thread_exit(void *value) {
    fm_ticket *t = (fm_ticket *)value;
    if (t == NULL) return;
    fm_mutex_lock(&fm_lock);
    fm_release_ticket_locked(t);
    fm_mutex_unlock(&fm_lock);
    fm_tls_ticket = NULL;
}

#if defined(_WIN32)
static DWORD fm_fls_index = FLS_OUT_OF_INDEXES;
static void WINAPI fm_fls_callback(void *value) { fm_thread_exit(value); }
static int fm_tls_init(void) {
    fm_fls_index = FlsAlloc(fm_fls_callback);
    return fm_fls_index == FLS_OUT_OF_INDEXES ? -1 : 0;
}
static int fm_tls_register(fm_ticket *t) {
    return FlsSetValue(fm_fls_index, t) ? 0 : -1;
}
#else
static pthread_key_t fm_key;
static int fm_tls_init(void) { return pthread_key_create(&fm_key, fm_thread_exit); }
static int fm_tls_register(fm_ticket *t) { return pthread_setspecific(fm_key, t); }
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
static void fm_before_fork(void) {
    fm_mutex_lock(&fm_lock);
    if (fm_provider_active != NULL) fm_provider_active->before_fork();
}
static void fm_after_fork_parent(void) {
    if (fm_provider_active != NULL) fm_provider_active->after_fork_parent();
    fm_mutex_unlock(&fm_lock);
}
static void fm_after_fork_child(void) {
    fm_shard *s;
    fm_ticket *t;
    Py_ssize_t c;
    const fm_provider *provider = fm_provider_active;
    for (t = fm_all_tickets; t != NULL; t = t->next_all) {
        if (t != fm_tls_ticket) {
            /* Its thread does not exist here: its exclusive shard goes back
             * to the pool with its counts. */
            fm_release_ticket_locked(t);
            /* It may have been inside an increment: it is gone. */
            if (t->seq & 1) t->seq++;
        }
    }
    /* Provided chunks are the parent's (e.g. in its file): the child starts
     * from zero in chunks of its own.  (A stripe CAS the parent's threads had
     * in flight either happened before fork() or not: the word is whole.) */
    if (provider != NULL)
        for (s = fm_all_shards; s != NULL; s = s->next_all) memset(s->chunks, 0, sizeof(s->chunks));
    if (provider != NULL) {
        /* Enum states carry over: move the words to the heap until
         * fm_words_rehome() hands them to the provider again. */
        for (c = 0; c < FM_MAX_CHUNKS; c++) {
            if (fm_words[c] != NULL) {
                Py_ssize_t *copy = (Py_ssize_t *)fm_aligned_zalloc(FM_CHUNK_BYTES);
                if (copy != NULL) memcpy(copy, fm_words[c], FM_CHUNK_BYTES);
                fm_words[c] = copy;   /* NULL on OOM: that state restarts at 0 */
            }
        }
        fm_chunks_total = 0;
        provider->after_fork_child();
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

/* Set the bounds: at most `exclusive` exclusive shards and `stripes` stripes
 * (each in 1..FM_MAX_SHARD_KINDS).  Only before any thread has incremented:
 * 0, or -1 (bad bounds, too late, or out of memory). */
static int fm_configure(Py_ssize_t exclusive, Py_ssize_t stripes) {
    int rc = 0;
    if (exclusive < 1 || exclusive > FM_MAX_SHARD_KINDS || stripes < 1 || stripes > FM_MAX_SHARD_KINDS)
        return -1;
    fm_mutex_lock(&fm_lock);
    if (fm_all_tickets != NULL) {
        rc = -1;
    } else {
        fm_shard **table = (fm_shard **)calloc((size_t)stripes, sizeof(fm_shard *));
        if (table == NULL) {
            rc = -1;
        } else {
            free(fm_stripes);
            fm_stripes = table;
            fm_exclusive_max = exclusive;
            fm_stripe_max = stripes;
        }
    }
    fm_mutex_unlock(&fm_lock);
    return rc;
}

/* A new shard, linked for scrapers.  Caller holds fm_lock; NULL on OOM. */
static fm_shard *fm_new_shard_locked(int stripe) {
    fm_shard *s = (fm_shard *)fm_aligned_zalloc(sizeof(fm_shard));
    if (s == NULL) return NULL;
    s->stripe = stripe;
    s->next_all = fm_all_shards;
    fm_store_ptr_release((void **)&fm_all_shards, s);
    fm_shards_total++;
    return s;
}

/* Stripe `i`, created on first use.  Caller holds fm_lock; NULL on OOM. */
static fm_shard *fm_stripe_locked(Py_ssize_t i) {
    fm_shard *s = fm_stripes[i];
    if (s == NULL) {
        s = fm_new_shard_locked(1);
        if (s != NULL) fm_store_ptr_release((void **)&fm_stripes[i], s);
    }
    return s;
}

/* Cold path: give the calling thread a ticket and a shard: a pooled
 * exclusive shard, a new one while fewer than fm_exclusive_max exist, else
 * the next stripe (round-robin).  NULL when out of memory.  Safe without the
 * GIL. */
static fm_ticket *fm_acquire_ticket(void) {
    fm_ticket *t;
    fm_shard *s = NULL;
    int stripe = 0;
    Py_ssize_t probe = 0;
    fm_mutex_lock(&fm_lock);
    if (fm_stripes == NULL) {   /* fm_configure never ran (the C harness): defaults */
        fm_stripes = (fm_shard **)calloc((size_t)fm_stripe_max, sizeof(fm_shard *));
        if (fm_stripes == NULL) { fm_mutex_unlock(&fm_lock); return NULL; }
    }
    if (fm_free_shards != NULL) {
        s = fm_free_shards;
        fm_free_shards = s->next_free;
    } else if (fm_exclusive_total < fm_exclusive_max) {
        s = fm_new_shard_locked(0);
        if (s != NULL) fm_exclusive_total++;
    } else {
        stripe = 1;
        probe = fm_stripe_next_probe;
        fm_stripe_next_probe = (probe + 1) % fm_stripe_max;
        s = fm_stripe_locked(probe);
    }
    if (s == NULL) { fm_mutex_unlock(&fm_lock); return NULL; }
    t = fm_free_tickets;
    if (t != NULL) {
        fm_free_tickets = t->next_free;
    } else {
        t = (fm_ticket *)fm_aligned_zalloc(FM_CACHE_LINE);
        if (t == NULL) {
            if (!stripe) { s->next_free = fm_free_shards; fm_free_shards = s; }
            fm_mutex_unlock(&fm_lock);
            return NULL;
        }
        t->next_all = fm_all_tickets;
        fm_store_ptr_release((void **)&fm_all_tickets, t);
        fm_tickets_total++;
    }
    if (stripe) {
        fm_stripe_threads++;
    } else {
        s->next_free = NULL;
        s->in_use = 1;
        fm_shards_live++;
    }
    t->shard = s;
    t->stripe = stripe;
    t->probe = probe;
    t->next_free = NULL;
    t->in_use = 1;
    fm_tickets_live++;
    fm_mutex_unlock(&fm_lock);
    if (fm_tls_register(t) != 0) {
        /* Thread-exit hook unavailable: keep the ticket (and shard) owned
         * forever rather than risk two owners; counts stay correct, only
         * pooling is lost. */
    }
    fm_tls_ticket = t;
    return t;
}

static void fm_count_chunk(void) {
#if defined(_MSC_VER) && !defined(__clang__)
    InterlockedIncrement64((volatile LONG64 *)&fm_chunks_total);
#else
    __atomic_fetch_add(&fm_chunks_total, 1, __ATOMIC_RELAXED);
#endif
}

/* Cold path: allocate chunk `c` of the calling thread's exclusive shard, from
 * the heap or the provider.  Safe without the GIL. */
static double *fm_alloc_chunk(fm_shard *s, Py_ssize_t c) {
    const fm_provider *provider = fm_provider_active;
    double *chunk = provider != NULL ? provider->chunk(c) : (double *)fm_aligned_zalloc(FM_CHUNK_BYTES);
    if (chunk == NULL) return NULL;
    fm_store_ptr_release((void **)&s->chunks[c], chunk);
    fm_count_chunk();
    return chunk;
}

/* Cold path: chunk `c` of a stripe, allocated under fm_lock by whichever of
 * its threads needs it first.  Safe without the GIL. */
static double *fm_stripe_chunk(fm_shard *s, Py_ssize_t c) {
    double *chunk;
    fm_mutex_lock(&fm_lock);
    chunk = s->chunks[c];
    if (chunk == NULL) chunk = fm_alloc_chunk(s, c);
    fm_mutex_unlock(&fm_lock);
    return chunk;
}

/* An increment of a thread on a stripe: a CAS add; on contention the thread
 * probes the next stripe for its later increments.  0 or -1 (no chunk). */
static int fm_stripe_add(fm_ticket *t, Py_ssize_t slot, double amount) {
    fm_shard *s = t->shard;
    Py_ssize_t c = slot >> FM_CHUNK_BITS;
    double *chunk = (double *)fm_load_ptr_acquire((void *const *)&s->chunks[c]);
    if (FM_UNLIKELY(chunk == NULL)) chunk = fm_stripe_chunk(s, c);
    if (FM_UNLIKELY(chunk == NULL)) return -1;
    if (fm_cas_add_double(chunk + (slot & FM_CHUNK_MASK), amount) && fm_stripe_max > 1) {
        Py_ssize_t probe = (t->probe + 1) % fm_stripe_max;
        fm_shard *next = (fm_shard *)fm_load_ptr_acquire((void *const *)&fm_stripes[probe]);
        if (next == NULL) {
            fm_mutex_lock(&fm_lock);
            next = fm_stripe_locked(probe);
            fm_mutex_unlock(&fm_lock);
        }
        if (next != NULL) {
            t->shard = next;
            t->probe = probe;
        }
    }
    return 0;
}

/* The seq bracket (see "Memory model"): an increment makes its record's
 * `seq` odd before it reads a slot index and even again after its store; a
 * quiescing thread waits for an odd seq to move.  Shared by every store whose
 * increments reset() must wait for (this one, _promfile.h). */
static inline Py_ssize_t fm_seq_enter(Py_ssize_t *seqp) {
    Py_ssize_t seq = *seqp;   /* owner-only stores */
    fm_store_ssize(seqp, seq + 1);
    if (FM_UNLIKELY(fm_writer_fence)) FM_FULL_FENCE();
    else FM_COMPILER_BARRIER();
    return seq;
}

static inline void fm_seq_exit(Py_ssize_t *seqp, Py_ssize_t seq) {
    fm_store_ssize_release(seqp, seq + 2);
}

/* Wait until an increment in flight on this record (odd seq) has finished. */
static void fm_seq_wait(const Py_ssize_t *seqp) {
    unsigned round = 0;
    Py_ssize_t seq = fm_load_ssize_acquire(seqp);
    if (!(seq & 1)) return;
    while (fm_load_ssize_acquire(seqp) == seq) fm_backoff(&round);
}

/* Hot path: add `amount` to the calling thread's shard's partial sum of the
 * slot that `*slot_ref` names *now* (read inside the ticket's seq bracket, so
 * that a concurrent reset's fm_quiesce() waits for this store).
 * 0; -1 out of memory (or the multiprocess file full); -2 no slot (`*slot_ref`
 * < 0, a labelled parent).  Safe without the GIL; not async-signal-safe. */
static inline int fm_add(const Py_ssize_t *slot_ref, double amount) {
    fm_ticket *t = fm_tls_ticket;
    double *chunk, *w;
    Py_ssize_t slot, seq;
    int rc = 0;
    if (FM_UNLIKELY(t == NULL)) {
        t = fm_acquire_ticket();
        if (t == NULL) return -1;
    }
    seq = fm_seq_enter(&t->seq);
    slot = fm_load_ssize(slot_ref);
    if (FM_UNLIKELY(slot < 0)) {
        rc = -2;
    } else if (FM_LIKELY(!t->stripe)) {
        fm_shard *s = t->shard;
        chunk = s->chunks[slot >> FM_CHUNK_BITS];   /* only this thread stores it */
        if (FM_UNLIKELY(chunk == NULL)) chunk = fm_alloc_chunk(s, slot >> FM_CHUNK_BITS);
        if (FM_UNLIKELY(chunk == NULL)) {
            rc = -1;
        } else {
            w = chunk + (slot & FM_CHUNK_MASK);
            fm_store_double(w, fm_load_double(w) + amount);
        }
    } else {
        rc = fm_stripe_add(t, slot, amount);
    }
    fm_seq_exit(&t->seq, seq);
    return rc;
}

/* Wait until every increment that may have read a slot index before this
 * call has stored its word: after it, an index swapped out before the call
 * is touched by no writer.  Lock-free; spins (yielding) only while another
 * thread is inside its few-instruction increment.  O(tickets). */
static void fm_quiesce(void) {
    fm_ticket *t;
    fm_ticket *own = fm_tls_ticket;
    fm_heavy_barrier();
    for (t = (fm_ticket *)fm_load_ptr_acquire((void *const *)&fm_all_tickets); t != NULL; t = t->next_all)
        if (t != own) fm_seq_wait(&t->seq);
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
 * next fm_slot_alloc zeroes and recycles it.  With a provider a slot keeps
 * its counts (e.g. part of cross-process totals) and is never reused. */
static void fm_slot_free(Py_ssize_t slot) {
    fm_pending_slot *p;
    if (slot < 0 || fm_provider_active != NULL) return;
    p = (fm_pending_slot *)malloc(sizeof(fm_pending_slot));
    if (p == NULL) return;   /* out of memory: the slot is lost, never misused */
    p->slot = slot;
    fm_pending_push(p);
}

/* Install a chunk provider whose enum words carry a wall-clock stamp above
 * `stamp_bits` of state (0: no stamp).  Once, before any slot exists: -1
 * otherwise (the existing chunks would be on the heap). */
static int fm_set_provider(const fm_provider *provider, int stamp_bits) {
    int rc = 0;
    fm_mutex_lock(&fm_lock);
    if (fm_next_slot != 0 || fm_provider_active != NULL) {
        rc = -1;
    } else {
        fm_stamp_bits = stamp_bits;
        fm_provider_active = provider;
    }
    fm_mutex_unlock(&fm_lock);
    return rc;
}

/* Hand every enum words chunk, all on the heap (none exist yet, or a fork
 * child copied them there), to the provider.  Only while no other thread can
 * touch enum words (at enable, or in a fork child's hook).  0, or -1 when the
 * provider cannot take one (those words stay on the heap, still correct). */
static int fm_words_rehome(void) {
    Py_ssize_t c;
    int rc = 0;
    fm_mutex_lock(&fm_lock);
    for (c = 0; c < FM_MAX_CHUNKS && fm_provider_active != NULL; c++) {
        Py_ssize_t *old = fm_words[c];
        if (old != NULL) {
            Py_ssize_t *p = fm_provider_active->words(c, old);
            if (p == NULL) { rc = -1; break; }
            fm_store_ptr_release((void **)&fm_words[c], p);
            free(old);
        }
    }
    fm_mutex_unlock(&fm_lock);
    return rc;
}

/* Cold path: make sure the enum word of `slot` exists (at enum creation). */
static int fm_words_ensure(Py_ssize_t slot) {
    Py_ssize_t c = slot >> FM_CHUNK_BITS;
    Py_ssize_t *words;
    int rc = 0;
    fm_mutex_lock(&fm_lock);
    if (fm_words[c] == NULL) {
        words = fm_provider_active != NULL
            ? fm_provider_active->words(c, NULL)
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

/* Hot path: store state `index`; stamped with the wall clock when the
 * provider asked for it (index < 2**fm_stamp_bits, checked at creation). */
static inline void fm_word_set(Py_ssize_t slot, Py_ssize_t index) {
    Py_ssize_t word = index;
    int bits = fm_stamp_bits;
    if (bits) word |= (Py_ssize_t)(fm_now_ms() << bits);
    fm_store_ssize(fm_word_ptr(slot), word);
}

static inline Py_ssize_t fm_word_get(Py_ssize_t slot) {
    Py_ssize_t word = fm_load_ssize(fm_word_ptr(slot));
    int bits = fm_stamp_bits;
    return bits ? (word & (((Py_ssize_t)1 << bits) - 1)) : word;
}

typedef struct {
    Py_ssize_t shards_total, shards_live, chunks, slots_used, slots_free;
    Py_ssize_t exclusive_max, stripes_max, stripes, threads_live, stripe_threads;
} fm_stats_t;

static fm_stats_t fm_stats(void) {
    fm_stats_t st;
    fm_mutex_lock(&fm_lock);
    if (fm_load_ptr_acquire((void *const *)&fm_pending_slots) != NULL) fm_drain_pending_locked();
    st.shards_total = fm_shards_total;
    st.shards_live = fm_shards_live;
    st.slots_used = fm_next_slot - fm_free_slots_len;
    st.slots_free = fm_free_slots_len;
    st.exclusive_max = fm_exclusive_max;
    st.stripes_max = fm_stripe_max;
    st.stripes = fm_shards_total - fm_exclusive_total;
    st.threads_live = fm_tickets_live;
    st.stripe_threads = fm_stripe_threads;
    fm_mutex_unlock(&fm_lock);
    st.chunks = fm_load_ssize(&fm_chunks_total);
    return st;
}

#endif /* FASTMETRICS_SHARDS_H */
