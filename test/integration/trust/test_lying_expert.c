/* test_lying_expert.c -- clients that do not trust answers (issue 10, item 5). A fake node in a thread
 * of the test (fake_node.h) answers forward and backward with a wrong width, NaN, Inf, float16 data, one
 * row too many, or an error whose code is 0: dmoe-call exits 1 at once naming the expert and what was
 * wrong; the Mixture-of-Experts layer masks those experts out and combines the honest ones (by default
 * for NaN/Inf, always for the rest); dmoe-train against a node whose answers go NaN stops with exit 1 instead of training on NaN. Everything started
 * here is stopped here. */
#include <criterion/criterion.h>
#include <event2/event.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "actors/moe/moe.h"
#include "actors/moe/route/moe_adapt.h"
#include "runtime/rt_err.h"
#include "test/integration/trust/fake_node.h"
#include "test/integration/harness.h"

#define H 32

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static const fake_expert liars[] = {
    { "expert.0", FAKE_HONEST, 1.0f },
    { "expert.1", FAKE_HONEST, -2.0f },
    { "expert.2", FAKE_WIDE, 1.0f },
    { "expert.3", FAKE_NAN, 1.0f },
    { "expert.4", FAKE_F16, 1.0f },
    { "expert.5", FAKE_ROWS, 1.0f },
    { "expert.6", FAKE_ERR0, 1.0f },
    { "expert.7", FAKE_INF, 1.0f },
};
#define NLIARS ((int)(sizeof liars / sizeof liars[0]))

/* ---- dmoe-call ---- */

/* call runs dmoe-call forward (or backward) of uid on the fake with --random 3xH, extra flag if any. */
static int call(const fake_node *f, const char *method, const char *uid, const char *extra, char *out, size_t cap,
                double *secs)
{
    char peer[64];
    snprintf(peer, sizeof peer, "/ip4/127.0.0.1/tcp/%d", fake_node_port(f));
    const char *args[12] = { "--peer", peer, method, uid, "--random", "3x32", "--timeout", "20" };
    int k = 8;
    if (extra) args[k++] = extra;
    args[k] = NULL;
    double t0 = now_s();
    int rc = th_run("dmoe-call", args, out, cap, 40);
    *secs = now_s() - t0;
    return rc;
}

Test(lying_expert, dmoe_call_refuses_answers_that_do_not_fit, .timeout = 120)
{
    fake_node *f = fake_node_start(liars, NLIARS, H);
    cr_assert(f);
    static const struct { const char *uid, *want; } cases[] = {
        { "expert.2", "outputs[0]: shape [3, 33], expected [3, 32]" },
        { "expert.3", "outputs[0] contains NaN or Inf" },
        { "expert.4", "outputs[0]: dtype float16, expected float32" },
        { "expert.5", "outputs[0]: shape [4, 32], expected [3, 32]" },
        { "expert.6", "malformed reply" },
        { "expert.7", "outputs[0] contains NaN or Inf" },
    };
    char out[8192];
    double secs;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = call(f, "forward", cases[i].uid, NULL, out, sizeof out, &secs);
        cr_assert_eq(rc, 1, "%s: exit %d:\n%s", cases[i].uid, rc, out);
        cr_assert(strstr(out, cases[i].uid), "the message names the expert %s:\n%s", cases[i].uid, out);
        cr_assert(strstr(out, cases[i].want), "%s: want \"%s\" in:\n%s", cases[i].uid, cases[i].want, out);
        /* an error reply with code 0 ends the call at once, not after --timeout 20 */
        cr_assert_lt(secs, 10, "%s took %.1f s", cases[i].uid, secs);
    }
    /* backward answers are checked the same way */
    cr_assert_eq(call(f, "backward", "expert.3", NULL, out, sizeof out, &secs), 1, "%s", out);
    cr_assert(strstr(out, "grad_inputs[0] contains NaN or Inf"), "%s", out);
    cr_assert_eq(call(f, "backward", "expert.4", NULL, out, sizeof out, &secs), 1, "%s", out);
    cr_assert(strstr(out, "grad_inputs[0]: dtype float16, expected float32"), "%s", out);
    /* --no_detect_anomalies lets NaN through, never a wrong dtype or shape */
    cr_assert_eq(call(f, "forward", "expert.3", "--no_detect_anomalies", out, sizeof out, &secs), 0, "%s", out);
    cr_assert(strstr(out, "outputs[0]: shape [3, 32]"), "%s", out);
    cr_assert_eq(call(f, "forward", "expert.4", "--no_detect_anomalies", out, sizeof out, &secs), 1, "%s", out);
    cr_assert_eq(call(f, "forward", "expert.5", "--no_detect_anomalies", out, sizeof out, &secs), 1, "%s", out);
    /* the honest expert of the same node is answered as before */
    cr_assert_eq(call(f, "forward", "expert.0", NULL, out, sizeof out, &secs), 0, "%s", out);
    cr_assert(strstr(out, "outputs[0]: shape [3, 32]"), "%s", out);
    cr_assert_geq(fake_node_stop(f, "expert.3"), 3, "the NaN expert was asked");
}

/* ---- the Mixture-of-Experts layer ---- */

typedef struct {
    rt_loop *l;
    int port;
    dht_successor items[NLIARS];
} world;

typedef struct {
    dht_successors_cb cb;
    void *arg;
    size_t n;
    dht_successors per[64];
    dht_successor flat[64];
} pending;

static void fire(evutil_socket_t fd, short what, void *arg)
{
    pending *p = arg;
    p->cb(p->arg, 0, "", p->per, p->n);
    free(p);
}

/* The fake's eight experts as the DHT would list them: "expert." has them as children, "expert.c." has
 * expert.c as its flat entry; other prefixes have none. */
static int table_succ(void *impl, const char *const *prefixes, size_t n, dht_successors_cb cb, void *arg)
{
    world *w = impl;
    if (n > 64) return DMOE_EINVAL;
    pending *p = calloc(1, sizeof *p);
    if (!p) return DMOE_ENOMEM;
    *p = (pending){ cb, arg, n };
    for (size_t i = 0; i < n; i++) {
        int c;
        char tail;
        if (strcmp(prefixes[i], "expert.") == 0) {
            p->per[i] = (dht_successors){ w->items, NLIARS };
        } else if (sscanf(prefixes[i], "expert.%d%c", &c, &tail) == 2 && tail == '.' && c >= 0 && c < NLIARS) {
            p->flat[i] = w->items[c];   /* a 1-d grid: "expert.c." holds expert.c under FLAT_EXPERT */
            p->flat[i].coord = UID_FLAT_EXPERT;
            p->per[i] = (dht_successors){ &p->flat[i], 1 };
        }
    }
    struct timeval tv = { 0, 0 };
    event_base_once(rt_loop_base(w->l), -1, EV_TIMEOUT, fire, p, &tv);   /* later, never inside get */
    return 0;
}

static moe_layer *layer(world *w, client *cl, int detect)
{
    moe_cfg c;
    moe_cfg_default(&c);
    cr_assert_eq(c.detect_anomalies, 1, "detect_anomalies is on by default");
    c.detect_anomalies = detect;
    c.in_features = H;
    c.ndim = 1;
    c.grid_size[0] = NLIARS;
    c.k_best = NLIARS;      /* every sample asks every expert */
    c.k_min = 2;            /* satisfied by the two honest experts only */
    c.backward_k_min = 2;
    c.timeout_after_k_min = -1;
    c.forward_timeout = 20;
    c.backward_timeout = 20;
    c.seed = 5;
    moe_succ_provider sp = { w, table_succ };
    moe_caller caller;
    moe_caller_client(cl, &caller);
    moe_layer *m = NULL;
    char err[256];
    cr_assert_eq(moe_layer_new(w->l, &c, &sp, &caller, &m, err, sizeof err), 0, "%s", err);
    return m;
}

static int all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

Test(lying_expert, moe_layer_masks_liars_and_uses_honest_experts, .timeout = 120)
{
    fake_node *f = fake_node_start(liars, NLIARS, H);
    cr_assert(f);
    world w = { rt_loop_new(), fake_node_port(f) };
    cr_assert(w.l);
    for (int i = 0; i < NLIARS; i++) {
        w.items[i].coord = i;
        snprintf(w.items[i].uid, sizeof w.items[i].uid, "%s", liars[i].uid);
        snprintf(w.items[i].addr.host, sizeof w.items[i].addr.host, "127.0.0.1");
        w.items[i].addr.port = (uint16_t)w.port;
    }
    client *cl = client_new(w.l, NULL);
    cr_assert(cl);
    moe_layer *m = layer(&w, cl, 1);   /* the default */
    const int64_t B = 5;
    float x[B * H];
    th_fill_normal(x, B * H, 7);
    moe_fwd *fw = NULL;
    char err[256];
    double t0 = now_s();
    cr_assert_eq(moe_forward_run(m, x, B, &fw, err, sizeof err), 0, "%s", err);
    cr_assert_lt(now_s() - t0, 10, "the error with code 0 did not hold the forward to its timeout");
    const moe_fwd_stats *st = moe_fwd_stats_of(fw);
    cr_assert_eq(st->experts_chosen, NLIARS);
    cr_assert_eq(st->experts_answered, 2, "only the two honest experts count");
    int64_t ob;
    int D;
    const float *y = moe_fwd_output(fw, &ob, &D);
    cr_assert_eq(D, H);
    cr_assert(all_finite(y, (size_t)B * H));
    size_t np;
    const float *W = moe_layer_params(m, &np), *bias = W + NLIARS * H;
    for (int64_t r = 0; r < B; r++) {
        float lg[2], mx, z = 0;
        for (int e = 0; e < 2; e++) {
            lg[e] = bias[e];
            for (int i = 0; i < H; i++) lg[e] += W[e * H + i] * x[r * H + i];
        }
        mx = lg[0] > lg[1] ? lg[0] : lg[1];
        for (int e = 0; e < 2; e++) z += expf(lg[e] - mx);
        float want[H] = { 0 };
        for (int e = 0; e < NLIARS; e++) {
            float wt = moe_fwd_expert_weight(fw, r, liars[e].uid);
            if (e >= 2) { cr_assert_eq(wt, 0.0f, "row %lld: %s is masked", (long long)r, liars[e].uid); continue; }
            cr_assert_float_eq(wt, expf(lg[e] - mx) / z, 1e-5, "row %lld: weight of %s", (long long)r, liars[e].uid);
            for (int d = 0; d < H; d++) want[d] += wt * liars[e].scale * x[r * H + d];
        }
        cr_assert_lt(th_max_abs_diff(y + r * H, want, H), 1e-4, "row %lld", (long long)r);
    }
    /* the backward goes to the honest experts only, and succeeds with backward_k_min 2 */
    float gy[B * H];
    th_fill_normal(gy, B * H, 8);
    const float *gx;
    cr_assert_eq(moe_backward_run(m, fw, gy, 0, &gx, err, sizeof err), 0, "%s", err);
    cr_assert(all_finite(gx, (size_t)B * H));
    moe_fwd_free(fw);
    moe_layer_free(m);

    /* without detect_anomalies NaN and Inf answers count (hivemind's default), and show in the output;
     * a wrong width, dtype or row count is refused all the same */
    m = layer(&w, cl, 0);
    cr_assert_eq(moe_forward_run(m, x, B, &fw, err, sizeof err), 0, "%s", err);
    cr_assert_eq(moe_fwd_stats_of(fw)->experts_answered, 4);
    cr_assert(!all_finite(moe_fwd_output(fw, NULL, NULL), (size_t)B * H));
    for (int e = 2; e < NLIARS; e++) {
        int counts = liars[e].mode == FAKE_NAN || liars[e].mode == FAKE_INF;
        cr_assert_eq(moe_fwd_expert_weight(fw, 0, liars[e].uid) != 0.0f, counts, "%s", liars[e].uid);
    }
    moe_fwd_free(fw);
    moe_layer_free(m);
    client_free(cl);
    rt_loop_free(w.l);
    cr_assert_geq(fake_node_stop(f, "expert.4"), 2, "the float16 expert was asked");
}

/* ---- dmoe-train ---- */

/* A node that diverges after its first optimizer step (sgd at lr 1e30: the test_moe.c trick) answers
 * NaN from the second step on. By default the layer masks those answers, no sample gets one, and the
 * run ends with exit 1 after --max_failed_steps; with --no_detect_anomalies the NaN reaches the loss and
 * the run stops at once with exit 1 and "loss became non-finite at step 2". Never exit 0. */
Test(lying_expert, dmoe_train_stops_when_answers_go_nan, .timeout = 120)
{
    th_node n;
    const char *args[] = { "--expert_cls", "ffn", "--hidden_dim", "32", "--num_experts", "4", "--expert_pattern",
                           "expert.[0:4]", "--update_period", "0.5", "--expiration", "2", "--num_workers", "1",
                           "--optimizer", "sgd", "--lr", "1e30", NULL };
    cr_assert_eq(th_node_start(&n, args), 0);
    usleep(500000);   /* the declarations land */
    static char out[65536];
    const char *base[] = { "--task", "moe", "--initial_peers", n.maddr, "--hidden_dim", "32", "--in_dim", "8",
                           "--num_classes", "4", "--grid_size", "4", "--k_best", "4", "--k_min", "1",
                           "--timeout_after_k_min", "1", "--forward_timeout", "5", "--backward_timeout", "5",
                           "--steps", "20", "--batch_size", "16", "--log_every", "1", "--max_failed_steps", "5",
                           "--no_detect_anomalies", NULL };
    int rc = th_run("dmoe-train", base, out, sizeof out, 60);
    cr_assert_eq(rc, 1, "exit %d:\n%s", rc, out);
    cr_assert(strstr(out, "step 1  loss"), "the first step (finite answers) trained:\n%s", out);
    cr_assert(strstr(out, "loss became non-finite at step 2"), "%s", out);
    cr_assert(strstr(out, "detect_anomalies off"), "%s", out);

    /* the default: the NaN answers are failed experts, the steps fail, the run gives up with exit 1 */
    const char *dflt[sizeof base / sizeof base[0]];
    memcpy(dflt, base, sizeof base);
    dflt[sizeof base / sizeof base[0] - 2] = NULL;   /* drop --no_detect_anomalies */
    rc = th_run("dmoe-train", dflt, out, sizeof out, 60);
    cr_assert_eq(rc, 1, "exit %d:\n%s", rc, out);
    cr_assert(strstr(out, "contains NaN or Inf"), "the refused answers are named:\n%s", out);
    cr_assert_null(strstr(out, "step 1  loss"), "no step trained on NaN:\n%s", out);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
}
