/*
 * fastmetrics multiprocess arena: a chunk provider (see _shards.h) backed by
 * this process's memory-mapped file, so other processes can read the counts.
 *
 * The file layout is defined once, in fastmetrics/multiprocess/_format.py;
 * the constants below are the part this writer needs, and the tests assert
 * that they equal the Python definition (arena_layout() exports them).
 *
 * Records are appended at `used` (header last, then `used` with a release
 * store, so a reader that sees `used` sees the whole record).  Every append
 * first reserves its pages with posix_fallocate (in FM_RESERVE_STEP steps), so
 * a full file system is an error at allocation time, never a SIGBUS on a
 * later store.  All state is guarded by fm_arena_lock, taken after the
 * store's fm_lock when both are held (the store calls the provider hooks with
 * its lock held, fork included).
 */
#ifndef FASTMETRICS_ARENA_H
#define FASTMETRICS_ARENA_H

#include "_shards.h"

#if !defined(_WIN32)
#  include <errno.h>
#  include <fcntl.h>
#endif

#define FM_HDR_USED 64                  /* int64: end of the published records */
#define FM_REC_META_OFF 16              /* payload offset of metadata records */
#define FM_REC_DATA_OFF 128             /* payload offset of chunk records (cache-line aligned) */
#define FM_REC_ALIGN FM_CACHE_LINE      /* every record starts on this boundary */
enum { FM_REC_CHUNK = 1, FM_REC_WORDS = 2 };
#define FM_STATE_BITS 16                /* enum word = index | (stamp_ms << FM_STATE_BITS) */
#define FM_RESERVE_STEP (64 * 1024)     /* bytes reserved per posix_fallocate */

static fm_mutex_t fm_arena_lock = FM_MUTEX_INIT;
static char *fm_arena = NULL;           /* the mapping, or NULL when detached */
static int64_t fm_arena_cap = 0;
static int fm_arena_fd = -1;            /* the file, for reserving pages */
static int64_t fm_arena_reserved = 0;   /* bytes known to be backed */
static int fm_arena_errno = 0;          /* why the last append failed (0: full or detached) */

/* Back [fm_arena_reserved, end) with real pages.  The range lies past `used`:
 * nothing is stored there yet, so even an emulated posix_fallocate (which
 * writes zero bytes) cannot race with a writer.  0 or -1 (errno saved). */
static int fm_arena_reserve_locked(int64_t end) {
#if defined(_WIN32)
    (void)end;
    return 0;
#else
    int64_t want;
    int rc;
    if (end <= fm_arena_reserved || fm_arena_fd < 0) return 0;
    want = (end + FM_RESERVE_STEP - 1) & ~(int64_t)(FM_RESERVE_STEP - 1);
    if (want > fm_arena_cap) want = fm_arena_cap;
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

/* Append a record and publish it.  Copies `length` bytes of `data`, or leaves
 * them zero (a fresh file is zero).  The payload, or NULL when detached, full
 * (fm_arena_errno 0) or its pages cannot be reserved (fm_arena_errno set). */
static char *fm_arena_append_locked(uint32_t kind, int64_t arg, int64_t payload_off,
                                    const void *data, uint32_t length) {
    int64_t used, size;
    char *rec;
    fm_arena_errno = 0;
    if (fm_arena == NULL) return NULL;
    memcpy(&used, fm_arena + FM_HDR_USED, 8);    /* only this process writes it */
    size = (payload_off + (int64_t)length + FM_REC_ALIGN - 1) & ~(int64_t)(FM_REC_ALIGN - 1);
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

static char *fm_arena_append(uint32_t kind, int64_t arg, int64_t payload_off,
                             const void *data, uint32_t length) {
    char *p;
    fm_mutex_lock(&fm_arena_lock);
    p = fm_arena_append_locked(kind, arg, payload_off, data, length);
    fm_mutex_unlock(&fm_arena_lock);
    return p;
}

/* The provider hooks. */
static double *fm_arena_chunk(Py_ssize_t c) {
    return (double *)fm_arena_append(FM_REC_CHUNK, c, FM_REC_DATA_OFF, NULL, FM_CHUNK_BYTES);
}

static Py_ssize_t *fm_arena_words(Py_ssize_t c, const Py_ssize_t *initial) {
    return (Py_ssize_t *)fm_arena_append(FM_REC_WORDS, c, FM_REC_DATA_OFF, initial, FM_CHUNK_BYTES);
}

static void fm_arena_before_fork(void) { fm_mutex_lock(&fm_arena_lock); }
static void fm_arena_after_fork_parent(void) { fm_mutex_unlock(&fm_arena_lock); }
static void fm_arena_after_fork_child(void) {
    /* The mapping is the parent's file: the child attaches one of its own. */
    fm_arena = NULL;
    fm_arena_cap = 0;
    fm_arena_fd = -1;
    fm_arena_reserved = 0;
    fm_mutex_unlock(&fm_arena_lock);
}

static const fm_provider fm_arena_provider = {
    fm_arena_chunk, fm_arena_words,
    fm_arena_before_fork, fm_arena_after_fork_parent, fm_arena_after_fork_child,
};

/* Make the arena the store's chunk provider; -1 if a slot already exists. */
static int fm_arena_enable(void) {
    return fm_set_provider(&fm_arena_provider, FM_STATE_BITS);
}

/* Attach this process's freshly created file (zero past its header; `fd` is
 * kept to reserve pages) and move the enum words into it.  Only while no
 * other thread can touch enum words: at enable() (no slot exists yet) or in a
 * fork child's hook (one thread).  0, or -1 when the file is too small or its
 * pages cannot be reserved. */
static int fm_arena_attach(char *base, int64_t cap, int fd) {
    int64_t used;
    fm_mutex_lock(&fm_arena_lock);
    fm_arena = base;
    fm_arena_cap = cap;
    fm_arena_fd = fd;
    memcpy(&used, base + FM_HDR_USED, 8);
    fm_arena_reserved = used;   /* the header (and what precedes `used`) is written */
    fm_mutex_unlock(&fm_arena_lock);
    return fm_words_rehome();
}

/* Forget the mapping (it is about to be closed). */
static void fm_arena_detach(void) {
    fm_mutex_lock(&fm_arena_lock);
    fm_arena = NULL;
    fm_arena_cap = 0;
    fm_arena_fd = -1;
    fm_arena_reserved = 0;
    fm_mutex_unlock(&fm_arena_lock);
}

/* Append a metadata record (payload copied).  -1 when full (fm_arena_errno 0)
 * or its pages cannot be reserved (fm_arena_errno set). */
static int fm_arena_record(uint32_t kind, int64_t arg, const void *data, uint32_t length) {
    return fm_arena_append(kind, arg, FM_REC_META_OFF, data, length) == NULL ? -1 : 0;
}

#endif /* FASTMETRICS_ARENA_H */
