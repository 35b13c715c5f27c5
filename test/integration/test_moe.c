/* test_moe.c -- the Mixture-of-Experts layer over real dmoe-node processes on loopback: the forward
 * equals the softmax-weighted combination of single-expert calls; training continues with the survivors
 * when a node is SIGKILLed (k_min 1); a node answering NaN is ignored with detect_anomalies (the
 * default; test_lying_expert.c has liars of every kind); a hanging
 * node is cut off by timeout_after_k_min; every expert gone gives a clear error, or zeros with
 * allow_zero_outputs; a multi-input expert (det_dropout) gets its mask rows through the layer;
 * dmoe-train's chain and moe tasks learn. Every node started here is stopped here. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/moe/moe.h"
#include "actors/moe/route/moe_net.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"
#include "test/integration/harness.h"

#define H 32

typedef struct {
    rt_loop *l;
    moe_net *net;
    moe_layer *m;
} side;

/* open_layer joins a client to the swarm through peer and makes a layer of configuration c on it, its
 * forward_timeout capped at 10 s and its backward_timeout 10 s. */
static void open_layer(side *s, const th_node *peer, moe_cfg c)
{
    s->l = rt_loop_new();
    char err[512];
    const char *peers[1] = { peer->maddr };
    s->net = moe_net_open(s->l, peers, 1, 0.5, err, sizeof err);
    cr_assert(s->net, "%s", err);
    if (c.forward_timeout <= 0 || c.forward_timeout > 10) c.forward_timeout = 10;
    c.backward_timeout = 10;
    cr_assert_eq(moe_layer_new(s->l, &c, moe_net_succ(s->net), moe_net_caller(s->net), &s->m, err, sizeof err), 0, "%s", err);
}

/* open_side is open_layer for the tests' usual layer: c (NULL: the defaults) over H inputs and a grid of
 * 8 experts in one dimension, k_best, seed 9. */
static void open_side(side *s, const th_node *peer, int k_best, const moe_cfg *over)
{
    moe_cfg c;
    if (over) c = *over;
    else moe_cfg_default(&c);
    c.in_features = H;
    c.ndim = 1;
    c.grid_size[0] = 8;
    c.k_best = k_best;
    c.seed = 9;
    open_layer(s, peer, c);
}

static void close_side(side *s)
{
    moe_layer_free(s->m);
    moe_net_close(s->net);
    rt_loop_free(s->l);
}

/* start_v starts node n serving num experts of pattern, of class cls (NULL: ffn) and hidden size hid,
 * joined through peer_maddr (NULL: the first node), with the flags in ap (up to a NULL). */
static void start_v(th_node *n, const char *pattern, const char *num, const char *peer_maddr, const char *cls,
                    const char *hid, va_list ap)
{
    const char *args[32] = { "--expert_cls", cls ? cls : "ffn", "--hidden_dim", hid, "--num_experts", num,
                             "--expert_pattern", pattern, "--update_period", "0.5", "--expiration", "2",
                             "--num_workers", "1" };
    int k = 14;
    if (peer_maddr) { args[k++] = "--initial_peers"; args[k++] = peer_maddr; }
    for (const char *e; (e = va_arg(ap, const char *)) != NULL;) {
        cr_assert(k < 31, "too many flags");
        args[k++] = e;
    }
    args[k] = NULL;
    cr_assert_eq(th_node_start(n, args), 0);
}

/* start is start_v with the flags as arguments, NULL last. */
static void start(th_node *n, const char *pattern, const char *num, const char *peer_maddr, const char *cls,
                  const char *hid, ...)
{
    va_list ap;
    va_start(ap, hid);
    start_v(n, pattern, num, peer_maddr, cls, hid, ap);
    va_end(ap);
}

/* start_pair starts the tests' usual swarm of hidden size H: a serves ffn experts expert.[0:4], b serves
 * expert.[4:8] of class cls_b (NULL: ffn) with the flags that follow (NULL last), joined through a. */
static void start_pair(th_node *a, th_node *b, const char *cls_b, ...)
{
    start(a, "expert.[0:4]", "4", NULL, NULL, "32", NULL);
    va_list ap;
    va_start(ap, cls_b);
    start_v(b, "expert.[4:8]", "4", a->maddr, cls_b, "32", ap);
    va_end(ap);
}

static void fill(float *x, size_t n, uint64_t seed) { th_fill_normal(x, n, seed); }

/* wait_visible runs forwards until the beam search sees want experts (nodes declare every 0.5 s). */
static void wait_visible(side *s, int want)
{
    float x[64 * H];
    fill(x, 64 * H, 1);
    for (int i = 0; i < 100; i++) {
        moe_fwd *f;
        char err[256];
        if (moe_forward_run(s->m, x, 64, &f, err, sizeof err) == 0) {
            int n = moe_fwd_stats_of(f)->experts_answered;
            moe_fwd_free(f);
            if (n >= want) return;
        }
        usleep(50000);   /* the test's thread, not a loop: give the nodes time to declare */
    }
    cr_assert_fail("the layer never saw %d experts", want);
}

typedef struct {
    rt_loop *l;
    int done, err;
    rx_tensor out;
} one;

static void on_one(void *arg, int err, const char *msg, rx_tensor *out)
{
    one *o = arg;
    o->done = 1;
    o->err = err;
    if (out) o->out = *out;
    rt_loop_break(o->l);
}

/* call_rows calls expert uid at maddr through the layer's caller with n_in one-row float32 inputs,
 * rows[i] of D floats each (x, then the extra inputs), and writes its output row (D floats) to out. */
static void call_rows(side *s, const char *uid, const char *maddr, const float *const *rows, int n_in, int D,
                      float *out)
{
    wire_maddr addr;
    char e2[256];
    cr_assert_eq(wire_maddr_parse(maddr, &addr, e2, sizeof e2), 0, "%s", e2);
    rx_tensor in[KERN_MAX_IO];
    int64_t shape[2] = { 1, D };
    for (int i = 0; i < n_in; i++) {
        cr_assert_eq(rx_tensor_alloc(&in[i], WIRE_DT_F32, 2, shape), 0);
        memcpy(rx_tensor_f32(&in[i]), rows[i], (size_t)D * sizeof(float));
    }
    one o = { .l = s->l };
    const moe_caller *cl = moe_net_caller(s->net);
    cr_assert_eq(cl->call(cl->impl, uid, &addr, in, n_in, NULL, 5000, on_one, &o), 0);
    while (!o.done) rt_loop_run(s->l);
    cr_assert_eq(o.err, 0, "%s", uid);
    memcpy(out, rx_tensor_f32(&o.out), (size_t)D * sizeof(float));
    rx_tensor_free(&o.out);
    for (int i = 0; i < n_in; i++) rx_tensor_free(&in[i]);
}

/* single_call returns expert uid's output for row x (H floats) through the layer's caller. */
static void single_call(side *s, const char *uid, const char *maddr, const float *x, float *out)
{
    call_rows(s, uid, maddr, &x, 1, H, out);
}

/* expect_mix asserts, for each of f's rows (D floats), that the weights the forward gave expert.0 ..
 * expert.<n_exp - 1> sum to 1 and that the row is their weighted sum of the experts' own answers, which
 * answer(arg, e, uid, r, out) writes (D floats, at most 64). */
static void expect_mix(const moe_fwd *f, int n_exp, void (*answer)(void *arg, int e, const char *uid, int64_t r, float *out),
                       void *arg)
{
    int64_t B;
    int D;
    const float *y = moe_fwd_output(f, &B, &D);
    cr_assert(D > 0 && D <= 64);
    for (int64_t r = 0; r < B; r++) {
        float want[64] = {0}, oe[64], wsum = 0;
        for (int e = 0; e < n_exp; e++) {
            char uid[16];
            snprintf(uid, sizeof uid, "expert.%d", e);
            float w = moe_fwd_expert_weight(f, r, uid);
            if (w == 0) continue;
            wsum += w;
            answer(arg, e, uid, r, oe);
            for (int d = 0; d < D; d++) want[d] += w * oe[d];
        }
        cr_assert_float_eq(wsum, 1.0f, 1e-5);
        cr_assert_lt(th_max_abs_diff(y + r * D, want, D), 1e-4, "row %lld", (long long)r);
    }
}

typedef struct {
    side *s;
    const th_node *a, *b;   /* expert.0-3 live on a, expert.4-7 on b */
    const float *x;
} plain_calls;

/* plain_answer: expert e's answer to row r of x, called alone. */
static void plain_answer(void *arg, int e, const char *uid, int64_t r, float *out)
{
    plain_calls *p = arg;
    single_call(p->s, uid, e < 4 ? p->a->maddr : p->b->maddr, p->x + r * H, out);
}

Test(moe_net, forward_is_softmax_combination_of_single_calls, .timeout = 90)
{
    th_node a, b;
    start_pair(&a, &b, NULL, NULL);
    side s;
    moe_cfg c;
    moe_cfg_default(&c);
    c.timeout_after_k_min = -1;
    open_side(&s, &a, 3, &c);
    wait_visible(&s, 8);
    const int64_t B = 12;
    float x[B * H];
    fill(x, B * H, 2);
    moe_fwd *f;
    char err[256];
    cr_assert_eq(moe_forward_run(s.m, x, B, &f, err, sizeof err), 0, "%s", err);
    int D;
    moe_fwd_output(f, NULL, &D);
    cr_assert_eq(D, H);
    plain_calls pc = { &s, &a, &b, x };
    expect_mix(f, 8, plain_answer, &pc);
    moe_fwd_free(f);
    close_side(&s);
    th_node_stop(&b, SIGTERM);
    th_node_stop(&a, SIGTERM);
}

/* one training-like step (forward + backward with a fixed upstream gradient); returns the error. */
static int step(side *s, uint64_t seed, int *answered)
{
    const int64_t B = 32;
    float x[B * H], gy[B * H];
    fill(x, B * H, seed);
    fill(gy, B * H, seed + 1);
    moe_fwd *f;
    char err[256];
    int rc = moe_forward_run(s->m, x, B, &f, err, sizeof err);
    if (rc) return rc;
    *answered = moe_fwd_stats_of(f)->experts_answered;
    const float *gx;
    rc = moe_backward_run(s->m, f, gy, 0, &gx, err, sizeof err);
    for (int i = 0; rc == 0 && i < B * H; i++) cr_assert(isfinite(gx[i]));
    moe_fwd_free(f);
    return rc;
}

Test(moe_net, training_survives_sigkill_and_all_gone_is_an_error, .timeout = 120)
{
    th_node a, b;
    start_pair(&a, &b, NULL, NULL);
    side s;
    moe_cfg c;
    moe_cfg_default(&c);
    c.k_min = 1;
    c.timeout_after_k_min = 0.2;
    c.allow_zero_outputs = 1;
    open_side(&s, &b, 2, &c);   /* the side joined through b, which is about to die */
    wait_visible(&s, 8);
    int answered;
    for (int i = 0; i < 5; i++) cr_assert_eq(step(&s, 10 + (uint64_t)i, &answered), 0);
    cr_assert_eq(th_node_stop(&b, SIGKILL), 128 + SIGKILL);
    int ok = 0;
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(step(&s, 100 + (uint64_t)i, &answered), 0, "step %d after the kill", i);
        cr_assert_leq(answered, 4);
        ok += answered > 0;
    }
    cr_assert_eq(ok, 20, "every step had survivors answering");
    close_side(&s);

    /* every expert gone: an error naming it, or zeros with allow_zero_outputs */
    side t;
    moe_cfg_default(&c);
    c.timeout_after_k_min = 0.2;
    open_side(&t, &a, 2, &c);
    wait_visible(&t, 4);
    th_node_stop(&a, SIGKILL);
    float x[8 * H];
    fill(x, 8 * H, 5);
    moe_fwd *f;
    char err[256];
    int rc = moe_forward_run(t.m, x, 8, &f, err, sizeof err);
    cr_assert_neq(rc, 0);
    cr_assert(strstr(err, "no expert answered") != NULL, "%s", err);
    moe_layer_free(t.m);
    c.allow_zero_outputs = 1;
    c.in_features = H;
    c.ndim = 1;
    c.grid_size[0] = 8;
    c.k_best = 2;
    cr_assert_eq(moe_layer_new(t.l, &c, moe_net_succ(t.net), moe_net_caller(t.net), &t.m, err, sizeof err), 0);
    cr_assert_eq(moe_forward_run(t.m, x, 8, &f, err, sizeof err), 0, "%s", err);
    const float *y = moe_fwd_output(f, NULL, NULL);
    for (int i = 0; i < 8 * H; i++) cr_assert_eq(y[i], 0.0f);
    moe_fwd_free(f);
    close_side(&t);
}

Test(moe_net, hanging_node_cut_off_by_timeout_after_k_min, .timeout = 90)
{
    th_node a, b;
    start_pair(&a, &b, "nop_delay", "--delay_ms", "5000", NULL);
    side s;
    moe_cfg c;
    moe_cfg_default(&c);
    c.timeout_after_k_min = 0.1;
    c.forward_timeout = 8;
    open_side(&s, &a, 8, &c);   /* every sample asks all 8 experts: each has answers from a */
    wait_visible(&s, 4);
    float x[16 * H];
    fill(x, 16 * H, 3);
    moe_fwd *f;
    char err[256];
    for (int rep = 0; rep < 3; rep++) {
        cr_assert_eq(moe_forward_run(s.m, x, 16, &f, err, sizeof err), 0, "%s", err);
        const moe_fwd_stats *st = moe_fwd_stats_of(f);
        cr_assert_eq(st->experts_answered, 4);
        cr_assert_eq(st->experts_chosen, 8);
        /* the nop_delay experts would answer after 5 s, within forward_timeout (8 s): only 4 answers
         * means the call ended at timeout_after_k_min, without them */
        for (int e = 4; e < 8; e++) {
            char uid[16];
            snprintf(uid, sizeof uid, "expert.%d", e);
            cr_assert_eq(moe_fwd_expert_weight(f, 0, uid), 0);
        }
        moe_fwd_free(f);
    }
    close_side(&s);
    th_node_stop(&b, SIGKILL);
    th_node_stop(&a, SIGTERM);
}

static int all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

/* A node diverged for real: with sgd at lr 1e30, one backward leaves each of its experts with huge
 * finite weights, so every later forward overflows and it answers NaN (a node checks inputs and
 * gradients, not its own outputs). With detect_anomalies the layer masks those answers: the output is
 * finite and is the softmax over the healthy experts' logits of their outputs; without it the NaN
 * reaches the output, as moe.h documents. */
Test(moe_net, node_answering_nan_is_ignored_with_detect_anomalies, .timeout = 120)
{
    th_node a, b;
    start_pair(&a, &b, NULL, "--optimizer", "sgd", "--lr", "1e30", NULL);

    char dir[] = "/tmp/dmoe-nan.XXXXXX", xp[64], gp[64], yp[64], out[8192];
    cr_assert(mkdtemp(dir));
    snprintf(xp, sizeof xp, "%s/x.npy", dir);
    snprintf(gp, sizeof gp, "%s/g.npy", dir);
    snprintf(yp, sizeof yp, "%s/y.npy", dir);
    float xs[4 * H], gs[4 * H];
    fill(xs, 4 * H, 40);
    fill(gs, 4 * H, 41);
    cr_assert_eq(th_write_npy(xp, xs, 4, H), 0);
    cr_assert_eq(th_write_npy(gp, gs, 4, H), 0);
    for (int e = 4; e < 8; e++) {
        char uid[16];
        snprintf(uid, sizeof uid, "expert.%d", e);
        /* one backward: finite gradients, an sgd step of 1e30 */
        const char *bwd[] = { "--peer", b.maddr, "backward", uid, "--input", xp, "--grad_output", gp, NULL };
        cr_assert_eq(th_run("dmoe-call", bwd, out, sizeof out, 30), 0, "%s", out);
        /* the premise: the expert now answers non-finite values to a finite input; dmoe-call refuses
         * them (exit 1) unless --no_detect_anomalies */
        const char *fwd[] = { "--peer", b.maddr, "forward", uid, "--input", xp, "--output", yp, NULL };
        cr_assert_eq(th_run("dmoe-call", fwd, out, sizeof out, 30), 1, "%s", out);
        cr_assert(strstr(out, "contains NaN or Inf"), "%s", out);
        cr_assert_eq(access(yp, F_OK), -1, "a refused answer is not written");
        const char *fwd_any[] = { "--peer", b.maddr, "forward", uid, "--input", xp, "--output", yp,
                                  "--no_detect_anomalies", NULL };
        cr_assert_eq(th_run("dmoe-call", fwd_any, out, sizeof out, 30), 0, "%s", out);
        float *y = th_read_npy(yp, 4, H);
        cr_assert(y, "%s", out);
        cr_assert(!all_finite(y, 4 * H), "%s still answers finite values after the step", uid);
        free(y);
        unlink(yp);
    }
    unlink(xp);
    unlink(gp);
    rmdir(dir);

    side s;
    moe_cfg c;
    moe_cfg_default(&c);
    c.timeout_after_k_min = -1;   /* wait for every answer: the NaN ones arrive, and are masked */
    c.detect_anomalies = 1;
    open_side(&s, &a, 8, &c);      /* every sample asks all 8 experts */
    const int64_t B = 12;
    float x[B * H];
    fill(x, B * H, 42);
    moe_fwd *f = NULL;
    char err[256];
    int seen = 0;
    for (int i = 0; i < 100 && !seen; i++) {   /* until the beam search sees both nodes' experts */
        cr_assert_eq(moe_forward_run(s.m, x, B, &f, err, sizeof err), 0, "%s", err);
        seen = moe_fwd_stats_of(f)->experts_chosen == 8;
        if (!seen) {
            moe_fwd_free(f);
            usleep(50000);
        }
    }
    cr_assert(seen, "the layer never saw the 8 experts");
    const moe_fwd_stats *st = moe_fwd_stats_of(f);
    cr_assert_eq(st->experts_answered, 4, "only the healthy node's answers are usable");
    int D;
    const float *y = moe_fwd_output(f, NULL, &D);
    cr_assert_eq(D, H);
    cr_assert(all_finite(y, (size_t)B * H));
    size_t np;
    const float *W = moe_layer_params(s.m, &np), *bias = W + 8 * H;
    for (int64_t r = 0; r < B; r++) {
        float logit[4], mx = -INFINITY, z = 0, want[H] = {0};
        for (int e = 0; e < 4; e++) {
            logit[e] = bias[e];
            for (int i = 0; i < H; i++) logit[e] += W[e * H + i] * x[r * H + i];
            mx = logit[e] > mx ? logit[e] : mx;
        }
        for (int e = 0; e < 4; e++) z += expf(logit[e] - mx);
        for (int e = 0; e < 8; e++) {
            char uid[16];
            snprintf(uid, sizeof uid, "expert.%d", e);
            float w = moe_fwd_expert_weight(f, r, uid);
            if (e >= 4) { cr_assert_eq(w, 0.0f, "row %lld: %s is masked", (long long)r, uid); continue; }
            cr_assert_float_eq(w, expf(logit[e] - mx) / z, 1e-4, "row %lld: weight of %s", (long long)r, uid);
            float oe[H];
            single_call(&s, uid, a.maddr, x + r * H, oe);
            for (int d = 0; d < H; d++) want[d] += w * oe[d];
        }
        cr_assert_lt(th_max_abs_diff(y + r * H, want, H), 1e-4, "row %lld", (long long)r);
    }
    moe_fwd_free(f);
    moe_layer_free(s.m);

    /* the same layer without detect_anomalies: the NaN answers count, and the output shows them */
    c.detect_anomalies = 0;
    c.in_features = H;
    c.ndim = 1;
    c.grid_size[0] = 8;
    c.k_best = 8;
    c.seed = 9;
    cr_assert_eq(moe_layer_new(s.l, &c, moe_net_succ(s.net), moe_net_caller(s.net), &s.m, err, sizeof err), 0, "%s", err);
    cr_assert_eq(moe_forward_run(s.m, x, B, &f, err, sizeof err), 0, "%s", err);
    st = moe_fwd_stats_of(f);
    cr_assert_eq(st->experts_chosen, 8);
    cr_assert_eq(st->experts_answered, 8);
    y = moe_fwd_output(f, NULL, NULL);
    for (int64_t r = 0; r < B; r++) cr_assert(!all_finite(y + r * H, H), "row %lld has no NaN", (long long)r);
    moe_fwd_free(f);
    close_side(&s);
    th_node_stop(&b, SIGTERM);
    th_node_stop(&a, SIGTERM);
}

Test(moe_net, dmoe_train_chain_and_moe_learn, .timeout = 120)
{
    th_node a, b;
    start(&a, "expert.[0:5]", "5", NULL, NULL, "32", NULL);
    start(&b, "expert.[5:15]", "10", a.maddr, NULL, "32", NULL);
    char out[16384];
    const char *chain[] = { "--task", "chain", "--initial_peers", a.maddr, "--hidden_dim", "32", "--steps", "300",
                            "--batch_size", "32", "--log_every", "50", "--seed", "1", NULL };
    cr_assert_eq(th_run("dmoe-train", chain, out, sizeof out, 60), 0, "%s", out);
    double l0, l1;
    const char *sum = strstr(out, "summary:");
    cr_assert(sum, "%s", out);
    cr_assert_eq(sscanf(strstr(sum, "loss ") + 5, "%lf -> %lf", &l0, &l1), 2, "%s", sum);
    cr_assert_lt(l1, l0 / 2, "chain: %s", sum);

    const char *moe[] = { "--task", "moe", "--initial_peers", b.maddr, "--hidden_dim", "32", "--grid_size", "15",
                          "--k_best", "2", "--steps", "400", "--batch_size", "64", "--log_every", "50", "--seed", "2",
                          "--lr", "3e-3", NULL };
    cr_assert_eq(th_run("dmoe-train", moe, out, sizeof out, 60), 0, "%s", out);
    double acc;
    sum = strstr(out, "summary:");
    cr_assert(sum, "%s", out);
    cr_assert_eq(sscanf(strstr(sum, "loss ") + 5, "%lf -> %lf", &l0, &l1), 2, "%s", sum);
    cr_assert_eq(sscanf(strstr(sum, "accuracy ") + 9, "%lf", &acc), 1);
    cr_assert_lt(l1, l0 / 2, "moe: %s", sum);
    cr_assert_gt(acc, 0.5, "moe accuracy (chance 0.125): %s", sum);
    th_node_stop(&b, SIGTERM);
    th_node_stop(&a, SIGTERM);
}

/* multi-input experts: det_dropout takes x and a 0/1 mask [B, HD]; the layer sends every chosen expert
 * its rows of both, in the forward and again in the backward */
#define HD 16

typedef struct {
    side *s;
    const th_node *a;
    const float *x, *mask;   /* [B, HD] each */
    int masked_differs;      /* some answer with an all-ones mask differed from the masked one */
} masked_calls;

/* masked_answer: expert e's answer to row r of x with its mask row, called alone; the same row with an
 * all-ones mask must answer differently somewhere (the mask was really applied). */
static void masked_answer(void *arg, int e, const char *uid, int64_t r, float *out)
{
    masked_calls *mc = arg;
    float unmasked[HD], ones[HD];
    call_rows(mc->s, uid, mc->a->maddr, (const float *[]){ mc->x + r * HD, mc->mask + r * HD }, 2, HD, out);
    for (int d = 0; d < HD; d++) ones[d] = 1.0f;
    call_rows(mc->s, uid, mc->a->maddr, (const float *[]){ mc->x + r * HD, ones }, 2, HD, unmasked);
    for (int d = 0; d < HD; d++) mc->masked_differs |= fabsf(unmasked[d] - out[d]) > 1e-4f;
}

Test(moe_net, det_dropout_mask_goes_through_the_layer, .timeout = 90)
{
    th_node a;
    start(&a, "expert.[0:4]", "4", NULL, "det_dropout", "16", NULL);
    side s;
    moe_cfg c;
    moe_cfg_default(&c);
    c.in_features = HD;
    c.ndim = 1;
    c.grid_size[0] = 4;
    c.k_best = 2;
    c.seed = 3;
    c.timeout_after_k_min = -1;
    c.forward_timeout = 10;
    open_layer(&s, &a, c);
    char err[512];

    enum { B = 12 };
    float x[B * HD], gy[B * HD];
    fill(x, B * HD, 21);
    fill(gy, B * HD, 22);
    rx_tensor mask;
    int64_t shape[2] = { B, HD };
    cr_assert_eq(rx_tensor_alloc(&mask, WIRE_DT_F32, 2, shape), 0);
    float *mk = rx_tensor_f32(&mask);
    for (int i = 0; i < B * HD; i++) mk[i] = (float)((i * 7 + i / 5) % 3 != 0);

    /* wait until the layer sees all 4 experts (a forward without the mask fails: the node needs it) */
    moe_fwd *f = NULL;
    for (int i = 0; i < 100; i++) {
        if (moe_forward_run_ex(s.m, x, B, &mask, 1, &f, err, sizeof err) == 0) {
            if (moe_fwd_stats_of(f)->experts_chosen == 4 && moe_fwd_stats_of(f)->experts_answered == 4) break;
            moe_fwd_free(f);
            f = NULL;
        }
        usleep(50000);   /* the test's thread, not a loop: give the node time to declare */
    }
    cr_assert(f, "the layer never saw the 4 det_dropout experts: %s", err);
    int D;
    moe_fwd_output(f, NULL, &D);
    cr_assert_eq(D, HD);

    masked_calls mc = { &s, &a, x, mk, 0 };
    expect_mix(f, 4, masked_answer, &mc);
    cr_assert(mc.masked_differs, "the mask changed no output");

    const float *gx;
    cr_assert_eq(moe_backward_run(s.m, f, gy, 0, &gx, err, sizeof err), 0, "%s", err);
    int nonzero = 0;
    for (int i = 0; i < B * HD; i++) {
        cr_assert(isfinite(gx[i]), "gx[%d]", i);
        nonzero += gx[i] != 0;
    }
    cr_assert_gt(nonzero, 0);
    size_t ng;
    const float *gg = moe_layer_grads(s.m, &ng);
    for (size_t i = 0; i < ng; i++) cr_assert(isfinite(gg[i]));
    moe_fwd_free(f);
    rx_tensor_free(&mask);
    close_side(&s);
    th_node_stop(&a, SIGTERM);
}

/* Experts of another width than the layer's: dmoe-call moe and dmoe-train stop at the first forward
 * with one message naming both shapes (not "no expert answered ... 0 of 5" and a timeout), and the
 * experts' own refusals are logged at most once each, not per expert or step. */
Test(moe_net, experts_of_another_width_are_named_at_the_first_step, .timeout = 90)
{
    th_node a;
    start(&a, "expert.[0:5]", "5", NULL, NULL, "32", "--log_level", "DEBUG", NULL);
    char *log = NULL;
    for (int tries = 0; tries < 100; tries++) {   /* at most 10 s for the declarations */
        free(log);
        log = th_node_log(&a);
        if (strstr(log, "declared 5 experts in the DHT")) break;
        usleep(100 * 1000);
    }
    cr_assert(strstr(log, "declared 5 experts in the DHT"), "%s", log);
    free(log);
    char out[16384];
    const char *call[] = {"--initial_peers", a.maddr, "moe", "--uid_prefix", "expert.", "--grid_size", "5",
                          "--k_best", "2", "--random", "3x16", NULL};
    int rc = th_run("dmoe-call", call, out, sizeof out, 60);
    cr_assert_eq(rc, 1, "exit %d: %s", rc, out);
    cr_assert(strstr(out, "the experts take input of shape [B, 32] float32 (expert.") &&
                  strstr(out, "this layer sends [B, 16] float32 (in_features 16)"),
              "%s", out);
    cr_assert_null(strstr(out, "no expert answered"), "%s", out);
    const char *train[] = {"--task", "moe", "--initial_peers", a.maddr, "--hidden_dim", "16", "--grid_size", "5",
                           "--k_best", "2", "--steps", "50", "--batch_size", "8", NULL};
    rc = th_run("dmoe-train", train, out, sizeof out, 60);
    cr_assert_eq(rc, 1, "exit %d: %s", rc, out);
    cr_assert(strstr(out, "step 1 failed: the experts take input of shape [B, 32]"), "%s", out);
    cr_assert_null(strstr(out, "step 2 failed"), "one step, not ten: %s", out);
    int warns = 0;
    for (const char *p = out; (p = strstr(p, "[WARN]")); p++) warns++;
    cr_assert_leq(warns, 1, "the experts' refusals are warned about once: %s", out);
    th_node_stop(&a, SIGTERM);
}
