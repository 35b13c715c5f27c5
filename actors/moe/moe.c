/* moe.c -- the Mixture-of-Experts layer: its parameters, the forward record, and the call actor that
 * runs one forward or backward (see moe.h).
 *
 * The arithmetic lives in moe_math.c, the beam search in moe_beam.c, the network behind the two ports
 * (moe_succ_provider, moe_caller) in moe_adapt.c; this file owns the state and the timing.
 *
 * Design notes. A forward or backward is an "op": an actor with one deadline timer and one worker job.
 *   Forward:  moe_forward_ex copies the input, draws the switch layer's jitter and dropout mask (the
 *             layer's random stream, in call order), snapshots the gating parameters and hands the
 *             gating GEMM (and the switch softmax) to the pool -> the job comes back as mail ->
 *             batched beam search (moe_beam.h) -> the chosen (sample, expert) pairs grouped by expert
 *             -> one request per expert with all its rows, all sent at once -> answers -> combine.
 *   Backward: moe_backward queues a start message -> grad_output_j = weight_j * gy to every expert that
 *             answered the forward -> answers -> d loss / d scores on the loop -> the gating backward
 *             GEMM on the pool -> the gradients copied into the layer -> callback.
 * Each reply updates per-sample answer counts; once every sample has k_min answers or nothing left
 * pending, the finish time moves to now + timeout_after_k_min (never later than the deadline). At the
 * finish time, or when nothing is pending, the op combines what it has. Failed and late answers -- and,
 * with detect_anomalies, answers with NaN or Inf -- are masked out. Requests still out then are
 * abandoned: their replies are dropped when they come (the caller's own timeout bounds them), and the
 * op stops itself only when it has called back, no request is out and its job is back, so no callback
 * ever sees freed memory.
 *
 * The moe_fwd keeps what a backward needs: the inputs, the gating scores, each expert's rows of x and
 * of the extra inputs (the same refcounted tensors are sent again: the node needs every input), outputs
 * and weights. Extra inputs get no gradient. Gradients follow hivemind's autograd graph; experts that
 * fail the backward contribute nothing to the input gradient.
 *
 * Threads. Everything here runs on the loop thread except the two gating GEMMs, which run on a worker
 * of the layer's pool (cfg.pool, or one worker of its own) on buffers nothing else touches meanwhile:
 * the op's parameter snapshot and the moe_fwd's gating buffers, which the caller may not read before
 * the callback. Callbacks run on the loop, never inside the call that started them. Every allocation
 * failure after a call started is reported through its callback (DMOE_ENOMEM).
 */
#include "actors/moe/moe.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/moe/moe_math.h"
#include "kernels/kern_ops.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/rt_map.h"

#define MOE_DEFAULT_TIMEOUT_S 30.0   /* hivemind's None would wait forever; a bound keeps programs alive */

enum { MSG_TIMER = 1, MSG_START, MSG_GATED };

struct moe_layer {
    rt_loop *loop;
    rt_pool *own_pool;        /* the pool the layer started when cfg.pool was NULL */
    moe_cfg c;                /* c.pool: the pool the gating GEMMs run on */
    moe_grid g;
    float *params, *grads;    /* W[total, in] then b[total] */
    size_t nparams;
    float *util;              /* switch: utilisation EMA */
    kern_rng rng;
    moe_succ_provider succ;
    moe_caller caller;
    int out_dim;              /* learned from the first answer */
};

typedef struct {
    char uid[UID_MAX_LEN + 1];
    wire_maddr addr;
    int coords[MOE_MAX_DIMS];
    int64_t *rows;            /* samples routed here */
    int64_t nrows;
    rx_tensor in[KERN_MAX_IO];  /* x's rows routed here, then the extra inputs' same rows */
    rx_tensor out, gx;
    int ok, bok;
} moe_exp;

struct moe_fwd {
    moe_layer *m;
    int64_t B;
    int in, D, k;
    float *x, *noise;         /* input; switch jitter factors (NULL otherwise) */
    rx_tensor extra[KERN_MAX_IO - 1];   /* extra inputs for all B samples (copies) */
    int n_extra;
    float *xg, *S, *P;        /* gating input, scores [B, total], switch probabilities */
    int *slot_exp;            /* [B, k]: expert index or -1 */
    int64_t *slot_row;        /* [B, k]: row within the expert's request */
    float *w;                 /* [B, k]: weight of the slot in the output (0 when not answered) */
    moe_exp *exp;
    int nexp;
    float *y, *gx;
    float bal;
    moe_fwd_stats st;
};

/* One gating GEMM for a worker: only these buffers, which nothing else touches while the job is out. */
typedef struct {
    rt_job job;
    int backward;
    moe_grid g;
    int64_t B;
    int in;
    const float *W, *b;       /* the op's parameter snapshot */
    const float *xg, *noise;
    const uint8_t *keep;      /* forward, switch: the dropout mask, or NULL */
    float *S, *P;             /* forward: the moe_fwd's scores and probabilities */
    const float *gS;          /* backward: d loss / d scores */
    float *gW, *gb, *gx, *gxg;  /* backward: the op's gradients, the moe_fwd's input gradient, scratch */
} gate_job;

typedef struct {
    struct op *o;
    int e;
} call_ctx;

typedef struct op {
    rt_actor actor;
    rt_timer timer;
    rt_msg start;             /* backward: dispatch on the next loop round */
    gate_job gj;
    int job_out;              /* the gating job is on the pool */
    moe_layer *m;
    moe_fwd *f;
    int backward;
    moe_beam *beam;
    moe_search *search;
    call_ctx *ctx;
    int pending, finished;
    int *need, *got;          /* per sample: answers wanted, answers received */
    int *left;                /* per sample: requests still out */
    uint64_t t0, deadline, finish_at;   /* microseconds, rt_clock_us */
    float *wsnap;             /* the gating parameters when the GEMM was handed out */
    uint8_t *keep;            /* forward, switch with grid_dropout < 1: the dropout mask */
    float *gy;                /* backward: the output gradient [B, D] (a copy) */
    float *gS, *gP;           /* backward: d loss / d scores, d loss / d probabilities (switch) [B, total] */
    float *gxg, *gW;          /* backward: the job's scratch [B, in] and gradients [total, in + 1] */
    float bal_coef;
    moe_fwd_cb fcb;
    moe_bwd_cb bcb;
    void *arg;
} op;

/* ---- configuration and the layer ---- */

void moe_cfg_default(moe_cfg *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->uid_prefix, sizeof c->uid_prefix, "expert.");
    c->k_best = 4;
    c->k_min = 1;
    c->backward_k_min = 1;
    c->forward_timeout = MOE_DEFAULT_TIMEOUT_S;
    c->backward_timeout = MOE_DEFAULT_TIMEOUT_S;
    c->detect_anomalies = 1;   /* on an open network an answer with NaN/Inf is a failed expert */
    c->timeout_after_k_min = -1;
    c->neg_cache_s = DHT_NEG_CACHE_S;
    c->jitter_eps = 1e-2;
    c->grid_dropout = 1.0;
    c->utilization_alpha = 0.9;
}

int moe_layer_new(rt_loop *l, const moe_cfg *c, const moe_succ_provider *succ, const moe_caller *caller,
                  moe_layer **out, char *err, size_t errlen)
{
#define BAD(...) do { snprintf(err, errlen, __VA_ARGS__); return DMOE_EINVAL; } while (0)
    if (c->in_features < 1) BAD("in_features must be positive");
    if (c->ndim < 1 || c->ndim > MOE_MAX_DIMS) BAD("grid_size needs 1 to %d dimensions", MOE_MAX_DIMS);
    if (c->k_best < 1 || c->k_best > MOE_MAX_BEAM) BAD("k_best must be in 1..%d", MOE_MAX_BEAM);
    if (c->k_min < 0 || c->backward_k_min < 0) BAD("k_min and backward_k_min must be >= 0");
    if (c->is_switch && (c->grid_dropout <= 0 || c->grid_dropout > 1 || c->jitter_eps < 0 || c->jitter_eps >= 1))
        BAD("grid_dropout must be in (0, 1] and jitter_eps in [0, 1)");
    for (int d = 0; d < c->ndim; d++)
        if (c->grid_size[d] < 1 || c->grid_size[d] > (1 << 20)) BAD("grid_size[%d] must be in 1..%d", d, 1 << 20);
    char prefix[sizeof c->uid_prefix];
    size_t pl = strlen(c->uid_prefix);
    snprintf(prefix, sizeof prefix, "%s", c->uid_prefix);
    if (pl == 0 || prefix[pl - 1] != UID_DELIMITER) {
        if (pl + 1 >= sizeof prefix) BAD("uid_prefix too long");
        prefix[pl] = UID_DELIMITER;
        prefix[pl + 1] = '\0';
    }
    if (!uid_is_valid_prefix(prefix)) BAD("uid_prefix %s is not a valid prefix", c->uid_prefix);
#undef BAD
    moe_layer *m = calloc(1, sizeof *m);
    if (!m) return DMOE_ENOMEM;
    m->loop = l;
    m->c = *c;
    memcpy(m->c.uid_prefix, prefix, sizeof prefix);
    if (m->c.forward_timeout <= 0) m->c.forward_timeout = MOE_DEFAULT_TIMEOUT_S;
    if (m->c.backward_timeout <= 0) m->c.backward_timeout = MOE_DEFAULT_TIMEOUT_S;
    moe_grid_init(&m->g, c->grid_size, c->ndim);
    m->nparams = (size_t)m->g.total * (size_t)(c->in_features + 1);
    m->params = malloc(m->nparams * sizeof *m->params);
    m->grads = calloc(m->nparams, sizeof *m->grads);
    m->util = malloc((size_t)m->g.total * sizeof *m->util);
    if (!c->pool) m->c.pool = m->own_pool = rt_pool_new(l, 1);
    if (!m->params || !m->grads || !m->util || !m->c.pool) {
        moe_layer_free(m);
        snprintf(err, errlen, "out of memory");
        return DMOE_ENOMEM;
    }
    kern_rng_seed(&m->rng, c->seed);
    float bound = 1.0f / sqrtf((float)c->in_features);
    kern_init_uniform(m->params, m->nparams, bound, &m->rng);
    for (int d = 0; d < c->ndim; d++)
        for (int i = 0; i < c->grid_size[d]; i++) m->util[m->g.off[d] + i] = 1.0f / (float)c->grid_size[d];
    m->succ = *succ;
    m->caller = *caller;
    m->out_dim = c->out_features > 0 ? c->out_features : 0;
    *out = m;
    return 0;
}

const moe_cfg *moe_layer_cfg(const moe_layer *m) { return &m->c; }
float *moe_layer_params(moe_layer *m, size_t *n) { *n = m->nparams; return m->params; }
float *moe_layer_grads(moe_layer *m, size_t *n) { *n = m->nparams; return m->grads; }
const float *moe_layer_utilization(const moe_layer *m) { return m->util; }

void moe_layer_free(moe_layer *m)
{
    if (!m) return;
    rt_pool_free(m->own_pool);
    free(m->params);
    free(m->grads);
    free(m->util);
    free(m);
}

/* ---- the forward record ---- */

void moe_fwd_free(moe_fwd *f)
{
    if (!f) return;
    for (int e = 0; e < f->nexp; e++) {
        free(f->exp[e].rows);
        for (int i = 0; i < KERN_MAX_IO; i++) rx_tensor_free(&f->exp[e].in[i]);
        rx_tensor_free(&f->exp[e].out);
        rx_tensor_free(&f->exp[e].gx);
    }
    free(f->exp);
    for (int i = 0; i < f->n_extra; i++) rx_tensor_free(&f->extra[i]);
    free(f->x);
    free(f->noise);
    free(f->xg);
    free(f->S);
    free(f->P);
    free(f->slot_exp);
    free(f->slot_row);
    free(f->w);
    free(f->y);
    free(f->gx);
    free(f);
}

const float *moe_fwd_output(const moe_fwd *f, int64_t *B, int *D)
{
    if (B) *B = f->B;
    if (D) *D = f->D;
    return f->y;
}

float moe_fwd_balancing_loss(const moe_fwd *f) { return f->bal; }
const moe_fwd_stats *moe_fwd_stats_of(const moe_fwd *f) { return &f->st; }

float moe_fwd_expert_weight(const moe_fwd *f, int64_t b, const char *uid)
{
    for (int j = 0; j < f->k; j++) {
        int e = f->slot_exp[b * f->k + j];
        if (e >= 0 && strcmp(f->exp[e].uid, uid) == 0) return f->w[b * f->k + j];
    }
    return 0;
}

/* slots_of describes sample b's slots for moe_math: each slot's coordinates, whether it answered the
 * forward, and its output row (NULL when it did not answer or the output is not there yet). */
static void slots_of(const moe_fwd *f, int ndim, int64_t b, int *coords, uint8_t *ok, const float **out)
{
    for (int j = 0; j < f->k; j++) {
        int ei = f->slot_exp[b * f->k + j];
        const moe_exp *e = ei >= 0 ? &f->exp[ei] : NULL;
        memcpy(coords + j * ndim, e ? e->coords : (const int[MOE_MAX_DIMS]){ 0 }, (size_t)ndim * sizeof *coords);
        ok[j] = e && e->ok;
        out[j] = ok[j] && e->out.buf ? rx_tensor_f32(&e->out) + f->slot_row[b * f->k + j] * f->D : NULL;
    }
}

/* ---- the op actor ---- */

static void op_destroy(rt_actor *self)
{
    op *o = (op *)self;
    rt_timer_deinit(&o->timer);
    moe_beam_free(o->beam);
    free(o->ctx);
    free(o->need);
    free(o->got);
    free(o->left);
    free(o->wsnap);
    free(o->keep);
    free(o->gy);
    free(o->gS);
    free(o->gP);
    free(o->gxg);
    free(o->gW);
    free(o);
}

/* op_release stops o once it has called back, no request is out and its job is back. */
static void op_release(op *o)
{
    if (o->finished && o->pending == 0 && !o->job_out) rt_actor_stop(&o->actor);
}

static void arm(op *o)
{
    uint64_t now = rt_clock_us();
    uint64_t at = o->finish_at < o->deadline ? o->finish_at : o->deadline;
    rt_timer_start(&o->timer, at > now ? (at - now + 999) / 1000 : 0, 0);
}

/* op_fail calls back with err (a forward's record is freed) and ends the op. */
static void op_fail(op *o, int err, const char *msg)
{
    o->finished = 1;
    rt_timer_cancel(&o->timer);
    if (o->search) { moe_search_cancel(o->search); o->search = NULL; }
    moe_fwd *f = o->f;
    o->f = NULL;
    if (o->backward) {
        o->bcb(o->arg, err, msg, NULL);
    } else {
        o->fcb(o->arg, err, msg, NULL);
        moe_fwd_free(f);
    }
    op_release(o);
}

/* submit_gating hands o->gj to the pool. Returns 0 or the pool's error. */
static int submit_gating(op *o)
{
    int rc = rt_pool_submit(o->m->c.pool, &o->gj.job);
    if (rc == 0) o->job_out = 1;
    return rc;
}

static void fwd_complete(op *o);
static void bwd_complete(op *o);
static void on_gated(op *o);
static void send_all(op *o);

static void op_complete(op *o)
{
    if (o->finished) return;
    if (o->backward) bwd_complete(o);
    else fwd_complete(o);
}

/* settle moves the finish time forward once every sample has what it waits for. */
static void settle(op *o)
{
    int64_t B = o->f->B;
    if (o->pending == 0) { op_complete(o); return; }
    for (int64_t b = 0; b < B; b++)
        if (o->got[b] < o->need[b] && o->left[b] > 0) return;
    double after = o->m->c.timeout_after_k_min;
    if (after < 0) return;
    uint64_t t = rt_clock_us() + (uint64_t)(after * 1e6);
    if (t < o->finish_at) {
        o->finish_at = t;
        arm(o);
    }
}

static void on_timer(op *o)
{
    if (o->finished || o->job_out) return;   /* a forward's gating job re-arms the timer when it is back */
    uint64_t now = rt_clock_us();
    if (now + 500 < o->finish_at && now + 500 < o->deadline) { arm(o); return; }
    if (o->search) {
        op_fail(o, DMOE_ETIMEDOUT, "beam search did not finish within forward_timeout");
        return;
    }
    op_complete(o);
}

static void op_handle(rt_actor *self, rt_msg *msg)
{
    op *o = (op *)self;
    int type = msg->type;
    rt_msg_drop(msg);
    if (type == MSG_TIMER) on_timer(o);
    else if (type == MSG_START && !o->finished) send_all(o);
    else if (type == MSG_GATED) on_gated(o);
}

static void gate_run(rt_job *j)
{
    gate_job *g = (gate_job *)j;
    if (g->backward)
        moe_math_gating_bwd(&g->g, g->xg, g->gS, g->B, g->in, g->W, g->noise, g->gW, g->gb, g->gx, g->gxg);
    else
        moe_math_gating(&g->g, g->xg, g->B, g->in, g->W, g->b, g->keep, g->S, g->P);
}

static op *op_new(moe_layer *m, moe_fwd *f, int backward, double timeout_s)
{
    op *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    rt_actor_init(&o->actor, m->loop, backward ? "moe_bwd" : "moe_fwd", op_handle, op_destroy);
    if (rt_timer_init(&o->timer, &o->actor, MSG_TIMER) != 0) { free(o); return NULL; }
    o->start.type = MSG_START;
    o->gj.job.msg.type = MSG_GATED;
    o->gj.job.run = gate_run;
    o->gj.job.owner = &o->actor;
    o->gj.backward = backward;
    o->gj.g = m->g;
    o->gj.B = f->B;
    o->gj.in = f->in;
    o->m = m;
    o->f = f;
    o->backward = backward;
    o->need = calloc((size_t)f->B, sizeof *o->need);
    o->got = calloc((size_t)f->B, sizeof *o->got);
    o->left = calloc((size_t)f->B, sizeof *o->left);
    o->wsnap = malloc(m->nparams * sizeof *o->wsnap);
    if (!o->need || !o->got || !o->left || !o->wsnap) { rt_actor_stop(&o->actor); return NULL; }
    o->t0 = rt_clock_us();
    o->deadline = o->t0 + (uint64_t)(timeout_s * 1e6);
    o->finish_at = o->deadline;
    arm(o);
    return o;
}

/* op_abort ends an op that never called back and has nothing out (its starter reports the error). */
static void op_abort(op *o)
{
    o->f = NULL;
    o->finished = 1;
    op_release(o);
}

/* ---- dispatch ---- */

/* valid_answer: float32 [e's rows, D] (a forward's first answer sets D: want 0 takes any width), finite
 * with detect_anomalies (rx_tensor_check says what is wrong in err). */
static int valid_answer(const op *o, const moe_exp *e, const rx_tensor *t, int D, char *err, size_t errlen)
{
    int64_t width = D;
    if (rx_tensor_check(t, WIRE_DT_F32, e->nrows, 1, &width, o->m->c.detect_anomalies,
                        o->backward ? "grad_inputs[0]" : "outputs[0]", err, errlen) != 0) return 0;
    if (t->shape[1] >= 1) return 1;
    snprintf(err, errlen, "outputs[0] has no columns");
    return 0;
}

static void on_answer(void *arg, int err, const char *msg, rx_tensor *out)
{
    call_ctx *c = arg;
    op *o = c->o;
    o->pending--;
    if (o->finished || !o->f) {
        if (out) rx_tensor_free(out);
        op_release(o);
        return;
    }
    moe_fwd *f = o->f;
    moe_exp *e = &f->exp[c->e];
    int ok = 0;
    if (err == 0) {
        int want = o->backward ? f->in : (f->D > 0 ? f->D : 0);
        char why[256];
        ok = valid_answer(o, e, out, want, why, sizeof why);
        if (ok && o->backward) e->gx = *out;
        else if (ok) { e->out = *out; if (f->D <= 0) f->D = (int)out->shape[1]; }
        else {
            LOG_WARN("%s %s: answer refused, the expert counts as failed: %s", o->backward ? "backward" : "forward",
                     e->uid, why);
            rx_tensor_free(out);
        }
    } else {
        LOG_DEBUG("%s %s failed: %s", o->backward ? "backward" : "forward", e->uid, msg);
        if (out) rx_tensor_free(out);
    }
    if (o->backward) e->bok = ok;
    else e->ok = ok;
    for (int64_t r = 0; r < e->nrows; r++) {
        int64_t b = e->rows[r];
        o->left[b]--;
        if (ok) o->got[b]++;
    }
    settle(o);
}

/* send_all sends one request per expert (in backward, only to those that answered the forward). */
static void send_all(op *o)
{
    moe_fwd *f = o->f;
    o->ctx = calloc((size_t)(f->nexp ? f->nexp : 1), sizeof *o->ctx);
    if (!o->ctx) { op_fail(o, DMOE_ENOMEM, "out of memory"); return; }
    for (int ei = 0; ei < f->nexp; ei++) {
        moe_exp *e = &f->exp[ei];
        if (o->backward && !e->ok) continue;
        rx_tensor gout = {0};
        if (o->backward) {
            int64_t shape[2] = { e->nrows, f->D };
            if (rx_tensor_alloc(&gout, WIRE_DT_F32, 2, shape) != 0) {
                op_fail(o, DMOE_ENOMEM, "out of memory for an expert's output gradient");
                return;
            }
            float *g = rx_tensor_f32(&gout);
            for (int64_t r = 0; r < e->nrows; r++) {
                int64_t b = e->rows[r];
                float w = 0;
                for (int j = 0; j < f->k; j++)
                    if (f->slot_exp[b * f->k + j] == ei) w = f->w[b * f->k + j];
                for (int d = 0; d < f->D; d++) g[r * f->D + d] = w * o->gy[b * f->D + d];
            }
        }
        uint64_t now = rt_clock_us();
        uint64_t ms = o->deadline > now ? (o->deadline - now + 999) / 1000 : 1;
        o->ctx[ei] = (call_ctx){ o, ei };
        int rc = o->m->caller.call(o->m->caller.impl, e->uid, &e->addr, e->in, 1 + f->n_extra,
                                   o->backward ? &gout : NULL, ms, on_answer, &o->ctx[ei]);
        rx_tensor_free(&gout);
        if (rc) {
            LOG_WARN("cannot call %s: %s", e->uid, dmoe_strerror(rc));
            continue;
        }
        o->pending++;
        for (int64_t r = 0; r < e->nrows; r++) o->left[e->rows[r]]++;
    }
    settle(o);
}

/* add_expert appends the expert ch to f's requests and indexes it by uid in by_uid. Returns its index,
 * -1 when its uid is not a grid coordinate of the layer (skipped), or DMOE_ENOMEM. */
static int add_expert(moe_layer *m, moe_fwd *f, rt_map *by_uid, const moe_beam_expert *ch)
{
    moe_exp *e = &f->exp[f->nexp];
    snprintf(e->uid, sizeof e->uid, "%s", ch->uid);
    e->addr = ch->addr;
    if (moe_beam_expert_coords(m->c.uid_prefix, m->c.grid_size, m->c.ndim, e->uid, e->coords) != 0)
        return -1;   /* a FLAT_EXPERT entry of a 1-d grid always parses; anything else was filtered */
    e->rows = malloc((size_t)f->B * sizeof *e->rows);
    if (!e->rows) return DMOE_ENOMEM;
    if (rt_map_put(by_uid, e->uid, strlen(e->uid), e) != 0) {   /* the key lives in e, as long as f */
        free(e->rows);
        e->rows = NULL;
        return DMOE_ENOMEM;
    }
    return f->nexp++;
}

/* group_experts turns the beam search's per-sample choices into one request per expert. */
static int group_experts(op *o)
{
    moe_fwd *f = o->f;
    moe_layer *m = o->m;
    f->exp = calloc((size_t)(f->B * f->k), sizeof *f->exp);
    if (!f->exp) return DMOE_ENOMEM;
    rt_map by_uid = RT_MAP_INIT;   /* uid -> its moe_exp */
    for (int64_t b = 0; b < f->B; b++) {
        const moe_beam_expert *ch;
        size_t n = moe_beam_result(o->beam, b, &ch);
        for (size_t j = 0; j < n; j++) {
            moe_exp *found = rt_map_get(&by_uid, ch[j].uid, strlen(ch[j].uid));
            int ei = found ? (int)(found - f->exp) : add_expert(m, f, &by_uid, &ch[j]);
            if (ei == DMOE_ENOMEM) { rt_map_clear(&by_uid); return DMOE_ENOMEM; }
            if (ei < 0) continue;
            moe_exp *e = &f->exp[ei];
            f->slot_exp[b * f->k + (int64_t)j] = ei;
            f->slot_row[b * f->k + (int64_t)j] = e->nrows;
            e->rows[e->nrows++] = b;
        }
        o->need[b] = m->c.k_min < (int)n ? m->c.k_min : (int)n;
    }
    rt_map_clear(&by_uid);
    for (int ei = 0; ei < f->nexp; ei++) {
        moe_exp *e = &f->exp[ei];
        int64_t shape[2] = { e->nrows, f->in };
        if (rx_tensor_alloc(&e->in[0], WIRE_DT_F32, 2, shape) != 0) return DMOE_ENOMEM;
        float *xe = rx_tensor_f32(&e->in[0]);
        for (int64_t r = 0; r < e->nrows; r++) memcpy(xe + r * f->in, f->x + e->rows[r] * f->in, (size_t)f->in * sizeof *xe);
        for (int i = 0; i < f->n_extra; i++) {
            const rx_tensor *t = &f->extra[i];
            int64_t sh[WIRE_MAX_NDIM];
            memcpy(sh, t->shape, sizeof sh);
            sh[0] = e->nrows;
            if (rx_tensor_alloc(&e->in[1 + i], t->dtype, t->ndim, sh) != 0) return DMOE_ENOMEM;
            size_t row = t->numel / (size_t)f->B * wire_dtype_size(t->dtype);
            uint8_t *dst = e->in[1 + i].buf ? e->in[1 + i].buf->data : NULL;
            if (!dst || row == 0) continue;
            for (int64_t r = 0; r < e->nrows; r++) memcpy(dst + (size_t)r * row, t->buf->data + (size_t)e->rows[r] * row, row);
        }
    }
    f->st.experts_chosen = f->nexp;
    return 0;
}

static void on_searched(void *arg, int err, const char *msg, moe_beam *b)
{
    op *o = arg;
    o->search = NULL;
    if (err) { op_fail(o, err, msg); return; }
    o->f->st.search_ms = (double)(rt_clock_us() - o->t0) / 1000.0;
    o->f->st.beam_rounds = moe_beam_rounds(b);
    int rc = group_experts(o);
    if (rc) { op_fail(o, rc, "out of memory"); return; }
    send_all(o);
}

/* ---- forward ---- */

/* extra_ok checks an extra input: float32 or uint8, [B, ...], finite with detect_anomalies. */
static int extra_ok(const moe_layer *m, const rx_tensor *t, int64_t B)
{
    if (t->dtype != WIRE_DT_F32 && t->dtype != WIRE_DT_U8) return 0;
    if (t->ndim < 1 || t->ndim > WIRE_MAX_NDIM || t->shape[0] != B) return 0;
    if (t->numel && !t->buf) return 0;
    if (t->dtype == WIRE_DT_F32 && m->c.detect_anomalies && t->numel && !kern_all_finite(rx_tensor_f32(t), t->numel))
        return 0;
    return 1;
}

int moe_forward(moe_layer *m, const float *x, int64_t B, moe_fwd_cb cb, void *arg)
{
    return moe_forward_ex(m, x, B, NULL, 0, cb, arg);
}

/* fwd_new makes the forward record for x[B, in] and the extra inputs (copied), with room for the
 * gating. Returns NULL when out of memory. */
static moe_fwd *fwd_new(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra)
{
    int in = m->c.in_features, T = m->g.total, k = m->c.k_best;
    moe_fwd *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    for (int i = 0; i < n_extra; i++) {
        if (rx_tensor_alloc(&f->extra[i], extra[i].dtype, extra[i].ndim, extra[i].shape) != 0) {
            moe_fwd_free(f);
            return NULL;
        }
        f->n_extra = i + 1;
        if (extra[i].numel) memcpy(f->extra[i].buf->data, extra[i].buf->data, extra[i].numel * wire_dtype_size(extra[i].dtype));
    }
    f->m = m;
    f->B = B;
    f->in = in;
    f->k = k;
    f->D = m->out_dim;
    size_t nx = (size_t)B * (size_t)in;
    f->x = malloc(nx * sizeof *f->x);
    f->xg = malloc(nx * sizeof *f->xg);
    f->S = malloc((size_t)B * (size_t)T * sizeof *f->S);
    f->P = m->c.is_switch ? malloc((size_t)B * (size_t)T * sizeof *f->P) : NULL;
    f->noise = m->c.is_switch ? malloc(nx * sizeof *f->noise) : NULL;
    f->slot_exp = malloc((size_t)(B * k) * sizeof *f->slot_exp);
    f->slot_row = calloc((size_t)(B * k), sizeof *f->slot_row);
    f->w = calloc((size_t)(B * k), sizeof *f->w);
    if (!f->x || !f->xg || !f->S || !f->slot_exp || !f->slot_row || !f->w || (m->c.is_switch && (!f->P || !f->noise))) {
        moe_fwd_free(f);
        return NULL;
    }
    for (int64_t i = 0; i < B * k; i++) f->slot_exp[i] = -1;
    memcpy(f->x, x, nx * sizeof *f->x);
    memcpy(f->xg, x, nx * sizeof *f->xg);
    return f;
}

int moe_forward_ex(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra, moe_fwd_cb cb,
                   void *arg)
{
    if (B < 1 || B > (1 << 24)) return DMOE_EINVAL;
    if (n_extra < 0 || n_extra > KERN_MAX_IO - 1 || (n_extra > 0 && !extra)) return DMOE_EINVAL;
    for (int i = 0; i < n_extra; i++)
        if (!extra_ok(m, &extra[i], B)) return DMOE_EINVAL;
    int in = m->c.in_features, T = m->g.total;
    if (m->c.detect_anomalies && !kern_all_finite(x, (size_t)B * (size_t)in)) return DMOE_EINVAL;
    moe_fwd *f = fwd_new(m, x, B, extra, n_extra);
    if (!f) return DMOE_ENOMEM;
    op *o = op_new(m, f, 0, m->c.forward_timeout);
    if (!o) { moe_fwd_free(f); return DMOE_ENOMEM; }
    o->fcb = cb;
    o->arg = arg;
    if (m->c.is_switch && m->c.grid_dropout < 1.0) {
        o->keep = malloc((size_t)T);
        if (!o->keep) { op_abort(o); moe_fwd_free(f); return DMOE_ENOMEM; }
    }
    /* the layer's random stream, in call order: the jitter of the gating input, then the dropout mask */
    if (m->c.is_switch) {
        float eps = (float)m->c.jitter_eps;
        for (size_t i = 0; i < (size_t)B * (size_t)in; i++) {
            f->noise[i] = 1.0f - eps + 2.0f * eps * kern_rng_uniform(&m->rng);
            f->xg[i] *= f->noise[i];
        }
    }
    for (int t = 0; o->keep && t < T; t++) o->keep[t] = kern_rng_uniform(&m->rng) < m->c.grid_dropout;
    memcpy(o->wsnap, m->params, m->nparams * sizeof *o->wsnap);
    gate_job *g = &o->gj;
    g->W = o->wsnap;
    g->b = o->wsnap + (size_t)T * (size_t)in;
    g->xg = f->xg;
    g->keep = o->keep;
    g->S = f->S;
    g->P = f->P;
    int rc = submit_gating(o);
    if (rc) { op_abort(o); moe_fwd_free(f); return rc; }
    return 0;
}

/* on_gated: the gating job is back. A forward starts its beam search; a backward is done. */
static void on_gated(op *o)
{
    o->job_out = 0;
    if (o->backward) {
        moe_fwd *f = o->f;
        memcpy(o->m->grads, o->gW, o->m->nparams * sizeof *o->gW);
        o->f = NULL;
        o->bcb(o->arg, 0, "", f->gx);
        op_release(o);
        return;
    }
    moe_layer *m = o->m;
    int rc = moe_beam_new(m->c.uid_prefix, m->c.grid_size, m->c.ndim, o->f->B, o->f->S, o->f->k, &o->beam);
    if (rc) { op_fail(o, rc, "cannot start the beam search"); return; }
    rc = moe_beam_search(&m->succ, o->beam, on_searched, o, &o->search);
    if (rc) {
        char msg[160];
        snprintf(msg, sizeof msg, "cannot start the beam search: %s", dmoe_strerror(rc));
        op_fail(o, rc, msg);
        return;
    }
    arm(o);   /* the deadline may have passed while the job was out */
}

/* fwd_complete combines the answers: weights, output, switch utilisation and balancing loss. */
static void fwd_complete(op *o)
{
    moe_fwd *f = o->f;
    moe_layer *m = o->m;
    int T = m->g.total, k = f->k, ndim = m->g.ndim;
    if (f->D <= 0) f->D = m->c.out_features > 0 ? m->c.out_features : f->in;
    f->y = calloc((size_t)f->B * (size_t)f->D, sizeof *f->y);
    f->gx = calloc((size_t)f->B * (size_t)f->in, sizeof *f->gx);
    float *count = m->c.is_switch ? calloc((size_t)T, sizeof *count) : NULL;
    if (!f->y || !f->gx || (m->c.is_switch && !count)) { free(count); op_fail(o, DMOE_ENOMEM, "out of memory"); return; }
    o->finished = 1;
    rt_timer_cancel(&o->timer);
    if (m->out_dim <= 0) m->out_dim = f->D;
    for (int ei = 0; ei < f->nexp; ei++) f->st.experts_answered += f->exp[ei].ok;
    int64_t bad = -1;
    int coords[MOE_MAX_BEAM * MOE_MAX_DIMS];
    uint8_t ok[MOE_MAX_BEAM];
    const float *outs[MOE_MAX_BEAM];
    for (int64_t b = 0; b < f->B; b++) {
        slots_of(f, ndim, b, coords, ok, outs);
        const float *p = m->c.is_switch ? f->P + b * T : NULL;
        if (moe_math_weights(&m->g, f->S + b * T, p, k, coords, ok, f->w + b * k) == 0) {
            f->st.zero_rows++;
            if (bad < 0) bad = b;
        }
        const float *residual = m->c.is_switch && f->D == f->in ? f->x + b * f->in : NULL;
        moe_math_mix(k, f->w + b * k, outs, f->D, residual, f->y + b * f->D);
    }
    if (m->c.is_switch) {
        /* rows sent to answering experts per coordinate this batch, into the EMA; then the loss */
        for (int ei = 0; ei < f->nexp; ei++)
            if (f->exp[ei].ok)
                for (int d = 0; d < ndim; d++) count[m->g.off[d] + f->exp[ei].coords[d]] += (float)f->exp[ei].nrows;
        moe_math_util_update(&m->g, count, (float)m->c.utilization_alpha, m->util);
        free(count);
        f->bal = moe_math_balancing_loss(&m->g, f->P, f->B, m->util);
    }
    f->st.total_ms = (double)(rt_clock_us() - o->t0) / 1000.0;
    o->f = NULL;
    if (bad >= 0 && !m->c.allow_zero_outputs) {
        char msg[256];
        snprintf(msg, sizeof msg, "no expert answered for sample %lld (%lld of %lld samples; %d of %d experts answered)",
                 (long long)bad, (long long)f->st.zero_rows, (long long)f->B, f->st.experts_answered, f->st.experts_chosen);
        o->fcb(o->arg, f->st.experts_chosen ? DMOE_ETIMEDOUT : DMOE_ENOTFOUND, msg, NULL);
        moe_fwd_free(f);
    } else {
        o->fcb(o->arg, 0, "", f);
    }
    op_release(o);
}

/* ---- backward ---- */

int moe_backward(moe_layer *m, moe_fwd *f, const float *gy, float balance_coef, moe_bwd_cb cb, void *arg)
{
    if (!f || !gy || f->m != m) return DMOE_EINVAL;
    size_t ny = (size_t)f->B * (size_t)f->D, ns = (size_t)f->B * (size_t)m->g.total;
    if (m->c.detect_anomalies && !kern_all_finite(gy, ny)) return DMOE_EINVAL;
    op *o = op_new(m, f, 1, m->c.backward_timeout);
    if (!o) return DMOE_ENOMEM;
    o->gy = malloc(ny * sizeof *o->gy);
    o->gS = calloc(ns, sizeof *o->gS);
    o->gP = m->c.is_switch ? calloc(ns, sizeof *o->gP) : NULL;
    o->gxg = malloc((size_t)f->B * (size_t)f->in * sizeof *o->gxg);
    o->gW = malloc(m->nparams * sizeof *o->gW);
    if (!o->gy || !o->gS || (m->c.is_switch && !o->gP) || !o->gxg || !o->gW) { op_abort(o); return DMOE_ENOMEM; }
    for (int ei = 0; ei < f->nexp; ei++) { rx_tensor_free(&f->exp[ei].gx); f->exp[ei].bok = 0; }
    memcpy(o->gy, gy, ny * sizeof *o->gy);
    o->bal_coef = balance_coef;
    o->bcb = cb;
    o->arg = arg;
    for (int64_t b = 0; b < f->B; b++) {
        int answered = 0;
        for (int j = 0; j < f->k; j++) {
            int ei = f->slot_exp[b * f->k + j];
            answered += ei >= 0 && f->exp[ei].ok;
        }
        o->need[b] = m->c.backward_k_min < answered ? m->c.backward_k_min : answered;
    }
    if (rt_send(&o->actor, &o->start) != 0) { op_abort(o); return DMOE_ESHUTDOWN; }
    return 0;
}

/* bwd_complete computes d loss / d scores from the answers on the loop, then hands the gating backward
 * to the pool (on_gated calls back). */
static void bwd_complete(op *o)
{
    moe_fwd *f = o->f;
    moe_layer *m = o->m;
    int T = m->g.total, k = f->k, D = f->D, ndim = m->g.ndim;
    for (int64_t b = 0; b < f->B; b++) {
        if (o->got[b] < o->need[b]) {
            char msg[160];
            snprintf(msg, sizeof msg, "backward: sample %lld got %d of the %d expert answers it needs (backward_k_min)",
                     (long long)b, o->got[b], o->need[b]);
            op_fail(o, DMOE_ETIMEDOUT, msg);
            return;
        }
    }
    o->finished = 1;
    rt_timer_cancel(&o->timer);
    memset(f->gx, 0, (size_t)f->B * (size_t)f->in * sizeof *f->gx);
    for (int ei = 0; ei < f->nexp; ei++) {
        const moe_exp *e = &f->exp[ei];
        if (!e->bok) continue;
        const float *g = rx_tensor_f32(&e->gx);
        for (int64_t r = 0; r < e->nrows; r++)
            for (int i = 0; i < f->in; i++) f->gx[e->rows[r] * f->in + i] += g[r * f->in + i];
    }
    int coords[MOE_MAX_BEAM * MOE_MAX_DIMS];
    uint8_t ok[MOE_MAX_BEAM];
    const float *outs[MOE_MAX_BEAM];
    for (int64_t b = 0; b < f->B; b++) {
        const float *gy = o->gy + b * D;
        if (m->c.is_switch && D == f->in)
            for (int d = 0; d < D; d++) f->gx[b * f->in + d] += gy[d];   /* the residual */
        slots_of(f, ndim, b, coords, ok, outs);
        const float *p = m->c.is_switch ? f->P + b * T : NULL;
        moe_math_slot_grads(&m->g, gy, f->y + b * D, D, k, outs, f->w + b * k, coords, p, o->gS + b * T,
                            o->gP ? o->gP + b * T : NULL);
        if (p) moe_math_switch_bwd(&m->g, p, m->util, o->bal_coef, f->B, o->gP + b * T, o->gS + b * T);
    }
    memcpy(o->wsnap, m->params, (size_t)T * (size_t)f->in * sizeof *o->wsnap);
    gate_job *g = &o->gj;
    g->W = o->wsnap;
    g->xg = f->xg;
    g->noise = f->noise;
    g->gS = o->gS;
    g->gW = o->gW;
    g->gb = o->gW + (size_t)T * (size_t)f->in;
    g->gx = f->gx;
    g->gxg = o->gxg;
    int rc = submit_gating(o);
    if (rc) {
        o->f = NULL;
        o->bcb(o->arg, rc, "cannot hand the gating backward to the worker pool", NULL);
        op_release(o);
    }
}

/* ---- blocking drivers ---- */

typedef struct {
    rt_loop *l;
    int done, err;
    char msg[512];
    moe_fwd *f;
    const float *gx;
} sync_wait;

static void sync_fwd(void *arg, int err, const char *msg, moe_fwd *f)
{
    sync_wait *s = arg;
    s->done = 1;
    s->err = err;
    s->f = f;
    snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "");
    rt_loop_break(s->l);
}

static void sync_bwd(void *arg, int err, const char *msg, const float *gx)
{
    sync_wait *s = arg;
    s->done = 1;
    s->err = err;
    s->gx = gx;
    snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "");
    rt_loop_break(s->l);
}

int moe_forward_run(moe_layer *m, const float *x, int64_t B, moe_fwd **out, char *err, size_t errlen)
{
    return moe_forward_run_ex(m, x, B, NULL, 0, out, err, errlen);
}

int moe_forward_run_ex(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra, moe_fwd **out,
                       char *err, size_t errlen)
{
    sync_wait s = { .l = m->loop };
    int rc = moe_forward_ex(m, x, B, extra, n_extra, sync_fwd, &s);
    if (rc) { snprintf(err, errlen, "cannot start the forward: %s", dmoe_strerror(rc)); return rc; }
    while (!s.done) rt_loop_run(m->loop);   /* the op's timer keeps the loop alive until it ends */
    if (s.err) { snprintf(err, errlen, "%s", s.msg); return s.err; }
    *out = s.f;
    return 0;
}

int moe_backward_run(moe_layer *m, moe_fwd *f, const float *gy, float balance_coef, const float **gx, char *err,
                     size_t errlen)
{
    sync_wait s = { .l = m->loop };
    int rc = moe_backward(m, f, gy, balance_coef, sync_bwd, &s);
    if (rc) { snprintf(err, errlen, "cannot start the backward: %s", dmoe_strerror(rc)); return rc; }
    while (!s.done) rt_loop_run(m->loop);
    if (s.err) { snprintf(err, errlen, "%s", s.msg); return s.err; }
    *gx = s.gx;
    return 0;
}
