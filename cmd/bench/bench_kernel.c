/* bench_kernel.c -- dmoe-bench's in-process figures (see bench.h): the machine's limit (cblas_sgemm on the
 * ffn's two shapes, sgemv for one row) and the ffn kernel's forward and forward + backward, each on B rows
 * split across b->threads threads that start together at a barrier and are joined before the figure
 * returns; then one thread's 1-row forward latency and one Adam step. OpenBLAS runs one thread inside
 * each of ours, as in the node.
 */
#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/bench/bench.h"
#include "kernels/kern_optim.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_actor.h"
#include "runtime/rt_err.h"

const int64_t bench_batches[NB] = {1, 64, 256, 1024};

typedef struct {
    int kind;                    /* 0 gemm, 1 kernel forward, 2 kernel forward + backward */
    const kern_model *m;
    const float *params;
    int64_t rows, H;
    double seconds;
    pthread_barrier_t *start;
    double rows_per_s;           /* out */
    int rc;                      /* out */
} work;

float *bench_alloc_normal(size_t n, uint64_t seed)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) return NULL;
    kern_rng r;
    kern_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) p[i] = kern_rng_normal(&r) * 0.1f;
    return p;
}

static void *work_run(void *arg)
{
    work *w = arg;
    const int64_t B = w->rows, H = w->H;
    float *x = bench_alloc_normal((size_t)B * (size_t)H, 1), *gy = bench_alloc_normal((size_t)B * (size_t)H, 2);
    float *y = malloc((size_t)B * (size_t)H * sizeof(float)), *gx = malloc((size_t)B * (size_t)H * sizeof(float));
    float *h = NULL, *w1 = NULL, *w2 = NULL, *ws = NULL, *grads = NULL, *saved = NULL;
    if (w->kind == W_GEMM) {
        h = malloc((size_t)B * 4 * (size_t)H * sizeof(float));
        w1 = bench_alloc_normal((size_t)(4 * H * H), 3);
        w2 = bench_alloc_normal((size_t)(4 * H * H), 4);
    } else {
        const kern_class *cls = w->m->cls;
        size_t n = w->kind == W_FWD ? cls->forward_ws(w->m, B) : cls->backward_ws(w->m, B);
        ws = malloc((n ? n : 1) * sizeof(float));
        grads = w->kind == W_FWDBWD ? malloc(w->m->n_floats * sizeof(float)) : NULL;
        if (w->kind == W_FWDBWD && cls->saved_floats) saved = malloc((size_t)B * cls->saved_floats(w->m) * sizeof(float) + 64);
    }
    int ok = x && gy && y && gx && (w->kind == W_GEMM ? h && w1 && w2 : ws && (w->kind == W_FWD || grads));
    w->rc = ok ? 0 : DMOE_ENOMEM;
    const void *in[1] = {x};
    float *out[1] = {y};
    const float *go[1] = {gy};
    float *gi[1] = {gx};
    uint64_t iters = 0, t0 = 0, t1 = 0;
    for (int pass = 0; pass < 2; pass++) {   /* pass 0: one warm-up iteration, then everyone starts together */
        if (pass == 1) {
            pthread_barrier_wait(w->start);
            t0 = rt_clock_us();
        }
        uint64_t deadline = t0 + (uint64_t)(w->seconds * 1e6);
        do {
            if (!ok) break;
            if (w->kind == W_GEMM && B == 1) {   /* one row: the matrix-vector product, as kern_linear_fwd does */
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)(4 * H), (int)H, 1.0f, w1, (int)H, x, 1, 0.0f, h, 1);
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)H, (int)(4 * H), 1.0f, w2, (int)(4 * H), h, 1, 0.0f, y, 1);
            } else if (w->kind == W_GEMM) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)B, (int)(4 * H), (int)H, 1.0f, x, (int)H, w1,
                            (int)H, 0.0f, h, (int)(4 * H));
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)B, (int)H, (int)(4 * H), 1.0f, h, (int)(4 * H),
                            w2, (int)(4 * H), 0.0f, y, (int)H);
            } else {
                /* forward + backward with each product once: the backward takes the forward's saved
                 * activations, as the node does when a backward brings its forward's handle */
                const kern_class *cls = w->m->cls;
                int rc = saved ? cls->forward_save(w->m, w->params, B, in, out, ws, 0, saved)
                               : cls->forward(w->m, w->params, B, in, out, ws, 0);
                if (rc == 0 && w->kind == W_FWDBWD)
                    rc = saved ? cls->backward_saved(w->m, w->params, B, in, saved, go, gi, grads, ws, 0)
                               : cls->backward(w->m, w->params, B, in, go, gi, grads, ws, 0);
                if (rc) { w->rc = rc; ok = 0; }
            }
            if (pass == 1) iters++;
            t1 = rt_clock_us();
        } while (pass == 1 && t1 < deadline);
    }
    w->rows_per_s = ok && t1 > t0 ? (double)iters * (double)B / ((double)(t1 - t0) / 1e6) : 0;
    free(x); free(gy); free(y); free(gx); free(h); free(w1); free(w2); free(ws); free(grads); free(saved);
    return NULL;
}

/* Run kind on B rows split across the threads for `seconds`; returns rows per second over all threads
 * (0 on error). */
static double measure_once(bench *b, int kind, const kern_model *m, const float *params, int64_t B, double seconds)
{
    int T = b->threads;
    if (T > B) T = (int)B;
    work w[256];
    pthread_t th[256];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)T);
    int started = 0;
    for (int i = 0; i < T; i++) {
        int64_t share = B / T + (i < B % T ? 1 : 0);
        w[i] = (work){.kind = kind, .m = m, .params = params, .rows = share, .H = b->hidden, .seconds = seconds,
                      .start = &bar};
        if (pthread_create(&th[i], NULL, work_run, &w[i]) != 0) break;
        started++;
    }
    if (started < T) {   /* cannot happen on a sane machine; never leave a thread waiting on the barrier */
        fprintf(stderr, "dmoe-bench: cannot start %d threads\n", T);
        exit(1);
    }
    double total = 0;
    int rc = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        total += w[i].rows_per_s;
        if (w[i].rc) rc = w[i].rc;
    }
    pthread_barrier_destroy(&bar);
    if (rc) { fprintf(stderr, "dmoe-bench: measurement failed: %s\n", dmoe_strerror(rc)); b->failures++; return 0; }
    return total;
}

/* The best of BENCH_REPEATS runs sharing b->seconds: the least disturbed by anything else on the machine. */
double bench_measure(bench *b, int kind, const kern_model *m, const float *params, int64_t B)
{
    double best = 0;
    for (int i = 0; i < BENCH_REPEATS; i++) {
        double v = measure_once(b, kind, m, params, B, b->seconds / BENCH_REPEATS);
        if (v <= 0) return 0;
        if (v > best) best = v;
    }
    return best;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* One thread, one row: the kernel's backward latency, no optimizer step, p50 and p99 into bp: from the
 * forward's saved activations when saved (as a node runs a training client's backward, which brings its
 * forward's handle), else recomputing the forward (a backward without a handle). */
static void backward_latency(bench *b, const kern_model *m, const float *params, const float *x, int saved, double *bp)
{
    enum { N = 500 };
    static uint64_t t[N];
    const kern_class *c = m->cls;
    saved = saved && c->forward_save && c->backward_saved;
    size_t sf = saved ? c->saved_floats(m) : 0, wsf = c->backward_ws(m, 1);
    if (c->forward_ws(m, 1) > wsf) wsf = c->forward_ws(m, 1);
    float *gx = malloc((size_t)b->hidden * sizeof(float)), *g = malloc(m->n_floats * sizeof(float));
    float *ws = malloc((wsf + 1) * sizeof(float)), *act = malloc((sf + 1) * sizeof(float));
    float *y = malloc((size_t)b->hidden * sizeof(float));
    if (!gx || !g || !ws || !act || !y) { b->failures++; goto out; }
    const void *in[1] = {x};
    const float *gout[1] = {x};
    float *gin[1] = {gx}, *out[1] = {y};
    if (saved) c->forward_save(m, params, 1, in, out, ws, 0, act);
    int n = -1;   /* the first call warms up */
    uint64_t end = rt_clock_us() + (uint64_t)(b->seconds * 1e6);
    while (n < N && rt_clock_us() < end) {
        uint64_t t0 = rt_clock_us();
        if (saved) c->backward_saved(m, params, 1, in, act, gout, gin, g, ws, 0);
        else c->backward(m, params, 1, in, gout, gin, g, ws, 0);
        if (n >= 0) t[n] = rt_clock_us() - t0;
        n++;
    }
    if (n > 0) {
        qsort(t, (size_t)n, sizeof t[0], cmp_u64);
        bp[0] = (double)t[n / 2];
        bp[1] = (double)t[(size_t)(0.99 * (n - 1))];
    }
out:
    free(gx); free(g); free(ws); free(act); free(y);
}

/* One thread, one row: the kernel's forward latency, then its backward's. */
void bench_kernel_latency(bench *b, const kern_model *m, const float *params)
{
    enum { N = 2000 };
    static uint64_t t[N];
    float *x = bench_alloc_normal((size_t)b->hidden, 5), *y = malloc((size_t)b->hidden * sizeof(float));
    float *ws = malloc((m->cls->forward_ws(m, 1) + 1) * sizeof(float));
    if (!x || !y || !ws) { b->failures++; goto out; }
    double bp[2] = {0, 0};
    backward_latency(b, m, params, x, 0, bp);
    b->kbwd_b1_p50 = bp[0];
    b->kbwd_b1_p99 = bp[1];
    backward_latency(b, m, params, x, 1, bp);
    b->kbwd_saved_b1_p50 = bp[0];
    b->kbwd_saved_b1_p99 = bp[1];
    const void *in[1] = {x};
    float *out[1] = {y};
    int n = 0;
    uint64_t end = rt_clock_us() + (uint64_t)(b->seconds * 1e6);
    m->cls->forward(m, params, 1, in, out, ws, 0);
    while (n < N && rt_clock_us() < end) {
        uint64_t t0 = rt_clock_us();
        m->cls->forward(m, params, 1, in, out, ws, 0);
        t[n++] = rt_clock_us() - t0;
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_u64);
    b->kfwd_b1_p50 = (double)t[n / 2];
    b->kfwd_b1_p99 = (double)t[(size_t)(0.99 * (n - 1))];
out:
    free(x); free(y); free(ws);
}

/* One Adam step over the expert's parameters, as the node applies after every batched backward. */
void bench_optimizer_latency(bench *b, const kern_model *m, const float *params)
{
    enum { N = 50 };
    uint64_t t[N];
    kern_optim_cfg oc;
    kern_optim o;
    memset(&o, 0, sizeof o);
    float *p = malloc(m->n_floats * sizeof(float)), *g = bench_alloc_normal(m->n_floats, 6);
    if (!p || !g || kern_optim_parse("adam", &oc) != 0 || kern_optim_init(&o, &oc, m->n_floats) != 0) {
        b->failures++;
        goto out;
    }
    memcpy(p, params, m->n_floats * sizeof(float));
    int n = 0;
    uint64_t end = rt_clock_us() + (uint64_t)(b->seconds * 1e6);
    while (n < N && rt_clock_us() < end) {
        uint64_t t0 = rt_clock_us();
        kern_optim_step(&o, m, p, g, oc.lr);
        t[n++] = rt_clock_us() - t0;
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_u64);
    b->adam_step_p50 = n ? (double)t[n / 2] : 0;
out:
    kern_optim_free(&o);
    free(p);
    free(g);
}
