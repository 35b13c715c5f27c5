/* dmoe-bench -- performance you can see: the ffn expert measured against the machine's own limit.
 *
 *   dmoe-bench [--node build/dmoe-node] [--out build/bench/results.json] [--seconds 1] [--num_workers N]
 *
 * In one run, on the same thread count throughout (the node's pool size, OpenBLAS single-threaded in
 * each thread, as in the node):
 *   1. the limit: plain cblas_sgemm on the ffn shapes (B x H x 4H, then B x 4H x H) -> GFLOP/s;
 *   2. the kernel in-process: kern_ffn forward, and forward + backward, one batch of B rows split across
 *      the threads (each thread computes its share, as the node's pool would run parallel batches);
 *   3. the node over loopback TCP: build/dmoe-node as a subprocess (1 expert), driven in-process by
 *      loadgen_run with several concurrent clients; then one client with 1 row for latency;
 *   4. memory: a node with 5 experts, its VmRSS idle and after a forward/backward load;
 *   5. the DHT: lookups on 1024 in-memory nodes in virtual time (dht_memnet_measure: the lookup times
 *      are network time, hops times the link latency, whatever the machine's speed);
 *   6. the Mixture-of-Experts layer, as in the tutorial: two nodes (5 experts expert.[0:5], then 10 from
 *      expert.[5:250] joining the first through the DHT), and in-process a client-mode DHT peer with a
 *      MoE layer (grid 250, k_best 2) timing forwards of 3 and 256 rows and training steps of 256 rows
 *      (forward, backward through the experts -- which step their own weights -- and an Adam step of
 *      the gating); the median and the 99th percentile of a fixed number of calls.
 * Each in-process figure is the best of 3 runs (the least disturbed by other work on the machine).
 * It prints a table (with kernel efficiency = kernel forward FLOP rate / gemm FLOP rate, and node/kernel
 * ratios) and writes every figure as JSON to --out. A benchmark, not a test: nothing is asserted, and
 * the whole run takes a few minutes at most on 2 cores.
 *
 * Threads: the measuring threads of steps 1-2 are joined before step 3; each node is a child process
 * that dies with the bench (PR_SET_PDEATHSIG) and is always stopped with SIGTERM and waited for.
 * Exits 0, 1 when a step failed (the node would not start, a load run had errors), 2 on bad flags.
 */
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "actors/dht/rpc/dht_memnet.h"
#include "actors/load/loadgen.h"
#include "actors/moe/moe.h"
#include "actors/moe/moe_net.h"
#include "kernels/kern_expert.h"
#include "kernels/kern_optim.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_actor.h"
#include "runtime/text/rt_args.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

#define NB 4
static const int64_t BATCHES[NB] = {1, 64, 256, 1024};

#define BENCH_CLIENTS 8          /* concurrent clients for the node's throughput figures */
#define BENCH_REPEATS 3          /* in-process figures: the best of this many runs */
#define BENCH_MEM_EXPERTS 5      /* experts in the memory figure */
#define BENCH_DHT_NODES 1024
#define BENCH_DHT_LOOKUPS 256
#define BENCH_DHT_LATENCY_MS 1   /* each way, per message */
#define NODE_START_S 20          /* longest wait for a node's "Server started" line */
#define NODE_STOP_S 20           /* longest wait for a node to exit after SIGTERM */
#define MOE_GRID 250             /* the tutorial's grid: expert.[0:250], 15 of them live */
#define MOE_K_BEST 2
#define MOE_LIVE 15              /* experts the two nodes host (5 + 10) */
#define MOE_VISIBLE_S 15         /* longest wait for the layer to see every live expert */
#define MOE_N_SMALL 60           /* forwards of 3 rows timed */
#define MOE_N_BIG 20             /* forwards, and training steps, of 256 rows timed */
#define MOE_MAX_S 20.0           /* a fence on each timed series (the counts end it long before) */

typedef struct {
    int threads;
    double seconds;              /* per in-process measurement */
    int hidden;
    const char *node_path;
    /* results */
    double gemm_gflops[NB], kfwd[NB], kfwdbwd[NB], nfwd[NB], nfwdbwd[NB];
    double lat_fwd_p50, lat_fwd_p99, lat_bwd_p50, lat_bwd_p99, kfwd_b1_p50, kfwd_b1_p99;
    double adam_step_p50;
    double rss_idle_mb, rss_loaded_mb, hwm_loaded_mb, weights_mb;
    double moe_fwd3[2], moe_fwd256[2], moe_train256[2];   /* ms: p50, p99 */
    int moe_experts, moe_n[3];
    int have_node, have_mem, have_dht, have_moe;
    dht_memnet_stats dht;
    int failures;
} bench;

/* ---- in-process measurements ---- */

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

enum { W_GEMM, W_FWD, W_FWDBWD };

static float *alloc_normal(size_t n, uint64_t seed)
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
    float *x = alloc_normal((size_t)B * (size_t)H, 1), *gy = alloc_normal((size_t)B * (size_t)H, 2);
    float *y = malloc((size_t)B * (size_t)H * sizeof(float)), *gx = malloc((size_t)B * (size_t)H * sizeof(float));
    float *h = NULL, *w1 = NULL, *w2 = NULL, *ws = NULL, *grads = NULL, *saved = NULL;
    if (w->kind == W_GEMM) {
        h = malloc((size_t)B * 4 * (size_t)H * sizeof(float));
        w1 = alloc_normal((size_t)(4 * H * H), 3);
        w2 = alloc_normal((size_t)(4 * H * H), 4);
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
static double measure(bench *b, int kind, const kern_model *m, const float *params, int64_t B)
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

/* One thread, one row: the kernel's forward latency. */
static void kernel_latency(bench *b, const kern_model *m, const float *params)
{
    enum { N = 2000 };
    static uint64_t t[N];
    float *x = alloc_normal((size_t)b->hidden, 5), *y = malloc((size_t)b->hidden * sizeof(float));
    float *ws = malloc((m->cls->forward_ws(m, 1) + 1) * sizeof(float));
    if (!x || !y || !ws) { b->failures++; goto out; }
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
static void optimizer_latency(bench *b, const kern_model *m, const float *params)
{
    enum { N = 50 };
    uint64_t t[N];
    kern_optim_cfg oc;
    kern_optim o;
    memset(&o, 0, sizeof o);
    float *p = malloc(m->n_floats * sizeof(float)), *g = alloc_normal(m->n_floats, 6);
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

/* ---- the node as a subprocess ---- */

typedef struct {
    pid_t pid;
    char log[64];
    wire_maddr addr;
    char dht_maddr[256];         /* from "Running DHT node on ['...']" */
} child;

/* node_spawn starts dmoe-node with n_experts ffn experts and the NULL-terminated extra flags (or NULL),
 * and waits for its "Server started". Returns 0, or DMOE_EIO with the node's log on stderr. */
static int node_spawn(bench *b, child *c, int n_experts, const char *const *extra)
{
    memset(c, 0, sizeof *c);
    snprintf(c->log, sizeof c->log, "/tmp/dmoe-bench-node-XXXXXX");
    int fd = mkstemp(c->log);
    if (fd < 0) return DMOE_EIO;
    char workers[16], experts[16], hidden[16];
    snprintf(workers, sizeof workers, "%d", b->threads);
    snprintf(experts, sizeof experts, "%d", n_experts);
    snprintf(hidden, sizeof hidden, "%d", b->hidden);
    const char *argv[32] = {b->node_path, "--expert_cls", "ffn", "--hidden_dim", hidden, "--num_experts", experts,
                            "--num_workers", workers, "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--log_level", "INFO"};
    int na = 13;
    for (int i = 0; extra && extra[i] && na < 31; i++) argv[na++] = extra[i];
    argv[na] = NULL;
    pid_t pid = fork();
    if (pid < 0) { close(fd); unlink(c->log); return DMOE_EIO; }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);   /* the node never outlives the bench */
        dup2(fd, 1);
        dup2(fd, 2);
        execv(b->node_path, (char *const *)argv);
        _exit(127);
    }
    close(fd);
    c->pid = pid;
    /* wait for "Listening on ADDR" and then "Server started" */
    int have_addr = 0;
    for (int i = 0; i < NODE_START_S * 50; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) { c->pid = 0; break; }
        FILE *f = fopen(c->log, "r");
        char line[512];
        int started = 0;
        while (f && fgets(line, sizeof line, f)) {
            char *p = strstr(line, "Listening on ");
            if (p && !have_addr) {
                p += strlen("Listening on ");
                p[strcspn(p, " \r\n")] = 0;
                char err[128];
                have_addr = wire_maddr_parse(p, &c->addr, err, sizeof err) == 0;
            }
            if (strstr(line, "Server started")) started = 1;
            if ((p = strstr(line, "Running DHT node on ['")) != NULL) {
                p += strlen("Running DHT node on ['");
                p[strcspn(p, "'")] = 0;
                snprintf(c->dht_maddr, sizeof c->dht_maddr, "%s", p);
            }
        }
        if (f) fclose(f);
        if (have_addr && started) return 0;
        usleep(20000);
    }
    fprintf(stderr, "dmoe-bench: the node did not start; its log (%s):\n", c->log);
    FILE *f = fopen(c->log, "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) fputs(line, stderr);
    if (f) fclose(f);
    return DMOE_EIO;
}

static void node_reap(child *c)
{
    if (c->pid > 0) {
        kill(c->pid, SIGTERM);
        int st, done = 0;
        for (int i = 0; i < NODE_STOP_S * 50 && !done; i++) {
            if (waitpid(c->pid, &st, WNOHANG) == c->pid) done = 1;
            else usleep(20000);
        }
        if (!done) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
        }
        c->pid = 0;
    }
    if (c->log[0]) unlink(c->log);
}

/* VmRSS (or VmHWM) of pid in MiB, or -1. */
static double proc_mb(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    double mb = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') mb = strtod(line + kl + 1, NULL) / 1024.0;
    if (f) fclose(f);
    return mb;
}

static int load(bench *b, const wire_maddr *addr, int clients, int64_t batch, double mix, int all, double seconds,
                loadgen_report *r)
{
    static const char *const one[] = {"expert.0", NULL};
    loadgen_cfg c;
    loadgen_default_cfg(&c);
    c.peer = *addr;
    c.clients = clients;
    c.batch_min = c.batch_max = batch;
    c.mix = mix;
    c.all = all;
    c.uids = all ? NULL : one;
    c.duration_s = seconds;
    c.warmup_s = seconds > 1.5 ? 0.5 : 0.2;
    c.duration_s += c.warmup_s;
    c.seed = 42;
    char err[256];
    int rc = loadgen_run(&c, r, err, sizeof err);
    if (rc) { fprintf(stderr, "dmoe-bench: load failed: %s\n", err); b->failures++; return rc; }
    if (r->errors || r->lost) {
        fprintf(stderr, "dmoe-bench: load batch %lld had %llu errors, %llu lost (%s)\n", (long long)batch,
                (unsigned long long)r->errors, (unsigned long long)r->lost, r->first_error);
        b->failures++;
    }
    return 0;
}

static void node_figures(bench *b)
{
    child c;
    if (node_spawn(b, &c, 1, NULL) != 0) { b->failures++; node_reap(&c); return; }
    double secs = 2.0 * b->seconds;
    for (int i = 0; i < NB; i++) {
        loadgen_report r;
        if (load(b, &c.addr, BENCH_CLIENTS, BATCHES[i], 0.0, 0, secs, &r) == 0) b->nfwd[i] = r.rows_per_s;
        loadgen_report_free(&r);
        fprintf(stderr, ".");
    }
    for (int i = 0; i < NB; i++) {
        loadgen_report r;   /* forward then backward per batch: training samples per second */
        if (load(b, &c.addr, BENCH_CLIENTS, BATCHES[i], 0.5, 0, secs, &r) == 0) b->nfwdbwd[i] = r.rows_per_s / 2.0;
        loadgen_report_free(&r);
        fprintf(stderr, ".");
    }
    loadgen_report r;
    if (load(b, &c.addr, 1, 1, 0.0, 0, secs, &r) == 0) { b->lat_fwd_p50 = r.lat.p50; b->lat_fwd_p99 = r.lat.p99; }
    loadgen_report_free(&r);
    if (load(b, &c.addr, 1, 1, 1.0, 0, secs, &r) == 0) { b->lat_bwd_p50 = r.lat_bwd.p50; b->lat_bwd_p99 = r.lat_bwd.p99; }
    loadgen_report_free(&r);
    fprintf(stderr, ".");
    b->have_node = 1;
    node_reap(&c);
}

static void memory_figures(bench *b, const kern_model *m)
{
    child c;
    if (node_spawn(b, &c, BENCH_MEM_EXPERTS, NULL) != 0) { b->failures++; node_reap(&c); return; }
    usleep(300000);
    b->rss_idle_mb = proc_mb(c.pid, "VmRSS");
    loadgen_report r;
    if (load(b, &c.addr, BENCH_CLIENTS, 256, 0.5, 1, 2.0 * b->seconds, &r) == 0) {
        b->rss_loaded_mb = proc_mb(c.pid, "VmRSS");
        b->hwm_loaded_mb = proc_mb(c.pid, "VmHWM");
    }
    loadgen_report_free(&r);
    /* per expert: parameters, gradients, and Adam's two moments (the node's default optimizer) */
    b->weights_mb = (double)BENCH_MEM_EXPERTS * 4.0 * (double)m->n_floats * sizeof(float) / 1048576.0;
    b->have_mem = b->rss_idle_mb > 0 && b->rss_loaded_mb > 0;
    node_reap(&c);
    fprintf(stderr, ".");
}

/* ---- the Mixture-of-Experts layer over two nodes ---- */

static int cmp_f64(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* p50 and p99 (nearest rank) of t[0..n) into out[0..2). */
static void pcts(double *t, int n, double *out)
{
    out[0] = out[1] = 0;
    if (n < 1) return;
    qsort(t, (size_t)n, sizeof *t, cmp_f64);
    int k50 = (int)ceil(0.50 * n), k99 = (int)ceil(0.99 * n);
    out[0] = t[(k50 < 1 ? 1 : k50) - 1];
    out[1] = t[(k99 < 1 ? 1 : k99) - 1];
}

/* Time up to n calls of kind 0 (forward), 1 (training step) on B rows of x; fills p[2] in ms and returns
 * how many calls succeeded (every one must, or the figure is left out as a failure). */
static int moe_series(moe_layer *m, kern_optim *opt, float lr, const float *x, const float *gy, int64_t B, int kind,
                      int n, double *p)
{
    double t[64];
    int done = 0;
    uint64_t end = rt_clock_us() + (uint64_t)(MOE_MAX_S * 1e6);
    char err[256];
    size_t np;
    float *params = moe_layer_params(m, &np), *grads = moe_layer_grads(m, &np);
    while (done < n && done < 64 && rt_clock_us() < end) {
        uint64_t t0 = rt_clock_us();
        moe_fwd *f = NULL;
        int rc = moe_forward_run(m, x, B, &f, err, sizeof err);
        if (rc == 0 && moe_fwd_stats_of(f)->experts_answered < moe_fwd_stats_of(f)->experts_chosen) {
            rc = DMOE_ETIMEDOUT;
            snprintf(err, sizeof err, "%d of %d experts answered", moe_fwd_stats_of(f)->experts_answered,
                     moe_fwd_stats_of(f)->experts_chosen);
        }
        if (rc == 0 && kind == 1) {
            const float *gx;
            rc = moe_backward_run(m, f, gy, 0.0f, &gx, err, sizeof err);
            if (rc == 0) kern_optim_step(opt, NULL, params, grads, lr);
        }
        moe_fwd_free(f);
        if (rc) {
            fprintf(stderr, "dmoe-bench: moe %s of %lld rows failed: %s\n", kind ? "training step" : "forward", (long long)B, err);
            return 0;
        }
        t[done++] = (double)(rt_clock_us() - t0) / 1000.0;
    }
    pcts(t, done, p);
    return done;
}

static void moe_figures(bench *b)
{
    child n1, n2;
    memset(&n2, 0, sizeof n2);
    const char *const first[] = {"--expert_pattern", "expert.[0:5]", NULL};
    if (node_spawn(b, &n1, 5, first) != 0 || !n1.dht_maddr[0]) {
        if (n1.pid) fprintf(stderr, "dmoe-bench: the first MoE node printed no DHT address\n");
        b->failures++;
        node_reap(&n1);
        return;
    }
    const char *const second[] = {"--expert_pattern", "expert.[5:250]", "--initial_peers", n1.dht_maddr, NULL};
    rt_loop *l = NULL;
    moe_net *net = NULL;
    moe_layer *m = NULL;
    kern_optim opt;
    memset(&opt, 0, sizeof opt);
    const int64_t BIG = 256, SMALL = 3;
    const int H = b->hidden;
    float *x = alloc_normal((size_t)BIG * (size_t)H, 11), *gy = alloc_normal((size_t)BIG * (size_t)H, 12);
    char err[512];
    if (node_spawn(b, &n2, 10, second) != 0 || !x || !gy) goto fail;
    l = rt_loop_new();
    const char *peers[1] = {n1.dht_maddr};
    net = l ? moe_net_open(l, peers, 1, 0.5, err, sizeof err) : NULL;
    if (!net) { fprintf(stderr, "dmoe-bench: moe: %s\n", l ? err : "out of memory"); goto fail; }
    moe_cfg mc;
    moe_cfg_default(&mc);
    mc.in_features = H;
    mc.ndim = 1;
    mc.grid_size[0] = MOE_GRID;
    mc.k_best = MOE_K_BEST;
    mc.seed = 5;
    if (moe_layer_new(l, &mc, moe_net_succ(net), moe_net_caller(net), &m, err, sizeof err) != 0) {
        fprintf(stderr, "dmoe-bench: moe: %s\n", err);
        goto fail;
    }
    /* the nodes declare their experts at start; wait until a 256-row forward reaches all of them */
    uint64_t until = rt_clock_us() + MOE_VISIBLE_S * 1000000ull;
    while (rt_clock_us() < until) {
        moe_fwd *f = NULL;
        if (moe_forward_run(m, x, BIG, &f, err, sizeof err) == 0) {
            int seen = moe_fwd_stats_of(f)->experts_answered;
            if (seen > b->moe_experts) b->moe_experts = seen;
        }
        moe_fwd_free(f);
        if (b->moe_experts >= MOE_LIVE) break;
        usleep(200000);
    }
    if (b->moe_experts < MOE_LIVE)
        fprintf(stderr, "dmoe-bench: moe: the layer reached %d of the %d live experts; timing anyway\n", b->moe_experts, MOE_LIVE);
    kern_optim_cfg oc;
    size_t np;
    moe_layer_params(m, &np);
    if (kern_optim_parse("adam", &oc) != 0 || kern_optim_init(&opt, &oc, np) != 0) goto fail;
    b->moe_n[0] = moe_series(m, &opt, oc.lr, x, gy, SMALL, 0, MOE_N_SMALL, b->moe_fwd3);
    fprintf(stderr, ".");
    b->moe_n[1] = moe_series(m, &opt, oc.lr, x, gy, BIG, 0, MOE_N_BIG, b->moe_fwd256);
    fprintf(stderr, ".");
    b->moe_n[2] = moe_series(m, &opt, oc.lr, x, gy, BIG, 1, MOE_N_BIG, b->moe_train256);
    fprintf(stderr, ".");
    b->have_moe = b->moe_n[0] > 0 && b->moe_n[1] > 0 && b->moe_n[2] > 0;
    if (!b->have_moe) b->failures++;
    goto out;
fail:
    b->failures++;
out:
    kern_optim_free(&opt);
    moe_layer_free(m);
    moe_net_close(net);
    if (l) rt_loop_free(l);
    free(x);
    free(gy);
    node_reap(&n2);
    node_reap(&n1);
}

/* ---- output ---- */

static void cpu_name(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        char *p = strchr(line, ':');
        if (!p) continue;
        p += 1 + strspn(p + 1, " \t");
        p[strcspn(p, "\r\n")] = 0;
        snprintf(buf, cap, "%s", p);
        break;
    }
    if (f) fclose(f);
}

static void json_batches(FILE *f, const char *key, const double *v, int last)
{
    fprintf(f, "    \"%s\": {", key);
    for (int i = 0; i < NB; i++) fprintf(f, "%s\"%lld\": %.1f", i ? ", " : "", (long long)BATCHES[i], v[i]);
    fprintf(f, "}%s\n", last ? "" : ",");
}

static int write_json(const bench *b, const char *path, const char *cpu, long cores)
{
    FILE *f = fopen(path, "w");
    if (!f) return DMOE_EIO;
    double flop_row = 16.0 * b->hidden * (double)b->hidden;
    double eff[NB];
    for (int i = 0; i < NB; i++) eff[i] = b->gemm_gflops[i] > 0 ? 100.0 * b->kfwd[i] * flop_row / 1e9 / b->gemm_gflops[i] : 0;
    fprintf(f, "{\n  \"machine\": {\"cores\": %ld, \"cpu\": ", cores);
    fprintf(f, "\"");
    for (const char *p = cpu; *p; p++)
        if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) fputc(*p, f);
    fprintf(f, "\"},\n  \"threads\": {\"pool\": %d, \"openblas\": 1},\n", b->threads);
    fprintf(f, "  \"ffn_h%d\": {\n", b->hidden);
    json_batches(f, "gemm_gflops", b->gemm_gflops, 0);
    json_batches(f, "kernel_fwd_samples_per_s", b->kfwd, 0);
    json_batches(f, "kernel_fwdbwd_samples_per_s", b->kfwdbwd, 0);
    json_batches(f, "kernel_fwd_efficiency_pct", eff, 0);
    if (b->have_node) {
        json_batches(f, "node_fwd_samples_per_s", b->nfwd, 0);
        json_batches(f, "node_fwdbwd_samples_per_s", b->nfwdbwd, 0);
        fprintf(f, "    \"node_clients\": %d,\n", BENCH_CLIENTS);
        fprintf(f, "    \"latency_fwd_b1_us\": {\"p50\": %.0f, \"p99\": %.0f},\n", b->lat_fwd_p50, b->lat_fwd_p99);
        fprintf(f, "    \"latency_bwd_b1_us\": {\"p50\": %.0f, \"p99\": %.0f},\n", b->lat_bwd_p50, b->lat_bwd_p99);
    }
    fprintf(f, "    \"adam_step_us\": {\"p50\": %.0f},\n", b->adam_step_p50);
    fprintf(f, "    \"kernel_fwd_b1_us\": {\"p50\": %.0f, \"p99\": %.0f}\n  }", b->kfwd_b1_p50, b->kfwd_b1_p99);
    if (b->have_dht)
        fprintf(f, ",\n  \"dht\": {\"nodes\": %zu, \"lookups\": %zu, \"latency_ms_each_way\": %d, \"lookup_hops_p50\": %d, "
                   "\"lookup_hops_p99\": %d, \"lookup_ms_p50\": %.2f, \"lookup_ms_p99\": %.2f, \"rpcs_per_lookup\": %.2f, "
                   "\"success_rate\": %.4f}",
                b->dht.nodes, b->dht.lookups, BENCH_DHT_LATENCY_MS, b->dht.hops_p50, b->dht.hops_p99, b->dht.lat_p50_ms,
                b->dht.lat_p99_ms, b->dht.rpcs_per_lookup, b->dht.lookups ? (double)b->dht.found / (double)b->dht.lookups : 0);
    if (b->have_mem)
        fprintf(f, ",\n  \"memory_mb\": {\"node_idle_5x_h%d\": %.1f, \"node_loaded_5x_h%d\": %.1f, \"node_peak_5x_h%d\": %.1f, "
                   "\"weights_and_optimizer_5x_h%d\": %.1f}",
                b->hidden, b->rss_idle_mb, b->hidden, b->rss_loaded_mb, b->hidden, b->hwm_loaded_mb, b->hidden, b->weights_mb);
    if (b->have_moe)
        fprintf(f, ",\n  \"moe\": {\"hidden\": %d, \"grid\": %d, \"k_best\": %d, \"live_experts\": %d, "
                   "\"fwd_b3_ms_p50\": %.2f, \"fwd_b3_ms_p99\": %.2f, \"fwd_b256_ms_p50\": %.2f, \"fwd_b256_ms_p99\": %.2f, "
                   "\"train_step_b256_ms_p50\": %.2f, \"train_step_b256_ms_p99\": %.2f, \"calls\": [%d, %d, %d]}",
                b->hidden, MOE_GRID, MOE_K_BEST, b->moe_experts, b->moe_fwd3[0], b->moe_fwd3[1], b->moe_fwd256[0],
                b->moe_fwd256[1], b->moe_train256[0], b->moe_train256[1], b->moe_n[0], b->moe_n[1], b->moe_n[2]);
    fprintf(f, "\n}\n");
    return fclose(f) == 0 ? 0 : DMOE_EIO;
}

static void row(const char *name, const double *v, const char *fmt)
{
    printf("  %-30s", name);
    for (int i = 0; i < NB; i++) {
        if (v[i] > 0) printf(fmt, v[i]);
        else printf("%12s", "-");
    }
    printf("\n");
}

static void print_table(const bench *b, const char *cpu, long cores)
{
    double flop_row = 16.0 * b->hidden * (double)b->hidden;
    double eff[NB], eff_fb[NB], rf[NB], rfb[NB];
    for (int i = 0; i < NB; i++) {
        eff[i] = b->gemm_gflops[i] > 0 ? 100.0 * b->kfwd[i] * flop_row / 1e9 / b->gemm_gflops[i] : 0;
        eff_fb[i] = b->gemm_gflops[i] > 0 ? 100.0 * b->kfwdbwd[i] * 3.0 * flop_row / 1e9 / b->gemm_gflops[i] : 0;
        rf[i] = b->kfwd[i] > 0 ? 100.0 * b->nfwd[i] / b->kfwd[i] : 0;
        rfb[i] = b->kfwdbwd[i] > 0 ? 100.0 * b->nfwdbwd[i] / b->kfwdbwd[i] : 0;
    }
    printf("\ndmoe-bench: %s, %ld cores; %d kernel threads (= the node's --num_workers), OpenBLAS 1 thread each\n",
           cpu, cores, b->threads);
    printf("ffn, hidden %d (%.1f MFLOP per row forward)\n", b->hidden, flop_row / 1e6);
    printf("  %-30s", "batch rows");
    for (int i = 0; i < NB; i++) printf("%12lld", (long long)BATCHES[i]);
    printf("\n");
    row("BLAS limit, GFLOP/s", b->gemm_gflops, "%12.1f");
    row("kernel fwd, samples/s", b->kfwd, "%12.0f");
    row("  efficiency vs gemm, %", eff, "%12.1f");
    row("kernel fwd+bwd, samples/s", b->kfwdbwd, "%12.0f");
    row("  efficiency vs gemm, %", eff_fb, "%12.1f");
    if (b->have_node) {
        char name[64];
        snprintf(name, sizeof name, "node fwd (%d clients), samples/s", BENCH_CLIENTS);
        row(name, b->nfwd, "%12.0f");
        row("  node / kernel, %", rf, "%12.1f");
        row("node fwd+bwd, samples/s", b->nfwdbwd, "%12.0f");
        row("  node / kernel, %", rfb, "%12.1f");
        printf("  latency, 1 client, 1 row:  forward p50 %.0f us, p99 %.0f us;  backward p50 %.0f us, p99 %.0f us\n",
               b->lat_fwd_p50, b->lat_fwd_p99, b->lat_bwd_p50, b->lat_bwd_p99);
    }
    printf("  in-process, 1 thread: kernel forward of 1 row p50 %.0f us, p99 %.0f us; one Adam step p50 %.0f us\n",
           b->kfwd_b1_p50, b->kfwd_b1_p99, b->adam_step_p50);
    printf("  notes: the limit is cblas_sgemm on the ffn's two shapes (sgemv for 1 row, as the kernel does); fwd+bwd\n"
           "  counts 3x the forward's FLOPs: the backward takes the forward's saved activations (in-process and\n"
           "  in the node, whose load sends each backward with its forward's handle). The node merges the\n"
           "  requests waiting for an expert into one batch and splits big batches across its workers; an\n"
           "  expert's backwards run one at a time, each followed by an Adam step over all its parameters.\n");
    if (b->have_mem)
        printf("memory, node with %d ffn experts (hidden %d): idle %.1f MiB, after load %.1f MiB (peak %.1f MiB); "
               "weights + grads + Adam state %.1f MiB\n",
               BENCH_MEM_EXPERTS, b->hidden, b->rss_idle_mb, b->rss_loaded_mb, b->hwm_loaded_mb, b->weights_mb);
    if (b->have_dht)
        printf("dht, %zu in-memory nodes (%d ms each way): %zu/%zu lookups found, hops p50 %d p99 %d, "
               "%.1f ms p50, %.1f ms p99, %.1f RPCs per lookup\n",
               b->dht.nodes, BENCH_DHT_LATENCY_MS, b->dht.found, b->dht.lookups, b->dht.hops_p50, b->dht.hops_p99,
               b->dht.lat_p50_ms, b->dht.lat_p99_ms, b->dht.rpcs_per_lookup);
    if (b->have_moe) {
        printf("moe, grid %d, k_best %d over %d live ffn experts (hidden %d) on 2 nodes, one client:\n", MOE_GRID,
               MOE_K_BEST, b->moe_experts, b->hidden);
        printf("  forward 3 rows p50 %.2f ms p99 %.2f ms;  forward 256 rows p50 %.2f ms p99 %.2f ms;\n"
               "  training step 256 rows (forward, backward, Adam on the gating) p50 %.2f ms p99 %.2f ms\n",
               b->moe_fwd3[0], b->moe_fwd3[1], b->moe_fwd256[0], b->moe_fwd256[1], b->moe_train256[0], b->moe_train256[1]);
    }
}

int main(int argc, char **argv)
{
    bench b = {.seconds = 1.0, .hidden = 512, .node_path = "build/dmoe-node"};
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    b.threads = cores > 0 ? (int)cores : 1;
    const char *out = "build/bench/results.json", *log_level = NULL;
    int skip_node = 0, skip_dht = 0, skip_moe = 0;
    const rt_arg flags[] = {
        {"node", ARG_STR, &b.node_path, "the dmoe-node program to measure", "Bench"},
        {"out", ARG_STR, &out, "where to write the figures as JSON", "Bench"},
        {"seconds", ARG_F64, &b.seconds, "seconds per in-process figure (node figures take twice that)", "Bench"},
        {"num_workers", ARG_INT, &b.threads, "threads for the kernel figures and the node's pool (default: cores)", "Bench"},
        {"hidden_dim", ARG_INT, &b.hidden, "the ffn's hidden size", "Bench"},
        {"skip_node", ARG_FLAG, &skip_node, "leave out the node and memory figures", "Bench"},
        {"skip_dht", ARG_FLAG, &skip_dht, "leave out the DHT figure", "Bench"},
        {"skip_moe", ARG_FLAG, &skip_moe, "leave out the Mixture-of-Experts figures (two nodes)", "Bench"},
        {"log_level", ARG_STR, &log_level, "DEBUG, INFO, WARN or ERROR", "Bench"},
    };
    const int nflags = (int)(sizeof flags / sizeof flags[0]);
    char err[256];
    char *pos[1];
    int npos;
    int rc = rt_args_parse(argc, argv, flags, nflags, pos, 0, &npos, err, sizeof err);
    if (rc == 1) { rt_args_usage(stdout, "dmoe-bench [flags]   (figures against the machine's limit)", flags, nflags); return 0; }
    if (rc != 0) { fprintf(stderr, "dmoe-bench: %s\n", err); return 2; }
    if (b.threads < 1 || b.threads > 256 || !(b.seconds > 0 && b.seconds <= 60) || b.hidden < 1 || b.hidden > 8192) {
        fprintf(stderr, "dmoe-bench: need 1 <= --num_workers <= 256, 0 < --seconds <= 60, 1 <= --hidden_dim <= 8192\n");
        return 2;
    }
    if (log_level && rt_log_parse_level(log_level) >= 0) rt_log_set_level(rt_log_parse_level(log_level));
    else if (!getenv("DMOE_LOG")) rt_log_set_level(RT_LOG_WARN);
    signal(SIGPIPE, SIG_IGN);
    openblas_set_num_threads(1);   /* as in the node: the threads are the parallelism */

    const kern_class *cls = kern_expert_find("ffn");
    kern_model m;
    memset(&m, 0, sizeof m);
    kern_config kc = {.hidden_dim = b.hidden};
    if (!cls || cls->setup(&m, &kc) != 0) { fprintf(stderr, "dmoe-bench: no ffn expert class\n"); return 1; }
    m.cls = cls;
    float *params = malloc(m.n_floats * sizeof(float));
    if (!params) { fprintf(stderr, "dmoe-bench: out of memory\n"); return 1; }
    cls->init(&m, params, 1);

    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    fprintf(stderr, "dmoe-bench: measuring (about %.0f s) ",
            15 * b.seconds + (skip_node ? 0 : 28 * b.seconds + 2) + (skip_dht ? 0 : 8) + (skip_moe ? 0 : 15));
    double flop_row = 16.0 * b.hidden * (double)b.hidden;
    for (int i = 0; i < NB; i++) {
        b.gemm_gflops[i] = measure(&b, W_GEMM, NULL, NULL, BATCHES[i]) * flop_row / 1e9;
        b.kfwd[i] = measure(&b, W_FWD, &m, params, BATCHES[i]);
        b.kfwdbwd[i] = measure(&b, W_FWDBWD, &m, params, BATCHES[i]);
        fprintf(stderr, ".");
    }
    kernel_latency(&b, &m, params);
    optimizer_latency(&b, &m, params);
    if (!skip_node) {
        node_figures(&b);
        memory_figures(&b, &m);
    }
    if (!skip_dht) {
        rc = dht_memnet_measure(BENCH_DHT_NODES, BENCH_DHT_LOOKUPS, BENCH_DHT_LATENCY_MS, 7, &b.dht);
        if (rc == 0) b.have_dht = 1;
        else { fprintf(stderr, "dmoe-bench: dht measurement failed: %s\n", dmoe_strerror(rc)); b.failures++; }
    }
    if (!skip_moe) moe_figures(&b);
    fprintf(stderr, " done\n");
    free(params);
    print_table(&b, cpu, cores);
    rc = write_json(&b, out, cpu, cores);
    if (rc) { fprintf(stderr, "dmoe-bench: cannot write %s: %s\n", out, strerror(errno)); return 1; }
    printf("figures written to %s\n", out);
    rt_args_free(flags, nflags);
    return b.failures ? 1 : 0;
}
