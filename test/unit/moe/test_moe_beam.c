/* test_moe_beam.c -- the batched beam search (actors/moe_beam.h) against exhaustive scoring: the pure
 * core fed from a table of declarations must give exactly the exhaustive top k (same uids, same order,
 * ties by uid) for hivemind's dense 10x10x10 block of a 32x32x32 grid, a dense 10x10x10 grid, a sparse
 * 3-d grid, one-dimensional grids of FLAT_EXPERT entries, fewer live experts than k, many ties; with
 * bounds on rounds and prefixes fetched; then the whole search over 16 in-memory DHT nodes holding
 * 1,000 experts of a 32x32 grid. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_boot.h"
#include "actors/dht/io/dht_clock.h"
#include "actors/dht/io/dht_memnet.h"
#include "actors/grid/dht_experts.h"
#include "actors/moe/route/moe_adapt.h"
#include "actors/moe/route/moe_beam.h"
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

typedef struct {
    float score;
    const char *uid;
} scored;

static int scored_desc(const void *pa, const void *pb)
{
    const scored *x = pa, *y = pb;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return strcmp(x->uid, y->uid);
}

/* check_exhaustive scores every declared uid for sample s (coordinates added in dimension order, as the
 * layer defines an expert's score), sorts by score then uid, and requires the search's answer to be
 * exactly its first k: the same uids, in the same order, with the same scores. */
static void check_exhaustive(const moe_beam *b, int64_t s, const table *t, const char *prefix, const int *grid,
                             int ndim, const float *scores, int total, int k)
{
    scored *all = malloc((t->nuids ? t->nuids : 1) * sizeof *all);
    int coords[MOE_MAX_DIMS], off[MOE_MAX_DIMS];
    for (int d = 0, o = 0; d < ndim; d++) { off[d] = o; o += grid[d]; }
    for (size_t i = 0; i < t->nuids; i++) {
        cr_assert_eq(moe_beam_expert_coords(prefix, grid, ndim, t->uids[i], coords), 0, "%s", t->uids[i]);
        float acc = scores[s * total + coords[0]];
        for (int d = 1; d < ndim; d++) acc += scores[s * total + off[d] + coords[d]];
        all[i] = (scored){ acc, t->uids[i] };
    }
    qsort(all, t->nuids, sizeof *all, scored_desc);
    const moe_beam_expert *got;
    size_t n = moe_beam_result(b, s, &got);
    size_t want = (size_t)k < t->nuids ? (size_t)k : t->nuids;
    cr_assert_eq(n, want, "sample %lld: %zu experts, %zu expected", (long long)s, n, want);
    for (size_t j = 0; j < n; j++) {
        cr_assert_str_eq(got[j].uid, all[j].uid, "sample %lld rank %zu: %s (%g), exhaustive %s (%g)", (long long)s, j,
                         got[j].uid, got[j].score, all[j].uid, all[j].score);
        cr_assert(got[j].score == all[j].score, "score of %s: %g vs %g", got[j].uid, got[j].score, all[j].score);
    }
    free(all);
}

static void random_scores(float *s, size_t n, uint64_t seed)
{
    kern_rng r;
    kern_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) s[i] = kern_rng_normal(&r);
}

/* search_table runs a search of B samples (random scores from seed, or the given ones) over the
 * declarations of t, checks every sample against exhaustive scoring, and returns the rounds; *asked gets
 * the prefixes fetched. */
static int search_table(const table *t, const char *prefix, const int *grid, int ndim, int B, int K, uint64_t seed,
                        const float *given, size_t *asked)
{
    int T = 0;
    for (int d = 0; d < ndim; d++) T += grid[d];
    float *scores = malloc((size_t)B * (size_t)T * sizeof *scores);
    if (given) memcpy(scores, given, (size_t)B * (size_t)T * sizeof *scores);
    else random_scores(scores, (size_t)B * (size_t)T, seed);
    moe_beam *b;
    cr_assert_eq(moe_beam_new(prefix, grid, ndim, B, scores, K, &b), 0);
    *asked = 0;
    int rounds = drive(b, t, asked);
    char full[64];
    snprintf(full, sizeof full, "%s.", prefix);
    for (int s = 0; s < B; s++) check_exhaustive(b, s, t, full, grid, ndim, scores, T, K);
    cr_assert_eq(moe_beam_rounds(b), rounds);
    cr_assert_eq(moe_beam_fetched(b), *asked);
    moe_beam_free(b);
    free(scores);
    return rounds;
}

/* hivemind's test_beam_search_correctness: a dense 10x10x10 block of a 32x32x32 grid. */
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
    size_t asked, most = 0;
    int worst = 0;
    for (uint64_t rep = 0; rep < 20; rep++) {
        int rounds = search_table(&t, "ffn", grid, 3, 25, 4, 1 + rep, NULL, &asked);
        worst = rounds > worst ? rounds : worst;
        most = asked > most ? asked : most;
    }
    /* the 32 first-dimension prefixes (the root is not stored), then the few second-dimension prefixes
     * whose bound beats the 4th best expert the first round's hints revealed */
    cr_log_info("dense 10x10x10 block: at most %d rounds, %zu prefixes for 25 samples", worst, most);
    cr_assert_eq(worst, 2);
    cr_assert_leq(most, 32 + 100);
    table_free(&t);

    /* the whole 10x10x10 grid, dense */
    table u = {0};
    for (int i = 0; i < 1000; i++) {
        snprintf(uid, sizeof uid, "ffn.%d.%d.%d", i / 100, i / 10 % 10, i % 10);
        table_add(&u, uid);
    }
    int g10[3] = { 10, 10, 10 };
    for (uint64_t rep = 0; rep < 20; rep++) {
        cr_assert_eq(search_table(&u, "ffn", g10, 3, 25, 4, 100 + rep, NULL, &asked), 2);
        cr_assert_leq(asked, 10 + 100);
    }
    table_free(&u);
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
    size_t asked;
    /* a 2-d grid: the first-dimension prefixes hold every expert, one round, each prefix once */
    cr_assert_eq(search_table(&t, "expert", grid, 2, 200, 2, 2, NULL, &asked), 1);
    cr_assert_leq(asked, 8);
    table_free(&t);
}

/* A sparse 3-d grid: 300 experts at random in 16x16x16, k from 1 to 16. */
Test(moe_beam, sparse_3d_grid_matches_exhaustive_search, .timeout = 30)
{
    int cells[4096];
    for (int i = 0; i < 4096; i++) cells[i] = i;
    kern_rng r;
    kern_rng_seed(&r, 31);
    for (int i = 4095; i > 0; i--) {
        int j = (int)kern_rng_below(&r, (uint64_t)i + 1), x = cells[i];
        cells[i] = cells[j];
        cells[j] = x;
    }
    table t = {0};
    char uid[64];
    for (int i = 0; i < 300; i++) {
        snprintf(uid, sizeof uid, "sp.%d.%d.%d", cells[i] / 256, cells[i] / 16 % 16, cells[i] % 16);
        table_add(&t, uid);
    }
    int grid[3] = { 16, 16, 16 };
    const int ks[] = { 1, 2, 4, 8, 16 };
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        size_t asked;
        int rounds = search_table(&t, "sp", grid, 3, 64, ks[i], 50 + i, NULL, &asked);
        cr_log_info("sparse 16x16x16, k %d: %d rounds, %zu prefixes", ks[i], rounds, asked);
        cr_assert_leq(rounds, 3);
        cr_assert_leq(asked, 16 + 16 * 16);   /* each first- and second-dimension prefix at most once */
    }
    table_free(&t);
}

/* Many equal scores: ties are broken by uid, as the exhaustive reference does. */
Test(moe_beam, ties_break_by_uid, .timeout = 30)
{
    table t = {0};
    char uid[64];
    for (int i = 0; i < 12; i++)
        for (int j = 0; j < 12; j += 1 + i % 3) {
            snprintf(uid, sizeof uid, "tie.%d.%d", i, j);
            table_add(&t, uid);
        }
    int grid[2] = { 12, 12 };
    const int B = 40;
    float scores[40 * 24];
    kern_rng r;
    kern_rng_seed(&r, 8);
    for (int i = 0; i < B * 24; i++) scores[i] = (float)kern_rng_below(&r, 3);   /* 0, 1 or 2 */
    for (int i = 0; i < 24; i++) scores[i] = 0;                                  /* every expert ties */
    size_t asked;
    for (int k = 1; k <= 9; k += 4) search_table(&t, "tie", grid, 2, B, k, 0, scores, &asked);
    table_free(&t);
}

Test(moe_beam, flat_grid_one_round, .timeout = 30)
{
    /* the layout of `make demo`: expert.[0:5] and ten more of expert.[5:250] */
    table t = {0};
    char uid[64];
    int live[15] = { 0, 1, 2, 3, 4, 17, 40, 41, 99, 120, 133, 180, 201, 222, 249 };
    for (int i = 0; i < 15; i++) {
        snprintf(uid, sizeof uid, "expert.%d", live[i]);
        table_add(&t, uid);
    }
    int grid[1] = { 250 };
    size_t asked;
    for (int k = 1; k <= 16; k *= 2) {
        cr_assert_eq(search_table(&t, "expert", grid, 1, 30, k, 3 + (uint64_t)k, NULL, &asked), 1);
        cr_assert_eq(asked, 250);   /* every coordinate once, whatever the batch */
    }
    /* a wider one: BEAM_PER_SAMPLE prefixes per sample and round keep rounds bounded */
    int wide[1] = { 1000 };
    cr_assert_leq(search_table(&t, "expert", wide, 1, 8, 3, 7, NULL, &asked), 4);
    cr_assert_leq(asked, 1000);
    table_free(&t);
}

Test(moe_beam, fewer_live_experts_than_k, .timeout = 30)
{
    table t = {0};
    table_add(&t, "few.3.1");
    table_add(&t, "few.0.7");
    table_add(&t, "few.6.6");
    int grid[2] = { 8, 8 };
    size_t asked;
    cr_assert_eq(search_table(&t, "few", grid, 2, 50, 5, 9, NULL, &asked), 1);
    cr_assert_eq(asked, 8);   /* all of the first dimension, found empty or not */
    int grid1[1] = { 100 };
    table f = {0};
    table_add(&f, "flat.42");
    cr_assert_eq(search_table(&f, "flat", grid1, 1, 10, 4, 10, NULL, &asked), 1);
    table_free(&f);

    /* an empty grid: every sample gets nothing, and the search ends */
    table empty = {0};
    cr_assert_eq(search_table(&empty, "flat", grid1, 1, 30, 3, 11, NULL, &asked), 1);
    cr_assert_eq(asked, 100);
    int grid3[3] = { 4, 4, 4 };
    cr_assert_eq(search_table(&empty, "few", grid3, 3, 30, 3, 12, NULL, &asked), 1);
    cr_assert_eq(asked, 4);
    table_free(&t);
}

/* A peer's dictionary cannot smuggle in experts: successors whose uid is not the prefix plus their
 * coordinate (or not canonical, or outside the grid) are ignored, a repeated coordinate counts once. */
Test(moe_beam, malformed_successors_are_ignored, .timeout = 10)
{
    int grid[2] = { 4, 4 };
    float scores[8] = { 0, 0, 0, 5, 0, 0, 0, 9 };   /* expert m.3.3 would win */
    moe_beam *b;
    cr_assert_eq(moe_beam_new("m", grid, 2, 1, scores, 2, &b), 0);
    const char *const *pf;
    size_t n = moe_beam_want(b, &pf);
    cr_assert_eq(n, 4);
    dht_successors *per = calloc(n, sizeof *per);
    dht_successor good[2], bad[4];
    memset(good, 0, sizeof good);
    memset(bad, 0, sizeof bad);
    good[0] = (dht_successor){ .coord = 1, .uid = "m.0.1" };
    good[1] = (dht_successor){ .coord = 1, .uid = "m.0.1" };            /* repeated */
    bad[0] = (dht_successor){ .coord = 3, .uid = "m.1.3" };             /* not under m.3. */
    bad[1] = (dht_successor){ .coord = 2, .uid = "m.3.02" };            /* not canonical */
    bad[2] = (dht_successor){ .coord = 3, .uid = "other.3.3" };
    bad[3] = (dht_successor){ .coord = 7, .uid = "m.3.7" };             /* outside the grid */
    for (size_t i = 0; i < n; i++) {
        if (strcmp(pf[i], "m.0.") == 0) per[i] = (dht_successors){ good, 2 };
        if (strcmp(pf[i], "m.3.") == 0) per[i] = (dht_successors){ bad, 4 };
    }
    cr_assert_eq(moe_beam_feed(b, per, n), 0);
    free(per);
    cr_assert_eq(moe_beam_want(b, &pf), 0);
    const moe_beam_expert *got;
    cr_assert_eq(moe_beam_result(b, 0, &got), 1);
    cr_assert_str_eq(got[0].uid, "m.0.1");
    moe_beam_free(b);
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
    dht_clock *clock;   /* virtual: the network runs with no sleep */
    dht_memnet *net;
    dht *d[NODES];
    int pending;
    int err;
    moe_beam *done_beam;
} net16;

static int nothing_pending(void *arg) { return ((net16 *)arg)->pending <= 0; }

/* run_until runs the network until pending drops to 0 or ms of virtual time pass; 1 if it did. */
static int run_until(net16 *m, int ms)
{
    dht_vclock_run(m->clock, nothing_pending, m, (uint64_t)ms);
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
 * nodes, searches reps batches of 64 random samples from another node, and checks that every sample's
 * answer is exactly the exhaustive top-4 of the declared experts, the same as the core fed from the
 * declarations finds, in one round that fetches each first-dimension prefix at most once. */
static void dht_grid(const int *cells, int n_cells, int reps)
{
    net16 m;
    memset(&m, 0, sizeof m);
    m.l = rt_loop_new();
    cr_assert(m.l);
    cr_assert_eq(dht_vclock_new(m.l, &m.clock), 0);
    cr_assert_eq(dht_memnet_new(m.l, m.clock, 1, &m.net), 0);
    for (int i = 0; i < NODES; i++) {
        dht_cfg c;
        dht_transport tr;
        dht_cfg_default(&c);
        c.seed = 100 + (uint64_t)i;
        c.refresh_period_s = -1;
        c.rpc_timeout_ms = 2000;
        c.clock = m.clock;
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
    for (int rep = 0; rep < reps; rep++) {
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
            check_exhaustive(b, s, &t, "expert.", grid, 2, scores, T, K);
        }
        cr_assert_eq(moe_beam_rounds(b), 1);
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
    dht_vclock_free(m.clock);
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

/* Rows complete or empty (31 full rows, 992 experts). */
Test(moe_beam, dht_full_rows_match_exhaustive_search, .timeout = 120)
{
    int cells[1024];
    for (int i = 0; i < 992; i++) cells[i] = i;
    shuffle(cells, 992, 5);
    dht_grid(cells, 992, 4);
}

/* The acceptance: 1,000 of the 1,024 cells at random, on 16 DHT nodes, 1,024 random inputs,
 * each answered exactly as exhaustive scoring (hivemind's beam misses the optimum here for about one
 * sample in a hundred, when a row of its beam lacks the column that wins elsewhere). */
Test(moe_beam, dht_1000_random_cells_match_exhaustive_search, .timeout = 120)
{
    int cells[1024];
    for (int i = 0; i < 1024; i++) cells[i] = i;
    shuffle(cells, 1024, 77);
    dht_grid(cells, 1000, 16);
}
