/* test_expert_step.c -- reply, then step (expert.h): a backward's reply goes out before its optimizer
 * step has run, nothing of the expert starts before the step ends, and a sequence of interleaved
 * forwards and backwards through the expert actor (batches split across two workers, steps in ranges)
 * gives the outputs, input gradients, parameters and optimizer state that the kernels and kern_optim_step
 * give when called one after the other in this thread -- bit for bit, read back from a checkpoint asked
 * for while the last step was still running.
 *
 * A last test has two experts' backwards run at once on the shared pool.
 *
 * The probe tests hold the workers with a probe class whose kernels wait on a gate the test opens (on
 * the workers: the loop never sleeps), so the order they check does not depend on timing. */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "actors/node/ckpt.h"
#include "actors/serve/expert.h"
#include "kernels/kern_classes.h"
#include "runtime/rt_err.h"
#include "test/unit/serve/serve_kit.h"

#define PW 4             /* the probe's row width */
#define SPIN_LIMIT 5000  /* loop runs of 1 ms: the longest any wait here may take */

static atomic_int hold_fwd, hold_bwd, fwd_now, bwd_now;

/* gate_wait, on a worker: waits until the test opens the gate. */
static void gate_wait(atomic_int *gate)
{
    struct timespec ts = {0, 1000000L};
    while (atomic_load(gate)) nanosleep(&ts, NULL);
}

static int gp_forward(const kern_model *m, const float *params, int64_t B, const void *const *in, float *const *out,
                      float *ws, uint64_t seed)
{
    atomic_fetch_add(&fwd_now, 1);
    gate_wait(&hold_fwd);
    const float *x = in[0];
    for (int64_t i = 0; i < B * PW; i++) out[0][i] = params[0] * x[i];
    atomic_fetch_sub(&fwd_now, 1);
    return 0;
}

static int gp_backward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                       const float *const *gout, float *const *gin, float *gparams, float *ws, uint64_t seed)
{
    atomic_fetch_add(&bwd_now, 1);
    gate_wait(&hold_bwd);
    const float *x = in[0];
    gparams[0] = 0;
    for (int64_t i = 0; i < B * PW; i++) {
        gin[0][i] = params[0] * gout[0][i];
        gparams[0] += gout[0][i] * x[i];
    }
    atomic_fetch_sub(&bwd_now, 1);
    return 0;
}

static const kern_class gated_probe = {
    .name = "gated_probe", .module_name = "GatedProbe", .setup = sk_probe_setup, .init = sk_probe_init,
    .forward_ws = sk_probe_ws, .backward_ws = sk_probe_ws, .forward = gp_forward, .backward = gp_backward,
};

static rt_loop *l;
static rt_pool *pool;

static void teardown(void)
{
    atomic_store(&hold_fwd, 0);
    atomic_store(&hold_bwd, 0);
    sk_spin(l, 5);
    rt_pool_free(pool);
    rt_loop_free(l);
}

static void setup_pool(int threads)
{
    l = rt_loop_new();
    pool = rt_pool_new(l, threads);
    cr_assert(l && pool);
}

static void setup3(void) { setup_pool(3); }
static void setup2(void) { setup_pool(2); }

TestSuite(expert_step, .fini = teardown, .timeout = 60);

/* spin_until runs the loop until *v == want (an atomic) or the limit passes; returns whether it did. */
static int spin_until(atomic_int *v, int want)
{
    for (int i = 0; i < SPIN_LIMIT && atomic_load(v) != want; i++) sk_spin(l, 1);
    return atomic_load(v) == want;
}

static expert *probe_expert(const char *uid)
{
    expert_cfg cfg = {.cls = &gated_probe, .kcfg = {.hidden_dim = PW}, .max_batch_size = PW, .min_batch_size = 1,
                      .max_parallel_fwd = 3, .pool = pool};
    return sk_probe_expert(l, uid, cfg);
}

static void recv_ok(int fd, uint64_t id, const char *key, float *out, size_t n)
{
    wire_msg m;
    cr_assert_eq(sk_recv_msg(l, fd, &m, 5000), 0, "no reply %llu", (unsigned long long)id);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    cr_assert_eq(m.id, id, "reply %llu where %llu was expected", (unsigned long long)m.id, (unsigned long long)id);
    if (out) cr_assert_geq(sk_result_f32(&m, key, 0, out, n), 0, "reply %llu has no %s", (unsigned long long)id, key);
    wire_msg_free(&m);
}

/* Two probe experts, each with its own connection (the far ends fd[0], fd[1]), and rows of ones. */
typedef struct {
    expert *e[2];
    conn *c[2];
    int fd[2];
    float x[PW * PW];
} two_experts;

static void two_open(two_experts *t)
{
    for (int k = 0; k < 2; k++) {
        t->c[k] = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &t->fd[k]);
        t->e[k] = probe_expert(k ? "probe.1" : "probe.0");
    }
    for (int i = 0; i < PW * PW; i++) t->x[i] = 1.0f;
}

/* two_close shuts both experts down (nothing may be left running) and closes the connections. */
static void two_close(two_experts *t)
{
    for (int k = 0; k < 2; k++) {
        expert_shutdown(t->e[k]);
        cr_assert_eq(expert_busy(t->e[k]), 0);
        expert_free(t->e[k]);
        conn_close(t->c[k], 0);
        close(t->fd[k]);
    }
}

Test(expert_step, the_reply_goes_out_before_the_step_and_nothing_starts_until_it_ends, .init = setup3)
{
    two_experts t;
    two_open(&t);
    expert *a = t.e[0], *b = t.e[1];
    conn *ca = t.c[0], *cb = t.c[1];
    int fd_a = t.fd[0], fd_b = t.fd[1];
    const float *x = t.x;
    /* a's backward holds one worker; b's three forwards take the two others and queue behind them */
    atomic_store(&hold_bwd, 1);
    atomic_store(&hold_fwd, 1);
    expert_submit(a, sk_req(ca, 1, EX_BWD, PW, x));
    cr_assert(spin_until(&bwd_now, 1), "the backward did not start");
    for (int k = 0; k < 3; k++) expert_submit(b, sk_req(cb, 10 + (uint64_t)k, EX_FWD, PW, x));
    cr_assert(spin_until(&fwd_now, 2), "two forwards should run, the third wait for a worker");
    /* the backward ends: its worker takes b's third forward, so a's step can only queue behind it */
    atomic_store(&hold_bwd, 0);
    float gx[PW * PW];
    recv_ok(fd_a, 1, "grad_inputs", gx, PW * PW);
    cr_assert_eq(gx[0], 1.0f, "input gradients at the weights before the step (w = 1)");
    cr_assert(expert_stepping(a), "the reply came after the step: not reply-then-step");
    cr_assert_eq(expert_stats_get(a)->steps, 0, "the step has not been taken yet");
    cr_assert_geq(expert_busy(a), 1, "a running step keeps the expert busy");
    /* a forward for a waits for the step even once workers are free */
    expert_submit(a, sk_req(ca, 2, EX_FWD, PW, x));
    sk_spin(l, 5);
    cr_assert_eq(expert_stats_get(a)->batches[EX_FWD], 0, "a forward started during the step");
    atomic_store(&hold_fwd, 0);
    int seen = 0;   /* b's three forwards end in any order */
    for (int k = 0; k < 3; k++) {
        wire_msg m;
        cr_assert_eq(sk_recv_msg(l, fd_b, &m, 5000), 0, "only %d of b's 3 replies", k);
        cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
        cr_assert(m.id >= 10 && m.id < 13, "reply %llu", (unsigned long long)m.id);
        seen |= 1 << (m.id - 10);
        wire_msg_free(&m);
    }
    cr_assert_eq(seen, 7);
    /* sgd, lr 0.5: dL/dw = sum(gout * x) = 16, so w = 1 - 0.5 * 16 = -7, which the forward uses */
    float y[PW * PW];
    recv_ok(fd_a, 2, "outputs", y, PW * PW);
    cr_assert_eq(y[0], -7.0f, "the forward after the step sees the stepped weight (got %g)", y[0]);
    cr_assert_not(expert_stepping(a));
    cr_assert_eq(expert_stats_get(a)->steps, 1);
    two_close(&t);
}

/* ---- the serial reference: the kernels and kern_optim_step, one call after the other ---- */

#define H 128            /* ~132 K parameters: the step takes two ranges on two workers */
#define MAX_ROWS 80
#define EX_MIN_CHUNK_ROWS 32   /* expert.c's: how a batch splits across the workers */
#define WORKERS 2

typedef struct {
    kern_model m;
    float *p, *g, *gk, *ws;
    kern_optim opt;
} ref_model;

/* ref_run computes what the expert computes for one batch of B rows of x (input, and grad_output for a
 * backward): split into the same chunks, gradients summed chunk after chunk, then one step. */
static void ref_run(ref_model *r, int dir, int64_t B, const float *x, float *res)
{
    const kern_model *m = &r->m;
    int64_t k = B / EX_MIN_CHUNK_ROWS;
    if (k > WORKERS) k = WORKERS;
    if (k < 2) k = 1;
    for (int64_t i = 0; i < k; i++) {
        int64_t r0 = B * i / k, r1 = B * (i + 1) / k, n = r1 - r0;
        const void *in[1] = {x + r0 * H};
        float *out[1] = {res + r0 * H};
        if (dir == EX_FWD) {
            cr_assert_eq(m->cls->forward(m, r->p, n, in, out, r->ws, 0), 0);
            continue;
        }
        const float *gout[1] = {x + r0 * H};
        cr_assert_eq(m->cls->backward(m, r->p, n, in, gout, out, i == 0 ? r->g : r->gk, r->ws, 0), 0);
        if (i > 0)
            for (size_t j = 0; j < m->n_floats; j++) r->g[j] += r->gk[j];
    }
    if (dir == EX_BWD) kern_optim_step(&r->opt, m, r->p, r->g, r->opt.cfg.lr);
}

static void sequence_matches(const char *optimizer, float clip)
{
    const kern_class *cls = kern_expert_find("ffn");
    cr_assert_not_null(cls);
    char root[] = "/tmp/dmoe-expert-step-XXXXXX";
    cr_assert_not_null(mkdtemp(root));
    expert_cfg cfg = {.cls = cls, .kcfg = {.hidden_dim = H}, .max_batch_size = MAX_ROWS, .min_batch_size = 1,
                      .max_parallel_fwd = 2, .seed = 42, .pool = pool, .compression = WIRE_COMP_NONE,
                      .ckpt_dir = root, .keep_ckpts = 1};
    cr_assert_eq(kern_optim_parse(optimizer, &cfg.opt), 0);
    cfg.opt.clip_grad_norm = clip;
    char err[256];
    expert *e = expert_new(l, "ffn.0", &cfg, err, sizeof err);
    cr_assert_not_null(e, "%s", err);

    ref_model r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(cls->setup(&r.m, &cfg.kcfg), 0);
    r.m.cls = cls;
    size_t nf = r.m.n_floats;
    cr_assert_gt(nf, 4 * KERN_OPTIM_BLOCK * WORKERS, "the step should take more than one range");
    r.p = malloc(nf * sizeof(float));
    r.g = malloc(nf * sizeof(float));
    r.gk = malloc(nf * sizeof(float));
    r.ws = malloc(cls->backward_ws(&r.m, MAX_ROWS) * sizeof(float) + cls->forward_ws(&r.m, MAX_ROWS) * sizeof(float));
    cr_assert(r.p && r.g && r.gk && r.ws);
    cls->init(&r.m, r.p, cfg.seed);
    cr_assert_eq(kern_optim_init(&r.opt, &cfg.opt, nf), 0);

    int fd;
    conn *c = sk_conn_pair(l, &sk_noop_ops, NULL, NULL, &fd);
    static const struct { int dir; int64_t rows; } seq[] = {
        {EX_FWD, 1}, {EX_BWD, 1}, {EX_FWD, 64}, {EX_BWD, 64}, {EX_BWD, 1}, {EX_FWD, 5},
        {EX_BWD, MAX_ROWS}, {EX_BWD, 3}, {EX_FWD, 72}, {EX_BWD, 66}, {EX_FWD, 2},
    };
    const int n = (int)(sizeof seq / sizeof seq[0]);
    float *x = malloc(MAX_ROWS * H * sizeof(float)), *got = malloc(MAX_ROWS * H * sizeof(float)),
          *want = malloc(MAX_ROWS * H * sizeof(float));
    cr_assert(x && got && want);
    int steps = 0;
    for (int q = 0; q < n; q++) {
        uint32_t s = 977u * (uint32_t)q + 1u;
        for (int i = 0; i < seq[q].rows * H; i++) {
            s = s * 1664525u + 1013904223u;
            x[i] = (float)(s >> 8) / 8388608.0f - 1.0f;
        }
        size_t len = (size_t)seq[q].rows * H * sizeof(float);
        ref_run(&r, seq[q].dir, seq[q].rows, x, want);
        /* back to back: the request arrives while the previous backward's step may still run */
        expert_submit(e, sk_req(c, (uint64_t)q + 1, seq[q].dir, seq[q].rows, x));
        recv_ok(fd, (uint64_t)q + 1, seq[q].dir == EX_FWD ? "outputs" : "grad_inputs", got, (size_t)seq[q].rows * H);
        cr_assert_eq(memcmp(got, want, len), 0, "%s: request %d (%s, %lld rows) differs from the kernels", optimizer, q,
                     seq[q].dir == EX_FWD ? "forward" : "backward", (long long)seq[q].rows);
        steps += seq[q].dir == EX_BWD;
        if (q % 3 == 2) {   /* now and then idle, as the node's pool: the expert lets go of its extra buffers */
            for (int i = 0; i < SPIN_LIMIT && expert_stepping(e); i++) sk_spin(l, 1);
            expert_release_idle(e);
        }
    }
    /* one more backward, and a checkpoint asked for at once: it must hold the parameters after its step */
    ref_run(&r, EX_BWD, 7, x, want);
    expert_submit(e, sk_req(c, 100, EX_BWD, 7, x));
    recv_ok(fd, 100, "grad_inputs", got, 7 * H);
    cr_assert_eq(memcmp(got, want, 7 * H * sizeof(float)), 0);
    steps++;
    expert_checkpoint(e);
    for (int i = 0; i < SPIN_LIMIT && (expert_checkpoint_pending(e) || expert_stepping(e)); i++) sk_spin(l, 1);
    cr_assert_not(expert_checkpoint_pending(e), "the checkpoint was not written");
    cr_assert_eq(expert_stats_get(e)->steps, (uint64_t)steps);

    float *cp = malloc(nf * sizeof(float));
    kern_optim co;
    cr_assert_eq(kern_optim_init(&co, &cfg.opt, nf), 0);
    ckpt_loaded info;
    cr_assert_eq(ckpt_load(root, "ffn.0", &r.m, cp, &co, &info, err, sizeof err), 1, "%s", err);
    cr_assert_eq(info.step, steps, "the checkpoint holds step %lld, not %d", (long long)info.step, steps);
    cr_assert_eq(co.step, r.opt.step);
    cr_assert_eq(memcmp(cp, r.p, nf * sizeof(float)), 0, "%s: parameters differ from the kernels'", optimizer);
    if (r.opt.m) {
        cr_assert_eq(memcmp(co.m, r.opt.m, nf * sizeof(float)), 0, "%s: first moments differ", optimizer);
        cr_assert_eq(memcmp(co.v, r.opt.v, nf * sizeof(float)), 0, "%s: second moments differ", optimizer);
    }
    expert_shutdown(e);
    cr_assert_eq(expert_busy(e), 0);
    expert_free(e);
    conn_close(c, 0);
    close(fd);
    kern_optim_free(&co);
    kern_optim_free(&r.opt);
    free(cp);
    free(x);
    free(got);
    free(want);
    free(r.p);
    free(r.g);
    free(r.gk);
    free(r.ws);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    cr_assert_eq(system(cmd), 0);
}

Test(expert_step, interleaved_adam_sequence_is_the_kernels_bit_for_bit, .init = setup2)
{
    sequence_matches("adam", 0.0f);
}

Test(expert_step, interleaved_clipped_sgd_sequence_is_the_kernels_bit_for_bit, .init = setup2)
{
    sequence_matches("sgd", 0.5f);
}

/* Two experts share the pool: their backwards (and so their steps) run at the same time; nothing on
 * the loop makes one wait for the other. */
Test(expert_step, backwards_of_two_experts_run_at_once, .init = setup3)
{
    two_experts t;
    two_open(&t);
    atomic_store(&hold_bwd, 1);
    for (int k = 0; k < 2; k++) expert_submit(t.e[k], sk_req(t.c[k], 1 + (uint64_t)k, EX_BWD, PW, t.x));
    cr_assert(spin_until(&bwd_now, 2), "the two experts' backwards did not run together");
    atomic_store(&hold_bwd, 0);
    for (int k = 0; k < 2; k++) {
        recv_ok(t.fd[k], 1 + (uint64_t)k, "grad_inputs", NULL, 0);
        for (int i = 0; i < SPIN_LIMIT && expert_stepping(t.e[k]); i++) sk_spin(l, 1);
        cr_assert_eq(expert_stats_get(t.e[k])->steps, 1);
    }
    two_close(&t);
}
