/* dht_free.c -- choosing free expert uids from the DHT's prefix dictionaries (see dht_free.h).
 *
 * Design notes. The scan numbers the pattern's rows 0..rows-1 (uid.h's mixed radix: row r holds the uid
 * indices [r * width, (r + 1) * width)). Row order is cur, cur + stride, cur + 2 * stride, ... modulo
 * rows, stride prime to rows: every row comes exactly once, from a seeded random start. Within a row the
 * free uids are collected from a random offset, wrapping around, and collection stops at the scan's cap
 * (DHT_FREE_SPARE * k; k in ordered mode), so a row of a million uids costs at most cap + its taken
 * entries renders. The taken coordinates of a row are sorted once and searched.
 *
 * The driver (dht_free_choose) is a heap object living across round trips: each round asks the scan for
 * a batch, starts one batched DHT read, and the read's callback feeds the rows back and starts the next
 * round; the last callback calls the caller's and frees the driver. The reads are "latest" ones (every
 * one of the k nearest replicas asked, dictionaries merged, caches skipped): a plain get stops at the
 * first copy it meets, and a cached copy of a prefix made before the last joiners declared would hide
 * their uids (64 nodes started one after the other chose 14 uids twice that way). A get that fails or
 * times out reports its row empty (all free), as hivemind's beam search reads an unanswered prefix.
 */
#include "actors/grid/dht_free.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/grid/dht_experts.h"
#include "actors/grid/uid.h"
#include "runtime/rt_err.h"

/* The pattern of a node without one: hivemind's expert.0, expert.1, ..., read in order. */
static const char ordered_pattern[] = "expert.[0:100000000000000000]";
/* Largest k: keeps the cap (k * DHT_FREE_SPARE) and its list small and in an int. */
#define DHT_FREE_MAX_K (1 << 20)

struct dht_free_scan {
    char *pattern;
    int k, ordered, by_prefix;
    uint64_t rows, width;          /* rows of the grid, uids per row */
    uint64_t cur, stride, handed;  /* the next row, the step between rows, rows handed out */
    uint64_t rng;
    uint64_t batch_rows[DHT_FREE_BATCH];
    char *keys[DHT_FREE_BATCH];
    uint8_t reported[DHT_FREE_BATCH];
    size_t nbatch;
    char **found;                  /* free uids collected, strdup'd */
    size_t nfound, cap;
    uint64_t rows_read;
};

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static void clear_batch(dht_free_scan *s)
{
    for (size_t i = 0; i < s->nbatch; i++) {
        free(s->keys[i]);
        s->keys[i] = NULL;
    }
    s->nbatch = 0;
}

void dht_free_scan_del(dht_free_scan *s)
{
    if (!s) return;
    clear_batch(s);
    for (size_t i = 0; i < s->nfound; i++) free(s->found[i]);
    free(s->found);
    free(s->pattern);
    free(s);
}

int dht_free_scan_new(const char *pattern, int k, uint64_t seed, dht_free_scan **out, char *err, size_t errlen)
{
    if (k < 1 || k > DHT_FREE_MAX_K) {
        dmoe_set_err(err, errlen, "number of experts must be in 1..%d, got %d", DHT_FREE_MAX_K, k);
        return DMOE_EINVAL;
    }
    int ordered = pattern == NULL, ncoords = 0;
    uint64_t grid = 0, row = 0;
    int rc = uid_pattern_shape(ordered ? ordered_pattern : pattern, &grid, &row, &ncoords, err, errlen);
    if (rc < 0) return rc;
    dht_free_scan *s = calloc(1, sizeof *s);
    if (!s) return DMOE_ENOMEM;
    s->pattern = strdup(ordered ? ordered_pattern : pattern);
    s->cap = ordered ? (size_t)k : (size_t)k * DHT_FREE_SPARE;
    s->found = calloc(s->cap, sizeof *s->found);
    if (!s->pattern || !s->found) {
        dht_free_scan_del(s);
        return DMOE_ENOMEM;
    }
    s->k = k;
    s->ordered = ordered;
    s->by_prefix = ncoords >= 2;
    s->width = s->by_prefix ? row : 1;
    s->rows = grid / s->width;
    s->rng = seed;
    s->stride = 1;
    if (!ordered) {
        s->cur = uid_rng_below(&s->rng, s->rows);
        if (s->rows > 2)   /* a stride prime to rows: about 6 draws in 10 are, so this ends at once */
            do s->stride = 1 + uid_rng_below(&s->rng, s->rows - 1);
            while (gcd64(s->stride, s->rows) != 1);
    }
    *out = s;
    return 0;
}

int dht_free_scan_by_prefix(const dht_free_scan *s) { return s->by_prefix; }
uint64_t dht_free_scan_rows_read(const dht_free_scan *s) { return s->rows_read; }
size_t dht_free_scan_found(const dht_free_scan *s) { return s->nfound; }

int dht_free_scan_next(dht_free_scan *s, const char *const **keys)
{
    clear_batch(s);
    uint64_t limit = s->rows < DHT_FREE_MAX_ROWS ? s->rows : DHT_FREE_MAX_ROWS;
    char uid[UID_MAX_LEN + 2], prefix[UID_MAX_LEN + 2];
    /* rows enough for twice the uids still wanted if they were all free, within the batch bounds */
    uint64_t need = 2 * (uint64_t)(s->cap - s->nfound), batch = (need + s->width - 1) / s->width;
    if (batch < DHT_FREE_MIN_BATCH) batch = DHT_FREE_MIN_BATCH;
    if (batch > DHT_FREE_BATCH) batch = DHT_FREE_BATCH;
    while (s->nfound < s->cap && s->handed < limit && s->nbatch < batch) {
        uint64_t r = s->cur;
        int rc = uid_pattern_at(s->pattern, r * s->width, uid, sizeof uid);
        if (rc == 0 && s->by_prefix && (rc = uid_split(uid, prefix, sizeof prefix, NULL)) == 0)
            memcpy(uid, prefix, strlen(prefix) + 1);   /* the key is the row's prefix */
        if (rc < 0) {
            clear_batch(s);
            return rc == DMOE_ENOMEM ? rc : DMOE_ETOOBIG;
        }
        if (!(s->keys[s->nbatch] = strdup(uid))) {
            clear_batch(s);
            return DMOE_ENOMEM;
        }
        s->batch_rows[s->nbatch] = r;
        s->reported[s->nbatch] = 0;
        s->nbatch++;
        s->handed++;
        s->cur = (s->cur + s->stride) % s->rows;   /* both below 2^62: the sum cannot overflow */
    }
    *keys = (const char *const *)s->keys;
    return (int)s->nbatch;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int keep(dht_free_scan *s, const char *uid)
{
    if (s->nfound >= s->cap) return 0;
    if (!(s->found[s->nfound] = strdup(uid))) return DMOE_ENOMEM;
    s->nfound++;
    return 0;
}

int dht_free_scan_row(dht_free_scan *s, size_t i, const int64_t *taken, size_t n)
{
    if (i >= s->nbatch) return DMOE_EINVAL;
    if (s->reported[i]) return 0;
    s->reported[i] = 1;
    s->rows_read++;
    if (!s->by_prefix) return n > 0 ? 0 : keep(s, s->keys[i]);
    int64_t *sorted = NULL;
    if (n > 0) {
        if (!(sorted = malloc(n * sizeof *sorted))) return DMOE_ENOMEM;
        memcpy(sorted, taken, n * sizeof *sorted);
        qsort(sorted, n, sizeof *sorted, cmp_i64);
    }
    uint64_t off = s->ordered ? 0 : uid_rng_below(&s->rng, s->width), base = s->batch_rows[i] * s->width;
    int rc = 0;
    char uid[UID_MAX_LEN + 2];
    for (uint64_t t = 0; t < s->width && s->nfound < s->cap && rc == 0; t++) {
        int64_t coord;
        if (uid_pattern_at(s->pattern, base + (off + t) % s->width, uid, sizeof uid) != 0 ||
            uid_split(uid, NULL, 0, &coord) != 0)
            continue;   /* cannot happen: the batch's key was rendered from this row */
        if (sorted && bsearch(&coord, sorted, n, sizeof *sorted, cmp_i64)) continue;
        rc = keep(s, uid);
    }
    free(sorted);
    return rc;
}

int dht_free_scan_take(dht_free_scan *s, char ***uids)
{
    size_t n = s->nfound < (size_t)s->k ? s->nfound : (size_t)s->k;
    char **out = calloc(n + 1, sizeof *out);
    if (!out) return DMOE_ENOMEM;
    for (size_t i = 0; i < n; i++) {   /* a partial Fisher-Yates over the found list (ordered: in order) */
        size_t j = s->ordered ? i : i + (size_t)uid_rng_below(&s->rng, s->nfound - i);
        char *t = s->found[i];
        s->found[i] = s->found[j];
        s->found[j] = t;
        if (!(out[i] = strdup(s->found[i]))) {
            uid_list_free(out);
            return DMOE_ENOMEM;
        }
    }
    *uids = out;
    return (int)n;
}

/* ---- the driver ---- */

typedef struct {
    dht *d;
    dht_free_scan *s;
    dht_free_cb cb;
    void *arg;
} chooser;

static void finish(chooser *c, int err, const char *msg)
{
    char **uids = NULL;
    int n = 0;
    if (!err && (n = dht_free_scan_take(c->s, &uids)) < 0) err = n;
    if (err) {
        n = 0;
        uids = NULL;
    }
    c->cb(c->arg, err, err ? (msg && msg[0] ? msg : dmoe_strerror(err)) : "", uids, n,
          dht_free_scan_rows_read(c->s));
    dht_free_scan_del(c->s);
    free(c);
}

static int round_start(chooser *c, char *err, size_t errlen);

static void next_round(chooser *c)
{
    char err[256] = "";
    int rc = round_start(c, err, sizeof err);
    if (rc != 0) finish(c, rc < 0 ? rc : 0, err);
}

static void on_successors(void *arg, int err, const char *msg, const dht_successors *per, size_t n)
{
    chooser *c = arg;
    if (err) { finish(c, err, msg); return; }
    for (size_t i = 0; i < n; i++) {
        int64_t stack[64], *coords = per[i].n <= 64 ? stack : malloc(per[i].n * sizeof *coords);
        if (!coords) { finish(c, DMOE_ENOMEM, NULL); return; }
        for (size_t j = 0; j < per[i].n; j++) coords[j] = per[i].items[j].coord;
        int rc = dht_free_scan_row(c->s, i, coords, per[i].n);
        if (coords != stack) free(coords);
        if (rc < 0) { finish(c, rc, NULL); return; }
    }
    next_round(c);
}

static void on_experts(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n)
{
    chooser *c = arg;
    if (err) { finish(c, err, msg); return; }
    for (size_t i = 0; i < n; i++) {
        int rc = dht_free_scan_row(c->s, i, NULL, locs[i].found ? 1 : 0);
        if (rc < 0) { finish(c, rc, NULL); return; }
    }
    next_round(c);
}

/* round_start starts the next batched read. Returns 0 (a callback follows), 1 when the scan is done (no
 * read started), or a negative code (none started). */
static int round_start(chooser *c, char *err, size_t errlen)
{
    const char *const *keys = NULL;
    int n = dht_free_scan_next(c->s, &keys);
    if (n <= 0) return n == 0 ? 1 : n;
    /* the latest reads: every replica asked, no cache, so entries declared a moment ago are seen */
    if (dht_free_scan_by_prefix(c->s))
        return dht_get_active_successors_latest(c->d, keys, (size_t)n, on_successors, c, err, errlen);
    return dht_get_experts_latest(c->d, keys, (size_t)n, on_experts, c, err, errlen);
}

int dht_free_choose(dht *d, const char *pattern, int k, uint64_t seed, dht_free_cb cb, void *arg, char *err,
                    size_t errlen)
{
    if (dht_node_is_stopped(d)) return DMOE_ESHUTDOWN;
    chooser *c = calloc(1, sizeof *c);
    if (!c) return DMOE_ENOMEM;
    int rc = dht_free_scan_new(pattern, k, seed, &c->s, err, errlen);
    if (rc == 0) {
        *c = (chooser){ d, c->s, cb, arg };
        rc = round_start(c, err, errlen);
        if (rc == 1) rc = DMOE_EINTERNAL;   /* a new scan with k >= 1 always has a first row to read */
    }
    if (rc != 0) {
        dht_free_scan_del(c->s);
        free(c);
        return rc;
    }
    return 0;
}
