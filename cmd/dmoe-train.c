/* dmoe-train -- hivemind's tutorial training, in C: a small model whose middle lives on remote experts.
 *
 *   dmoe-train --task chain --initial_peers MADDR   proj_out(expert.1(expert.4(x))), regression of
 *                                                   y = 0.01 * sum(x); the local projection and both remote
 *                                                   experts learn (the servers step after each backward)
 *   dmoe-train --task moe --initial_peers MADDR --grid_size 15 --k_best 2 [--switch]
 *                                                   input projection -> MoE layer over the live grid ->
 *                                                   output projection, on a Gaussian mixture whose classes
 *                                                   have two antipodal modes (a linear model cannot separate
 *                                                   them; the nonlinear experts can)
 *
 * Every --log_every steps it prints "step N  loss L  acc A  experts E  ms/step T"; at the end a summary
 * line (first and last average loss, accuracy, steps/s, "failed F" steps failed in all, "retried R" expert
 * requests the layer sent again to spare experts). The local parameters learn with --optimizer
 * (adam or sgd, kern_optim); the experts with the optimizer of their node. SIGINT or SIGTERM end the
 * training after the current step (exit 0). A step that fails (no expert answered, a backward short of
 * backward_k_min) is skipped with a warning; --max_failed_steps failures in a row end the program with
 * exit 1. Experts whose schema differs from what the layer sends (another width: the layer's check,
 * moe.h) end it at once with exit 1 and the message naming both shapes. Answers are checked (shape, dtype, rows) and, unless --no_detect_anomalies, an answer with NaN
 * or Inf is a failed expert; a loss that becomes NaN or Inf all the same ends the program at once with
 * exit 1 and "loss became non-finite at step N". Bad flags or bad local input (an unreadable --config or
 * --trusted_keys file) exit 2, as for every program (RT_ARGS_EXIT_HELP). Flags may come from --config FILE
 * too (runtime/text/rt_conf.h; the command line wins); host names in --initial_peers are resolved before
 * the loop starts. One thread runs the loop; the experts' math runs on the nodes.
 */
#include <event2/event.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/grid/dht_experts.h"
#include "actors/moe/moe.h"
#include "actors/moe/route/moe_net.h"
#include "actors/net/resolve.h"
#include "kernels/kern_ops.h"
#include "kernels/kern_optim.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_mem.h"
#include "runtime/text/rt_args.h"
#include "runtime/text/rt_conf.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

typedef struct {
    rt_loop *l;
    moe_net *net;
    int stop;
    /* flags */
    const char *task, *optimizer, *prefix;
    int64_t steps, batch;
    double lr;
    uint64_t seed;
    int hidden, in_dim, classes, k_best, k_min, backward_k_min, log_every, is_switch, allow_zero, detect, no_detect,
        max_failed;
    double fwd_timeout, after_k_min, bwd_timeout, balance;
    moe_cfg mc;
    /* local parameters, flat: [Win, bin, Wout, bout] */
    float *p, *g;
    size_t np;
    kern_optim opt;
    kern_rng rng;
    /* progress */
    double loss_sum, acc_sum, ms_sum, exp_sum;
    int n_sum;
    double first_loss, last_loss, last_acc;
    int64_t done_steps, failed_steps;   /* failed_steps: in a row */
    int64_t failed_total, retried;      /* steps failed in all; expert requests retried on spares */
} app;

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    app *a = arg;
    if (!a->stop) LOG_INFO("Caught %s: stopping after this step", sig == SIGINT ? "SIGINT" : "SIGTERM");
    a->stop = 1;
}

/* ---- blocking helpers over the loop ---- */

typedef struct {
    rt_loop *l;
    int done, err;
    char msg[256];
    rx_tensor out;
    dht_expert_loc loc[2];
} wait_t;

static void on_called(void *arg, int err, const char *msg, rx_tensor *out)
{
    wait_t *w = arg;
    w->done = 1;
    w->err = err;
    snprintf(w->msg, sizeof w->msg, "%s", msg ? msg : "");
    if (out) w->out = *out;
    rt_loop_break(w->l);
}

/* call_expert runs one forward (gout NULL) or backward of uid; returns 0 and *out (caller frees). */
static int call_expert(app *a, const dht_expert_loc *loc, const char *uid, const rx_tensor *x, const rx_tensor *gout,
                       rx_tensor *out, char *err, size_t errlen)
{
    wait_t w = { .l = a->l };
    const moe_caller *c = moe_net_caller(a->net);
    int rc = c->call(c->impl, uid, &loc->addr, x, 1, gout, (uint64_t)(a->fwd_timeout * 1000), on_called, &w);
    if (rc) { snprintf(err, errlen, "cannot call %s: %s", uid, dmoe_strerror(rc)); return rc; }
    while (!w.done) rt_loop_run(a->l);
    if (w.err) { snprintf(err, errlen, "%s: %s", uid, w.msg); rx_tensor_free(&w.out); return w.err; }
    int64_t width = a->hidden;
    char why[256];
    rc = rx_tensor_check(&w.out, WIRE_DT_F32, x->shape[0], 1, &width, a->mc.detect_anomalies,
                         gout ? "grad_inputs[0]" : "outputs[0]", why, sizeof why);
    if (rc) {
        snprintf(err, errlen, "%s answered badly: %s", uid, why);
        rx_tensor_free(&w.out);
        return rc;
    }
    *out = w.out;
    return 0;
}

static void on_located(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n)
{
    wait_t *w = arg;
    w->done = 1;
    w->err = err;
    for (size_t i = 0; i < n && i < 2; i++) w->loc[i] = locs[i];
    rt_loop_break(w->l);
}

/* ---- progress ---- */

static void progress(app *a, double loss, double acc, double experts, double ms)
{
    a->loss_sum += loss;
    a->acc_sum += acc;
    a->exp_sum += experts;
    a->ms_sum += ms;
    a->n_sum++;
    a->done_steps++;
    if (a->done_steps % a->log_every != 0 && a->done_steps != a->steps) return;
    double n = a->n_sum;
    if (a->first_loss < 0) a->first_loss = a->loss_sum / n;
    a->last_loss = a->loss_sum / n;
    a->last_acc = a->acc_sum / n;
    if (a->acc_sum >= 0 && strcmp(a->task, "moe") == 0)
        printf("step %lld  loss %.5f  acc %.3f  experts %.1f  ms/step %.2f\n", (long long)a->done_steps, a->loss_sum / n,
               a->acc_sum / n, a->exp_sum / n, a->ms_sum / n);
    else
        printf("step %lld  loss %.6f  acc -  experts %.1f  ms/step %.2f\n", (long long)a->done_steps, a->loss_sum / n,
               a->exp_sum / n, a->ms_sum / n);
    fflush(stdout);
    a->loss_sum = a->acc_sum = a->exp_sum = a->ms_sum = 0;
    a->n_sum = 0;
}

static int step_failed(app *a, const char *what, const char *msg)
{
    a->failed_steps++;
    a->failed_total++;
    LOG_WARN("step %lld failed (%s): %s", (long long)a->done_steps + 1, what, msg);
    return a->failed_steps >= a->max_failed ? DMOE_ETIMEDOUT : 0;
}

/* ---- task chain: proj_out(expert.1(expert.4(x))) ---- */

static int train_chain(app *a)
{
    const char *uids[2] = { "expert.4", "expert.1" };
    wait_t w = { .l = a->l };
    char err[512];
    int rc = dht_get_experts(moe_net_dht(a->net), uids, 2, on_located, &w, err, sizeof err);
    if (rc) { fprintf(stderr, "dmoe-train: %s\n", err); return 1; }
    while (!w.done) rt_loop_run(a->l);
    if (w.err || !w.loc[0].found || !w.loc[1].found) {
        fprintf(stderr, "dmoe-train: expert.4 and expert.1 must be declared in the DHT (found: %d, %d)\n", w.loc[0].found,
                w.loc[1].found);
        return 1;
    }
    int H = a->hidden;
    int64_t B = a->batch;
    float *Wo = a->p, *bo = a->p + H, *gWo = a->g, *gbo = a->g + H;
    for (int64_t s = 0; s < a->steps && !a->stop; s++) {
        uint64_t t0 = rt_clock_us();
        int64_t shape[2] = { B, H };
        rx_tensor x = {0}, h4 = {0}, h1 = {0}, g1 = {0}, g4 = {0}, gh4 = {0}, gh1 = {0};
        if (rx_tensor_alloc(&x, WIRE_DT_F32, 2, shape) != 0) return 1;
        float *xf = rx_tensor_f32(&x), y[4096], pred[4096];
        for (int64_t b = 0; b < B; b++) {
            double sum = 0;
            for (int i = 0; i < H; i++) sum += (xf[b * H + i] = kern_rng_normal(&a->rng));
            y[b] = (float)(0.01 * sum);
        }
        rc = call_expert(a, &w.loc[0], uids[0], &x, NULL, &h4, err, sizeof err);
        if (rc == 0) rc = call_expert(a, &w.loc[1], uids[1], &h4, NULL, &h1, err, sizeof err);
        double loss = 0;
        if (rc == 0) {
            const float *hf = rx_tensor_f32(&h1);
            kern_linear_fwd(hf, B, H, Wo, bo, 1, pred);
            float gp[4096];
            for (int64_t b = 0; b < B; b++) {
                float d = pred[b] - y[b];
                loss += (double)d * d / (double)B;
                gp[b] = 2.0f * d / (float)B;
            }
            if (!isfinite(loss)) {
                fprintf(stderr, "dmoe-train: loss became non-finite at step %lld (%g) from %s's outputs and the local "
                        "projection; detect_anomalies %s\n", (long long)a->done_steps + 1, loss, uids[1],
                        a->mc.detect_anomalies ? "on" : "off");
                rc = DMOE_ENONFINITE;
            }
            if (rc == 0) rc = rx_tensor_alloc(&gh1, WIRE_DT_F32, 2, shape);
            if (rc == 0) {
                kern_linear_bwd(hf, gp, B, H, 1, Wo, rx_tensor_f32(&gh1), gWo, gbo);
                rc = call_expert(a, &w.loc[1], uids[1], &h4, &gh1, &g1, err, sizeof err);
            }
            if (rc == 0) rc = call_expert(a, &w.loc[0], uids[0], &x, &g1, &g4, err, sizeof err);
            if (rc == 0) kern_optim_step(&a->opt, NULL, a->p, a->g, (float)a->lr);
        }
        rx_tensor_free(&x);
        rx_tensor_free(&h4);
        rx_tensor_free(&h1);
        rx_tensor_free(&g1);
        rx_tensor_free(&g4);
        rx_tensor_free(&gh4);
        rx_tensor_free(&gh1);
        if (!isfinite(loss)) return 1;
        if (rc) {
            if (step_failed(a, "expert call", err)) return 1;
            continue;
        }
        a->failed_steps = 0;
        progress(a, loss, -1, 2, (double)(rt_clock_us() - t0) / 1000.0);
    }
    return 0;
}

/* ---- task moe: proj_in -> MoE -> proj_out on an antipodal Gaussian mixture ---- */

static int train_moe(app *a)
{
    char err[512];
    moe_layer *m = NULL;
    int rc = moe_layer_new(a->l, &a->mc, moe_net_succ(a->net), moe_net_caller(a->net), &m, err, sizeof err);
    if (rc) { fprintf(stderr, "dmoe-train: %s\n", err); return 2; }
    int H = a->hidden, I = a->in_dim, C = a->classes;
    int64_t B = a->batch;
    float *Wi = a->p, *bi = Wi + (size_t)H * I, *Wo = bi + H, *bo = Wo + (size_t)C * H;
    float *gWi = a->g, *gbi = gWi + (size_t)H * I, *gWo = gbi + H, *gbo = gWo + (size_t)C * H;
    /* class means: random directions of norm 3; each sample is +mu or -mu plus unit noise */
    kern_rng data;
    kern_rng_seed(&data, a->seed ^ 0x5eedda7aull);
    float *mu = malloc((size_t)C * I * sizeof *mu);
    float *x = malloc((size_t)B * I * sizeof *x), *h = malloc((size_t)B * H * sizeof *h);
    float *lg = malloc((size_t)B * C * sizeof *lg), *gl = malloc((size_t)B * C * sizeof *gl);
    float *gz = malloc((size_t)B * H * sizeof *gz);
    int *label = malloc((size_t)B * sizeof *label);
    kern_optim gopt = {0};
    size_t ngp;
    float *gp = moe_layer_params(m, &ngp), *gg = moe_layer_grads(m, &ngp);
    kern_optim_cfg oc;
    kern_optim_parse(a->optimizer, &oc);
    if (!mu || !x || !h || !lg || !gl || !gz || !label || kern_optim_init(&gopt, &oc, ngp) != 0) { rc = 1; goto out; }
    for (int c = 0; c < C; c++) {
        double n2 = 0;
        for (int i = 0; i < I; i++) { mu[c * I + i] = kern_rng_normal(&data); n2 += (double)mu[c * I + i] * mu[c * I + i]; }
        for (int i = 0; i < I; i++) mu[c * I + i] *= (float)(3.0 / sqrt(n2));
    }
    for (int64_t s = 0; s < a->steps && !a->stop; s++) {
        uint64_t t0 = rt_clock_us();
        for (int64_t b = 0; b < B; b++) {
            int c = (int)kern_rng_below(&a->rng, (uint64_t)C);
            float sign = kern_rng_uniform(&a->rng) < 0.5f ? -1.0f : 1.0f;
            label[b] = c;
            for (int i = 0; i < I; i++) x[b * I + i] = sign * mu[c * I + i] + kern_rng_normal(&a->rng);
        }
        kern_linear_fwd(x, B, I, Wi, bi, H, h);
        moe_fwd *f = NULL;
        rc = moe_forward_run(m, h, B, &f, err, sizeof err);
        if (rc == DMOE_ESHAPE) {   /* the experts take other shapes: no later step can do better */
            LOG_ERROR("step %lld failed: %s", (long long)a->done_steps + 1, err);
            rc = 1;
            goto out;
        }
        if (rc) {
            if (step_failed(a, "forward", err)) { rc = 1; goto out; }
            continue;
        }
        int64_t fb;
        int D;
        const float *z = moe_fwd_output(f, &fb, &D);
        if (D != H) {
            fprintf(stderr, "dmoe-train: the experts answer %d features; --hidden_dim is %d\n", D, H);
            moe_fwd_free(f);
            rc = 1;
            goto out;
        }
        kern_linear_fwd(z, B, H, Wo, bo, C, lg);
        double loss = 0, acc = 0;
        for (int64_t b = 0; b < B; b++) {
            float *l = lg + b * C, mx = l[0];
            int arg = 0;
            for (int c = 1; c < C; c++) if (l[c] > mx) { mx = l[c]; arg = c; }
            double zs = 0;
            for (int c = 0; c < C; c++) zs += exp((double)l[c] - mx);
            loss += (log(zs) + mx - l[label[b]]) / (double)B;
            acc += (arg == label[b]) / (double)B;
            for (int c = 0; c < C; c++) gl[b * C + c] = (float)((exp((double)l[c] - mx) / zs - (c == label[b])) / (double)B);
        }
        if (a->is_switch) loss += a->balance * moe_fwd_balancing_loss(f);
        if (!isfinite(loss)) {
            const moe_fwd_stats *st = moe_fwd_stats_of(f);
            fprintf(stderr, "dmoe-train: loss became non-finite at step %lld (%g); the layer reported %d of %d chosen "
                    "experts answering, %lld samples with none, detect_anomalies %s\n", (long long)a->done_steps + 1, loss,
                    st->experts_answered, st->experts_chosen, (long long)st->zero_rows, a->mc.detect_anomalies ? "on" : "off");
            moe_fwd_free(f);
            rc = 1;
            goto out;
        }
        kern_linear_bwd(z, gl, B, H, C, Wo, gz, gWo, gbo);
        const float *gh;
        rc = moe_backward_run(m, f, gz, (float)a->balance, &gh, err, sizeof err);
        if (rc) {
            moe_fwd_free(f);
            if (step_failed(a, "backward", err)) { rc = 1; goto out; }
            continue;
        }
        kern_linear_bwd(x, gh, B, I, H, Wi, NULL, gWi, gbi);
        kern_optim_step(&a->opt, NULL, a->p, a->g, (float)a->lr);
        kern_optim_step(&gopt, NULL, gp, gg, (float)a->lr);
        const moe_fwd_stats *st = moe_fwd_stats_of(f);
        double answered = st->experts_answered;
        a->retried += st->experts_retried;
        int64_t zero = st->zero_rows;
        moe_fwd_free(f);
        if (answered == 0) {
            if (step_failed(a, "forward", "no expert answered")) { rc = 1; goto out; }
            continue;
        }
        if (zero) LOG_DEBUG("%lld samples got zeros (nobody answered)", (long long)zero);
        a->failed_steps = 0;
        progress(a, loss, acc, answered, (double)(rt_clock_us() - t0) / 1000.0);
    }
    rc = 0;
out:
    kern_optim_free(&gopt);
    free(mu);
    free(x);
    free(h);
    free(lg);
    free(gl);
    free(gz);
    free(label);
    moe_layer_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    (void)rt_mem_tune();   /* big buffers stay in the heap (runtime/rt_mem.h) */
    app a = {
        .task = "moe",
        .optimizer = "adam",
        .prefix = "expert.",
        .steps = 200,
        .batch = 64,
        .lr = 1e-3,
        .hidden = 512,
        .in_dim = 64,
        .classes = 8,
        .k_best = 2,
        .k_min = 1,
        .backward_k_min = 1,
        .log_every = 20,
        .fwd_timeout = 10,
        .after_k_min = 1.0,
        .bwd_timeout = 10,
        .balance = 0.01,
        .max_failed = 10,
        .first_loss = -1,
    };
    char **peers = NULL, **grid_words = NULL;
    const char *log_level = NULL, *config = NULL, *trusted_keys = NULL;
    const rt_arg flags[] = {
        {"task", ARG_STR, &a.task, "chain (proj_out(expert.1(expert.4(x)))) or moe (proj -> MoE -> proj)", "Task", NULL, "TASK"},
        {"steps", ARG_I64, &a.steps, "training steps", "Task", NULL},
        {"batch_size", ARG_I64, &a.batch, "samples per step", "Task", NULL},
        {"hidden_dim", ARG_INT, &a.hidden, "the experts' dimension (as the nodes' --hidden_dim)", "Task", NULL},
        {"in_dim", ARG_INT, &a.in_dim, "moe: dimension of the data", "Task", NULL},
        {"num_classes", ARG_INT, &a.classes, "moe: classes of the Gaussian mixture", "Task", NULL},
        {"seed", ARG_U64, &a.seed, "seed of the data and the local weights", "Task", NULL},
        {"optimizer", ARG_STR, &a.optimizer, "local optimizer: adam or sgd", "Training", NULL, "NAME"},
        {"lr", ARG_F64, &a.lr, "local learning rate", "Training", NULL, "LR"},
        {"balance_coef", ARG_F64, &a.balance, "switch: weight of the load-balancing loss", "Training", NULL, "X"},
        {"max_failed_steps", ARG_INT, &a.max_failed, "failed steps in a row before giving up (exit 1)", "Training", NULL},
        {"initial_peers", ARG_LIST, &peers, "DHT peers to join: multiaddrs (/ip4, /ip6, /dns .../tcp/PORT[/p2p/ID]) or HOST:PORT", "DHT", rt_args_is_maddr, "ADDR"},
        {"trusted_keys", ARG_STR, &trusted_keys, "a private swarm: use only DHT records signed by the Ed25519 public keys in FILE (64 hex digits a line, # comments)", "DHT", NULL, "PATH"},
        {"uid_prefix", ARG_STR, &a.prefix, "experts' uid prefix", "MoE", NULL, "PREFIX"},
        {"grid_size", ARG_LIST, &grid_words, "grid dimensions (default 15)", "MoE", NULL, "N"},
        {"k_best", ARG_INT, &a.k_best, "experts per sample", "MoE", NULL},
        {"k_min", ARG_INT, &a.k_min, "answers per sample before the straggler timer starts", "MoE", NULL},
        {"backward_k_min", ARG_INT, &a.backward_k_min, "backward answers needed per sample", "MoE", NULL},
        {"forward_timeout", ARG_F64, &a.fwd_timeout, "seconds for a forward, beam search included", "MoE", NULL, "S"},
        {"timeout_after_k_min", ARG_F64, &a.after_k_min, "seconds to wait for stragglers after k_min", "MoE", NULL, "S"},
        {"backward_timeout", ARG_F64, &a.bwd_timeout, "seconds for a backward", "MoE", NULL, "S"},
        {"detect_anomalies", ARG_FLAG, &a.detect, "treat answers with NaN/Inf as failed experts (the default)", "MoE", NULL},
        {"no_detect_anomalies", ARG_FLAG, &a.no_detect, "use answers with NaN/Inf (hivemind's default)", "MoE", NULL},
        {"allow_zero_outputs", ARG_FLAG, &a.allow_zero, "zeros for samples nobody answered instead of failing the step", "MoE", NULL},
        {"switch", ARG_FLAG, &a.is_switch, "use RemoteSwitchMixtureOfExperts", "MoE", NULL},
        {"log_every", ARG_INT, &a.log_every, "steps between progress lines", "Logging", NULL},
        {"log_level", ARG_STR, &log_level, "DEBUG, INFO, WARN or ERROR", "Logging", NULL, "LEVEL"},
        {"config", ARG_STR, &config, "read flags from FILE (YAML 'key: value' lines, as dmoe-node's); command-line flags win", "Config", NULL, "PATH"},
    };
    const int nflags = (int)(sizeof flags / sizeof flags[0]);
    char err[512];
    char *pos[1];
    rt_conf conf;
    if (rt_conf_merge(argc, argv, flags, nflags, &conf, err, sizeof err) != 0) { fprintf(stderr, "dmoe-train: %s\n", err); return 2; }
    int npos, rc = rt_args_parse(conf.argc, conf.argv, flags, nflags, pos, 0, &npos, err, sizeof err);
    if (rc == RT_ARGS_HELP) rt_args_usage(stdout, "dmoe-train --task chain|moe --initial_peers ADDR... [flags]", flags, nflags);
    if (rc == RT_ARGS_VERSION) rt_args_version(stdout, "dmoe-train");
    if (rc) {
        int info = rc == RT_ARGS_HELP || rc == RT_ARGS_VERSION;
        if (!info) fprintf(stderr, "dmoe-train: %s\n", err);
        rt_args_free(flags, nflags);
        rt_conf_free(&conf);
        return info ? 0 : 2;
    }
    int bad = 0, chain = strcmp(a.task, "chain") == 0;
    if (!chain && strcmp(a.task, "moe") != 0) { fprintf(stderr, "dmoe-train: --task must be chain or moe\n"); bad = 1; }
    kern_optim_cfg oc;
    if ((strcmp(a.optimizer, "adam") && strcmp(a.optimizer, "sgd")) || kern_optim_parse(a.optimizer, &oc) != 0) {
        fprintf(stderr, "dmoe-train: --optimizer must be adam or sgd\n");
        bad = 1;
    }
    if (a.steps < 1 || a.batch < 1 || a.batch > 4096 || a.hidden < 1 || a.in_dim < 1 || a.classes < 2 || a.log_every < 1 ||
        !(a.lr > 0) || a.max_failed < 1) {
        fprintf(stderr, "dmoe-train: --steps, --batch_size (<= 4096), --hidden_dim, --in_dim, --lr, --log_every must be positive, --num_classes >= 2\n");
        bad = 1;
    }
    if (log_level) {
        int lv = rt_log_parse_level(log_level);
        if (lv < 0) { fprintf(stderr, "dmoe-train: bad --log_level\n"); bad = 1; }
        else rt_log_set_level(lv);
    }
    if (a.detect && a.no_detect) { fprintf(stderr, "dmoe-train: --detect_anomalies or --no_detect_anomalies, not both\n"); bad = 1; }
    moe_cfg_default(&a.mc);
    if (grid_words) {
        if (moe_parse_grid(grid_words, a.mc.grid_size, &a.mc.ndim, err, sizeof err) != 0) { fprintf(stderr, "dmoe-train: %s\n", err); bad = 1; }
    } else {
        a.mc.ndim = 1;
        a.mc.grid_size[0] = 15;
    }
    size_t np = 0;
    while (peers && peers[np]) np++;
    if (np == 0) { fprintf(stderr, "dmoe-train: --initial_peers is required\n"); bad = 1; }
    char **resolved = NULL;   /* host names resolved, before the loop runs */
    if (np && resolve_now((const char *const *)peers, np, &resolved, err, sizeof err) != 0) {
        fprintf(stderr, "dmoe-train: --initial_peers: %s\n", err);
        bad = 1;
    }
    dht_trust *trusted = NULL;
    if (trusted_keys && dht_trust_load(trusted_keys, &trusted, err, sizeof err) != 0) {
        fprintf(stderr, "dmoe-train: --trusted_keys: %s\n", err);
        bad = 1;
    }
    if (bad) { resolve_list_free(resolved); dht_trust_free(trusted); rt_args_free(flags, nflags); rt_conf_free(&conf); return 2; }
    snprintf(a.mc.uid_prefix, sizeof a.mc.uid_prefix, "%s", a.prefix);
    a.mc.in_features = a.hidden;
    a.mc.k_best = a.is_switch && a.k_best == 2 ? 1 : a.k_best;
    a.mc.k_min = a.k_min;
    a.mc.backward_k_min = a.backward_k_min;
    a.mc.forward_timeout = a.fwd_timeout;
    a.mc.timeout_after_k_min = a.after_k_min;
    a.mc.backward_timeout = a.bwd_timeout;
    a.mc.detect_anomalies = !a.no_detect;
    a.mc.allow_zero_outputs = a.allow_zero;
    a.mc.is_switch = a.is_switch;
    a.mc.seed = a.seed + 1;

    /* local parameters: chain [Wout(1,H), bout(1)]; moe [Win(H,I), bin(H), Wout(C,H), bout(C)] */
    a.np = chain ? (size_t)a.hidden + 1
                 : (size_t)a.hidden * a.in_dim + a.hidden + (size_t)a.classes * a.hidden + a.classes;
    a.p = malloc(a.np * sizeof *a.p);
    a.g = calloc(a.np, sizeof *a.g);
    kern_rng_seed(&a.rng, a.seed);
    if (!a.p || !a.g || kern_optim_init(&a.opt, &oc, a.np) != 0) { fprintf(stderr, "dmoe-train: out of memory\n"); return 1; }
    if (chain) {
        kern_init_uniform(a.p, a.np, 1.0f / sqrtf((float)a.hidden), &a.rng);
    } else {
        size_t nwi = (size_t)a.hidden * a.in_dim + a.hidden;
        kern_init_uniform(a.p, nwi, 1.0f / sqrtf((float)a.in_dim), &a.rng);
        kern_init_uniform(a.p + nwi, a.np - nwi, 1.0f / sqrtf((float)a.hidden), &a.rng);
    }

    signal(SIGPIPE, SIG_IGN);
    a.l = rt_loop_new();
    struct event *sigint = evsignal_new(rt_loop_base(a.l), SIGINT, on_signal, &a);
    struct event *sigterm = evsignal_new(rt_loop_base(a.l), SIGTERM, on_signal, &a);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    int status = 1;
    a.net = moe_net_open_trusted(a.l, (const char *const *)resolved, np, a.mc.neg_cache_s, trusted, err, sizeof err);
    resolve_list_free(resolved);
    if (!a.net) {
        fprintf(stderr, "dmoe-train: %s\n", err);
    } else {
        uint64_t t0 = rt_clock_us();
        status = chain ? train_chain(&a) : train_moe(&a);
        double secs = (double)(rt_clock_us() - t0) / 1e6;
        if (status == 0 && a.done_steps == 0 && !a.stop) status = 1;
        if (a.done_steps > 0) {
            char acc[48] = "";
            if (!chain) snprintf(acc, sizeof acc, "  accuracy %.3f", a.last_acc);
            printf("summary: task %s  steps %lld  loss %.5f -> %.5f%s  %.2f steps/s  failed %lld  retried %lld%s\n", a.task,
                   (long long)a.done_steps, a.first_loss < 0 ? a.last_loss : a.first_loss, a.last_loss, acc,
                   secs > 0 ? (double)a.done_steps / secs : 0, (long long)a.failed_total, (long long)a.retried,
                   a.stop ? "  (interrupted)" : "");
        }
        if (status) fprintf(stderr, "dmoe-train: training failed after %lld steps\n", (long long)a.done_steps);
    }
    event_free(sigint);   /* before the loop runs to reap: signal events would keep it running */
    event_free(sigterm);
    moe_net_close(a.net);
    rt_loop_free(a.l);
    dht_trust_free(trusted);
    kern_optim_free(&a.opt);
    free(a.p);
    free(a.g);
    rt_args_free(flags, nflags);
    rt_conf_free(&conf);   /* after the last use of the flags' strings */
    return status;
}
