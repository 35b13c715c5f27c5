/* test_moe_math.c -- the MoE layer's math with local fake experts behind the same dispatch interface
 * (moe_caller) and a table of declarations as the successors provider: the softmax-weighted output,
 * masking of failed and non-finite answers, allow_zero_outputs (zeros, never NaN), the straggler cut-off,
 * the backward (input and gating gradients, plain and switch) against central finite differences, and
 * extra inputs (moe_forward_ex) reaching every expert row-aligned with x, forward and backward. */
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
#define OUT 5
#define G0 3
#define G1 3

/* ---- fake world: every expert of a G0 x G1 grid; o = tanh(x A_e), A_e seeded by the uid ---- */

typedef struct {
    rt_loop *l;
    const char *fail, *nan, *hang;   /* uids that fail / answer NaN / never answer (until the timeout) */
    int calls, outstanding;
    const float *xall;               /* extra-input check: in[1] row r is uint8 sample index of x's row r */
    int extra_calls[2], extra_bad;   /* calls with 2 inputs, forward and backward; rows that disagreed */
} world;

typedef struct {
    world *w;
    moe_call_cb cb;
    void *arg;
    int err;
    rx_tensor out;
    const char *const *prefixes;
    size_t n;
    dht_successors_cb scb;
    dht_successor *items;
    dht_successors *per;
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
    if (p->err == DMOE_ETIMEDOUT) p->w->outstanding--;
    p->cb(p->arg, p->err, p->err ? "fake failure" : "", p->err ? NULL : &p->out);
    free(p);
}

static int fake_call(void *impl, const char *uid, const wire_maddr *addr, const rx_tensor *in, int n_in,
                     const rx_tensor *gout, uint64_t timeout_ms, moe_call_cb cb, void *arg)
{
    world *w = impl;
    const rx_tensor *x = &in[0];
    if (n_in > 1) {
        w->extra_calls[gout != NULL]++;
        const rx_tensor *e = &in[1];
        if (n_in != 2 || !w->xall || e->dtype != WIRE_DT_U8 || e->ndim != 2 || e->shape[0] != x->shape[0] || e->shape[1] != 1)
            w->extra_bad++;
        else
            for (int64_t r = 0; r < x->shape[0]; r++)
                w->extra_bad += memcmp(rx_tensor_f32(x) + r * IN, w->xall + e->buf->data[r] * IN, IN * sizeof(float)) != 0;
    }
    w->calls++;
    pending *p = calloc(1, sizeof *p);
    p->w = w;
    p->cb = cb;
    p->arg = arg;
    struct timeval tv = { 0, 0 };
    int64_t B = x->shape[0];
    float A[IN * OUT];
    expert_matrix(uid, A);
    const float *xf = rx_tensor_f32(x);
    if (w->fail && strcmp(uid, w->fail) == 0) {
        p->err = DMOE_ECONN;
    } else if (w->hang && strcmp(uid, w->hang) == 0) {
        p->err = DMOE_ETIMEDOUT;   /* answers after a second: far beyond timeout_after_k_min */
        uint64_t ms = timeout_ms < 1000 ? timeout_ms : 1000;
        tv.tv_sec = (time_t)(ms / 1000);
        tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
        w->outstanding++;
    } else if (!gout) {
        int64_t shape[2] = { B, OUT };
        rx_tensor_alloc(&p->out, WIRE_DT_F32, 2, shape);
        float *o = rx_tensor_f32(&p->out);
        for (int64_t b = 0; b < B; b++)
            for (int j = 0; j < OUT; j++) {
                float s = 0;
                for (int i = 0; i < IN; i++) s += xf[b * IN + i] * A[i * OUT + j];
                o[b * OUT + j] = w->nan && strcmp(uid, w->nan) == 0 ? NAN : tanhf(s);
            }
    } else {
        int64_t shape[2] = { B, IN };
        rx_tensor_alloc(&p->out, WIRE_DT_F32, 2, shape);
        float *gx = rx_tensor_f32(&p->out);
        const float *g = rx_tensor_f32(gout);
        for (int64_t b = 0; b < B; b++) {
            float d[OUT];
            for (int j = 0; j < OUT; j++) {
                float s = 0;
                for (int i = 0; i < IN; i++) s += xf[b * IN + i] * A[i * OUT + j];
                float t = tanhf(s);
                d[j] = g[b * OUT + j] * (1 - t * t);
            }
            for (int i = 0; i < IN; i++) {
                float s = 0;
                for (int j = 0; j < OUT; j++) s += d[j] * A[i * OUT + j];
                gx[b * IN + i] = s;
            }
        }
    }
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

/* The successors of "expert.i." are expert.i.0 .. expert.i.(G1-1); "expert." has none of its own. */
static int fake_succ(void *impl, const char *const *prefixes, size_t n, dht_successors_cb cb, void *arg)
{
    world *w = impl;
    pending *p = calloc(1, sizeof *p);
    p->scb = cb;
    p->arg = arg;
    p->n = n;
    p->per = calloc(n, sizeof *p->per);
    p->items = calloc(n * G1, sizeof *p->items);
    for (size_t i = 0; i < n; i++) {
        int row;
        if (sscanf(prefixes[i], "expert.%d.", &row) != 1 || row < 0 || row >= G0) continue;
        for (int c = 0; c < G1; c++) {
            dht_successor *s = &p->items[i * G1 + c];
            s->coord = c;
            snprintf(s->uid, sizeof s->uid, "expert.%d.%d", row, c);
            snprintf(s->addr.host, sizeof s->addr.host, "127.0.0.1");
            s->addr.port = 1;
        }
        p->per[i].items = &p->items[i * G1];
        p->per[i].n = G1;
    }
    struct timeval tv = { 0, 0 };
    event_base_once(rt_loop_base(w->l), -1, EV_TIMEOUT, fire_succ, p, &tv);
    return 0;
}

static moe_layer *make_layer(world *w, int k_best, int is_switch, moe_cfg *out_cfg)
{
    moe_cfg c;
    moe_cfg_default(&c);
    c.in_features = IN;
    c.ndim = 2;
    c.grid_size[0] = G0;
    c.grid_size[1] = G1;
    c.k_best = k_best;
    c.seed = 3;
    c.forward_timeout = 20;
    c.backward_timeout = 20;
    c.is_switch = is_switch;
    c.jitter_eps = 0;   /* deterministic for finite differences */
    if (out_cfg) {
        c.detect_anomalies = out_cfg->detect_anomalies;
        c.allow_zero_outputs = out_cfg->allow_zero_outputs;
        c.timeout_after_k_min = out_cfg->timeout_after_k_min;
        c.out_features = out_cfg->out_features;
    }
    moe_succ_provider sp = { w, fake_succ };
    moe_caller cl = { w, fake_call };
    moe_layer *m;
    char err[256];
    cr_assert_eq(moe_layer_new(w->l, &c, &sp, &cl, &m, err, sizeof err), 0, "%s", err);
    return m;
}

static void input(float *x, int64_t n, uint64_t seed)
{
    kern_rng r;
    kern_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) x[i] = kern_rng_normal(&r);
}

/* expected output of sample b of x, given the layer's weights, the k_best chosen experts, and which
 * uids answer. */
static void expected(moe_layer *m, const float *xb, int k, const char *dead1, const char *dead2, float *y)
{
    size_t np;
    const float *P = moe_layer_params(m, &np), *bias = P + (G0 + G1) * IN;
    float S[G0 + G1];
    for (int t = 0; t < G0 + G1; t++) {
        S[t] = bias[t];
        for (int i = 0; i < IN; i++) S[t] += xb[i] * P[t * IN + i];
    }
    /* exhaustive top-k of the (dense) grid */
    float sc[G0 * G1];
    int idx[G0 * G1];
    for (int a = 0; a < G0; a++)
        for (int c = 0; c < G1; c++) { sc[a * G1 + c] = S[a] + S[G0 + c]; idx[a * G1 + c] = a * G1 + c; }
    for (int i = 0; i < G0 * G1; i++)
        for (int j = i + 1; j < G0 * G1; j++)
            if (sc[idx[j]] > sc[idx[i]]) { int t = idx[i]; idx[i] = idx[j]; idx[j] = t; }
    double z = 0, mx = -INFINITY;
    float outs[16][OUT], lg[16];
    int alive[16];
    for (int j = 0; j < k; j++) {
        char uid[32];
        snprintf(uid, sizeof uid, "expert.%d.%d", idx[j] / G1, idx[j] % G1);
        alive[j] = !(dead1 && !strcmp(uid, dead1)) && !(dead2 && !strcmp(uid, dead2));
        lg[j] = sc[idx[j]];
        float A[IN * OUT];
        expert_matrix(uid, A);
        for (int o = 0; o < OUT; o++) {
            float s = 0;
            for (int i = 0; i < IN; i++) s += xb[i] * A[i * OUT + o];
            outs[j][o] = tanhf(s);
        }
        if (alive[j] && lg[j] > mx) mx = lg[j];
    }
    for (int j = 0; j < k; j++) if (alive[j]) z += exp(lg[j] - mx);
    for (int o = 0; o < OUT; o++) {
        double s = 0;
        for (int j = 0; j < k; j++) if (alive[j]) s += exp(lg[j] - mx) / z * outs[j][o];
        y[o] = (float)s;
    }
}

Test(moe_math, output_is_softmax_over_answering_experts, .timeout = 20)
{
    world w = { .l = rt_loop_new() };
    moe_layer *m = make_layer(&w, 3, 0, NULL);
    const int64_t B = 16;
    float x[B * IN], y[OUT];
    input(x, B * IN, 1);
    moe_fwd *f;
    char err[256];
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    int64_t fb;
    int D;
    const float *out = moe_fwd_output(f, &fb, &D);
    cr_assert_eq(fb, B);
    cr_assert_eq(D, OUT);
    for (int64_t b = 0; b < B; b++) {
        expected(m, x + b * IN, 3, NULL, NULL, y);
        for (int o = 0; o < OUT; o++) cr_assert_float_eq(out[b * OUT + o], y[o], 1e-5, "b %lld o %d", (long long)b, o);
    }
    /* one request per expert, not per (sample, expert) */
    cr_assert_leq(w.calls, G0 * G1);
    cr_assert_eq(moe_fwd_stats_of(f)->experts_answered, moe_fwd_stats_of(f)->experts_chosen);
    moe_fwd_free(f);

    /* a failing expert and a NaN expert (detect_anomalies) are masked out: softmax over the others */
    moe_layer_free(m);
    moe_cfg c;
    memset(&c, 0, sizeof c);
    c.detect_anomalies = 1;
    c.timeout_after_k_min = -1;
    m = make_layer(&w, 3, 0, &c);
    w.fail = "expert.0.0";
    w.nan = "expert.1.1";
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    out = moe_fwd_output(f, &fb, &D);
    for (int64_t b = 0; b < B; b++) {
        expected(m, x + b * IN, 3, "expert.0.0", "expert.1.1", y);
        for (int o = 0; o < OUT; o++) {
            cr_assert(isfinite(out[b * OUT + o]));
            cr_assert_float_eq(out[b * OUT + o], y[o], 1e-5);
        }
        cr_assert_eq(moe_fwd_expert_weight(f, b, "expert.0.0"), 0);
        cr_assert_eq(moe_fwd_expert_weight(f, b, "expert.1.1"), 0);
    }
    moe_fwd_free(f);
    moe_layer_free(m);
    rt_loop_free(w.l);
}

Test(moe_math, nobody_answers_error_or_zeros, .timeout = 20)
{
    world w = { .l = rt_loop_new() };
    moe_cfg c;
    memset(&c, 0, sizeof c);
    c.timeout_after_k_min = -1;
    moe_layer *m = make_layer(&w, 1, 0, &c);
    const int64_t B = 8;
    float x[B * IN];
    input(x, B * IN, 2);
    /* the best expert of sample 0 fails: with k_best 1 that sample has no answer */
    moe_fwd *f;
    char err[256];
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    size_t np;
    (void)moe_layer_params(m, &np);
    char best[UID_MAX_LEN + 1] = "";
    for (int a = 0; a < G0 && !best[0]; a++)
        for (int b = 0; b < G1; b++) {
            char uid[32];
            snprintf(uid, sizeof uid, "expert.%d.%d", a, b);
            if (moe_fwd_expert_weight(f, 0, uid) > 0) snprintf(best, sizeof best, "%s", uid);
        }
    cr_assert(best[0]);
    moe_fwd_free(f);
    w.fail = best;
    int rc = moe_forward_run(m, x, B, &f, err, sizeof err);
    cr_assert_neq(rc, 0);
    cr_assert(strstr(err, "no expert answered") != NULL, "%s", err);
    moe_layer_free(m);

    c.allow_zero_outputs = 1;
    m = make_layer(&w, 1, 0, &c);
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    int64_t fb;
    int D;
    const float *out = moe_fwd_output(f, &fb, &D);
    for (int o = 0; o < D; o++) cr_assert_eq(out[o], 0.0f);
    cr_assert_geq(moe_fwd_stats_of(f)->zero_rows, 1);
    /* the backward of a zero row is zero, never NaN */
    float gy[B * OUT];
    for (int i = 0; i < B * OUT; i++) gy[i] = 1;
    const float *gx;
    cr_assert_eq(moe_backward_run(m, f, gy, 0, &gx, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < B * IN; i++) cr_assert(isfinite(gx[i]));
    for (int i = 0; i < IN; i++) cr_assert_eq(gx[i], 0.0f);
    moe_fwd_free(f);
    moe_layer_free(m);

    rt_loop_free(w.l);
}

Test(moe_math, stragglers_cut_off_after_k_min, .timeout = 20)
{
    world w = { .l = rt_loop_new() };
    moe_cfg c;
    memset(&c, 0, sizeof c);
    c.timeout_after_k_min = 0.05;
    moe_layer *m = make_layer(&w, 2, 0, &c);
    const int64_t B = 4;
    float x[B * IN], y[OUT];
    input(x, B * IN, 4);
    moe_fwd *f;
    char err[256];
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0);
    /* hang one expert of sample 0: each forward must end while that call is still out */
    char hung[32] = "";
    for (int a = 0; a < G0 && !hung[0]; a++)
        for (int b = 0; b < G1 && !hung[0]; b++) {
            snprintf(hung, sizeof hung, "expert.%d.%d", a, b);
            if (moe_fwd_expert_weight(f, 0, hung) == 0) hung[0] = '\0';
        }
    moe_fwd_free(f);
    w.hang = hung;
    for (int rep = 0; rep < 2; rep++) {
        cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
        cr_assert_eq(w.outstanding, 1, "the forward waited for the hanging expert");
        cr_assert_eq(moe_fwd_expert_weight(f, 0, hung), 0);
        const float *out = moe_fwd_output(f, NULL, NULL);
        expected(m, x, 2, hung, NULL, y);
        for (int o = 0; o < OUT; o++) cr_assert_float_eq(out[o], y[o], 1e-5);
        moe_fwd_free(f);
        while (w.outstanding > 0) rt_loop_run(w.l);   /* the abandoned call comes back; the op frees itself */
    }
    moe_layer_free(m);
    rt_loop_free(w.l);
}

/* loss = sum(y * R) (+ balance * balancing loss); returns it through a forward. */
static double loss_of(moe_layer *m, const float *x, int64_t B, const float *R, float balance)
{
    moe_fwd *f;
    char err[256];
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    int D;
    const float *y = moe_fwd_output(f, NULL, &D);
    double l = 0;
    for (int64_t i = 0; i < B * D; i++) l += (double)y[i] * R[i];
    l += balance * moe_fwd_balancing_loss(f);
    moe_fwd_free(f);
    return l;
}

static void check_gradients(int is_switch)
{
    world w = { .l = rt_loop_new() };
    moe_layer *m = make_layer(&w, 3, is_switch, NULL);
    const int64_t B = 5;
    const int D = OUT;
    float x[B * IN], R[B * IN > B * OUT ? B * IN : B * OUT];
    input(x, B * IN, 10);
    input(R, B * D, 11);
    const float balance = is_switch ? 0.5f : 0.0f;
    float *util0 = malloc((G0 + G1) * sizeof *util0);
    memcpy(util0, moe_layer_utilization(m), (G0 + G1) * sizeof *util0);   /* every forward starts here */
    moe_fwd *f;
    char err[256];
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    const float *gxp;
    cr_assert_eq(moe_backward_run(m, f, R, balance, &gxp, err, sizeof err), 0, "%s", err);
    float gx[B * IN];
    memcpy(gx, gxp, sizeof gx);
    size_t np;
    float *P = moe_layer_params(m, &np);
    float *G = malloc(np * sizeof *G);
    memcpy(G, moe_layer_grads(m, &np), np * sizeof *G);
    moe_fwd_free(f);
    const float eps = 1e-2f;
    memcpy((float *)moe_layer_utilization(m), util0, (G0 + G1) * sizeof *util0);
    for (int i = 0; i < B * IN; i++) {
        float keep = x[i];
        x[i] = keep + eps;
        double lp = loss_of(m, x, B, R, balance);
        memcpy((float *)moe_layer_utilization(m), util0, (G0 + G1) * sizeof *util0);
        x[i] = keep - eps;
        double lm = loss_of(m, x, B, R, balance);
        x[i] = keep;
        memcpy((float *)moe_layer_utilization(m), util0, (G0 + G1) * sizeof *util0);
        double fd = (lp - lm) / (2 * eps);
        cr_assert(fabs(fd - gx[i]) < 2e-3 + 2e-2 * fabs(fd), "switch %d dx[%d]: analytic %g, numeric %g", is_switch, i, gx[i], fd);
    }
    for (size_t i = 0; i < np; i++) {
        float keep = P[i];
        P[i] = keep + eps;
        double lp = loss_of(m, x, B, R, balance);
        memcpy((float *)moe_layer_utilization(m), util0, (G0 + G1) * sizeof *util0);
        P[i] = keep - eps;
        double lm = loss_of(m, x, B, R, balance);
        P[i] = keep;
        memcpy((float *)moe_layer_utilization(m), util0, (G0 + G1) * sizeof *util0);
        double fd = (lp - lm) / (2 * eps);
        cr_assert(fabs(fd - G[i]) < 2e-3 + 2e-2 * fabs(fd), "switch %d dgate[%zu]: analytic %g, numeric %g", is_switch, i, G[i], fd);
    }
    free(util0);
    free(G);
    moe_layer_free(m);
    rt_loop_free(w.l);
}

Test(moe_math, backward_matches_finite_differences, .timeout = 60)
{
    check_gradients(0);
}

Test(moe_math, switch_backward_matches_finite_differences, .timeout = 60)
{
    check_gradients(1);
}

Test(moe_math, switch_utilization_and_input_untouched, .timeout = 20)
{
    world w = { .l = rt_loop_new() };
    moe_cfg c;
    memset(&c, 0, sizeof c);
    c.timeout_after_k_min = -1;
    moe_layer *m = make_layer(&w, 1, 1, &c);
    const int64_t B = 32;
    float x[B * IN], x0[B * IN];
    input(x, B * IN, 20);
    memcpy(x0, x, sizeof x);
    const float *u = moe_layer_utilization(m);
    for (int i = 0; i < G0; i++) cr_assert_float_eq(u[i], 1.0f / G0, 1e-7);
    moe_fwd *f;
    char err[256];
    cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
    cr_assert_eq(memcmp(x, x0, sizeof x), 0);   /* jitter goes to a copy */
    double s0 = 0, s1 = 0;
    for (int i = 0; i < G0; i++) s0 += u[i];
    for (int i = 0; i < G1; i++) s1 += u[G0 + i];
    cr_assert_float_eq(s0, 1.0, 1e-5);
    cr_assert_float_eq(s1, 1.0, 1e-5);
    cr_assert_gt(moe_fwd_balancing_loss(f), 0);
    moe_fwd_free(f);
    moe_layer_free(m);
    rt_loop_free(w.l);
}

Test(moe_math, extra_inputs_follow_their_rows_forward_and_backward, .timeout = 20)
{
    world w = { .l = rt_loop_new() };
    moe_layer *m = make_layer(&w, 3, 0, NULL);
    const int64_t B = 16;
    float x[B * IN], y[OUT], gy[B * OUT];
    input(x, B * IN, 4);
    input(gy, B * OUT, 5);
    w.xall = x;
    rx_tensor ex;
    int64_t shape[2] = { B, 1 };
    cr_assert_eq(rx_tensor_alloc(&ex, WIRE_DT_U8, 2, shape), 0);
    for (int64_t b = 0; b < B; b++) ex.buf->data[b] = (uint8_t)b;
    moe_fwd *f;
    char err[256];
    cr_assert_eq(moe_forward_run_ex(m, x, B, &ex, 1, &f, err, sizeof err), 0, "%s", err);
    const float *out = moe_fwd_output(f, NULL, NULL);
    for (int64_t b = 0; b < B; b++) {
        expected(m, x + b * IN, 3, NULL, NULL, y);
        for (int o = 0; o < OUT; o++) cr_assert_float_eq(out[b * OUT + o], y[o], 1e-5);
    }
    cr_assert_eq(w.extra_calls[0], w.calls);
    const float *gx;
    cr_assert_eq(moe_backward_run(m, f, gy, 0, &gx, err, sizeof err), 0, "%s", err);
    cr_assert_eq(w.extra_calls[1], moe_fwd_stats_of(f)->experts_answered);
    cr_assert_eq(w.extra_bad, 0);
    moe_fwd_free(f);

    /* a bad extra input is refused before anything starts */
    rx_tensor bad;
    int64_t short_shape[2] = { B - 1, 1 };
    cr_assert_eq(rx_tensor_alloc(&bad, WIRE_DT_U8, 2, short_shape), 0);
    cr_assert_eq(moe_forward_ex(m, x, B, &bad, 1, NULL, NULL), DMOE_EINVAL);
    cr_assert_eq(moe_forward_ex(m, x, B, &ex, KERN_MAX_IO, NULL, NULL), DMOE_EINVAL);
    rx_tensor_free(&bad);
    rx_tensor_free(&ex);
    moe_layer_free(m);
    rt_loop_free(w.l);
}
