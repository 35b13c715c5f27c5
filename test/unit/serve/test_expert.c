/* test_expert.c -- the expert actor with a real pool: forwards run in parallel, a backward runs alone
 * with one optimizer step per batch, requests that arrive together share a batch and each caller gets
 * its own rows, a lone request under min_batch_size waits batch_wait_ms and no longer. The expert class
 * is a probe defined here: y = w * x with one parameter, whose kernels record how many of them run at
 * once (they sleep on the worker a little so that overlaps can happen). */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "actors/serve/expert.h"
#include "runtime/rt_err.h"
#include "test/unit/serve/serve_kit.h"

#define W 4
#define PROBE_SLEEP_MS 30

static atomic_int fwd_now, fwd_max, bwd_now, bwd_max, mixed;

static void nap(void)
{
    struct timespec ts = {0, PROBE_SLEEP_MS * 1000000L};
    nanosleep(&ts, NULL);
}

static void note_max(atomic_int *max, int v)
{
    int m = atomic_load(max);
    while (v > m && !atomic_compare_exchange_weak(max, &m, v)) {}
}

static int probe_forward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                         float *const *out, float *ws, uint64_t seed)
{
    note_max(&fwd_max, atomic_fetch_add(&fwd_now, 1) + 1);
    if (atomic_load(&bwd_now) > 0) atomic_store(&mixed, 1);
    nap();
    const float *x = in[0];
    for (int64_t i = 0; i < B * W; i++) out[0][i] = params[0] * x[i];
    atomic_fetch_sub(&fwd_now, 1);
    return 0;
}

static int probe_backward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                          const float *const *gout, float *const *gin, float *gparams, float *ws, uint64_t seed)
{
    note_max(&bwd_max, atomic_fetch_add(&bwd_now, 1) + 1);
    if (atomic_load(&fwd_now) > 0) atomic_store(&mixed, 1);
    nap();
    const float *x = in[0];
    gparams[0] = 0;
    for (int64_t i = 0; i < B * W; i++) {
        gin[0][i] = params[0] * gout[0][i];
        gparams[0] += gout[0][i] * x[i];
    }
    atomic_fetch_sub(&bwd_now, 1);
    return 0;
}

static const kern_class probe = {
    .name = "probe", .module_name = "Probe", .setup = sk_probe_setup, .init = sk_probe_init,
    .forward_ws = sk_probe_ws, .backward_ws = sk_probe_ws, .forward = probe_forward, .backward = probe_backward,
};

static rt_loop *l;
static rt_pool *pool;

static void setup(void)
{
    l = rt_loop_new();
    pool = rt_pool_new(l, 3);
    cr_assert(l && pool);
    atomic_store(&fwd_now, 0);
    atomic_store(&fwd_max, 0);
    atomic_store(&bwd_now, 0);
    atomic_store(&bwd_max, 0);
    atomic_store(&mixed, 0);
}

static void teardown(void)
{
    sk_spin(l, 5);
    rt_pool_free(pool);
    rt_loop_free(l);
}

TestSuite(expert, .init = setup, .fini = teardown, .timeout = 30);

static expert *make_expert(int64_t max_batch, int64_t min_batch, int wait_ms, int parallel)
{
    expert_cfg cfg = {.cls = &probe, .kcfg = {.hidden_dim = W}, .max_batch_size = max_batch,
                      .min_batch_size = min_batch, .batch_wait_ms = wait_ms, .max_parallel_fwd = parallel,
                      .pool = pool};
    return sk_probe_expert(l, "probe.0", cfg);
}

static void stop_expert(expert *e)
{
    expert_shutdown(e);
    cr_assert_eq(expert_busy(e), 0);
    expert_free(e);
}

Test(expert, forwards_in_parallel_backward_alone_one_step_per_batch)
{
    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    expert *e = make_expert(W, 1, 0, 3);
    float x[W * W];
    for (int i = 0; i < W * W; i++) x[i] = 1.0f;
    /* one burst: 6 forwards (each a full batch of W rows), then 3 backwards, then 3 forwards */
    for (int k = 0; k < 6; k++) expert_submit(e, sk_req(c, 100 + (uint64_t)k, EX_FWD, W, x));
    for (int k = 0; k < 3; k++) expert_submit(e, sk_req(c, 200 + (uint64_t)k, EX_BWD, W, x));
    for (int k = 0; k < 3; k++) expert_submit(e, sk_req(c, 300 + (uint64_t)k, EX_FWD, W, x));
    int got = 0;
    for (; got < 12; got++) {
        wire_msg m;
        cr_assert_eq(sk_recv_msg(l, fd, &m, 5000), 0, "only %d of 12 replies", got);
        cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
        wire_msg_free(&m);
    }
    const expert_stats *s = expert_stats_get(e);
    cr_assert_eq(s->calls[EX_FWD], 9);
    cr_assert_eq(s->calls[EX_BWD], 3);
    cr_assert_eq(s->batches[EX_BWD], 3, "max_batch_size W: one request per batch");
    cr_assert_eq(s->steps, 3, "one optimizer step per backward batch");
    cr_assert_eq(atomic_load(&bwd_max), 1, "backwards run one at a time");
    cr_assert_eq(atomic_load(&mixed), 0, "no forward overlaps a backward");
    cr_assert_geq(atomic_load(&fwd_max), 2, "forwards run in parallel (max %d)", atomic_load(&fwd_max));
    cr_assert_leq(atomic_load(&fwd_max), 3, "at most max_parallel_fwd");
    stop_expert(e);
    conn_close(c, 0);
    close(fd);
}

Test(expert, requests_that_arrive_together_share_a_batch)
{
    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    expert *e = make_expert(64, 1, 0, 1);
    float x[6 * W];
    for (int i = 0; i < 6 * W; i++) x[i] = (float)i;
    expert_submit(e, sk_req(c, 1, EX_FWD, 1, x));
    sk_spin(l, 5);   /* the first one is computing (the probe naps): the next ones queue behind it */
    for (int k = 1; k < 6; k++) expert_submit(e, sk_req(c, 1 + (uint64_t)k, EX_FWD, 1, x + k * W));
    for (int k = 0; k < 6; k++) {
        wire_msg m;
        cr_assert_eq(sk_recv_msg(l, fd, &m, 5000), 0);
        cr_assert_eq(m.id, 1 + (uint64_t)k, "answers in order");
        float y[W];
        cr_assert_eq(sk_result_f32(&m, "outputs", 0, y, W), 1);
        cr_assert_eq(memcmp(y, x + k * W, sizeof y), 0, "each caller gets its own row (w = 1)");
        wire_msg_free(&m);
    }
    const expert_stats *s = expert_stats_get(e);
    cr_assert_eq(s->batches[EX_FWD], 2, "the five that waited were merged into one batch");
    cr_assert_eq(s->rows[EX_FWD], 6);
    stop_expert(e);
    conn_close(c, 0);
    close(fd);
}

Test(expert, min_batch_size_waits_batch_wait_ms_and_no_longer)
{
    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    expert *e = make_expert(64, 8, 80, 2);
    float x[8 * W] = {0};
    uint64_t t0 = rt_clock_us();
    expert_submit(e, sk_req(c, 1, EX_FWD, 2, x));
    wire_msg m;
    cr_assert_eq(sk_recv_msg(l, fd, &m, 5000), 0);
    uint64_t dt = rt_clock_us() - t0;
    cr_assert_eq(m.kind, WIRE_REPLY_OK);
    wire_msg_free(&m);
    cr_assert_geq(dt, 80000, "answered after %llu us: it did not wait for more rows", (unsigned long long)dt);
    cr_assert_lt(dt, 2000000, "waited %llu us: the wait is not bounded", (unsigned long long)dt);
    /* enough rows at once: one batch, no waiting for the timer */
    for (int k = 0; k < 4; k++) expert_submit(e, sk_req(c, 10 + (uint64_t)k, EX_FWD, 2, x));
    for (int k = 0; k < 4; k++) {
        cr_assert_eq(sk_recv_msg(l, fd, &m, 5000), 0);
        cr_assert_eq(m.id, 10 + (uint64_t)k);
        wire_msg_free(&m);
    }
    cr_assert_eq(expert_stats_get(e)->batches[EX_FWD], 2);
    stop_expert(e);
    conn_close(c, 0);
    close(fd);
}

Test(expert, shutdown_fails_waiting_and_later_requests)
{
    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    expert *e = make_expert(64, 64, 5000, 1);
    float x[W] = {0};
    expert_submit(e, sk_req(c, 1, EX_FWD, 1, x));
    sk_spin(l, 10);   /* queued, waiting for 63 more rows */
    expert_shutdown(e);
    expert_submit(e, sk_req(c, 2, EX_FWD, 1, x));
    sk_expect_error(l, fd, 1, DMOE_ESHUTDOWN, "the node is stopping");
    sk_expect_error(l, fd, 2, DMOE_ESHUTDOWN, "the node is stopping");
    cr_assert_eq(expert_busy(e), 0);
    expert_free(e);
    conn_close(c, 0);
    close(fd);
}
