/* test_moe_waves.c -- the MoE layer sends an expert's requests as soon as the beam search has finished
 * the samples routed to it, while later rounds of the search are still out, and the result is the one
 * a single dispatch at the end of the search gives, bit for bit.
 *
 * The world: a one-dimensional grid of G coordinates of which only a few hold a live expert, so that
 * the search (BEAM_PER_SAMPLE prefixes per sample and round) ends some samples after the first round
 * and others later. The successors provider answers from that table and counts its calls; the experts
 * are local functions o = tanh(x A_uid), row by row. The reference is computed here from the same
 * pieces a one-shot dispatch uses (moe_math.h on the exhaustive top-k of the live experts): the
 * forward's output, the input gradient (the experts' parts added in order of first use over the
 * samples) and the gating gradients must equal the layer's to the bit. With retries on, one expert
 * fails and its rows go to the samples' spares while the search is still out.
 */
#include <criterion/criterion.h>
#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/moe/moe.h"
#include "actors/moe/moe_math.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"

#define G 1000      /* grid coordinates: 4 rounds of 256 prefixes for a sample that finds nothing early */
#define IN 4
#define OUT 3
#define K 3
#define B 24

static const int live[] = { 3, 141, 402, 577, 818, 999 };
#define NLIVE ((int)(sizeof live / sizeof live[0]))

typedef struct {
    rt_loop *l;
    int succ_calls, succ_out;      /* provider calls made, and still unanswered */
    int calls, calls_in_search;    /* expert calls, and those made while a provider call was out */
    char failing[16];              /* an expert whose forward calls fail ("no such expert"), or "" */
    int failed, failed_in_search;  /* its calls, and those answered while a provider call was out */
    char first_in_search[16];      /* the first expert a forward called while a provider call was out */
    int succ_delay_us;             /* the provider answers this late (the experts at once) */
} world;

typedef struct {
    world *w;
    moe_call_cb cb;
    void *arg;
    rx_tensor out;
    dht_successors_cb scb;
    size_t n;
    dht_successor *items;
    dht_successors *per;
    int err;
} pending;

static void expert_matrix(const char *uid, float *A)
{
    kern_rng r;
    uint64_t h = 1469598103934665603ull;
    for (const char *p = uid; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    kern_rng_seed(&r, h);
    for (int i = 0; i < IN * OUT; i++) A[i] = kern_rng_normal(&r) * 0.5f;
}

/* expert_fwd_row is expert uid's output for one row (what the fake experts answer, row by row). */
static void expert_fwd_row(const char *uid, const float *x, float *o)
{
    float A[IN * OUT];
    expert_matrix(uid, A);
    for (int j = 0; j < OUT; j++) {
        float s = 0;
        for (int i = 0; i < IN; i++) s += x[i] * A[i * OUT + j];
        o[j] = tanhf(s);
    }
}

/* expert_bwd_row is expert uid's input gradient for one row x and output gradient g. */
static void expert_bwd_row(const char *uid, const float *x, const float *g, float *gx)
{
    float A[IN * OUT], d[OUT];
    expert_matrix(uid, A);
    for (int j = 0; j < OUT; j++) {
        float s = 0;
        for (int i = 0; i < IN; i++) s += x[i] * A[i * OUT + j];
        float t = tanhf(s);
        d[j] = g[j] * (1 - t * t);
    }
    for (int i = 0; i < IN; i++) {
        float s = 0;
        for (int j = 0; j < OUT; j++) s += d[j] * A[i * OUT + j];
        gx[i] = s;
    }
}

static void fire_call(evutil_socket_t fd, short what, void *arg)
{
    pending *p = arg;
    if (p->err) p->w->failed_in_search += p->w->succ_out > 0;
    p->cb(p->arg, p->err, p->err ? "no such expert" : "", p->err ? NULL : &p->out);
    free(p);
}

static int fake_call(void *impl, const char *uid, const wire_maddr *addr, const rx_tensor *in, int n_in,
                     const rx_tensor *gout, uint64_t timeout_ms, moe_call_cb cb, void *arg)
{
    world *w = impl;
    w->calls++;
    w->calls_in_search += w->succ_out > 0;
    if (w->succ_out > 0 && !gout && !w->first_in_search[0])
        snprintf(w->first_in_search, sizeof w->first_in_search, "%s", uid);
    pending *p = calloc(1, sizeof *p);
    cr_assert_not_null(p);
    p->w = w;
    p->cb = cb;
    p->arg = arg;
    struct timeval tv = { 0, 0 };
    if (!gout && strcmp(uid, w->failing) == 0) {
        w->failed++;
        p->err = DMOE_ENOEXPERT;
        event_base_once(rt_loop_base(w->l), -1, EV_TIMEOUT, fire_call, p, &tv);
        return 0;
    }
    int64_t rows = in[0].shape[0];
    const float *x = rx_tensor_f32(&in[0]);
    int64_t shape[2] = { rows, gout ? IN : OUT };
    cr_assert_eq(rx_tensor_alloc(&p->out, WIRE_DT_F32, 2, shape), 0);
    float *o = rx_tensor_f32(&p->out);
    for (int64_t r = 0; r < rows; r++) {
        if (gout) expert_bwd_row(uid, x + r * IN, rx_tensor_f32(gout) + r * OUT, o + r * IN);
        else expert_fwd_row(uid, x + r * IN, o + r * OUT);
    }
    event_base_once(rt_loop_base(w->l), -1, EV_TIMEOUT, fire_call, p, &tv);
    return 0;
}

static void fire_succ(evutil_socket_t fd, short what, void *arg)
{
    pending *p = arg;
    p->w->succ_out--;
    p->scb(p->arg, 0, "", p->per, p->n);
    free(p->items);
    free(p->per);
    free(p);
}

/* "expert.i." holds expert.i under FLAT_EXPERT when i is live; the other prefixes are empty. */
static int fake_succ(void *impl, const char *const *prefixes, size_t n, dht_successors_cb cb, void *arg)
{
    world *w = impl;
    w->succ_calls++;
    w->succ_out++;
    pending *p = calloc(1, sizeof *p);
    cr_assert_not_null(p);
    p->w = w;
    p->scb = cb;
    p->arg = arg;
    p->n = n;
    p->per = calloc(n, sizeof *p->per);
    p->items = calloc(n, sizeof *p->items);
    cr_assert(p->per && p->items);
    for (size_t i = 0; i < n; i++) {
        int c;
        if (sscanf(prefixes[i], "expert.%d.", &c) != 1) continue;
        for (int j = 0; j < NLIVE; j++)
            if (live[j] == c) {
                dht_successor *s = &p->items[i];
                s->coord = UID_FLAT_EXPERT;
                snprintf(s->uid, sizeof s->uid, "expert.%d", c);
                snprintf(s->addr.host, sizeof s->addr.host, "127.0.0.1");
                s->addr.port = 1;
                p->per[i].items = s;
                p->per[i].n = 1;
            }
    }
    struct timeval tv = { 0, w->succ_delay_us };
    event_base_once(rt_loop_base(w->l), -1, EV_TIMEOUT, fire_succ, p, &tv);
    return 0;
}

static void input(float *x, int64_t n, uint64_t seed, float scale)
{
    kern_rng r;
    kern_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) x[i] = kern_rng_normal(&r) * scale;
}

/* top_k writes the k live coordinates of sample scores s[G] best first (score, then uid in byte order). */
static void top_k(const float *s, int *best, int k)
{
    int idx[NLIVE];
    char uid[NLIVE][16];
    for (int j = 0; j < NLIVE; j++) {
        idx[j] = j;
        snprintf(uid[j], sizeof uid[j], "expert.%d", live[j]);
    }
    for (int a = 0; a < NLIVE; a++)
        for (int c = a + 1; c < NLIVE; c++) {
            float sa = s[live[idx[a]]], sc = s[live[idx[c]]];
            if (sc > sa || (sc == sa && strcmp(uid[idx[c]], uid[idx[a]]) < 0)) { int t = idx[a]; idx[a] = idx[c]; idx[c] = t; }
        }
    for (int j = 0; j < k; j++) best[j] = live[idx[j]];
}

Test(moe_waves, requests_leave_during_the_search_with_one_dispatchs_bits, .timeout = 30)
{
    world w = { .l = rt_loop_new() };
    moe_cfg c;
    moe_cfg_default(&c);
    c.in_features = IN;
    c.ndim = 1;
    c.grid_size[0] = G;
    c.k_best = K;
    c.retry_rounds = 0;   /* spares (k_best * (1 + retry_rounds) per sample) would outnumber the 6 live
                             experts: every sample's search would run to the end, one wave */
    c.seed = 17;
    c.forward_timeout = 20;
    c.backward_timeout = 20;
    moe_succ_provider sp = { &w, fake_succ };
    moe_caller cl = { &w, fake_call };
    moe_layer *m;
    char err[256];
    cr_assert_eq(moe_layer_new(w.l, &c, &sp, &cl, &m, err, sizeof err), 0, "%s", err);
    size_t np;
    float *P = moe_layer_params(m, &np);
    input(P, (int64_t)np, 5, 1.0f);   /* scores spread widely: where a sample's best live experts rank varies */
    static float x[B * IN], gy[B * OUT];
    input(x, B * IN, 1, 1.0f);
    input(gy, B * OUT, 2, 1.0f);

    moe_fwd *f;
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    const moe_fwd_stats *st = moe_fwd_stats_of(f);
    cr_assert_geq(st->beam_rounds, 2);
    cr_assert_geq(st->waves, 2, "every sample ended in the same round: the world does not test waves");
    cr_assert_gt(w.calls_in_search, 0, "no request left before the search's last round");
    cr_assert_eq(st->experts_chosen, NLIVE);
    cr_assert_eq(st->experts_answered, NLIVE);
    cr_assert_gt(w.calls, st->experts_chosen, "an expert of several waves gets a request in each");

    /* the reference: the one-shot dispatch's arithmetic on the exhaustive top-k */
    moe_grid g;
    int grid[1] = { G };
    moe_grid_init(&g, grid, 1);
    static float S[B * G], y[B * OUT], outs_buf[B * K * OUT], wts[B * K];
    moe_math_gating(&g, x, B, IN, P, P + (size_t)G * IN, NULL, S, NULL);
    int chosen[B][K];
    for (int64_t b = 0; b < B; b++) {
        top_k(S + b * G, chosen[b], K);
        int coords[K];
        uint8_t ok[K];
        const float *outs[K];
        for (int j = 0; j < K; j++) {
            char uid[16];
            snprintf(uid, sizeof uid, "expert.%d", chosen[b][j]);
            expert_fwd_row(uid, x + b * IN, outs_buf + (b * K + j) * OUT);
            coords[j] = chosen[b][j];
            ok[j] = 1;
            outs[j] = outs_buf + (b * K + j) * OUT;
        }
        cr_assert_eq(moe_math_weights(&g, S + b * G, NULL, K, coords, ok, wts + b * K), K);
        memset(y + b * OUT, 0, OUT * sizeof *y);
        moe_math_mix(K, wts + b * K, outs, OUT, NULL, y + b * OUT);
    }
    int64_t fb;
    int D;
    const float *out = moe_fwd_output(f, &fb, &D);
    cr_assert_eq(fb, B);
    cr_assert_eq(D, OUT);
    cr_assert_eq(memcmp(out, y, sizeof y), 0, "the output differs from the one-shot dispatch's");

    /* the backward: the experts' input gradients in order of first use, then the gating's */
    const float *gx;
    cr_assert_eq(moe_backward_run(m, f, gy, 0.0f, &gx, err, sizeof err), 0, "%s", err);
    int rank[G], nrank = 0;
    for (int t = 0; t < G; t++) rank[t] = -1;
    for (int64_t b = 0; b < B; b++)
        for (int j = 0; j < K; j++)
            if (rank[chosen[b][j]] < 0) rank[chosen[b][j]] = nrank++;
    static float rgx[B * IN], gS[B * G], gW[G * (IN + 1)], gxg[B * IN];
    memset(rgx, 0, sizeof rgx);
    memset(gS, 0, sizeof gS);
    for (int r = 0; r < nrank; r++)
        for (int64_t b = 0; b < B; b++)
            for (int j = 0; j < K; j++) {
                if (rank[chosen[b][j]] != r) continue;
                char uid[16];
                float gout[OUT], part[IN];
                snprintf(uid, sizeof uid, "expert.%d", chosen[b][j]);
                for (int d = 0; d < OUT; d++) gout[d] = wts[b * K + j] * gy[b * OUT + d];
                expert_bwd_row(uid, x + b * IN, gout, part);
                for (int i = 0; i < IN; i++) rgx[b * IN + i] += part[i];
            }
    for (int64_t b = 0; b < B; b++) {
        const float *outs[K];
        for (int j = 0; j < K; j++) outs[j] = outs_buf + (b * K + j) * OUT;
        moe_math_slot_grads(&g, gy + b * OUT, y + b * OUT, OUT, K, outs, wts + b * K, chosen[b], NULL, gS + b * G, NULL);
    }
    moe_math_gating_bwd(&g, x, gS, B, IN, P, NULL, gW, gW + (size_t)G * IN, rgx, gxg);
    cr_assert_eq(memcmp(gx, rgx, sizeof rgx), 0, "the input gradient differs from the one-shot dispatch's");
    cr_assert_eq(memcmp(moe_layer_grads(m, &np), gW, sizeof gW), 0, "the gating gradients differ");
    moe_fwd_free(f);
    moe_layer_free(m);
    rt_loop_free(w.l);
}

/* With retries on, a failing expert's rows go to each sample's spare as soon as its wave's answer says
 * so, while later waves are still searched; the retried requests get ranks like any (the backward runs
 * on them), and the output is the spare's, as if the failing expert had never been chosen. */
Test(moe_waves, a_failure_is_retried_on_spares_while_later_waves_are_searched, .timeout = 30)
{
    world w = { .l = rt_loop_new(), .succ_delay_us = 5000 };   /* a failure comes back before the next round */
    moe_cfg c;
    moe_cfg_default(&c);
    c.in_features = IN;
    c.ndim = 1;
    c.grid_size[0] = G;
    c.k_best = 1;
    c.k_min = 1;
    c.retry_rounds = 1;   /* a beam of 2 per sample: the search still ends samples in different rounds */
    c.seed = 17;
    c.forward_timeout = 20;
    c.backward_timeout = 20;
    moe_succ_provider sp = { &w, fake_succ };
    moe_caller cl = { &w, fake_call };
    moe_layer *m;
    char err[256];
    cr_assert_eq(moe_layer_new(w.l, &c, &sp, &cl, &m, err, sizeof err), 0, "%s", err);
    size_t np;
    float *P = moe_layer_params(m, &np);
    input(P, (int64_t)np, 5, 1.0f);
    static float x[B * IN], gy[B * OUT];
    input(x, B * IN, 1, 1.0f);
    input(gy, B * OUT, 2, 1.0f);

    /* the failing expert: the first one a forward calls during the search (the world is deterministic) */
    moe_fwd *f;
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    moe_fwd_free(f);
    cr_assert(w.first_in_search[0], "no request left during the search");
    snprintf(w.failing, sizeof w.failing, "%s", w.first_in_search);
    moe_grid g;
    int grid[1] = { G };
    moe_grid_init(&g, grid, 1);
    static float S[B * G];
    moe_math_gating(&g, x, B, IN, P, P + (size_t)G * IN, NULL, S, NULL);
    int best[B][2], bad = 0, rows = 0;
    cr_assert_eq(sscanf(w.failing, "expert.%d", &bad), 1);
    for (int64_t b = 0; b < B; b++) {
        top_k(S + b * G, best[b], 2);
        rows += best[b][0] == bad;
    }

    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    const moe_fwd_stats *st = moe_fwd_stats_of(f);
    cr_assert_geq(st->waves, 2, "every sample ended in the same round: the world does not test waves");
    cr_assert_gt(w.failed_in_search, 0, "no failure came back while later waves were searched");
    cr_assert_eq(st->rows_retried, rows, "every row of the failing expert goes to its sample's spare");
    cr_assert_eq(st->zero_rows, 0);
    int64_t fb;
    int D;
    const float *out = moe_fwd_output(f, &fb, &D);
    cr_assert_eq(D, OUT);
    for (int64_t b = 0; b < B; b++) {
        char uid[16];
        float want[OUT];
        snprintf(uid, sizeof uid, "expert.%d", best[b][best[b][0] == bad ? 1 : 0]);
        expert_fwd_row(uid, x + b * IN, want);
        for (int d = 0; d < OUT; d++)   /* one slot: softmax weight 1 */
            cr_assert_float_eq(out[b * OUT + d], want[d], 1e-6, "sample %lld", (long long)b);
    }
    const float *gx;
    cr_assert_eq(moe_backward_run(m, f, gy, 0.0f, &gx, err, sizeof err), 0, "%s", err);
    for (int64_t i = 0; i < B * IN; i++) cr_assert(isfinite(gx[i]));
    moe_fwd_free(f);
    moe_layer_free(m);
    rt_loop_free(w.l);
}
