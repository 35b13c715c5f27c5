/* test_api.c -- the public C interface (actors/api/dmoe.h) against real dmoe-node processes: DHT
 * joins in both modes with store and get, expert calls equal to raw protocol calls, remote errors
 * carrying the node's message, many threads calling at once, beam search, a Mixture-of-Experts layer's
 * forward and backward, and shutdown. Only the public header is used (as an outside program would).
 * Every node started here is stopped here. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/api/dmoe.h"
#include "test/integration/harness.h"

#define H 16

static void start_node(th_node *n, const char *cls, const char *pattern, const char *num)
{
    const char *args[] = { "--expert_cls", cls, "--hidden_dim", "16", "--num_experts", num, "--expert_pattern", pattern,
                           "--update_period", "0.5", "--expiration", "3", "--num_workers", "1", "--optimizer", "none",
                           NULL };
    cr_assert_eq(th_node_start(n, args), 0);
}

static dmoe_dht *join_client(dmoe_ctx *ctx, const th_node *n)
{
    const char *peers[1] = { n->maddr };
    dmoe_dht *d = NULL;
    char err[512];
    int rc = dmoe_dht_join(ctx, peers, 1, 1, NULL, &d, err, sizeof err);
    cr_assert_eq(rc, 0, "join: %s", err);
    return d;
}

/* msgpack of a short string (fixstr), as hivemind serializes str keys and values. */
static size_t pack_str(uint8_t *out, const char *s)
{
    size_t n = strlen(s);
    out[0] = (uint8_t)(0xa0 | n);
    memcpy(out + 1, s, n);
    return n + 1;
}

Test(api, dht_store_get_in_both_modes, .timeout = 60)
{
    dmoe_ctx *ctx;
    char err[512];
    cr_assert_eq(dmoe_ctx_new(&ctx, err, sizeof err), 0, "%s", err);
    dmoe_dht *full = NULL, *cli = NULL, *none = NULL;
    cr_assert_eq(dmoe_dht_join(ctx, NULL, 0, 0, NULL, &full, err, sizeof err), 0, "%s", err);
    char maddr[256];
    dmoe_dht_maddr(full, maddr, sizeof maddr);
    cr_assert(strstr(maddr, "/ip4/127.0.0.1/tcp/") && strstr(maddr, "/p2p/"), "%s", maddr);
    const char *peers[1] = { maddr };
    cr_assert_eq(dmoe_dht_join(ctx, peers, 1, 1, NULL, &cli, err, sizeof err), 0, "%s", err);
    cr_assert_eq(dmoe_dht_join(ctx, NULL, 0, 1, NULL, &none, err, sizeof err), DMOE_EINVAL);
    cr_assert(strstr(err, "initial peers"), "%s", err);

    uint8_t key[32], val[32], sub[32];
    size_t kl = pack_str(key, "greeting"), vl = pack_str(val, "hello"), sl = pack_str(sub, "a");
    double exp = dmoe_dht_time() + 30;
    cr_assert_eq(dmoe_dht_store(cli, key, kl, NULL, 0, val, vl, exp, err, sizeof err), 0, "%s", err);
    dmoe_value *v = NULL;
    cr_assert_eq(dmoe_dht_get(full, key, kl, 1, &v, err, sizeof err), 0, "%s", err);
    cr_assert_eq(dmoe_value_kind(v), 1);
    size_t n;
    const uint8_t *b = dmoe_value_bytes(v, &n);
    cr_assert(n == vl && memcmp(b, val, vl) == 0);
    cr_assert(fabs(dmoe_value_expiration(v) - exp) < 1e-3);
    dmoe_value_free(v);

    uint8_t dkey[32];
    size_t dkl = pack_str(dkey, "dict");
    cr_assert_eq(dmoe_dht_store(full, dkey, dkl, sub, sl, val, vl, exp, err, sizeof err), 0, "%s", err);
    cr_assert_eq(dmoe_dht_get(cli, dkey, dkl, 1, &v, err, sizeof err), 0, "%s", err);
    cr_assert_eq(dmoe_value_kind(v), 2);
    cr_assert_eq(dmoe_value_nsubs(v), 1);
    const void *sk, *sv;
    size_t skl, svl;
    cr_assert_eq(dmoe_value_sub(v, 0, &sk, &skl, &sv, &svl, NULL), 0);
    cr_assert(skl == sl && memcmp(sk, sub, sl) == 0 && svl == vl && memcmp(sv, val, vl) == 0);
    cr_assert_eq(dmoe_value_sub(v, 1, &sk, &skl, &sv, &svl, NULL), DMOE_EINVAL);
    dmoe_value_free(v);

    uint8_t miss[32];
    size_t ml = pack_str(miss, "nobody-stored-this");
    cr_assert_eq(dmoe_dht_get(cli, miss, ml, 0, &v, err, sizeof err), 0, "%s", err);
    cr_assert_eq(dmoe_value_kind(v), 0);
    dmoe_value_free(v);

    /* uids sharing prefixes: one record per (prefix, coordinate), every uid declared */
    const char *uids[3] = { "z.1.2.3", "z.1.2.4", "z.1.5.3" };
    cr_assert_eq(dmoe_dht_declare_experts(cli, uids, 3, maddr, exp, err, sizeof err), 0, "%s", err);
    dmoe_expert *found[3];
    cr_assert_eq(dmoe_get_experts(full, uids, 3, found, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < 3; i++) {
        cr_assert_not_null(found[i], "%s", uids[i]);
        dmoe_expert_free(found[i]);
    }

    dmoe_dht_free(cli);
    dmoe_dht_free(full);
    /* the full node is gone: joining through it fails with a message naming the address */
    dmoe_dht *late = NULL;
    int rc = dmoe_dht_join(ctx, peers, 1, 1, NULL, &late, err, sizeof err);
    cr_assert(rc == DMOE_ECONN || rc == DMOE_ETIMEDOUT, "rc %d: %s", rc, err);
    cr_assert(strstr(err, "127.0.0.1"), "%s", err);
    cr_assert_null(late);
    dmoe_ctx_free(ctx);
}

static dmoe_tensor f32(float *x, int64_t B, int64_t W)
{
    dmoe_tensor t = { .dtype = DMOE_FLOAT32, .ndim = 2, .shape = { B, W }, .data = x };
    return t;
}

typedef struct {
    dmoe_expert *e;
    const float *x, *want;
    int bad;
} thread_arg;

static void *hammer(void *p)
{
    thread_arg *a = p;
    for (int i = 0; i < 10; i++) {
        dmoe_tensor in = f32((float *)a->x, 3, H);
        dmoe_tensors *out = NULL;
        char err[256];
        if (dmoe_expert_forward(a->e, &in, 1, 10, &out, err, sizeof err) != 0) {
            fprintf(stderr, "hammer: %s\n", err);
            a->bad++;
            continue;
        }
        dmoe_tensor o;
        dmoe_tensors_get(out, 0, &o);
        /* the node may batch these rows with other threads' rows: equal up to the GEMM's rounding */
        if (!(th_max_abs_diff(o.data, a->want, 3 * H) < 1e-5f)) a->bad++;
        dmoe_tensors_free(out);
    }
    return NULL;
}

Test(api, expert_calls_match_the_protocol_and_carry_node_errors, .timeout = 90)
{
    th_node n;
    start_node(&n, "ffn", "expert.[0:2]", "2");
    dmoe_ctx *ctx;
    char err[512];
    cr_assert_eq(dmoe_ctx_new(&ctx, err, sizeof err), 0, "%s", err);
    dmoe_dht *d = join_client(ctx, &n);
    dmoe_expert *ex[3] = { NULL, NULL, NULL };
    const char *uids[3] = { "expert.0", "expert.1", "expert.7" };
    for (int i = 0; i < 100 && !(ex[0] && ex[1]); i++) {   /* the node declares every 0.5 s */
        dmoe_expert_free(ex[0]);
        dmoe_expert_free(ex[1]);
        dmoe_expert_free(ex[2]);
        cr_assert_eq(dmoe_get_experts(d, uids, 3, ex, err, sizeof err), 0, "%s", err);
        if (!(ex[0] && ex[1])) usleep(100000);
    }
    cr_assert(ex[0] && ex[1], "experts never found");
    cr_assert_null(ex[2]);
    cr_assert_str_eq(dmoe_expert_uid(ex[0]), "expert.0");

    int n_in = 0, n_out = 0, dt[4], nd[4];
    int64_t dims[16];
    cr_assert_eq(dmoe_expert_info(ex[0], &n_in, &n_out, dt, nd, dims, 10, err, sizeof err), 0, "%s", err);
    cr_assert(n_in == 1 && n_out == 1 && dt[0] == DMOE_FLOAT32 && nd[0] == 1 && dims[0] == H);

    float x[3 * H], gy[3 * H], raw[3 * H], rawg[3 * H];
    th_fill_normal(x, 3 * H, 5);
    th_fill_normal(gy, 3 * H, 6);
    dmoe_tensor in = f32(x, 3, H), g = f32(gy, 3, H), o;
    dmoe_tensors *out = NULL, *gin = NULL;
    cr_assert_eq(dmoe_expert_forward(ex[0], &in, 1, 10, &out, err, sizeof err), 0, "%s", err);
    cr_assert_eq(dmoe_tensors_count(out), 1);
    dmoe_tensors_get(out, 0, &o);
    cr_assert(o.dtype == DMOE_FLOAT32 && o.ndim == 2 && o.shape[0] == 3 && o.shape[1] == H);
    cr_assert_eq(dmoe_expert_backward(ex[0], &in, 1, &g, 1, 10, &gin, err, sizeof err), 0, "%s", err);

    /* the same calls over a raw socket */
    int fd = th_connect(n.port);
    cr_assert_geq(fd, 0);
    wire_msg m;
    cr_assert_eq(th_send_out(fd, th_request(1, "expert.0", x, 3, H, NULL)), 0);
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert_eq(th_result_f32(&m, "outputs", 3, H, raw), 0);
    wire_msg_free(&m);
    cr_assert_eq(th_send_out(fd, th_request(2, "expert.0", x, 3, H, gy)), 0);
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert_eq(th_result_f32(&m, "grad_inputs", 3, H, rawg), 0);
    wire_msg_free(&m);
    close(fd);
    cr_assert_eq(th_max_abs_diff(o.data, raw, 3 * H), 0);
    dmoe_tensor gx;
    dmoe_tensors_get(gin, 0, &gx);
    cr_assert_eq(th_max_abs_diff(gx.data, rawg, 3 * H), 0);

    /* a forward that keeps its activations, and its backward with the handle: the node skips the
     * recompute (backward_cached), with the same gradient; a plain forward keeps nothing */
    cr_assert_eq(th_expert_stat(&n, "expert.0", "backward_cached"), 0, "a plain forward kept activations");
    uint64_t handle = 0;
    dmoe_tensors *kept = NULL, *gkept = NULL;
    cr_assert_eq(dmoe_expert_forward_keep(ex[0], &in, 1, 10, &kept, &handle, err, sizeof err), 0, "%s", err);
    cr_assert_neq(handle, 0, "the node kept no activations");
    dmoe_tensor ko, kg;
    dmoe_tensors_get(kept, 0, &ko);
    cr_assert_eq(th_max_abs_diff(ko.data, raw, 3 * H), 0);
    cr_assert_eq(dmoe_expert_backward_with(ex[0], &in, 1, &g, 1, handle, 10, &gkept, err, sizeof err), 0, "%s", err);
    dmoe_tensors_get(gkept, 0, &kg);
    cr_assert_lt(th_max_abs_diff(kg.data, rawg, 3 * H), 1e-5f, "the saved activations gave another gradient");
    cr_assert_eq(th_expert_stat(&n, "expert.0", "backward_cached"), 1);
    cr_assert_eq(dmoe_expert_forward_keep(ex[0], &in, 1, 10, &kept, NULL, err, sizeof err), DMOE_EINVAL);
    dmoe_tensors_free(kept);
    dmoe_tensors_free(gkept);

    /* many threads at once */
    pthread_t th[4];
    thread_arg ta[4];
    for (int i = 0; i < 4; i++) {
        ta[i] = (thread_arg){ ex[0], x, raw, 0 };
        cr_assert_eq(pthread_create(&th[i], NULL, hammer, &ta[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(ta[i].bad, 0, "thread %d: %d bad calls", i, ta[i].bad);
    }
    dmoe_tensors_free(out);
    dmoe_tensors_free(gin);

    /* the node's errors come back with its message */
    float wide[3 * 11] = { 0 };
    dmoe_tensor bad = f32(wide, 3, 11);
    out = NULL;
    int rc = dmoe_expert_forward(ex[0], &bad, 1, 10, &out, err, sizeof err);
    cr_assert(rc == DMOE_ESHAPE, "rc %d: %s", rc, err);
    cr_assert(strstr(err, "11"), "the node's message names the bad width: %s", err);
    cr_assert_null(out);
    dmoe_expert *fake = NULL;
    cr_assert_eq(dmoe_expert_new(d, "oiasfjiasjf.0", n.maddr, &fake, err, sizeof err), 0, "%s", err);
    rc = dmoe_expert_forward(fake, &in, 1, 10, &out, err, sizeof err);
    cr_assert_eq(rc, DMOE_ENOEXPERT, "rc %d: %s", rc, err);
    cr_assert(strstr(err, "oiasfjiasjf.0"), "%s", err);
    cr_assert_eq(dmoe_expert_new(d, "x.0", "not an address", &fake, err, sizeof err), DMOE_EINVAL);
    dmoe_expert_free(fake);

    /* after the DHT handle is freed, its experts fail cleanly */
    dmoe_dht_free(d);
    rc = dmoe_expert_forward(ex[1], &in, 1, 10, &out, err, sizeof err);
    cr_assert_eq(rc, DMOE_ESHUTDOWN, "rc %d: %s", rc, err);
    dmoe_expert_free(ex[0]);
    dmoe_expert_free(ex[1]);
    dmoe_ctx_free(ctx);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
}

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, err;
} async_wait;

static void on_async(void *arg, int err, const char *msg)
{
    async_wait *w = arg;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    w->err = err;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

Test(api, beam_search_and_moe_layer, .timeout = 90)
{
    th_node n;
    start_node(&n, "ffn", "expert.[0:4]", "4");
    dmoe_ctx *ctx;
    char err[512];
    cr_assert_eq(dmoe_ctx_new(&ctx, err, sizeof err), 0, "%s", err);
    dmoe_dht *d = join_client(ctx, &n);

    /* beam search: scores favour expert.3 then expert.1 */
    int grid[1] = { 4 };
    float scores[2 * 4] = { 0, 2, 1, 3, 5, 0, 0, 0 };
    dmoe_beam *b = NULL;
    for (int i = 0; i < 100; i++) {
        dmoe_beam_free(b);
        b = NULL;
        cr_assert_eq(dmoe_beam_search(d, "expert.", grid, 1, scores, 2, 2, &b, err, sizeof err), 0, "%s", err);
        if (dmoe_beam_count(b, 0) == 2 && dmoe_beam_count(b, 1) == 2) break;
        usleep(100000);
    }
    cr_assert_eq(dmoe_beam_count(b, 0), 2);
    char maddr[256];
    float sc;
    cr_assert_str_eq(dmoe_beam_expert(b, 0, 0, maddr, sizeof maddr, &sc), "expert.3");
    cr_assert_float_eq(sc, 3.0f, 1e-6);
    cr_assert(strstr(maddr, "127.0.0.1"), "%s", maddr);
    cr_assert_str_eq(dmoe_beam_expert(b, 0, 1, NULL, 0, NULL), "expert.1");
    cr_assert_str_eq(dmoe_beam_expert(b, 1, 0, NULL, 0, NULL), "expert.0");
    cr_assert_null(dmoe_beam_expert(b, 1, 2, NULL, 0, NULL));
    dmoe_beam_free(b);

    dmoe_moe_config c;
    dmoe_moe_config_init(&c, 0);
    c.in_features = H;
    c.ndim = 1;
    c.grid_size[0] = 4;
    c.k_best = 2;
    c.forward_timeout = 10;
    c.backward_timeout = 10;
    c.seed = 3;
    dmoe_moe *m = NULL;
    cr_assert_eq(dmoe_moe_new(d, &c, &m, err, sizeof err), 0, "%s", err);
    size_t np = dmoe_moe_nparams(m);
    cr_assert_eq(np, 4 * H + 4);
    float *p = malloc(np * sizeof *p), *gp = calloc(np, sizeof *gp);
    cr_assert_eq(dmoe_moe_get_params(m, p, np), 0);
    cr_assert_eq(dmoe_moe_get_params(m, p, np - 1), DMOE_EINVAL);
    float x[5 * H], gy[5 * H], gx[5 * H];
    th_fill_normal(x, 5 * H, 8);
    th_fill_normal(gy, 5 * H, 9);
    dmoe_moe_fwd *f = NULL;
    cr_assert_eq(dmoe_moe_forward(m, p, x, 5, NULL, 0, &f, err, sizeof err), 0, "%s", err);
    int64_t B;
    int D;
    const float *y = dmoe_moe_fwd_output(f, &B, &D);
    cr_assert(y && B == 5 && D == H);
    int chosen, answered;
    dmoe_moe_fwd_stats(f, &chosen, &answered);
    cr_assert(chosen >= 2 && answered == chosen, "%d chosen, %d answered", chosen, answered);
    float wsum = 0;
    for (int e = 0; e < 4; e++) {
        char uid[16];
        snprintf(uid, sizeof uid, "expert.%d", e);
        wsum += dmoe_moe_fwd_expert_weight(f, 0, uid);
    }
    cr_assert_float_eq(wsum, 1.0f, 1e-5);

    async_wait w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };
    cr_assert_eq(dmoe_moe_backward_async(f, gy, 0, gx, gp, on_async, &w), 0);
    pthread_mutex_lock(&w.mu);
    while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    cr_assert_eq(w.err, 0);
    double ng = 0, nx = 0;
    for (size_t i = 0; i < np; i++) ng += fabs(gp[i]);
    for (int i = 0; i < 5 * H; i++) nx += fabs(gx[i]);
    cr_assert(ng > 0 && nx > 0 && isfinite(ng) && isfinite(nx));
    dmoe_moe_fwd_free(f);

    /* the parameters given to a forward are the ones it uses */
    for (size_t i = 0; i < np; i++) p[i] = 0;
    p[4 * H + 2] = 10;   /* bias of expert.2 */
    cr_assert_eq(dmoe_moe_forward(m, p, x, 5, NULL, 0, &f, err, sizeof err), 0, "%s", err);
    cr_assert_float_eq(dmoe_moe_fwd_expert_weight(f, 0, "expert.2"), 1.0f, 1e-3);
    float back[4 * H + 4];
    cr_assert_eq(dmoe_moe_get_params(m, back, np), 0);
    cr_assert_eq(back[4 * H + 2], 10.0f);
    dmoe_moe_fwd_free(f);

    dmoe_dht_free(d);
    f = NULL;
    cr_assert_eq(dmoe_moe_forward(m, NULL, x, 5, NULL, 0, &f, err, sizeof err), DMOE_ESHUTDOWN);
    dmoe_moe_free(m);
    free(p);
    free(gp);
    dmoe_ctx_free(ctx);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
}
