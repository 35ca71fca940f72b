/*
 * Concurrency harness for the shard store (src/fastmetrics/_shards.h), in C, so
 * ThreadSanitizer sees every access (CPython is not instrumented).  Built and
 * run twice by tests/c/run_tsan.sh: with -fsanitize=thread (must report
 * nothing) and plainly at -O2 (a correctness run at full speed).
 *
 * All scenarios run at once, each on its own thread(s):
 * The store is configured with EXCLUSIVE exclusive shards and STRIPES stripes,
 * fewer than the threads that increment at once, so most writers (and the
 * short-lived threads) share stripes (CAS adds) while others own a shard.
 *
 *   writers       WRITERS threads adding fixed amounts to slots spread over
 *                 several chunks (first touches allocate chunks while the
 *                 reader folds them), counting their iterations: at least
 *                 writer_iters, and on until churn and slot_cycler finish;
 *   churn         rounds of CHURN_THREADS short-lived threads (create, a few
 *                 fm_add()s, exit, join): tickets and exclusive shards go back
 *                 to their pools through the pthread key destructor and are
 *                 adopted with their counts;
 *   slot_cycler   fm_slot_alloc() batches that cross chunk boundaries, enum
 *                 words, increments, fm_slot_free(): a recycled slot reads 0;
 *   enum_setter   fm_word_set() on one enum slot;
 *   resetter      reset() as the C core does it, on a slot every writer also
 *                 increments (on stripes and exclusive shards alike): swap
 *                 the spare in, fm_quiesce(), harvest the
 *                 old slot's fold, zero it; a spare must read 0 when it is
 *                 swapped in (no late store), and harvests + the final fold
 *                 must equal every increment made (none lost, none twice);
 *   reader        fm_fold()/fm_word_get()/fm_stats() in a loop: readings
 *                 never go backwards, never pass the final total, states
 *                 stay in range.
 * Then main checks exact sums, the shard pool's bounds and the slot counts.
 *
 * Only the functions _shards.h declares are used.  Each scenario is one small
 * function; main() wires them together, and the checks after the joins are
 * the API's contracts as of this writing (slot_cycler's "a recycled slot reads
 * 0" must hold however fm_slot_free defers its work; the fork hooks are not
 * exercised here).  Usage: tsan_shards [SCALE] (default 1; the iteration
 * counts are multiplied by SCALE).
 */
#define HARNESS "tsan_shards"
#include "harness.h"

#include <time.h>

#include "_shards.h"

/* ---- sizes (iteration counts scale with argv[1]) ----------------------- */
#define WRITERS 4
#define CHURN_THREADS 8          /* alive at once in one churn round */
#define CHURN_ADDS 3             /* fm_add()s per short-lived thread */
#define STABLE_SLOTS 1200        /* allocated up front: chunks 0, 1 and 2 */
#define CYCLE_BATCH 600          /* slots per slot_cycler batch: crosses chunks */
#define NSTATES 5
#define EXCLUSIVE 2              /* exclusive shards: fewer than the writing threads */
#define STRIPES 2

static long writer_iters = 100000;   /* per writer, at least: see writer() */
static long churn_rounds = 150;
static long cycle_rounds = 20;
/* 200 per scale: with more busy threads than cores, a reset waits for each
 * writer preempted inside its increment to run again (milliseconds each). */
static long reset_rounds = 200;

/* Stable slots: the writers' (spread over chunks 0..2), the churn slot, the
 * enum slot.  Set by main before any thread starts. */
enum { S_ONE, S_TWO, S_HALF, S_SPARSE, S_CHURN, N_READ };
static Py_ssize_t slot_of[N_READ];
static Py_ssize_t enum_slot;
static Py_ssize_t reset_ref;            /* the slot writers add to; swapped by resetter */
static Py_ssize_t reset_spare;          /* resetter only */
static double harvested = 0.0;          /* resetter only, read by main after join */

static pthread_barrier_t start_line;   /* every scenario thread starts at once */
static int others_done = 0;    /* __atomic: churn and slot_cycler have finished */
static int stop_reading = 0;   /* __atomic */
static int stop_setting = 0;   /* __atomic */
static long writer_done[WRITERS];       /* iterations each writer made */
static double reader_last[N_READ];      /* the reader's last readings */
static Py_ssize_t stripe_threads_seen = 0;  /* the reader's max of stats.stripe_threads */

/* Final total of stable slot `which`, once every writer has been joined. */
static double expected_total(int which) {
    double total = 0.0;
    int w;
    for (w = 0; w < WRITERS; w++) {
        double n = (double)writer_done[w];
        switch (which) {
        case S_ONE: total += n * 1.0; break;
        case S_TWO: total += n * 2.0; break;
        case S_HALF: total += n * 0.5; break;
        case S_SPARSE: total += (double)((writer_done[w] + 7) / 8) * 3.0; break;
        }
    }
    if (which == S_CHURN) total = (double)churn_rounds * CHURN_THREADS * CHURN_ADDS;
    return total;
}

static void start_or_die(pthread_t *t, void *(*fn)(void *), void *arg) {
    int rc = pthread_create(t, NULL, fn, arg);
    CHECK(rc == 0, "pthread_create: %d", rc);
}

static void join_or_die(pthread_t t) {
    int rc = pthread_join(t, NULL);
    CHECK(rc == 0, "pthread_join: %d", rc);
}

static void add_or_die(Py_ssize_t slot, double amount) {
    CHECK(fm_add(&slot, amount) == 0, "fm_add(%zd) out of memory", slot);
}

/* ---- scenario: writers -------------------------------------------------- */
/* At least writer_iters iterations, and on until churn and slot_cycler are
 * done, so the writers overlap them whatever the speed of the build. */
static void *writer(void *arg) {
    long i, w = (long)(intptr_t)arg;
    pthread_barrier_wait(&start_line);
    for (i = 0; i < writer_iters || !__atomic_load_n(&others_done, __ATOMIC_ACQUIRE); i++) {
        add_or_die(slot_of[S_ONE], 1.0);
        add_or_die(slot_of[S_TWO], 2.0);
        add_or_die(slot_of[S_HALF], 0.5);
        if ((i & 7) == 0) add_or_die(slot_of[S_SPARSE], 3.0);
        CHECK(fm_add(&reset_ref, 1.0) == 0, "fm_add(reset_ref) out of memory");
    }
    writer_done[w] = i;   /* read by main after join */
    return NULL;
}

/* ---- scenario: short-lived threads (shard pooling) ---------------------- */
static void *short_lived(void *arg) {
    int k;
    (void)arg;
    for (k = 0; k < CHURN_ADDS; k++) add_or_die(slot_of[S_CHURN], 1.0);
    return NULL;   /* the pthread key destructor pools this thread's shard */
}

static void *churn(void *arg) {
    pthread_t t[CHURN_THREADS];
    long r;
    int k;
    (void)arg;
    pthread_barrier_wait(&start_line);
    for (r = 0; r < churn_rounds; r++) {
        for (k = 0; k < CHURN_THREADS; k++) start_or_die(&t[k], short_lived, NULL);
        for (k = 0; k < CHURN_THREADS; k++) join_or_die(t[k]);
    }
    return NULL;
}

/* ---- scenario: slot alloc/free from another thread ----------------------- */
static void *slot_cycler(void *arg) {
    Py_ssize_t batch[CYCLE_BATCH];
    long r;
    int k;
    (void)arg;
    pthread_barrier_wait(&start_line);
    for (r = 0; r < cycle_rounds; r++) {
        for (k = 0; k < CYCLE_BATCH; k++) {
            Py_ssize_t s = fm_slot_alloc();
            CHECK(s >= 0, "fm_slot_alloc failed in round %ld", r);
            CHECK(fm_fold(s) == 0.0, "slot %zd (round %ld) starts at %g, not 0", s, r, fm_fold(s));
            CHECK(fm_words_ensure(s) == 0, "fm_words_ensure(%zd) out of memory", s);
            CHECK(fm_word_get(s) == 0, "recycled enum slot %zd starts in state %zd", s, fm_word_get(s));
            fm_word_set(s, (Py_ssize_t)((r + k) % NSTATES));
            add_or_die(s, 1.0);
            add_or_die(s, (double)k);
            batch[k] = s;
        }
        for (k = 0; k < CYCLE_BATCH; k++) {
            CHECK(fm_fold(batch[k]) == 1.0 + k, "slot %zd folds to %g, not %d", batch[k], fm_fold(batch[k]), 1 + k);
            CHECK(fm_word_get(batch[k]) == (r + k) % NSTATES, "slot %zd lost its state", batch[k]);
            fm_slot_free(batch[k]);
        }
    }
    return NULL;
}

/* ---- scenario: reset (swap, quiesce, harvest, zero) ---------------------- */
static void *resetter(void *arg) {
    long r;
    (void)arg;
    pthread_barrier_wait(&start_line);
    for (r = 0; r < reset_rounds; r++) {
        Py_ssize_t old;
        CHECK(fm_fold(reset_spare) == 0.0, "spare slot %zd reads %g when swapped in (round %ld)",
              reset_spare, fm_fold(reset_spare), r);
        old = fm_exchange_ssize(&reset_ref, reset_spare);
        fm_quiesce();
        harvested += fm_fold(old);   /* no writer can store there any more */
        fm_slot_zero(old);
        reset_spare = old;
    }
    return NULL;
}

/* ---- scenario: enum word setter ----------------------------------------- */
static void *enum_setter(void *arg) {
    Py_ssize_t i = 0;
    (void)arg;
    pthread_barrier_wait(&start_line);
    while (!__atomic_load_n(&stop_setting, __ATOMIC_ACQUIRE)) fm_word_set(enum_slot, i++ % NSTATES);
    return NULL;
}

/* ---- scenario: concurrent reader ---------------------------------------- */
/* Readings never go backwards; its last one (after every writer is done) must
 * be the exact total, which main checks: so no reading ever passed it. */
static long readings = 0;   /* written by the reader, read by main after join */

static void read_once(double last[N_READ]) {
    int k;
    fm_stats_t st = fm_stats();
    for (k = 0; k < N_READ; k++) {
        double v = fm_fold(slot_of[k]);
        CHECK(v >= last[k], "slot %zd went backwards: %.17g -> %.17g", slot_of[k], last[k], v);
        last[k] = v;
    }
    CHECK(fm_word_get(enum_slot) < NSTATES, "enum state %zd out of range", fm_word_get(enum_slot));
    CHECK(st.shards_live >= 0 && st.shards_live <= EXCLUSIVE, "stats: %zd exclusive shards live",
          st.shards_live);
    CHECK(st.shards_total <= EXCLUSIVE + STRIPES, "stats: %zd shards", st.shards_total);
    if (st.stripe_threads > stripe_threads_seen) stripe_threads_seen = st.stripe_threads;
    readings++;
}

static void *reader(void *arg) {
    (void)arg;
    pthread_barrier_wait(&start_line);
    while (!__atomic_load_n(&stop_reading, __ATOMIC_ACQUIRE)) read_once(reader_last);
    read_once(reader_last);   /* after every writer is done */
    return NULL;
}

/* ---- main ---------------------------------------------------------------- */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    pthread_t writers[WRITERS], churner, cycler, setter, rd, rs;
    Py_ssize_t s;
    fm_stats_t st;
    long scale = argc > 1 ? atol(argv[1]) : 1, all_iters = 0;
    double t0 = now_s();
    int k;

    CHECK(scale >= 1, "usage: %s [SCALE>=1]", argv[0]);
    writer_iters *= scale;
    churn_rounds *= scale;
    cycle_rounds *= scale;
    reset_rounds *= scale;

    CHECK(fm_init() == 0, "fm_init failed");
    CHECK(fm_configure(EXCLUSIVE, STRIPES) == 0, "fm_configure failed");
    for (k = 0; k < STABLE_SLOTS; k++) {
        s = fm_slot_alloc();
        CHECK(s == k, "fresh slot %zd, expected %d", s, k);
    }
    slot_of[S_ONE] = 0;
    slot_of[S_TWO] = FM_CHUNK_SLOTS - 1;          /* last word of chunk 0 */
    slot_of[S_HALF] = FM_CHUNK_SLOTS;             /* first word of chunk 1 */
    slot_of[S_SPARSE] = STABLE_SLOTS - 1;         /* chunk 2 */
    slot_of[S_CHURN] = FM_CHUNK_SLOTS + 7;
    enum_slot = 3;
    CHECK(fm_words_ensure(enum_slot) == 0, "fm_words_ensure out of memory");
    reset_ref = STABLE_SLOTS - 2;
    reset_spare = STABLE_SLOTS - 3;

    CHECK(pthread_barrier_init(&start_line, NULL, WRITERS + 5) == 0, "pthread_barrier_init");
    start_or_die(&rd, reader, NULL);
    start_or_die(&setter, enum_setter, NULL);
    for (k = 0; k < WRITERS; k++) start_or_die(&writers[k], writer, (void *)(intptr_t)k);
    start_or_die(&churner, churn, NULL);
    start_or_die(&cycler, slot_cycler, NULL);
    start_or_die(&rs, resetter, NULL);

    join_or_die(churner);
    join_or_die(cycler);
    join_or_die(rs);
    __atomic_store_n(&others_done, 1, __ATOMIC_RELEASE);
    for (k = 0; k < WRITERS; k++) join_or_die(writers[k]);
    __atomic_store_n(&stop_setting, 1, __ATOMIC_RELEASE);
    join_or_die(setter);
    __atomic_store_n(&stop_reading, 1, __ATOMIC_RELEASE);
    join_or_die(rd);

    /* Exact sums, read by a thread that never wrote, and the reader's last
     * readings (so no reading ever went past them). */
    for (k = 0; k < N_READ; k++) {
        CHECK(fm_fold(slot_of[k]) == expected_total(k), "slot %zd: %.17g, expected %.17g",
              slot_of[k], fm_fold(slot_of[k]), expected_total(k));
        CHECK(reader_last[k] == expected_total(k), "slot %zd: reader's last reading %.17g, expected %.17g",
              slot_of[k], reader_last[k], expected_total(k));
    }
    CHECK(fm_word_get(enum_slot) < NSTATES, "enum state out of range");

    /* Every writing thread has exited (their destructors ran before join
     * returned): all exclusive shards and tickets are pooled; there were
     * never more shards than the bounds, and stripes were written. */
    st = fm_stats();
    CHECK(st.shards_live == 0, "%zd shards still live after every thread exited", st.shards_live);
    CHECK(st.threads_live == 0 && st.stripe_threads == 0, "%zd tickets (%zd on stripes) live after every "
          "thread exited", st.threads_live, st.stripe_threads);
    CHECK(st.shards_total == EXCLUSIVE + STRIPES, "%zd shards, expected %d exclusive + %d stripes",
          st.shards_total, EXCLUSIVE, STRIPES);
    CHECK(stripe_threads_seen >= 1, "no thread ever incremented on a stripe");
    CHECK(st.slots_used == STABLE_SLOTS, "slots_used %zd, expected %d", st.slots_used, STABLE_SLOTS);
    CHECK(st.chunks >= 3, "only %zd chunks", st.chunks);

    for (k = 0; k < WRITERS; k++) all_iters += writer_done[k];
    CHECK(harvested + fm_fold(reset_ref) == (double)all_iters,
          "reset slot: %.17g harvested + %.17g live, expected %ld increments",
          harvested, fm_fold(reset_ref), all_iters);
    CHECK(fm_fold(reset_spare) == 0.0, "the spare slot reads %g", fm_fold(reset_spare));

    /* Main's first increment adopts a pooled shard, counts included. */
    add_or_die(slot_of[S_ONE], 1.0);
    CHECK(fm_fold(slot_of[S_ONE]) == expected_total(S_ONE) + 1.0, "adopted shard lost counts");
    st = fm_stats();
    CHECK(st.shards_live == 1, "shards_live %zd after main's first increment", st.shards_live);
    CHECK(st.shards_total == EXCLUSIVE + STRIPES, "main's shard was not pooled: %zd", st.shards_total);

    printf("tsan_shards: OK in %.2f s (scale %ld: %d writers x >= %ld iterations (%ld in all), "
           "%ld short-lived threads, %ld slot alloc/free, %ld resets, %ld readings, %zd shards, %zd chunks, "
           "up to %zd threads on stripes)\n",
           now_s() - t0, scale, WRITERS, writer_iters,
           all_iters,
           churn_rounds * CHURN_THREADS,
           cycle_rounds * CYCLE_BATCH, reset_rounds, readings, st.shards_total, st.chunks, stripe_threads_seen);
    return 0;
}
