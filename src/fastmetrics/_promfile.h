/*
 * fastmetrics prometheus_client-compatible store: counter values written
 * straight into prometheus_client's multiprocess files, so its unmodified
 * MultiProcessCollector reads them (the mode PROMETHEUS_MULTIPROC_DIR turns on).
 *
 * The file format is prometheus_client's MmapedDict (mmap_dict.py, unchanged
 * from 0.20 to 0.26): an int32 `used` at offset 0 (then 4 bytes of padding),
 * then entries [int32 len][utf-8 JSON key, space-padded so that 4 + padded is
 * a multiple of 8][double value][double timestamp].  The collector takes a
 * file's type from its name up to the first '_' and sums every entry of a
 * series, across files and within one.
 *
 * Memory model
 * ------------
 *  - Every OS thread that increments owns one *pf thread*: a chain of its own
 *    files `counter_<pid>_<n>.db` (n unique in the directory: created with
 *    O_EXCL, so a recycled pid never reuses a dead process's file) and a table
 *    slot -> address of that slot's value word in one of its files.  Only the
 *    owner appends to its files and stores into its words, so an increment is
 *    a relaxed load + relaxed store of its own word: no lock, no atomic
 *    read-modify-write, no syscall, no pid check.
 *  - A slot's first increment on a thread (its table entry is NULL) takes the
 *    cold path: append the series' entry (the key bytes the Python side set
 *    for the slot with fm_pf_set_key, value 0) to the thread's current file
 *    and publish `used` with a release store once the entry is complete.  A
 *    file is a fixed-size sparse mapping (FM_PF_FILE_BYTES, more for a huge
 *    key) that never moves; when it is full the thread starts a new file and
 *    the old words stay where they are.  Pages are reserved with
 *    posix_fallocate before an entry is written, so a full file system is an
 *    error on the cold path, never a SIGBUS on a later store.
 *  - Tables are chunked like the shards (FM_CHUNK_SLOTS pointers per chunk),
 *    chunk and word pointers published with release stores, read with
 *    acquire loads: fm_pf_fold/fm_pf_zero walk them without a lock.
 *  - A pf thread goes back to a pool, with its files and counts, when its
 *    thread exits; the next new thread adopts it.
 *  - Each increment brackets itself with its pf thread's `seq` (odd while it
 *    runs); fm_pf_quiesce is fm_quiesce for this store, so reset() keeps the
 *    shard store's protocol: swap in the spare slot, quiesce, zero the old.
 *  - fork(): the child forgets every pf thread (their files are the parent's;
 *    their mappings are unmapped) and starts new files for its own pid on its
 *    first increment, as prometheus_client's MultiProcessValue does on a pid
 *    change.  fm_pf_lock is held across fork by pthread_atfork handlers.
 *  - Slots are never recycled in this mode (a file entry outlives its
 *    object, as in prometheus_client, where a removed child stays in the
 *    file): fm_pf_on tells the owner not to free them.
 *
 * POSIX only (the mode raises NotImplementedError on Windows).  Included by
 * _core_c.pyx after _shards.h (it shares its atomics, barrier and chunking).
 */
#ifndef FASTMETRICS_PROMFILE_H
#define FASTMETRICS_PROMFILE_H

#include "_shards.h"

#if !defined(_WIN32)
#  include <errno.h>
#  include <fcntl.h>
#  include <stdio.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <unistd.h>
#endif

#define FM_PF_FILE_BYTES (1 << 20)        /* one file's sparse mapping */
#define FM_PF_RESERVE_STEP (64 * 1024)    /* bytes reserved per posix_fallocate */
#define FM_PF_HEADER 8                    /* int32 used + 4 bytes of padding */

typedef struct fm_pf_file {
    char *base;                 /* the mapping (never moves) */
    size_t cap, used, reserved; /* owner only */
    int fd;
    struct fm_pf_file *prev;    /* the thread's older files */
} fm_pf_file;

typedef struct fm_pf_thread {
    double **tables[FM_MAX_CHUNKS];   /* owner writes (release); anyone reads (acquire) */
    Py_ssize_t seq;                   /* owner-only stores: odd while an increment runs */
    fm_pf_file *file;                 /* newest file; owner only */
    struct fm_pf_thread *next_all;    /* immutable once published */
    struct fm_pf_thread *next_free;   /* guarded by fm_pf_lock */
    int in_use;                       /* guarded by fm_pf_lock */
} fm_pf_thread;

/* A slot's key: the JSON prometheus_client's mmap_key makes, utf-8. */
typedef struct { char *data; size_t len; } fm_pf_key;

static int fm_pf_on = 0;                 /* set once, before any slot exists */
static fm_mutex_t fm_pf_lock = FM_MUTEX_INIT;
static char *fm_pf_dir = NULL;           /* guarded by fm_pf_lock */
static long fm_pf_next_file = 0;         /* guarded by fm_pf_lock */
static fm_pf_key *fm_pf_keys[FM_MAX_CHUNKS];   /* guarded by fm_pf_lock */
static fm_pf_thread *fm_pf_all = NULL;   /* head, release-published */
static fm_pf_thread *fm_pf_free = NULL;  /* guarded by fm_pf_lock */
static FM_THREAD_LOCAL fm_pf_thread *fm_pf_tls = NULL;
static int fm_pf_errno = 0;              /* why the last cold path failed (0: no key/memory) */

#if defined(_WIN32)

static int fm_pf_enable(const char *dir) { (void)dir; fm_pf_errno = 0; return -1; }
static int fm_pf_set_key(Py_ssize_t slot, const char *data, size_t len) {
    (void)slot; (void)data; (void)len; return -1;
}
static int fm_pf_touch(Py_ssize_t slot) { (void)slot; return -1; }
static inline int fm_pf_add(const Py_ssize_t *slot_ref, double amount) { (void)slot_ref; (void)amount; return -1; }
static void fm_pf_quiesce(void) {}
static double fm_pf_fold(Py_ssize_t slot) { (void)slot; return 0.0; }
static void fm_pf_zero(Py_ssize_t slot) { (void)slot; }
static Py_ssize_t fm_pf_files(void) { return 0; }

#else

static pthread_key_t fm_pf_key_tls;

static void fm_pf_thread_exit(void *value) {
    fm_pf_thread *t = (fm_pf_thread *)value;
    if (t == NULL) return;
    fm_mutex_lock(&fm_pf_lock);
    if (t->in_use) {
        t->in_use = 0;
        t->next_free = fm_pf_free;
        fm_pf_free = t;
    }
    fm_mutex_unlock(&fm_pf_lock);
    fm_pf_tls = NULL;
}

static void fm_pf_before_fork(void) { fm_mutex_lock(&fm_pf_lock); }
static void fm_pf_after_fork_parent(void) { fm_mutex_unlock(&fm_pf_lock); }

/* The child is single-threaded: forget every pf thread (the files are the
 * parent's), so its first increment starts files of its own pid. */
static void fm_pf_after_fork_child(void) {
    fm_pf_thread *t = fm_pf_all, *next;
    Py_ssize_t c;
    fm_pf_all = NULL;
    fm_pf_free = NULL;
    fm_pf_tls = NULL;
    fm_pf_next_file = 0;
    pthread_setspecific(fm_pf_key_tls, NULL);
    for (; t != NULL; t = next) {
        fm_pf_file *f = t->file, *prev;
        next = t->next_all;
        for (; f != NULL; f = prev) {
            prev = f->prev;
            munmap(f->base, f->cap);
            close(f->fd);
            free(f);
        }
        for (c = 0; c < FM_MAX_CHUNKS; c++) free(t->tables[c]);
        free(t);
    }
    fm_mutex_unlock(&fm_pf_lock);
}

/* Switch counters to this store, writing into `dir`.  Once, before any slot
 * exists (-1 otherwise, fm_pf_errno 0), with the GIL held; -1 with
 * fm_pf_errno on a system error. */
static int fm_pf_enable(const char *dir) {
    static int hooks = 0;
    int rc = 0;
    fm_mutex_lock(&fm_lock);
    if (fm_next_slot != 0 || fm_provider_active != NULL || fm_pf_on) {
        fm_pf_errno = 0;
        rc = -1;
    } else if (!hooks && (pthread_key_create(&fm_pf_key_tls, fm_pf_thread_exit) != 0
                          || pthread_atfork(fm_pf_before_fork, fm_pf_after_fork_parent,
                                            fm_pf_after_fork_child) != 0)) {
        fm_pf_errno = ENOMEM;
        rc = -1;
    } else {
        hooks = 1;
        fm_pf_dir = strdup(dir);
        if (fm_pf_dir == NULL) {
            fm_pf_errno = ENOMEM;
            rc = -1;
        } else {
            fm_pf_on = 1;
        }
    }
    fm_mutex_unlock(&fm_lock);
    return rc;
}

/* Record `slot`'s key (copied).  Cold path; 0, or -1 out of memory.  A slot
 * keeps its first key (its spare gets the same one: it is the same series). */
static int fm_pf_set_key(Py_ssize_t slot, const char *data, size_t len) {
    Py_ssize_t c = slot >> FM_CHUNK_BITS;
    fm_pf_key *k;
    int rc = 0;
    if (slot < 0 || slot >= FM_MAX_SLOTS) return -1;
    fm_mutex_lock(&fm_pf_lock);
    if (fm_pf_keys[c] == NULL) fm_pf_keys[c] = (fm_pf_key *)calloc(FM_CHUNK_SLOTS, sizeof(fm_pf_key));
    if (fm_pf_keys[c] == NULL) {
        rc = -1;
    } else {
        k = &fm_pf_keys[c][slot & FM_CHUNK_MASK];
        if (k->data == NULL) {
            k->data = (char *)malloc(len ? len : 1);
            if (k->data == NULL) rc = -1;
            else { memcpy(k->data, data, len); k->len = len; }
        }
    }
    fm_mutex_unlock(&fm_pf_lock);
    fm_pf_errno = 0;
    return rc;
}

/* Cold path: give the calling thread a pf thread (a pooled one if any). */
static fm_pf_thread *fm_pf_acquire(void) {
    fm_pf_thread *t;
    fm_mutex_lock(&fm_pf_lock);
    t = fm_pf_free;
    if (t != NULL) {
        fm_pf_free = t->next_free;
    } else {
        t = (fm_pf_thread *)calloc(1, sizeof(fm_pf_thread));
        if (t == NULL) { fm_mutex_unlock(&fm_pf_lock); fm_pf_errno = 0; return NULL; }
        t->next_all = fm_pf_all;
        fm_store_ptr_release((void **)&fm_pf_all, t);
    }
    t->next_free = NULL;
    t->in_use = 1;
    fm_mutex_unlock(&fm_pf_lock);
    pthread_setspecific(fm_pf_key_tls, t);   /* failure: owned forever, still correct */
    fm_pf_tls = t;
    return t;
}

/* Back the file's pages up to `end` (a range no reader looks at yet). */
static int fm_pf_reserve(fm_pf_file *f, size_t end) {
    size_t want;
    int rc;
    if (end <= f->reserved) return 0;
    want = (end + FM_PF_RESERVE_STEP - 1) & ~(size_t)(FM_PF_RESERVE_STEP - 1);
    if (want > f->cap) want = f->cap;
#if defined(__APPLE__)
    rc = 0;   /* no posix_fallocate on macOS: pages come on demand */
#else
    do {
        rc = posix_fallocate(f->fd, (off_t)f->reserved, (off_t)(want - f->reserved));
    } while (rc == EINTR);
#endif
    if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) {   /* no fallocate there: pages come on demand */
        fm_pf_errno = rc;
        return -1;
    }
    f->reserved = want;
    return 0;
}

/* Cold path: a new file of at least `need` bytes for the calling thread
 * (fm_pf_lock held: the name counter and the directory).  It is made complete
 * (sized, header written) under a temporary name the collector's `*.db` glob
 * does not match, then linked to the first free `counter_<pid>_<n>.db`
 * (link fails on an existing name: a dead process's file with our pid is
 * never reused).  NULL, fm_pf_errno set. */
static fm_pf_file *fm_pf_open_locked(size_t need) {
    char tmp[4096], path[4096];
    size_t cap = FM_PF_FILE_BYTES;
    int fd = -1, tries, err;
    fm_pf_file *f = NULL;
    void *base = MAP_FAILED;
    while (cap < need) cap *= 2;
    if (snprintf(tmp, sizeof(tmp), "%s/.fastmetrics-%ld-%ld.tmp", fm_pf_dir, (long)getpid(),
                 fm_pf_next_file) >= (int)sizeof(tmp)) {
        fm_pf_errno = ENAMETOOLONG;
        return NULL;
    }
    fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) { fm_pf_errno = errno; return NULL; }
    if (ftruncate(fd, (off_t)cap) != 0) goto fail;
    base = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) goto fail;
    f = (fm_pf_file *)calloc(1, sizeof(fm_pf_file));
    if (f == NULL) { errno = ENOMEM; goto fail; }
    f->base = (char *)base;
    f->cap = cap;
    f->fd = fd;
    f->used = FM_PF_HEADER;
    if (fm_pf_reserve(f, FM_PF_RESERVE_STEP) != 0) { errno = fm_pf_errno; goto fail; }
    *(int32_t *)f->base = FM_PF_HEADER;
    for (tries = 0; tries < 100000; tries++) {
        if (snprintf(path, sizeof(path), "%s/counter_%ld_%ld.db", fm_pf_dir, (long)getpid(),
                     fm_pf_next_file++) >= (int)sizeof(path)) {
            errno = ENAMETOOLONG;
            goto fail;
        }
        if (link(tmp, path) == 0) {
            unlink(tmp);
            return f;
        }
        if (errno != EEXIST) goto fail;
    }
fail:
    err = errno;
    if (base != MAP_FAILED) munmap(base, cap);
    free(f);
    close(fd);
    unlink(tmp);
    fm_pf_errno = err;
    return NULL;
}

/* Cold path (owner thread): the address of `slot`'s value word in the calling
 * thread's files, appending the series' entry first.  NULL on error
 * (fm_pf_errno; 0: the slot has no key, or out of memory). */
static double *fm_pf_word_slow(fm_pf_thread *t, Py_ssize_t slot) {
    Py_ssize_t c = slot >> FM_CHUNK_BITS;
    double **table = t->tables[c];
    fm_pf_file *f;
    fm_pf_key *k;
    size_t padded, entry, pos;
    int32_t len32;
    double *word = NULL, zero[2] = {0.0, 0.0};
    if (table == NULL) {
        table = (double **)calloc(FM_CHUNK_SLOTS, sizeof(double *));
        if (table == NULL) { fm_pf_errno = 0; return NULL; }
        fm_store_ptr_release((void **)&t->tables[c], table);
    }
    fm_mutex_lock(&fm_pf_lock);
    k = fm_pf_keys[c] != NULL ? &fm_pf_keys[c][slot & FM_CHUNK_MASK] : NULL;
    if (k == NULL || k->data == NULL || k->len > 0x7fffffff) { fm_pf_errno = 0; goto out; }
    padded = k->len + (8 - (k->len + 4) % 8);   /* as MmapedDict._init_value */
    entry = 4 + padded + 16;
    f = t->file;
    if (f == NULL || f->used + entry > f->cap) {
        fm_pf_file *fresh = fm_pf_open_locked(FM_PF_HEADER + entry);
        if (fresh == NULL) goto out;
        fresh->prev = f;
        t->file = f = fresh;
    }
    if (fm_pf_reserve(f, f->used + entry) != 0) goto out;
    pos = f->used;
    len32 = (int32_t)k->len;
    memcpy(f->base + pos, &len32, 4);
    memcpy(f->base + pos + 4, k->data, k->len);
    memset(f->base + pos + 4 + k->len, ' ', padded - k->len);
    memcpy(f->base + pos + 4 + padded, zero, 16);
    word = (double *)(f->base + pos + 4 + padded);
    f->used = pos + entry;
    /* The entry is complete before `used` covers it. */
    __atomic_store_n((int32_t *)f->base, (int32_t)f->used, __ATOMIC_RELEASE);
    fm_store_ptr_release((void **)&table[slot & FM_CHUNK_MASK], word);
out:
    fm_mutex_unlock(&fm_pf_lock);
    return word;
}

/* Hot path: add `amount` to the calling thread's word of the slot that
 * `*slot_ref` names now (read inside the seq bracket, as fm_add).  0; -1 the
 * word could not be made (fm_pf_errno); -2 no slot (a labelled parent).
 * Safe without the GIL. */
static inline int fm_pf_add(const Py_ssize_t *slot_ref, double amount) {
    fm_pf_thread *t = fm_pf_tls;
    double **table, *w;
    Py_ssize_t slot, seq;
    int rc = 0;
    if (FM_UNLIKELY(t == NULL)) {
        t = fm_pf_acquire();
        if (t == NULL) return -1;
    }
    seq = fm_seq_enter(&t->seq);
    slot = fm_load_ssize(slot_ref);
    if (FM_UNLIKELY(slot < 0)) {
        rc = -2;
    } else {
        table = t->tables[slot >> FM_CHUNK_BITS];    /* only this thread stores it */
        w = table != NULL ? table[slot & FM_CHUNK_MASK] : NULL;
        if (FM_UNLIKELY(w == NULL)) w = fm_pf_word_slow(t, slot);
        if (FM_UNLIKELY(w == NULL)) rc = -1;
        else fm_store_double(w, fm_load_double(w) + amount);
    }
    fm_seq_exit(&t->seq, seq);
    return rc;
}

/* Make `slot`'s entry exist in the calling thread's file (value 0), as
 * prometheus_client writes one when a value is created.  0 or -1. */
static int fm_pf_touch(Py_ssize_t slot) {
    Py_ssize_t ref = slot;
    return fm_pf_add(&ref, 0.0) == 0 ? 0 : -1;
}

/* fm_quiesce for this store: after it, no increment that read a slot index
 * before the call is still storing. */
static void fm_pf_quiesce(void) {
    fm_pf_thread *t;
    fm_heavy_barrier();
    for (t = (fm_pf_thread *)fm_load_ptr_acquire((void *const *)&fm_pf_all); t != NULL; t = t->next_all)
        if (t != fm_pf_tls) fm_seq_wait(&t->seq);
}

static inline double *fm_pf_word_of(fm_pf_thread *t, Py_ssize_t slot) {
    double **table = (double **)fm_load_ptr_acquire((void *const *)&t->tables[slot >> FM_CHUNK_BITS]);
    if (table == NULL) return NULL;
    return (double *)fm_load_ptr_acquire((void *const *)&table[slot & FM_CHUNK_MASK]);
}

/* This process's total of `slot` (every thread's word).  Lock-free. */
static double fm_pf_fold(Py_ssize_t slot) {
    double total = 0.0;
    fm_pf_thread *t = (fm_pf_thread *)fm_load_ptr_acquire((void *const *)&fm_pf_all);
    for (; t != NULL; t = t->next_all) {
        double *w = fm_pf_word_of(t, slot);
        if (w != NULL) total += fm_load_double(w);
    }
    return total;
}

/* Zero this process's words of `slot` (no writer may touch it: quiesced). */
static void fm_pf_zero(Py_ssize_t slot) {
    fm_pf_thread *t = (fm_pf_thread *)fm_load_ptr_acquire((void *const *)&fm_pf_all);
    for (; t != NULL; t = t->next_all) {
        double *w = fm_pf_word_of(t, slot);
        if (w != NULL) fm_store_double(w, 0.0);
    }
}

/* How many files this process has written (for tests). */
static Py_ssize_t fm_pf_files(void) {
    Py_ssize_t n = 0;
    fm_pf_thread *t;
    fm_mutex_lock(&fm_pf_lock);
    for (t = fm_pf_all; t != NULL; t = t->next_all) {
        fm_pf_file *f;
        for (f = t->file; f != NULL; f = f->prev) n++;
    }
    fm_mutex_unlock(&fm_pf_lock);
    return n;
}

#endif /* _WIN32 */

/* The counter store: _core_c.pyx reaches counter values only through these,
 * the one place that picks the shards or this file's store (fm_pf_on, set
 * once before any slot exists).  On the add path that is one predictable
 * branch. */
static inline int fm_counter_add(const Py_ssize_t *slot_ref, double amount) {
    if (FM_UNLIKELY(fm_pf_on)) return fm_pf_add(slot_ref, amount);
    return fm_add(slot_ref, amount);
}

/* The total of `slot` (lock-free). */
static double fm_counter_fold(Py_ssize_t slot) {
    return fm_pf_on ? fm_pf_fold(slot) : fm_fold(slot);
}

/* reset()'s last step: `old` was just swapped out of its counter; wait until
 * no increment can still store into it, then zero it (it becomes the spare). */
static void fm_counter_retire(Py_ssize_t old) {
    if (fm_pf_on) {
        fm_pf_quiesce();
        fm_pf_zero(old);
    } else {
        fm_quiesce();
        fm_slot_zero(old);
    }
}

/* Give `slot` back when its counter is gone (lock-free).  This store never
 * recycles one: a file entry outlives its object, as upstream's does. */
static void fm_counter_slot_free(Py_ssize_t slot) {
    if (!fm_pf_on) fm_slot_free(slot);
}

#endif /* FASTMETRICS_PROMFILE_H */
