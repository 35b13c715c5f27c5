/* test_moe_retry.c -- the MoE layer's retries within one forward (moe_call.c, "Retries"), with fake
 * experts behind the caller port and a table of declarations behind the successors port: a 4 x 2 grid
 * whose row i lives on peer 127.0.0.1:(i+1), two experts per peer.
 *
 * A peer that refuses every call, or one that stalls (answers nothing until the call's own timeout),
 * costs the forward nothing: each row of its experts goes to the sample's next-best expert on a live
 * peer, within the same forward, and the output is exactly what a layer that never saw that peer
 * computes (the softmax over each sample's best k_best live experts). The stats count the retries and
 * the peer found down; the refusing peer gets only the calls that were in flight to it.
 */
#include <criterion/criterion.h>
#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/moe/moe.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"

#define IN 6
#define OUT 4
#define ROWS 4
#define COLS 2

typedef struct {
    rt_loop *l;
    int bad_port;        /* the peer that misbehaves (0: none) */
    int stall;           /* it stalls instead of refusing */
    int bad_calls, calls, outstanding;
} world;

typedef struct {
    world *w;
    moe_call_cb cb;
    void *arg;
    int err;
    rx_tensor out;
    dht_successors_cb scb;
    dht_successor *items;
    dht_successors *per;
    size_t n;
} pending;

static void expert_matrix(const char *uid, float *A)
{
    kern_rng r;
    uint64_t h = 1469598103934665603ull;
    for (const char *p = uid; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    kern_rng_seed(&r, h);
    for (int i = 0; i < IN * OUT; i++) A[i] = kern_rng_normal(&r) * 0.5f;
}

static void fire_call(evutil_socket_t fd, short what, void *arg)
{
    pending *p = arg;
    p->w->outstanding--;
    p->cb(p->arg, p->err, p->err ? "fake failure" : "", p->err ? NULL : &p->out);
    free(p);
}

/* The expert answers tanh(x A_uid); the bad peer refuses at once or answers "timed out" at the call's
 * timeout (at most 2 s, so the test does not wait for long). */
static int fake_call(void *impl, const char *uid, const wire_maddr *addr, const rx_tensor *in, int n_in,
                     const rx_tensor *gout, uint64_t timeout_ms, moe_call_cb cb, void *arg)
{
    world *w = impl;
    pending *p = calloc(1, sizeof *p);
    cr_assert_not_null(p);
    *p = (pending){ .w = w, .cb = cb, .arg = arg };
    struct timeval tv = { 0, 0 };
    w->calls++;
    if (addr->port == w->bad_port) {
        w->bad_calls++;
        p->err = w->stall ? DMOE_ETIMEDOUT : DMOE_ECONN;
        uint64_t ms = w->stall ? (timeout_ms < 2000 ? timeout_ms : 2000) : 0;
        tv.tv_sec = (time_t)(ms / 1000);
        tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    } else {
        const rx_tensor *x = &in[0];
        int64_t B = x->shape[0], shape[2] = { B, gout ? IN : OUT };
        float A[IN * OUT];
        expert_matrix(uid, A);
        rx_tensor_alloc(&p->out, WIRE_DT_F32, 2, shape);
        const float *xf = rx_tensor_f32(x);
        float *o = rx_tensor_f32(&p->out);
        for (int64_t b = 0; b < B; b++)
            for (int j = 0; j < shape[1]; j++) {
                float s = 0;
                for (int i = 0; i < IN && !gout; i++) s += xf[b * IN + i] * A[i * OUT + j];
                o[b * shape[1] + j] = gout ? 0.0f : tanhf(s);   /* backward: not under test here */
            }
    }
    w->outstanding++;
    event_base_once(rt_loop_base(w->l), -1, EV_TIMEOUT, fire_call, p, &tv);
    return 0;
}

static void fire_succ(evutil_socket_t fd, short what, void *arg)
{
    pending *p = arg;
    p->scb(p->arg, 0, "", p->per, p->n);
    free(p->items);
    free(p->per);
    free(p);
}

/* The successors of "expert.i." are expert.i.0 and expert.i.1 at 127.0.0.1:(i+1); a world whose
 * bad_port is negative leaves out the peer -bad_port (the reference: that peer never existed). */
static int fake_succ(void *impl, const char *const *prefixes, size_t n, dht_successors_cb cb, void *arg)
{
    world *w = impl;
    pending *p = calloc(1, sizeof *p);
    cr_assert_not_null(p);
    p->scb = cb;
    p->arg = arg;
    p->n = n;
    p->w = w;
    p->per = calloc(n, sizeof *p->per);
    p->items = calloc(n * COLS, sizeof *p->items);
    for (size_t i = 0; i < n; i++) {
        int row;
        if (sscanf(prefixes[i], "expert.%d.", &row) != 1 || row < 0 || row >= ROWS || row + 1 == -w->bad_port) continue;
        for (int c = 0; c < COLS; c++) {
            dht_successor *s = &p->items[i * COLS + c];
            s->coord = c;
            snprintf(s->uid, sizeof s->uid, "expert.%d.%d", row, c);
            snprintf(s->addr.host, sizeof s->addr.host, "127.0.0.1");
            s->addr.port = (uint16_t)(row + 1);
        }
        p->per[i].items = &p->items[i * COLS];
        p->per[i].n = COLS;
    }
    struct timeval tv = { 0, 0 };
    event_base_once(rt_loop_base(w->l), -1, EV_TIMEOUT, fire_succ, p, &tv);
    return 0;
}

static moe_layer *make_layer(world *w, int retry_rounds)
{
    moe_cfg c;
    moe_cfg_default(&c);
    c.in_features = IN;
    c.ndim = 2;
    c.grid_size[0] = ROWS;
    c.grid_size[1] = COLS;
    c.k_best = 2;
    c.seed = 7;
    c.forward_timeout = 10;
    c.retry_rounds = retry_rounds;
    moe_succ_provider sp = { w, fake_succ };
    moe_caller cl = { w, fake_call };
    moe_layer *m;
    char err[256];
    cr_assert_eq(moe_layer_new(w->l, &c, &sp, &cl, &m, err, sizeof err), 0, "%s", err);
    return m;
}

/* The peer (row) hosting the best expert of sample 0, for the world as it is now. */
static int busiest_peer(world *w, const float *x, int64_t B)
{
    moe_layer *m = make_layer(w, 0);
    moe_fwd *f;
    char err[256];
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    int best = -1;
    float bw = 0;
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < COLS; c++) {
            char uid[32];
            snprintf(uid, sizeof uid, "expert.%d.%d", r, c);
            if (moe_fwd_expert_weight(f, 0, uid) > bw) { bw = moe_fwd_expert_weight(f, 0, uid); best = r; }
        }
    moe_fwd_free(f);
    moe_layer_free(m);
    cr_assert_geq(best, 0);
    return best + 1;
}

static void check_survives(int stall)
{
    world w = { .l = rt_loop_new() };
    const int64_t B = 24;
    float x[B * IN];
    kern_rng r;
    kern_rng_seed(&r, 11);
    for (int i = 0; i < B * IN; i++) x[i] = kern_rng_normal(&r);
    int port = busiest_peer(&w, x, B);

    /* the reference: a layer that never saw the peer */
    w.bad_port = -port;
    moe_layer *ref = make_layer(&w, 0);
    moe_fwd *fr;
    char err[256];
    cr_assert_eq(moe_forward_run(ref, x, B, &fr, err, sizeof err), 0, "%s", err);

    /* the peer is declared, chosen, and then refuses or stalls */
    w.bad_port = port;
    w.stall = stall;
    w.calls = w.bad_calls = 0;
    moe_layer *m = make_layer(&w, MOE_RETRY_ROUNDS);
    moe_fwd *f;
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    const moe_fwd_stats *st = moe_fwd_stats_of(f);
    cr_assert_gt(w.bad_calls, 0, "the bad peer was never chosen");
    cr_assert_leq(w.bad_calls, COLS, "the bad peer got more than the calls in flight to it");
    cr_assert_gt(st->experts_retried, 0);
    cr_assert_gt(st->rows_retried, 0);
    cr_assert_eq(st->peers_down, 1);
    cr_assert_eq(st->zero_rows, 0);
    int D;
    const float *y = moe_fwd_output(f, NULL, &D), *yr = moe_fwd_output(fr, NULL, NULL);
    cr_assert_eq(D, OUT);
    for (int64_t b = 0; b < B; b++) {
        int answered = 0;
        for (int row = 0; row < ROWS; row++)
            for (int c = 0; c < COLS; c++) {
                char uid[32];
                snprintf(uid, sizeof uid, "expert.%d.%d", row, c);
                float wt = moe_fwd_expert_weight(f, b, uid);
                answered += wt > 0;
                if (row + 1 == port) cr_assert_eq(wt, 0.0f, "sample %lld kept weight on %s", (long long)b, uid);
                cr_assert_float_eq(wt, moe_fwd_expert_weight(fr, b, uid), 1e-5, "sample %lld, %s", (long long)b, uid);
            }
        cr_assert_eq(answered, 2, "sample %lld has %d experts, not k_best", (long long)b, answered);
        for (int o = 0; o < OUT; o++)
            cr_assert_float_eq(y[b * OUT + o], yr[b * OUT + o], 1e-5, "sample %lld output %d", (long long)b, o);
    }
    cr_assert_lt(st->total_ms, 5000, "the forward waited for the stalled peer");   /* timeout 10 s, stall 2 s */
    cr_log_info("%s peer: %d calls to it, %d retries carrying %lld rows, forward %.1f ms (search %.1f, dispatch %.1f, "
                "wait %.1f)", stall ? "stalled" : "refusing", w.bad_calls, st->experts_retried, (long long)st->rows_retried,
                st->total_ms, st->search_ms, st->dispatch_ms, st->wait_ms);
    moe_fwd_free(f);
    moe_fwd_free(fr);
    while (w.outstanding > 0) rt_loop_run(w.l);   /* the stalled calls come back; their ops free themselves */
    moe_layer_free(m);
    moe_layer_free(ref);
    rt_loop_free(w.l);
}

Test(moe_retry, refusing_peer_rows_go_to_the_next_best_live_experts, .timeout = 30)
{
    check_survives(0);
}

Test(moe_retry, stalled_peer_is_hedged_within_the_forward, .timeout = 30)
{
    check_survives(1);
}

Test(moe_retry, without_retries_the_rows_are_only_masked, .timeout = 30)
{
    world w = { .l = rt_loop_new() };
    const int64_t B = 24;
    float x[B * IN];
    kern_rng r;
    kern_rng_seed(&r, 11);
    for (int i = 0; i < B * IN; i++) x[i] = kern_rng_normal(&r);
    w.bad_port = busiest_peer(&w, x, B);
    moe_layer *m = make_layer(&w, 0);
    moe_fwd *f;
    char err[256];
    int rc = moe_forward_run(m, x, B, &f, err, sizeof err);
    if (rc == 0) {   /* every sample kept one live expert: masked, none retried */
        cr_assert_eq(moe_fwd_stats_of(f)->experts_retried, 0);
        moe_fwd_free(f);
    } else {
        cr_assert(strstr(err, "no expert answered") != NULL, "%s", err);
    }
    while (w.outstanding > 0) rt_loop_run(w.l);
    moe_layer_free(m);
    rt_loop_free(w.l);
}
