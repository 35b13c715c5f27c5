/* test_moe_beam.c -- the batched beam search (actors/moe_beam.h) against exhaustive scoring: the pure
 * core fed from a table of declarations (hivemind's test_beam_search_correctness: a dense block of a
 * 32x32x32 grid), a one-dimensional grid of FLAT_EXPERT entries, sharing of prefixes between samples,
 * and the whole search over 16 in-memory DHT nodes holding 1,000 experts of a 32x32 grid. */
#include <criterion/criterion.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht_experts.h"
#include "actors/dht_memnet.h"
#include "actors/moe_beam.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"

/* ---- a table of declarations, as dht_declare_experts would store them ---- */

typedef struct {
    char key[UID_MAX_LEN + 2];
    dht_successor s;
} decl;

typedef struct {
    decl *d;
    size_t n, cap;
    char **uids;
    size_t nuids;
} table;

static void table_add(table *t, const char *uid)
{
    uid_decl_key keys[UID_MAX_DECL_KEYS];
    int n = uid_declaration_keys(uid, keys, UID_MAX_DECL_KEYS);
    cr_assert(n > 0, "%s", uid);
    for (int i = 0; i < n; i++) {
        if (!keys[i].has_subkey) continue;
        size_t at = t->n;
        for (size_t j = 0; j < t->n; j++)
            if (strcmp(t->d[j].key, keys[i].key) == 0 && t->d[j].s.coord == keys[i].subkey) at = j;
        if (at == t->n) {
            if (t->n == t->cap) {
                t->cap = t->cap ? t->cap * 2 : 256;
                t->d = realloc(t->d, t->cap * sizeof *t->d);
            }
            t->n++;
        }
        decl *d = &t->d[at];
        memset(d, 0, sizeof *d);
        size_t kl = strnlen(keys[i].key, sizeof d->key - 1);
        memcpy(d->key, keys[i].key, kl);
        d->key[kl] = '\0';
        d->s.coord = keys[i].subkey;
        snprintf(d->s.uid, sizeof d->s.uid, "%s", uid);
        snprintf(d->s.addr.host, sizeof d->s.addr.host, "127.0.0.1");
        d->s.addr.port = 7000;
        d->s.addr.family = AF_INET;
    }
    t->uids = realloc(t->uids, (t->nuids + 1) * sizeof *t->uids);
    t->uids[t->nuids++] = strdup(uid);
}

static void table_free(table *t)
{
    for (size_t i = 0; i < t->nuids; i++) free(t->uids[i]);
    free(t->uids);
    free(t->d);
}

/* drive runs the core to completion from the table; returns the rounds. */
static int drive(moe_beam *b, const table *t, size_t *asked_total)
{
    const char *const *pf;
    size_t n;
    int rounds = 0;
    while ((n = moe_beam_want(b, &pf)) > 0) {
        dht_successors *per = calloc(n, sizeof *per);
        dht_successor **items = calloc(n, sizeof *items);
        for (size_t i = 0; i < n; i++) {
            items[i] = calloc(t->n ? t->n : 1, sizeof **items);
            for (size_t j = 0; j < t->n; j++)
                if (strcmp(t->d[j].key, pf[i]) == 0) items[i][per[i].n++] = t->d[j].s;
            per[i].items = items[i];
        }
        *asked_total += n;
        cr_assert_eq(moe_beam_feed(b, per, n), 0);
        for (size_t i = 0; i < n; i++) free(items[i]);
        free(items);
        free(per);
        cr_assert(++rounds < 1000);
    }
    return rounds;
}

static int desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : x < y;
}

/* check_exhaustive compares sample s's result with the true top scores over every declared uid; with
 * soft set it returns whether they agree instead of failing. */
static int check_exhaustive_soft(const moe_beam *b, int64_t s, const table *t, const char *prefix, const int *grid,
                                 int ndim, const float *scores, int total, int k, int soft)
{
    float *all = malloc(t->nuids * sizeof *all);
    int coords[MOE_MAX_DIMS], off[MOE_MAX_DIMS];
    for (int d = 0, o = 0; d < ndim; d++) { off[d] = o; o += grid[d]; }
    for (size_t i = 0; i < t->nuids; i++) {
        cr_assert_eq(moe_beam_expert_coords(prefix, grid, ndim, t->uids[i], coords), 0, "%s", t->uids[i]);
        all[i] = 0;
        for (int d = 0; d < ndim; d++) all[i] += scores[s * total + off[d] + coords[d]];
    }
    qsort(all, t->nuids, sizeof *all, desc);
    const moe_beam_expert *got;
    size_t n = moe_beam_result(b, s, &got);
    cr_assert_eq(n, (size_t)(k < (int)t->nuids ? k : (int)t->nuids), "sample %lld: %zu experts", (long long)s, n);
    for (size_t j = 0; j < n; j++) {
        float want = 0;
        cr_assert_eq(moe_beam_expert_coords(prefix, grid, ndim, got[j].uid, coords), 0);
        for (int d = 0; d < ndim; d++) want += scores[s * total + off[d] + coords[d]];
        cr_assert_float_eq(got[j].score, want, 1e-5, "reported score of %s", got[j].uid);
        cr_assert_leq(got[j].score, all[j] + 1e-5f);
        if (soft && (got[j].score < all[j] - 1e-5f || got[j].score > all[j] + 1e-5f)) { free(all); return 0; }
        cr_assert_float_eq(got[j].score, all[j], 1e-5, "sample %lld rank %zu: %s has %g, best possible %g",
                           (long long)s, j, got[j].uid, got[j].score, all[j]);
    }
    free(all);
    return 1;
}

static void check_exhaustive(const moe_beam *b, int64_t s, const table *t, const char *prefix, const int *grid,
                             int ndim, const float *scores, int total, int k)
{
    check_exhaustive_soft(b, s, t, prefix, grid, ndim, scores, total, k, 0);
}

static void random_scores(float *s, size_t n, uint64_t seed)
{
    kern_rng r;
    kern_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) s[i] = kern_rng_normal(&r);
}

Test(moe_beam, dense_block_matches_exhaustive_search, .timeout = 30)
{
    table t = {0};
    char uid[64];
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 10; j++)
            for (int k = 0; k < 10; k++) {
                snprintf(uid, sizeof uid, "ffn.%d.%d.%d", 5 + i, 10 + j, 15 + k);
                table_add(&t, uid);
            }
    int grid[3] = { 32, 32, 32 };
    const int B = 25, T = 96, K = 4;
    float *scores = malloc((size_t)B * T * sizeof *scores);
    random_scores(scores, (size_t)B * T, 1);
    moe_beam *b;
    cr_assert_eq(moe_beam_new("ffn", grid, 3, B, scores, K, &b), 0);
    size_t asked = 0;
    int rounds = drive(b, &t, &asked);
    for (int s = 0; s < B; s++) check_exhaustive(b, s, &t, "ffn.", grid, 3, scores, T, K);
    cr_assert_eq(moe_beam_rounds(b), rounds);
    cr_assert_eq(moe_beam_fetched(b), asked);
    /* each distinct prefix is asked once however many samples need it: at most the 32 first-dimension
     * prefixes and the 32*32 second-dimension ones */
    cr_assert_leq(asked, 32 + 32 * 32);
    moe_beam_free(b);
    free(scores);
    table_free(&t);
}

Test(moe_beam, samples_share_prefix_requests, .timeout = 30)
{
    table t = {0};
    char uid[64];
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) {
            snprintf(uid, sizeof uid, "expert.%d.%d", i, j);
            table_add(&t, uid);
        }
    int grid[2] = { 8, 8 };
    const int B = 200, T = 16, K = 2;
    float *scores = malloc((size_t)B * T * sizeof *scores);
    random_scores(scores, (size_t)B * T, 2);
    moe_beam *b;
    cr_assert_eq(moe_beam_new("expert.", grid, 2, B, scores, K, &b), 0);
    size_t asked = 0;
    int rounds = drive(b, &t, &asked);
    /* a dense 2-d grid needs the initial beam only: one round, the first-dimension prefixes once each */
    cr_assert_eq(rounds, 1);
    cr_assert_leq(asked, 8);
    for (int s = 0; s < B; s++) check_exhaustive(b, s, &t, "expert.", grid, 2, scores, T, K);
    moe_beam_free(b);
    free(scores);
    table_free(&t);
}

Test(moe_beam, flat_grid_and_sparse_first_dimension, .timeout = 30)
{
    table t = {0};
    char uid[64];
    int live[] = { 3, 17, 40, 41, 99 };
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++) {
        snprintf(uid, sizeof uid, "expert.%d", live[i]);
        table_add(&t, uid);
    }
    int grid[1] = { 100 };
    const int B = 30, K = 3;
    float *scores = malloc((size_t)B * 100 * sizeof *scores);
    random_scores(scores, (size_t)B * 100, 3);
    moe_beam *b;
    cr_assert_eq(moe_beam_new("expert", grid, 1, B, scores, K, &b), 0);
    size_t asked = 0;
    drive(b, &t, &asked);
    for (int s = 0; s < B; s++) check_exhaustive(b, s, &t, "expert.", grid, 1, scores, 100, K);
    cr_assert_leq(asked, 100);
    moe_beam_free(b);

    /* an empty grid: every sample gets nothing, and the search ends */
    table empty = {0};
    cr_assert_eq(moe_beam_new("expert", grid, 1, B, scores, K, &b), 0);
    asked = 0;
    drive(b, &empty, &asked);
    const moe_beam_expert *got;
    for (int s = 0; s < B; s++) cr_assert_eq(moe_beam_result(b, s, &got), 0);
    cr_assert_eq(asked, 100);
    moe_beam_free(b);
    free(scores);
    table_free(&t);
}

Test(moe_beam, rejects_bad_arguments, .timeout = 10)
{
    int grid[2] = { 4, 4 };
    float s[8] = {0};
    moe_beam *b = NULL;
    cr_assert_eq(moe_beam_new("ffn..", grid, 2, 1, s, 2, &b), DMOE_EINVAL);
    cr_assert_eq(moe_beam_new("ffn", grid, 0, 1, s, 2, &b), DMOE_EINVAL);
    cr_assert_eq(moe_beam_new("ffn", grid, 2, 0, s, 2, &b), DMOE_EINVAL);
    cr_assert_eq(moe_beam_new("ffn", grid, 2, 1, s, 0, &b), DMOE_EINVAL);
    int bad[2] = { 4, 0 };
    cr_assert_eq(moe_beam_new("ffn", bad, 2, 1, s, 2, &b), DMOE_EINVAL);
    int c[2];
    cr_assert_eq(moe_beam_expert_coords("ffn.", grid, 2, "ffn.1.3", c), 0);
    cr_assert(c[0] == 1 && c[1] == 3);
    cr_assert_eq(moe_beam_expert_coords("ffn.", grid, 2, "ffn.1.4", c), DMOE_EINVAL);
    cr_assert_eq(moe_beam_expert_coords("ffn.", grid, 2, "ffn.1", c), DMOE_EINVAL);
    cr_assert_eq(moe_beam_expert_coords("ffn.", grid, 2, "exp.1.1", c), DMOE_EINVAL);
    cr_assert_eq(moe_beam_expert_coords("ffn.", grid, 2, "ffn.1.1.1", c), DMOE_EINVAL);
    moe_beam_free(NULL);
}

/* ---- over 16 in-memory DHT nodes ---- */

#define NODES 16

typedef struct {
    rt_loop *l;
    dht_memnet *net;
    dht *d[NODES];
    int pending;
    uint64_t end_us;
    int err;
    moe_beam *done_beam;
} net16;

static void tick(evutil_socket_t fd, short what, void *arg)
{
    net16 *m = arg;
    if (m->pending <= 0 || rt_clock_us() >= m->end_us) rt_loop_break(m->l);
}

static int run_until(net16 *m, int ms)
{
    struct event *ev = event_new(rt_loop_base(m->l), -1, EV_PERSIST, tick, m);
    struct timeval tv = { 0, 2000 };
    event_add(ev, &tv);
    m->end_us = rt_clock_us() + (uint64_t)ms * 1000;
    while (m->pending > 0 && rt_clock_us() < m->end_us) rt_loop_run(m->l);
    event_free(ev);
    return m->pending <= 0;
}

static void on_boot(void *arg, int err, const char *msg)
{
    net16 *m = arg;
    cr_expect_eq(err, 0, "bootstrap: %s", msg);
    m->pending--;
}

static void on_declared(void *arg, int err, const char *msg, const uint8_t *ok, size_t n)
{
    net16 *m = arg;
    cr_expect_eq(err, 0, "declare: %s", msg);
    m->pending--;
}

static void on_search(void *arg, int err, const char *msg, moe_beam *b)
{
    net16 *m = arg;
    m->err = err;
    m->done_beam = b;
    m->pending--;
}

/* dht_grid declares n_cells cells of a 32x32 grid (cells[i] = row * 32 + col) on 16 in-memory DHT
 * nodes, searches 8 batches of 64 random samples from another node, and checks that the search through
 * the DHT finds exactly what the core finds from the declarations, with one prefix fetched at most once.
 * Returns the fraction of samples whose top-k equals the exhaustive top-k. */
static double dht_grid(const int *cells, int n_cells)
{
    net16 m;
    memset(&m, 0, sizeof m);
    m.l = rt_loop_new();
    cr_assert_eq(dht_memnet_new(m.l, 1, &m.net), 0);
    for (int i = 0; i < NODES; i++) {
        dht_cfg c;
        dht_transport tr;
        dht_cfg_default(&c);
        c.seed = 100 + (uint64_t)i;
        c.refresh_period_s = -1;
        c.rpc_timeout_ms = 2000;
        int ep = dht_memnet_add(m.net, &c.addr, &tr);
        cr_assert(ep >= 0);
        cr_assert_eq(dht_node_new(m.l, &c, &tr, &m.d[i]), 0);
        dht_memnet_bind(m.net, ep, m.d[i]);
        if (i == 0) continue;
        char text[WIRE_MADDR_TEXT], err[256];
        dht_node_maddr(m.d[i / 2], text, sizeof text);
        const char *peers[1] = { text };
        m.pending = 1;
        cr_assert_eq(dht_node_bootstrap(m.d[i], peers, 1, on_boot, &m, err, sizeof err), 0);
        cr_assert(run_until(&m, 20000));
    }
    table t = {0};
    char **uids = calloc((size_t)n_cells, sizeof *uids);
    for (int i = 0; i < n_cells; i++) {
        uids[i] = malloc(32);
        snprintf(uids[i], 32, "expert.%d.%d", cells[i] / 32, cells[i] % 32);
        table_add(&t, uids[i]);
    }
    int per = (n_cells + 3) / 4;
    for (int s = 0; s < 4; s++) {   /* four "servers" declare a quarter each */
        dht *d = m.d[s * 4 + 1];
        wire_maddr ep;
        memset(&ep, 0, sizeof ep);
        snprintf(ep.host, sizeof ep.host, "127.0.0.1");
        ep.port = (uint16_t)(9000 + s);
        ep.family = AF_INET;
        dht_id_to_hex(dht_node_id(d), ep.peer_id);
        char err[256];
        int lo = s * per, n = n_cells - lo < per ? n_cells - lo : per;
        m.pending = 1;
        cr_assert_eq(dht_declare_experts(d, (const char *const *)uids + lo, (size_t)n, &ep, dht_node_now(d) + 600,
                                         on_declared, &m, err, sizeof err), 0, "%s", err);
        cr_assert(run_until(&m, 30000));
    }
    int grid[2] = { 32, 32 };
    const int B = 64, T = 64, K = 4;
    float *scores = malloc((size_t)B * T * sizeof *scores);
    moe_dht_succ ds = { m.d[9], DHT_NEG_CACHE_S };
    moe_succ_provider p;
    moe_succ_dht(&ds, &p);
    int exact = 0, total = 0;
    for (int rep = 0; rep < 8; rep++) {
        random_scores(scores, (size_t)B * T, 1000 + (uint64_t)rep);
        moe_beam *b, *ref;
        cr_assert_eq(moe_beam_new("expert.", grid, 2, B, scores, K, &b), 0);
        cr_assert_eq(moe_beam_new("expert.", grid, 2, B, scores, K, &ref), 0);
        size_t asked = 0;
        drive(ref, &t, &asked);
        m.pending = 1;
        m.done_beam = NULL;
        cr_assert_eq(moe_beam_search(&p, b, on_search, &m, NULL), 0);
        cr_assert(run_until(&m, 30000), "search %d", rep);
        cr_assert_eq(m.err, 0);
        cr_assert_eq(m.done_beam, b);
        for (int s = 0; s < B; s++) {
            const moe_beam_expert *x, *y;
            size_t nx = moe_beam_result(b, s, &x), ny = moe_beam_result(ref, s, &y);
            cr_assert_eq(nx, ny);
            for (size_t j = 0; j < nx; j++) {
                cr_assert_str_eq(x[j].uid, y[j].uid);
                cr_assert(x[j].addr.port >= 9000 && x[j].addr.port < 9004, "address of %s", x[j].uid);
            }
            exact += check_exhaustive_soft(b, s, &t, "expert.", grid, 2, scores, T, K, 1);
            total++;
        }
        cr_assert_leq(moe_beam_fetched(b), 32);   /* each first-dimension prefix at most once for 64 samples */
        moe_beam_free(b);
        moe_beam_free(ref);
    }
    for (int i = 0; i < n_cells; i++) free(uids[i]);
    free(uids);
    free(scores);
    table_free(&t);
    for (int i = 0; i < NODES; i++) dht_node_stop(m.d[i]);
    dht_memnet_free(m.net);
    for (int i = 0; i < NODES; i++) dht_node_free(m.d[i]);
    rt_loop_free(m.l);
    return (double)exact / total;
}

static void shuffle(int *v, int n, uint64_t seed)
{
    kern_rng r;
    kern_rng_seed(&r, seed);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)kern_rng_below(&r, (uint64_t)i + 1), x = v[i];
        v[i] = v[j];
        v[j] = x;
    }
}

/* Rows complete or empty (31 full rows, 992 experts): hivemind's search keeps the k best non-empty rows,
 * which then hold the k best experts, so every sample must match exhaustive scoring exactly. */
Test(moe_beam, dht_full_rows_match_exhaustive_search, .timeout = 120)
{
    int cells[1024];
    for (int i = 0; i < 992; i++) cells[i] = i;
    shuffle(cells, 992, 5);
    cr_assert_eq(dht_grid(cells, 992), 1.0);
}

/* 1,000 of the 1,024 cells at random: hivemind's algorithm is approximate when a row of the beam lacks a
 * column that wins elsewhere; the answer is still what the algorithm defines (checked against the core
 * fed from the declarations), never scores above the optimum, and almost always the optimum. */
Test(moe_beam, dht_1000_random_cells_near_exhaustive_search, .timeout = 120)
{
    int cells[1024];
    for (int i = 0; i < 1024; i++) cells[i] = i;
    shuffle(cells, 1024, 77);
    double rate = dht_grid(cells, 1000);
    cr_log_info("1000 experts in 32x32: %.1f%% of samples found the exhaustive top-4", 100 * rate);
    cr_assert_geq(rate, 0.9, "only %.1f%% exact", 100 * rate);
}
