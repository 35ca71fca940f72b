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
#else
#  include <pthread.h>
#  include <sched.h>
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
    Py_ssize_t c;
    const fm_provider *provider = fm_provider_active;
    for (s = fm_all_shards; s != NULL; s = s->next_all) {
        if (s != fm_tls_shard) {
            fm_release_shard_locked(s);
            /* Its thread may have been inside an increment: it is gone. */
            if (s->seq & 1) s->seq++;
        }
        /* Provided chunks are the parent's (e.g. in its file): the child
         * starts from zero in chunks of its own. */
        if (provider != NULL) memset(s->chunks, 0, sizeof(s->chunks));
    }
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
 * or the provider.  Safe without the GIL. */
static double *fm_alloc_chunk(fm_shard *s, Py_ssize_t c) {
    const fm_provider *provider = fm_provider_active;
    double *chunk = provider != NULL ? provider->chunk(c) : (double *)fm_aligned_zalloc(FM_CHUNK_BYTES);
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
