/* bench_moe.c -- dmoe-bench's Mixture-of-Experts figures (see bench.h), as in the tutorial: two nodes (5
 * experts expert.[0:5], then 10 from expert.[5:250] joining the first through the DHT), and in-process a
 * client-mode DHT peer with a MoE layer (grid MOE_GRID, k_best MOE_K_BEST) timing forwards of 3 and 256
 * rows and training steps of 256 and of 3 rows (forward, backward through the experts -- which step their
 * own weights -- and an Adam step of the gating): the median and the 99th percentile of a fixed number
 * of calls. Around each series of training steps, the experts' timers on both nodes (bench_probe.c) and
 * the client thread's CPU time give the step's parts (bench_moe_parts). The layer runs on its own loop,
 * on this thread, through the blocking moe_*_run calls.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "actors/moe/moe.h"
#include "actors/moe/route/moe_net.h"
#include "cmd/bench/bench.h"
#include "kernels/kern_optim.h"
#include "runtime/rt_actor.h"
#include "runtime/rt_err.h"

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

/* The calling thread's CPU time in ms (the client's loop runs on it). */
static double thread_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

double bench_moe_parts_sum(const bench_moe_parts *p)
{
    return p->search + p->expert_kernels + p->expert_steps + p->gating_step + p->client_loop;
}

/* Time up to n calls of kind 0 (forward), 1 (training step) on B rows of x; fills p[2] in ms and returns
 * how many calls succeeded (every one must, or the figure is left out as a failure). parts (NULL: not
 * wanted) gets the summed ms of the calls, of their beam searches, of the gating's optimizer steps and
 * of the client thread's CPU outside them. */
static int moe_series(moe_layer *m, kern_optim *opt, float lr, const float *x, const float *gy, int64_t B, int kind,
                      int n, double *p, bench_moe_parts *parts)
{
    double t[64];
    int done = 0;
    uint64_t end = rt_clock_us() + (uint64_t)(MOE_MAX_S * 1e6);
    char err[256];
    size_t np;
    float *params = moe_layer_params(m, &np), *grads = moe_layer_grads(m, &np);
    while (done < n && done < 64 && rt_clock_us() < end) {
        uint64_t t0 = rt_clock_us();
        double cpu0 = thread_cpu_ms();
        moe_fwd *f = NULL;
        int rc = moe_forward_run(m, x, B, &f, err, sizeof err);
        if (rc == 0 && moe_fwd_stats_of(f)->experts_answered < moe_fwd_stats_of(f)->experts_chosen) {
            rc = DMOE_ETIMEDOUT;
            snprintf(err, sizeof err, "%d of %d experts answered", moe_fwd_stats_of(f)->experts_answered,
                     moe_fwd_stats_of(f)->experts_chosen);
        }
        uint64_t t_opt = 0;
        if (rc == 0 && kind == 1) {
            const float *gx;
            rc = moe_backward_run(m, f, gy, 0.0f, &gx, err, sizeof err);
            uint64_t t1 = rt_clock_us();
            if (rc == 0) kern_optim_step(opt, NULL, params, grads, lr);
            t_opt = rt_clock_us() - t1;
        }
        if (rc == 0 && parts) {
            parts->step += (double)(rt_clock_us() - t0) / 1000.0;
            parts->search += moe_fwd_stats_of(f)->search_ms;
            parts->gating_step += (double)t_opt / 1000.0;
            parts->client_loop += thread_cpu_ms() - cpu0 - (double)t_opt / 1000.0;
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

/* train_series times training steps of B rows (into p[2]) with the experts' timers on both nodes around
 * them: *parts gets the step's parts per step. Returns the steps timed. */
static int train_series(moe_layer *m, kern_optim *opt, float lr, const float *x, const float *gy, int64_t B, int n,
                        const bench_child *n1, const bench_child *n2, double *p, bench_moe_parts *parts)
{
    bench_probe before[2], after[2], d;
    memset(parts, 0, sizeof *parts);
    int probes = bench_probe_take(n1->pid, &n1->addr, NULL, &before[0]) == 0 &&
                 bench_probe_take(n2->pid, &n2->addr, NULL, &before[1]) == 0;
    int done = moe_series(m, opt, lr, x, gy, B, 1, n, p, parts);
    probes = probes && bench_probe_take(n1->pid, &n1->addr, NULL, &after[0]) == 0 &&
             bench_probe_take(n2->pid, &n2->addr, NULL, &after[1]) == 0;
    if (!probes || done < 1) return done;
    double steps = (double)done;
    parts->step /= steps;
    parts->search /= steps;
    parts->gating_step /= steps;
    parts->client_loop /= steps;
    for (int k = 0; k < 2; k++) {
        bench_probe_diff(&before[k], &after[k], &d);
        parts->expert_kernels += d.compute_us / 1000.0 / steps;
        parts->expert_steps += d.step_us / 1000.0 / steps;
    }
    parts->have = 1;
    return done;
}

void bench_moe_figures(bench *b)
{
    bench_child n1, n2;
    memset(&n2, 0, sizeof n2);
    const char *const first[] = {"--expert_pattern", "expert.[0:5]", NULL};
    if (bench_node_start(b, &n1, 5, 0, first) != 0 || !n1.dht_maddr[0]) {
        if (n1.pid) fprintf(stderr, "dmoe-bench: the first MoE node printed no DHT address\n");
        b->failures++;
        bench_node_stop(&n1);
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
    float *x = bench_alloc_normal((size_t)BIG * (size_t)H, 11), *gy = bench_alloc_normal((size_t)BIG * (size_t)H, 12);
    char err[512];
    if (bench_node_start(b, &n2, 10, 0, second) != 0 || !x || !gy) goto fail;
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
    b->moe_n[0] = moe_series(m, &opt, oc.lr, x, gy, SMALL, 0, MOE_N_SMALL, b->moe_fwd3, NULL);
    fprintf(stderr, ".");
    b->moe_n[1] = moe_series(m, &opt, oc.lr, x, gy, BIG, 0, MOE_N_BIG, b->moe_fwd256, NULL);
    fprintf(stderr, ".");
    /* the training steps, and around them every expert's timers on both nodes: the step's parts */
    b->moe_n[2] = train_series(m, &opt, oc.lr, x, gy, BIG, MOE_N_BIG, &n1, &n2, b->moe_train256, &b->moe_parts[1]);
    fprintf(stderr, ".");
    b->moe_n[3] = train_series(m, &opt, oc.lr, x, gy, SMALL, MOE_N_SMALL, &n1, &n2, b->moe_train3, &b->moe_parts[0]);
    fprintf(stderr, ".");
    b->have_moe = b->moe_n[0] > 0 && b->moe_n[1] > 0 && b->moe_n[2] > 0 && b->moe_n[3] > 0;
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
    bench_node_stop(&n2);
    bench_node_stop(&n1);
}
