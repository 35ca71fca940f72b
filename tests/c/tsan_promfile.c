/*
 * Concurrency harness for the prometheus_client-compatible store
 * (src/fastmetrics/_promfile.h), in C, so ThreadSanitizer sees every access.
 * Built and run by tests/c/run_tsan.sh like tsan_shards.c: with
 * -fsanitize=thread (must report nothing) and plainly at -O2.
 *
 * In a fresh temporary directory, all at once:
 *   writers    WRITERS threads (alive together) adding 1.0 to NSLOTS slots (crossing a table
 *              chunk; every first touch appends an entry to the writer's own
 *              file while the reader folds) and to the reset counter;
 *   churn      rounds of CHURN_THREADS short-lived threads (a few adds, exit):
 *              their files go back to the pool with their counts;
 *   resetter   reset() as the C core does it on the reset counter: swap the
 *              spare slot in, fm_pf_quiesce(), harvest the old slot's fold,
 *              fm_pf_zero() it; harvests + the final fold = every increment;
 *   reader     fm_pf_fold() of every plain slot in a loop: never decreases.
 * Then main checks exact folds, and parses every counter_<pid>_<n>.db as
 * prometheus_client's reader does (int32 used, then [int32 len][key padded
 * so that 4 + padded is a multiple of 8][double value][double timestamp]),
 * summing per key: each plain key sums to its total, the reset key to the
 * final fold, and there are as many files as fm_pf_files() counts.
 * Usage: tsan_promfile [SCALE].
 */
#define HARNESS "tsan_promfile"
#include "harness.h"

#include <dirent.h>
#include <string.h>

#include "_promfile.h"

#define WRITERS 3
#define NSLOTS 600                 /* > FM_CHUNK_SLOTS: two table chunks */
#define RESET_A 700                /* the reset counter's two slots */
#define RESET_B 701
#define CHURN_THREADS 4
#define CHURN_ADDS 3

static long writer_iters = 20000, churn_rounds = 50, resets = 200;
static Py_ssize_t reset_ref = RESET_A;   /* the counter's current slot (atomic) */
static double harvested = 0.0;           /* resetter only */
static int stop_reader = 0;
static pthread_barrier_t writers_meet;   /* writers start and end together: one file each */

static void key_of(Py_ssize_t slot, char *buf, size_t size) {
    /* keys of varying length, so that padding takes every value; the reset
     * counter's two slots are one series (one key) */
    long series = (long)(slot == RESET_B ? RESET_A : slot);
    snprintf(buf, size, "[\"m%ld\", \"m%ld_total\", {\"k\": \"%.*s\"}, \"help\"]",
             series, series, (int)(series % 11), "xxxxxxxxxxx");
}

static void *writer(void *arg) {
    long i;
    (void)arg;
    pthread_barrier_wait(&writers_meet);
    for (i = 0; i < writer_iters; i++) {
        Py_ssize_t slot = (Py_ssize_t)(i % NSLOTS);
        CHECK(fm_pf_add(&slot, 1.0) == 0, "add slot %ld", (long)slot);
        CHECK(fm_pf_add(&reset_ref, 1.0) == 0, "add reset");
    }
    pthread_barrier_wait(&writers_meet);
    return NULL;
}

static void *churn_one(void *arg) {
    int i;
    (void)arg;
    for (i = 0; i < CHURN_ADDS; i++) {
        Py_ssize_t slot = (Py_ssize_t)(NSLOTS - 1 - i);
        CHECK(fm_pf_add(&slot, 1.0) == 0, "churn add");
    }
    return NULL;
}

static void *churn(void *arg) {
    long r;
    int i;
    (void)arg;
    for (r = 0; r < churn_rounds; r++) {
        pthread_t t[CHURN_THREADS];
        for (i = 0; i < CHURN_THREADS; i++) CHECK(pthread_create(&t[i], NULL, churn_one, NULL) == 0, "create");
        for (i = 0; i < CHURN_THREADS; i++) pthread_join(t[i], NULL);
    }
    return NULL;
}

static void *resetter(void *arg) {
    long r;
    (void)arg;
    for (r = 0; r < resets; r++) {
        Py_ssize_t spare = fm_load_ssize(&reset_ref) == RESET_A ? RESET_B : RESET_A;
        Py_ssize_t old;
        CHECK(fm_pf_fold(spare) == 0.0, "the spare holds %g", fm_pf_fold(spare));
        old = fm_exchange_ssize(&reset_ref, spare);
        fm_pf_quiesce();
        harvested += fm_pf_fold(old);
        fm_pf_zero(old);
    }
    return NULL;
}

static void *reader(void *arg) {
    static double last[NSLOTS];
    Py_ssize_t s;
    (void)arg;
    while (!__atomic_load_n(&stop_reader, __ATOMIC_ACQUIRE)) {
        for (s = 0; s < NSLOTS; s += 7) {
            double v = fm_pf_fold(s);
            CHECK(v >= last[s], "slot %ld went back: %g -> %g", (long)s, last[s], v);
            last[s] = v;
        }
    }
    return NULL;
}

/* Sum every entry of `path` into sums[slot of its key] (keys matched by text). */
static void read_file(const char *path, double *sums, int *entries) {
    FILE *f = fopen(path, "rb");
    int32_t used;
    char *data;
    size_t pos = 8;
    CHECK(f != NULL, "open %s", path);
    CHECK(fread(&used, 4, 1, f) == 1, "used of %s", path);
    CHECK(used >= 8, "used %d", used);
    data = (char *)malloc((size_t)used);
    rewind(f);
    CHECK(fread(data, 1, (size_t)used, f) == (size_t)used, "read %s", path);
    fclose(f);
    while (pos < (size_t)used) {
        int32_t len;
        size_t padded;
        double value;
        char key[256];
        Py_ssize_t s;
        memcpy(&len, data + pos, 4);
        CHECK(len > 0 && (size_t)len < sizeof(key) && pos + 4 + (size_t)len <= (size_t)used, "len %d", len);
        padded = (size_t)len + (8 - ((size_t)len + 4) % 8);
        CHECK((4 + padded) % 8 == 0, "padding");
        memcpy(key, data + pos + 4, (size_t)len);
        key[len] = 0;
        CHECK(data[pos + 4 + (size_t)len] == ' ', "pad byte");
        memcpy(&value, data + pos + 4 + padded, 8);
        for (s = 0; s <= RESET_A; s++) {
            char want[256];
            if (s >= NSLOTS && s != RESET_A) continue;
            key_of(s, want, sizeof(want));
            if (strcmp(want, key) == 0) break;
        }
        CHECK(s <= RESET_A, "unknown key %s", key);
        sums[s] += value;
        (*entries)++;
        pos += 4 + padded + 16;
    }
    CHECK(pos == (size_t)used, "entries end at %zu, used %d", pos, used);
    free(data);
}

int main(int argc, char **argv) {
    char tmpl[] = "/tmp/fm-tsan-promfile.XXXXXX";
    char *dir = mkdtemp(tmpl);
    long scale = argc > 1 ? atol(argv[1]) : 1;
    pthread_t w[WRITERS], c, r, rd;
    Py_ssize_t s;
    double *sums = (double *)calloc(RESET_A + 1, sizeof(double));
    int i, files = 0, entries = 0;
    DIR *d;
    struct dirent *e;

    CHECK(dir != NULL, "mkdtemp");
    CHECK(fm_init() == 0, "fm_init");
    CHECK(fm_pf_enable(dir) == 0, "fm_pf_enable");
    writer_iters *= scale;
    churn_rounds *= scale;
    resets *= scale;
    for (s = 0; s < NSLOTS; s++) {
        char key[256];
        key_of(s, key, sizeof(key));
        CHECK(fm_pf_set_key(s, key, strlen(key)) == 0, "key");
    }
    for (s = RESET_A; s <= RESET_B; s++) {
        char key[256];
        key_of(s, key, sizeof(key));
        CHECK(fm_pf_set_key(s, key, strlen(key)) == 0, "key");
    }

    CHECK(pthread_barrier_init(&writers_meet, NULL, WRITERS) == 0, "barrier");
    CHECK(pthread_create(&rd, NULL, reader, NULL) == 0, "reader");
    for (i = 0; i < WRITERS; i++) CHECK(pthread_create(&w[i], NULL, writer, NULL) == 0, "writer");
    CHECK(pthread_create(&c, NULL, churn, NULL) == 0, "churn");
    CHECK(pthread_create(&r, NULL, resetter, NULL) == 0, "resetter");
    for (i = 0; i < WRITERS; i++) pthread_join(w[i], NULL);
    pthread_join(c, NULL);
    pthread_join(r, NULL);
    __atomic_store_n(&stop_reader, 1, __ATOMIC_RELEASE);
    pthread_join(rd, NULL);

    for (s = 0; s < NSLOTS; s++) {
        double want = (double)(WRITERS * (writer_iters / NSLOTS + (s < writer_iters % NSLOTS)));
        if (s >= NSLOTS - CHURN_ADDS) want += (double)(churn_rounds * CHURN_THREADS);
        CHECK(fm_pf_fold(s) == want, "slot %ld: %g, want %g", (long)s, fm_pf_fold(s), want);
    }
    {
        double current = fm_pf_fold(fm_load_ssize(&reset_ref));
        double other = fm_pf_fold(fm_load_ssize(&reset_ref) == RESET_A ? RESET_B : RESET_A);
        CHECK(other == 0.0, "the spare holds %g", other);
        CHECK(harvested + current == (double)(WRITERS * writer_iters), "reset counter: %g + %g, want %ld",
              harvested, current, (long)(WRITERS * writer_iters));
        d = opendir(dir);
        CHECK(d != NULL, "opendir");
        while ((e = readdir(d)) != NULL) {
            char path[4096];
            if (e->d_name[0] == '.') continue;
            CHECK(strncmp(e->d_name, "counter_", 8) == 0, "file %s", e->d_name);
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            read_file(path, sums, &entries);
            unlink(path);
            files++;
        }
        closedir(d);
        rmdir(dir);
        CHECK(files == fm_pf_files(), "%d files, fm_pf_files %ld", files, (long)fm_pf_files());
        CHECK(files >= WRITERS, "%d files for %d concurrent writers", files, WRITERS);
        CHECK(files <= WRITERS + CHURN_THREADS + 2, "%d files: exited threads' files are not pooled", files);
        for (s = 0; s < NSLOTS; s++) CHECK(sums[s] == fm_pf_fold(s), "file sum of slot %ld", (long)s);
        CHECK(sums[RESET_A] == current, "file sum of the reset counter %g, fold %g", sums[RESET_A], current);
    }
    printf("tsan_promfile: ok (scale %ld: %d files, %d entries)\n", scale, files, entries);
    return 0;
}
