/* test_expert_staged.c -- a two-stage backward (kern_class backward_inputs / backward_params) in the
 * expert actor with a real pool: the caller gets its input gradients while the parameter gradients are
 * still being computed, the expert's next batch waits for them and for the step, and the step uses
 * them (summed over chunks when the batch was split). The class is a probe defined here, y = w * x with
 * one parameter, whose second stage holds until the test lets it go (bounded at 5 s). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "actors/serve/expert.h"
#include "runtime/rt_err.h"
#include "test/unit/serve/serve_kit.h"

#define W 4
#define ROWS_MAX 96

static atomic_int release, params_running, params_done, waited_out;

static int sp_forward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                      float *const *out, float *ws, uint64_t seed)
{
    const float *x = in[0];
    for (int64_t i = 0; i < B * W; i++) out[0][i] = params[0] * x[i];
    return 0;
}

static int sp_inputs(const kern_model *m, const float *params, int64_t B, const void *const *in, const float *saved,
                     const float *const *gout, float *const *gin, float *gparams, float *ws, uint64_t seed)
{
    for (int64_t i = 0; i < B * W; i++) gin[0][i] = params[0] * gout[0][i];
    gparams[0] = NAN;   /* the second stage must overwrite it, or the step is skipped (not finite) */
    return 0;
}

/* d w = sum of x * grad_output (the test sends x as both). */
static int sp_params(const kern_model *m, int64_t B, const void *const *in, const float *const *gout, float *gparams,
                     float *ws)
{
    atomic_fetch_add(&params_running, 1);
    struct timespec ts = {0, 1000000L};
    int i = 0;
    for (; i < 5000 && !atomic_load(&release); i++) nanosleep(&ts, NULL);
    if (!atomic_load(&release)) atomic_store(&waited_out, 1);
    const float *x = in[0];
    gparams[0] = 0;
    for (int64_t k = 0; k < B * W; k++) gparams[0] += x[k] * gout[0][k];
    atomic_fetch_add(&params_done, 1);
    return 0;
}

static int sp_backward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                       const float *const *gout, float *const *gin, float *gparams, float *ws, uint64_t seed)
{
    sp_inputs(m, params, B, in, NULL, gout, gin, gparams, ws, seed);
    return sp_params(m, B, in, gout, gparams, ws);
}

static const kern_class staged_probe = {
    .name = "staged_probe", .module_name = "StagedProbe", .setup = sk_probe_setup, .init = sk_probe_init,
    .forward_ws = sk_probe_ws, .backward_ws = sk_probe_ws, .forward = sp_forward, .backward = sp_backward,
    .backward_inputs = sp_inputs, .backward_params = sp_params,
};

static rt_loop *l;
static rt_pool *pool;

static void setup(void)
{
    l = rt_loop_new();
    pool = rt_pool_new(l, 3);
    cr_assert(l && pool);
}

static void teardown(void)
{
    atomic_store(&release, 1);
    sk_spin(l, 5);
    rt_pool_free(pool);
    rt_loop_free(l);
}

TestSuite(expert_staged, .init = setup, .fini = teardown, .timeout = 30);

/* An expert of the staged probe on the suite's pool: SGD with lr 0.5, batches up to ROWS_MAX rows. */
static expert *make_staged(const char *uid)
{
    expert_cfg cfg = {.cls = &staged_probe, .kcfg = {.hidden_dim = W}, .max_batch_size = ROWS_MAX,
                      .min_batch_size = 1, .max_parallel_fwd = 2, .pool = pool};
    return sk_probe_expert(l, uid, cfg);
}

/* One backward of rows rows (3 chunks at 96 on 3 workers, one job at W), then a forward. */
static void reply_before_params(int64_t rows)
{
    atomic_store(&release, 0);
    atomic_store(&params_running, 0);
    atomic_store(&params_done, 0);
    atomic_store(&waited_out, 0);
    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    expert *e = make_staged("staged.0");
    static float x[ROWS_MAX * W];
    float g = 0;
    for (int i = 0; i < ROWS_MAX * W; i++) x[i] = 0.01f * (float)(1 + i % 7);
    for (int i = 0; i < rows * W; i++) g += x[i] * x[i];

    expert_submit(e, sk_req(c, 1, EX_BWD, rows, x));
    wire_msg m;
    cr_assert_eq(sk_recv_msg(l, fd, &m, 5000), 0, "no backward reply while the parameter gradients wait");
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    static float gx[ROWS_MAX * W];
    cr_assert_eq(sk_result_f32(&m, "grad_inputs", 0, gx, (size_t)rows * W), rows);
    cr_assert_eq(memcmp(gx, x, (size_t)rows * W * sizeof(float)), 0, "grad_inputs = w * grad_outputs, w = 1");
    wire_msg_free(&m);
    cr_assert_eq(atomic_load(&params_done), 0, "the reply came after the parameter gradients");

    /* the next batch waits for the second stage and the step */
    float one[W] = {1, 1, 1, 1};
    expert_submit(e, sk_req(c, 2, EX_FWD, 1, one));
    cr_assert_eq(sk_recv_msg(l, fd, &m, 200), -1, "a forward ran before the parameter gradients were in");
    atomic_store(&release, 1);
    cr_assert_eq(sk_recv_msg(l, fd, &m, 5000), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    float y[W];
    cr_assert_eq(sk_result_f32(&m, "outputs", 0, y, W), 1);
    wire_msg_free(&m);
    float w = 1.0f - 0.5f * g;
    cr_assert_float_eq(y[0], w, 1e-5f, "forward after the step: w %g, expected %g (summed gradient %g)", y[0], w, g);
    cr_assert_eq(atomic_load(&waited_out), 0);
    int chunks = rows >= 64 ? 3 : 1;
    cr_assert_eq(atomic_load(&params_done), chunks, "second stages run: %d", atomic_load(&params_done));
    const expert_stats *s = expert_stats_get(e);
    cr_assert_eq(s->steps, 1);
    cr_assert_gt(s->params_after_reply_us, 0);
    expert_shutdown(e);
    cr_assert_eq(expert_busy(e), 0);
    expert_free(e);
    conn_close(c, 0);
    close(fd);
}

Test(expert_staged, one_job_replies_before_its_parameter_gradients) { reply_before_params(W); }
Test(expert_staged, chunks_reply_before_their_parameter_gradients) { reply_before_params(ROWS_MAX); }

/* The expert stops while a second stage runs: a backward still waiting fails with the stop, the
 * batch (answered already) is given up once its second stage is back, and nothing leaks (the ASan and
 * valgrind runs of this test). */
Test(expert_staged, a_stop_during_the_second_stage_gives_the_batch_up)
{
    atomic_store(&release, 0);
    atomic_store(&params_done, 0);
    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    expert *e = make_staged("staged.1");
    static float x[ROWS_MAX * W];
    for (int i = 0; i < ROWS_MAX * W; i++) x[i] = 0.5f;
    expert_submit(e, sk_req(c, 1, EX_BWD, ROWS_MAX, x));
    wire_msg m;
    cr_assert_eq(sk_recv_msg(l, fd, &m, 5000), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    wire_msg_free(&m);
    expert_submit(e, sk_req(c, 2, EX_BWD, 1, x));   /* waits behind the first */
    sk_spin(l, 5);
    expert_shutdown(e);
    sk_expect_error(l, fd, 2, DMOE_ESHUTDOWN, NULL);
    cr_assert_eq(atomic_load(&params_done), 0);
    expert_free(e);   /* stopped with its second stages out: their mail is dropped */
    atomic_store(&release, 1);
    for (int i = 0; i < 100 && atomic_load(&params_done) < 3; i++) sk_spin(l, 10);
    sk_spin(l, 20);
    cr_assert_eq(atomic_load(&params_done), 3);
    cr_assert_eq(atomic_load(&waited_out), 0);
    conn_close(c, 0);
    close(fd);
}
