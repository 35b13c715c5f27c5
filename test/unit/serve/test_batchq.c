/* test_batchq.c -- the batch queue alone: it merges requests into one batch and answers each caller
 * its own rows in order, bounds batches by max_batch_size, waits a bounded time for min_batch_size,
 * drops callers that left and answers every request of a failed batch. In process: one loop, the nop
 * expert class computing on the test thread, replies read from the far end of a socketpair. */
#include <criterion/criterion.h>
#include <string.h>
#include <unistd.h>

#include "actors/serve/batchq.h"
#include "kernels/kern_classes.h"
#include "runtime/rt_err.h"
#include "test/unit/serve/serve_kit.h"

#define W 4   /* nop hidden_dim: floats per row */

static rt_loop *l;
static kern_model model;

static void setup(void)
{
    l = rt_loop_new();
    cr_assert_not_null(l);
    const kern_class *cls = kern_expert_find("nop");
    kern_config kc = {.hidden_dim = W};
    cr_assert_eq(cls->setup(&model, &kc), 0);
    model.cls = cls;
}

static void teardown(void)
{
    sk_spin(l, 5);
    rt_loop_free(l);
}

TestSuite(batchq, .init = setup, .fini = teardown, .timeout = 20);

/* What the expert does with a batch: run it (here, on this thread) and hand it back. */
static void compute(batchq *q, ex_batch *b)
{
    batchq_fill(b, 0, b->B);   /* as the batch's job does first, on a worker */
    const void *in[1] = {b->in[0]};
    float *out[1] = {b->res[0]};
    b->rc = model.cls->forward(&model, NULL, b->B, in, out, b->ws, 0);
    batchq_pack_replies(b);   /* the job's last part: each request its own rows */
    batchq_release_work(b);
    batchq_answer(q, b);
}

static void expect_rows(int fd, uint64_t id, const float *x, int64_t rows)
{
    wire_msg m;
    cr_assert_eq(sk_recv_msg(l, fd, &m, 2000), 0, "no reply for %llu", (unsigned long long)id);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    cr_assert_eq(m.id, id, "replies come in request order");
    float got[64];
    cr_assert_eq(sk_result_f32(&m, "outputs", 0, got, (size_t)rows * W), rows);
    cr_assert_eq(memcmp(got, x, (size_t)rows * W * sizeof(float)), 0, "request %llu got rows that are not its own",
                 (unsigned long long)id);
    wire_msg_free(&m);
}

Test(batchq, merges_requests_and_answers_each_its_own_rows_in_order)
{
    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    batchq_cfg cfg = {.max_batch_size = 16, .min_batch_size = 1};
    batchq *q = batchq_new(EX_FWD, &cfg, &model, "e.0");
    float x[6 * W];
    for (int i = 0; i < 6 * W; i++) x[i] = (float)i;
    const int64_t rows[3] = {2, 3, 1};
    int64_t at = 0;
    for (int k = 0; k < 3; k++) {
        batchq_push(q, sk_req(c, (uint64_t)k + 1, EX_FWD, rows[k], x + at * W));
        at += rows[k];
    }
    cr_assert_eq(batchq_waiting(q), 3);
    cr_assert_eq(batchq_wait_us(q, rt_clock_us()), 0);
    ex_batch *b = batchq_take(q, rt_clock_us());
    cr_assert_not_null(b);
    cr_assert_eq(b->B, 6);
    cr_assert_eq(b->nreq, 3);
    /* filled as two chunk jobs would, each its rows, across a request's boundary */
    batchq_fill(b, 3, 6);
    batchq_fill(b, 0, 3);
    cr_assert_eq(memcmp(b->in[0], x, sizeof x), 0, "the batch holds the rows in arrival order");
    cr_assert_eq(batchq_waiting(q), 0);
    cr_assert_eq(batchq_pending(q), 3);
    compute(q, b);
    cr_assert_eq(batchq_pending(q), 0);
    at = 0;
    for (int k = 0; k < 3; k++) {
        expect_rows(fd, (uint64_t)k + 1, x + at * W, rows[k]);
        at += rows[k];
    }
    batchq_free(q);
    conn_close(c, 0);
    close(fd);
}

Test(batchq, max_batch_size_bounds_a_batch_and_a_failed_batch_answers_everyone)
{
    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    batchq_cfg cfg = {.max_batch_size = 7, .min_batch_size = 1};
    batchq *q = batchq_new(EX_FWD, &cfg, &model, "e.0");
    float x[9 * W];
    for (int i = 0; i < 9 * W; i++) x[i] = (float)-i;
    for (int k = 0; k < 3; k++) batchq_push(q, sk_req(c, (uint64_t)k + 1, EX_FWD, 3, x + 3 * k * W));
    ex_batch *b1 = batchq_take(q, rt_clock_us());
    cr_assert_not_null(b1);
    cr_assert_eq(b1->B, 6, "whole requests up to 7 rows: two of three");
    cr_assert_eq(batchq_waiting(q), 1);
    ex_batch *b2 = batchq_take(q, rt_clock_us());
    cr_assert_not_null(b2);
    cr_assert_eq(b2->B, 3);
    cr_assert_null(batchq_take(q, rt_clock_us()), "nothing left to take");
    compute(q, b1);
    b2->rc = DMOE_EINTERNAL;
    snprintf(b2->err, sizeof b2->err, "the kernel broke");
    batchq_release_work(b2);
    batchq_answer(q, b2);
    expect_rows(fd, 1, x, 3);
    expect_rows(fd, 2, x + 3 * W, 3);
    sk_expect_error(l, fd, 3, DMOE_EINTERNAL, "the kernel broke");
    batchq_free(q);
    conn_close(c, 0);
    close(fd);
}

Test(batchq, min_batch_size_waits_a_bounded_time)
{
    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    batchq_cfg cfg = {.max_batch_size = 16, .min_batch_size = 8, .batch_wait_ms = 50};
    batchq *q = batchq_new(EX_FWD, &cfg, &model, "e.0");
    float x[8 * W] = {0};
    cr_assert_eq(batchq_wait_us(q, rt_clock_us()), -1, "empty");
    ex_req *r = sk_req(c, 1, EX_FWD, 2, x);
    uint64_t t0 = r->t_arrive_us;
    batchq_push(q, r);
    cr_assert_eq(batchq_wait_us(q, t0), 50000);
    cr_assert_eq(batchq_wait_us(q, t0 + 20000), 30000);
    cr_assert_null(batchq_take(q, t0 + 20000), "2 rows of 8, and the oldest waited 20 of 50 ms");
    cr_assert_eq(batchq_wait_us(q, t0 + 50000), 0, "waited long enough");
    /* or enough rows come: then no waiting at all */
    batchq_push(q, sk_req(c, 2, EX_FWD, 6, x + 2 * W));
    cr_assert_eq(batchq_wait_us(q, t0), 0);
    ex_batch *b = batchq_take(q, t0);
    cr_assert_not_null(b);
    cr_assert_eq(b->B, 8);
    compute(q, b);
    expect_rows(fd, 1, x, 2);
    expect_rows(fd, 2, x + 2 * W, 6);
    batchq_free(q);
    conn_close(c, 0);
    close(fd);
}

Test(batchq, callers_that_left_are_dropped_and_the_rest_answered)
{
    int fa, fb;
    conn *ca = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fa);
    conn *cb = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fb);
    batchq_cfg cfg = {.max_batch_size = 16, .min_batch_size = 1};
    batchq *q = batchq_new(EX_FWD, &cfg, &model, "e.0");
    float x[4 * W];
    for (int i = 0; i < 4 * W; i++) x[i] = (float)(3 * i);
    batchq_push(q, sk_req(ca, 1, EX_FWD, 2, x));
    batchq_push(q, sk_req(cb, 2, EX_FWD, 2, x + 2 * W));
    batchq_push(q, sk_req(ca, 3, EX_FWD, 1, x));
    conn_close(ca, 0);   /* a leaves before the batch is built */
    ex_batch *b = batchq_take(q, rt_clock_us());
    cr_assert_not_null(b);
    cr_assert_eq(b->nreq, 2, "the leaver's first request is dropped, its second rides along");
    /* the leaver's other request is in the batch: the answer skips it */
    compute(q, b);
    cr_assert_eq(batchq_pending(q), 0);
    expect_rows(fb, 2, x + 2 * W, 2);
    batchq_free(q);
    conn_close(cb, 0);
    close(fa);
    close(fb);
}

Test(batchq, free_fails_what_still_waits)
{
    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    batchq_cfg cfg = {.max_batch_size = 16, .min_batch_size = 4, .batch_wait_ms = 1000};
    batchq *q = batchq_new(EX_FWD, &cfg, &model, "e.0");
    float x[W] = {0};
    batchq_push(q, sk_req(c, 9, EX_FWD, 1, x));
    batchq_free(q);
    sk_expect_error(l, fd, 9, DMOE_ESHUTDOWN, NULL);
    conn_close(c, 0);
    close(fd);
}
