/* test_moe_math.c -- the MoE layer's math. First the pure functions of moe_math.h on small hand-made
 * buffers (gating with dropout, mixing weights, the output, utilisation and balancing loss, and their
 * gradients against central finite differences). Then the whole layer with local fake experts behind
 * the same dispatch interface (moe_caller) and a table of declarations as the successors provider: the
 * softmax-weighted output, masking of failed and non-finite answers, allow_zero_outputs (zeros, never
 * NaN), the straggler cut-off, the backward (input and gating gradients, plain and switch) against
 * central finite differences, extra inputs (moe_forward_ex) reaching every expert row-aligned with x,
 * and a shared worker pool giving the same bits as the layer's own. */
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

#define IN 6
#define OUT 5
#define G0 3
#define G1 3

/* ---- the pure functions ---- */

/* a 2-d grid of 3 x 2 (5 gating columns), two slots: (0, 1) and (2, 0) */
static const int mgrid[2] = { 3, 2 };
static const int mcoords[4] = { 0, 1, 2, 0 };

Test(moe_math, gating_scores_dropout_and_softmax)
{
    moe_grid g;
    moe_grid_init(&g, mgrid, 2);
    cr_assert_eq(g.total, 5);
    cr_assert_eq(g.off[1], 3);
    /* in 2, B 2: W rows (1, 0), (0, 1), (1, 1), (2, 0), (0, -1); b = 0.5 each */
    const float W[10] = { 1, 0, 0, 1, 1, 1, 2, 0, 0, -1 }, b[5] = { 0.5f, 0.5f, 0.5f, 0.5f, 0.5f };
    const float x[4] = { 1, 2, -1, 3 };
    float S[10], P[10];
    moe_math_gating(&g, x, 2, 2, W, b, NULL, S, NULL);
    const float want[10] = { 1.5f, 2.5f, 3.5f, 2.5f, -1.5f, -0.5f, 3.5f, 2.5f, -1.5f, -2.5f };
    for (int i = 0; i < 10; i++) cr_assert_float_eq(S[i], want[i], 1e-6, "S[%d]", i);
    /* switch: column 1 dropped; the second dimension loses both columns */
    const uint8_t keep[5] = { 1, 0, 1, 0, 0 };
    moe_math_gating(&g, x, 2, 2, W, b, keep, S, P);
    for (int r = 0; r < 2; r++) {
        float *s = S + r * 5, *p = P + r * 5;
        cr_assert(isinf(s[1]) && s[1] < 0);
        cr_assert_eq(p[1], 0.0f);
        double e0 = exp(s[0]), e2 = exp(s[2]);
        cr_assert_float_eq(p[0], e0 / (e0 + e2), 1e-6);
        cr_assert_float_eq(p[2], e2 / (e0 + e2), 1e-6);
        cr_assert_eq(p[3], 0.0f);
        cr_assert_eq(p[4], 0.0f);
    }
    /* without a mask every dimension sums to 1 */
    moe_math_gating(&g, x, 2, 2, W, b, NULL, S, P);
    for (int r = 0; r < 2; r++) {
        cr_assert_float_eq(P[r * 5] + P[r * 5 + 1] + P[r * 5 + 2], 1.0, 1e-6);
        cr_assert_float_eq(P[r * 5 + 3] + P[r * 5 + 4], 1.0, 1e-6);
    }
}

Test(moe_math, weights_mix_and_residual)
{
    moe_grid g;
    moe_grid_init(&g, mgrid, 2);
    const float s[5] = { 0.1f, 0.2f, 0.3f, 1.0f, -1.0f }, p[5] = { 0.5f, 0.2f, 0.3f, 0.6f, 0.4f };
    uint8_t ok[2] = { 1, 1 };
    float w[2];
    /* softmax of the logits 0.1 + -1.0 and 0.3 + 1.0 */
    cr_assert_eq(moe_math_weights(&g, s, NULL, 2, mcoords, ok, w), 2);
    double a = exp(0.1 - 1.0), c = exp(0.3 + 1.0);
    cr_assert_float_eq(w[0], a / (a + c), 1e-6);
    cr_assert_float_eq(w[1], c / (a + c), 1e-6);
    /* switch: products of probabilities, not renormalised */
    cr_assert_eq(moe_math_weights(&g, s, p, 2, mcoords, ok, w), 2);
    cr_assert_float_eq(w[0], 0.5f * 0.4f, 1e-7);
    cr_assert_float_eq(w[1], 0.3f * 0.6f, 1e-7);
    /* a slot that did not answer weighs 0; the other takes everything */
    ok[0] = 0;
    cr_assert_eq(moe_math_weights(&g, s, NULL, 2, mcoords, ok, w), 1);
    cr_assert_eq(w[0], 0.0f);
    cr_assert_float_eq(w[1], 1.0f, 1e-7);
    ok[1] = 0;
    cr_assert_eq(moe_math_weights(&g, s, NULL, 2, mcoords, ok, w), 0);
    cr_assert(w[0] == 0.0f && w[1] == 0.0f);

    const float o0[3] = { 1, 2, 3 }, o1[3] = { -1, 0, 4 }, x[3] = { 10, 20, 30 };
    const float *outs[2] = { o0, o1 };
    const float mw[2] = { 0.25f, 0.75f };
    float y[3] = { 0 };
    moe_math_mix(2, mw, outs, 3, NULL, y);
    for (int d = 0; d < 3; d++) cr_assert_float_eq(y[d], 0.25f * o0[d] + 0.75f * o1[d], 1e-6);
    float yr[3] = { 0 };
    outs[0] = NULL;   /* did not answer */
    moe_math_mix(2, mw, outs, 3, x, yr);
    for (int d = 0; d < 3; d++) cr_assert_float_eq(yr[d], 0.75f * o1[d] + x[d], 1e-5);
}

Test(moe_math, utilization_average_and_balancing_loss)
{
    moe_grid g;
    moe_grid_init(&g, mgrid, 2);
    float util[5] = { 1.0f / 3, 1.0f / 3, 1.0f / 3, 0.5f, 0.5f };
    const float count[5] = { 3, 0, 1, 0, 0 };   /* the second dimension counted nothing */
    moe_math_util_update(&g, count, 0.9f, util);
    cr_assert_float_eq(util[0], 0.9f / 3 + 0.1f * 0.75f, 1e-6);
    cr_assert_float_eq(util[1], 0.9f / 3, 1e-6);
    cr_assert_float_eq(util[2], 0.9f / 3 + 0.1f * 0.25f, 1e-6);
    cr_assert_float_eq(util[3], 0.45f, 1e-6);
    cr_assert_float_eq(util[4], 0.45f, 1e-6);
    /* uniform probabilities and utilisation: G * sum_i (1/G)(1/G) = 1 per dimension */
    float P[10], u[5] = { 1.0f / 3, 1.0f / 3, 1.0f / 3, 0.5f, 0.5f };
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 5; t++) P[r * 5 + t] = t < 3 ? 1.0f / 3 : 0.5f;
    cr_assert_float_eq(moe_math_balancing_loss(&g, P, 2, u), 2.0f, 1e-6);
    /* all probability on coordinate 0, all utilisation there too: G per dimension */
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 5; t++) P[r * 5 + t] = t == 0 || t == 3 ? 1.0f : 0.0f;
    const float u1[5] = { 1, 0, 0, 1, 0 };
    cr_assert_float_eq(moe_math_balancing_loss(&g, P, 2, u1), 5.0f, 1e-6);
}

/* one sample's loss gy . y for slot outputs outs, from its scores s (softmax) or probabilities p (switch) */
static double slot_loss(const moe_grid *g, const float *s, const float *p, const float *const *outs, const float *gy,
                        int D)
{
    uint8_t ok[2] = { 1, 1 };
    float w[2], y[4] = { 0 };
    moe_math_weights(g, s, p, 2, mcoords, ok, w);
    moe_math_mix(2, w, outs, D, NULL, y);
    double l = 0;
    for (int d = 0; d < D; d++) l += (double)gy[d] * y[d];
    return l;
}

Test(moe_math, slot_and_switch_gradients_match_finite_differences)
{
    moe_grid g;
    moe_grid_init(&g, mgrid, 2);
    const int D = 4;
    const float o0[4] = { 0.3f, -1.2f, 0.8f, 0.1f }, o1[4] = { -0.5f, 0.4f, 1.1f, -0.7f };
    const float *outs[2] = { o0, o1 };
    const float gy[4] = { 0.9f, -0.3f, 0.5f, 1.4f };
    const float eps = 1e-2f;
    for (int sw = 0; sw < 2; sw++) {
        float v[5] = { 0.2f, -0.4f, 0.7f, 0.35f, 0.65f };   /* scores, or (switch) probabilities */
        const float *p = sw ? v : NULL;
        uint8_t ok[2] = { 1, 1 };
        float w[2], y[4] = { 0 }, gs[5] = { 0 }, gp[5] = { 0 };
        moe_math_weights(&g, v, p, 2, mcoords, ok, w);
        moe_math_mix(2, w, outs, D, NULL, y);
        moe_math_slot_grads(&g, gy, y, D, 2, outs, w, mcoords, p, gs, gp);
        const float *an = sw ? gp : gs;
        for (int t = 0; t < 5; t++) {
            float keep = v[t];
            v[t] = keep + eps;
            double lp = slot_loss(&g, sw ? NULL : v, sw ? v : NULL, outs, gy, D);
            v[t] = keep - eps;
            double lm = slot_loss(&g, sw ? NULL : v, sw ? v : NULL, outs, gy, D);
            v[t] = keep;
            double fd = (lp - lm) / (2 * eps);
            cr_assert(fabs(fd - an[t]) < 1e-3, "switch %d column %d: analytic %g, numeric %g", sw, t, an[t], fd);
        }
    }
    /* the per-dimension softmax backward with the balancing term: loss = gp . P(x) + coef * G * util . P / B,
     * P = softmax per dimension of x (moe_math_gating with W = I, b = 0) */
    float Wi[25] = { 0 }, b0[5] = { 0 };
    for (int t = 0; t < 5; t++) Wi[t * 5 + t] = 1;
    float x[5] = { 0.3f, -0.2f, 0.9f, 0.1f, -0.6f }, S[5], P[5];
    const float gp0[5] = { 0.4f, -1.0f, 0.2f, 0.7f, -0.3f }, util[5] = { 0.2f, 0.5f, 0.3f, 0.6f, 0.4f };
    const float coef = 0.5f;
    const int64_t B = 4;
    float gp[5], gs[5];
    memcpy(gp, gp0, sizeof gp);
    moe_math_gating(&g, x, 1, 5, Wi, b0, NULL, S, P);
    moe_math_switch_bwd(&g, P, util, coef, B, gp, gs);
    for (int t = 0; t < 5; t++) {
        double l[2];
        for (int side = 0; side < 2; side++) {
            float keep = x[t];
            x[t] = keep + (side ? -eps : eps);
            moe_math_gating(&g, x, 1, 5, Wi, b0, NULL, S, P);
            x[t] = keep;
            l[side] = 0;
            for (int i = 0; i < 5; i++) {
                int G = i < 3 ? 3 : 2;
                l[side] += (gp0[i] + coef * G * util[i] / B) * P[i];
            }
        }
        double fd = (l[0] - l[1]) / (2 * eps);
        cr_assert(fabs(fd - gs[t]) < 1e-3, "softmax column %d: analytic %g, numeric %g", t, gs[t], fd);
    }
}

Test(moe_math, gating_backward_adds_the_input_gradient)
{
    moe_grid g;
    moe_grid_init(&g, mgrid, 2);
    const float W[10] = { 1, 0, 0, 1, 1, 1, 2, 0, 0, -1 }, x[4] = { 1, 2, -1, 3 };
    const float gS[10] = { 1, 0, 0, 0, 0, 0, 0, 0, 0, 2 }, noise[4] = { 2, 2, 1, 1 };
    float gW[10], gb[5], gx[4] = { 1, 1, 1, 1 }, gxg[4];
    moe_math_gating_bwd(&g, x, gS, 2, 2, W, noise, gW, gb, gx, gxg);
    /* row 0 of gS picks W row 0 = (1, 0), scaled by its noise 2; row 1 picks 2 * W row 4 = (0, -2) */
    cr_assert_float_eq(gx[0], 1 + 2, 1e-6);
    cr_assert_float_eq(gx[1], 1 + 0, 1e-6);
    cr_assert_float_eq(gx[2], 1 + 0, 1e-6);
    cr_assert_float_eq(gx[3], 1 - 2, 1e-6);
    cr_assert_float_eq(gW[0], 1, 1e-6);    /* gS[0, 0] x[0] */
    cr_assert_float_eq(gW[1], 2, 1e-6);
    cr_assert_float_eq(gW[8], -2, 1e-6);   /* gS[1, 4] x[1] */
    cr_assert_float_eq(gW[9], 6, 1e-6);
    cr_assert_float_eq(gb[0], 1, 1e-6);
    cr_assert_float_eq(gb[4], 2, 1e-6);
    cr_assert_float_eq(gb[2], 0, 1e-6);
}

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

/* grid_cfg fills c with the defaults for the fake world's G0 x G1 grid of IN-wide experts. */
static void grid_cfg(moe_cfg *c, int k_best, int is_switch, uint64_t seed)
{
    moe_cfg_default(c);
    c->in_features = IN;
    c->ndim = 2;
    c->grid_size[0] = G0;
    c->grid_size[1] = G1;
    c->k_best = k_best;
    c->is_switch = is_switch;
    c->seed = seed;
}

static moe_layer *make_layer(world *w, int k_best, int is_switch, moe_cfg *out_cfg)
{
    moe_cfg c;
    grid_cfg(&c, k_best, is_switch, 3);
    c.forward_timeout = 20;
    c.backward_timeout = 20;
    c.jitter_eps = 0;   /* deterministic for finite differences */
    if (out_cfg) {
        c.detect_anomalies = out_cfg->detect_anomalies;
        c.allow_zero_outputs = out_cfg->allow_zero_outputs;
        c.timeout_after_k_min = out_cfg->timeout_after_k_min;
        c.out_features = out_cfg->out_features;
    }
    c.retry_rounds = out_cfg ? out_cfg->retry_rounds : 0;   /* these tests check masking; retries: test_moe_retry.c */
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

/* ---- the worker pool ---- */

typedef struct {
    int calls;
    int err;
    const float *gx;
} bwd_seen;

static void on_bwd(void *arg, int err, const char *msg, const float *gx)
{
    bwd_seen *b = arg;
    b->calls++;
    b->err = err;
    b->gx = gx;
}

/* run_layer does two forward + backward rounds of a switch layer with jitter and grid dropout on pool
 * (NULL: the layer's own) and returns a checksum of every output, input gradient, gating gradient and
 * utilisation, bit for bit. */
static uint64_t run_layer(world *w, rt_pool *pool)
{
    moe_cfg c;
    grid_cfg(&c, 2, 1, 9);
    c.grid_dropout = 0.8;
    c.jitter_eps = 0.05;
    c.timeout_after_k_min = -1;
    c.pool = pool;
    moe_succ_provider sp = { w, fake_succ };
    moe_caller cl = { w, fake_call };
    moe_layer *m;
    char err[256];
    cr_assert_eq(moe_layer_new(w->l, &c, &sp, &cl, &m, err, sizeof err), 0, "%s", err);
    cr_assert_eq(moe_layer_cfg(m)->pool != NULL, 1);
    const int64_t B = 12;
    float x[B * IN], gy[B * OUT];
    uint64_t h = 1469598103934665603ull;
#define MIX(p, n) do { const uint8_t *q_ = (const uint8_t *)(p); for (size_t i_ = 0; i_ < (n); i_++) h = (h ^ q_[i_]) * 1099511628211ull; } while (0)
    for (int rep = 0; rep < 2; rep++) {
        input(x, B * IN, 30 + rep);
        input(gy, B * OUT, 40 + rep);
        moe_fwd *f;
        cr_assert_eq(moe_forward_run(m, x, B, &f, err, sizeof err), 0, "%s", err);
        int D;
        const float *y = moe_fwd_output(f, NULL, &D);
        MIX(y, (size_t)B * (size_t)D * sizeof *y);
        /* the callback never runs inside moe_backward: only once the loop turns */
        bwd_seen seen = { 0 };
        cr_assert_eq(moe_backward(m, f, gy, 0.25f, on_bwd, &seen), 0);
        cr_assert_eq(seen.calls, 0);
        while (!seen.calls) {
            struct timeval tv = { 0, 1000 };
            event_base_loopexit(rt_loop_base(w->l), &tv);
            rt_loop_run(w->l);
        }
        cr_assert_eq(seen.calls, 1);
        cr_assert_eq(seen.err, 0);
        MIX(seen.gx, (size_t)B * IN * sizeof *seen.gx);
        size_t np;
        const float *g = moe_layer_grads(m, &np);
        MIX(g, np * sizeof *g);
        MIX(moe_layer_utilization(m), (G0 + G1) * sizeof(float));
        moe_fwd_free(f);
    }
#undef MIX
    moe_layer_free(m);
    return h;
}

Test(moe_math, shared_pool_gives_the_same_bits_as_the_layers_own, .timeout = 30)
{
    world w = { .l = rt_loop_new() };
    uint64_t own = run_layer(&w, NULL);
    rt_pool *p = rt_pool_new(w.l, 3);
    cr_assert_not_null(p);
    uint64_t shared = run_layer(&w, p);
    cr_assert_eq(rt_pool_inflight(p), 0);
    cr_assert_eq(own, shared, "own pool %016llx, shared pool %016llx", (unsigned long long)own, (unsigned long long)shared);
    /* an idle pool keeps nothing pending on the loop: it returns at once */
    cr_assert_eq(rt_loop_run(w.l), 0);
    rt_pool_free(p);
    rt_loop_free(w.l);
}
