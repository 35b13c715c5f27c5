/* moe.c -- the Mixture-of-Experts layer: gating, dispatch with deadlines, masking, backward (see moe.h).
 *
 * Design notes. A forward or backward is an "op": an actor with one deadline timer. A forward computes
 * the gating scores on the loop (a small gemm), runs the batched beam search (moe_beam.h), groups the
 * chosen (sample, expert) pairs by expert, and sends one request per expert with all its rows. Each
 * reply updates per-sample answer counts; once every sample has k_min answers or nothing left pending,
 * the finish time moves to now + timeout_after_k_min (never later than the deadline). At the finish
 * time, or when nothing is pending, the op combines what it has and calls back. Requests still out
 * then are abandoned: their replies are dropped when they come (the client's own timeout bounds them),
 * and the op frees itself only when the last one has come back, so no callback ever sees freed memory.
 *
 * The moe_fwd keeps what a backward needs: the inputs, the gating scores, each expert's rows of x and
 * of the extra inputs (the same refcounted tensors are sent again: the node needs every input), outputs
 * and weights. Extra inputs get no gradient. Gradients follow hivemind's autograd graph:
 * grad_output_j = weight_j * gy goes to expert j; d loss / d logit comes from the softmax (or, in switch
 * mode, the per-dimension softmaxes and the balancing loss); the gating Linear's gradients and its input
 * gradient are computed locally; experts that fail the backward contribute nothing.
 *
 * Loop thread only.
 */
#include "actors/moe/moe.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kernels/kern_ops.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

#define MOE_DEFAULT_TIMEOUT_S 30.0   /* hivemind's None would wait forever; a bound keeps programs alive */

enum { MSG_TIMER = 1 };

struct moe_layer {
    rt_loop *loop;
    moe_cfg c;
    int total;
    int off[MOE_MAX_DIMS];
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

typedef struct {
    struct op *o;
    int e;
} call_ctx;

typedef struct op {
    rt_actor actor;
    rt_timer timer;
    moe_layer *m;
    moe_fwd *f;
    int backward;
    moe_beam *beam;
    moe_search *search;
    call_ctx *ctx;
    int pending, finished, dispatched;
    int *need, *got;          /* per sample: answers wanted, answers received */
    int *left;                /* per sample: requests still out */
    uint64_t t0, deadline, finish_at;   /* microseconds, rt_clock_us */
    float *gy;
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
    moe_layer *m = calloc(1, sizeof *m);
    if (!m) return DMOE_ENOMEM;
    m->loop = l;
    m->c = *c;
    if (m->c.forward_timeout <= 0) m->c.forward_timeout = MOE_DEFAULT_TIMEOUT_S;
    if (m->c.backward_timeout <= 0) m->c.backward_timeout = MOE_DEFAULT_TIMEOUT_S;
    size_t pl = strlen(m->c.uid_prefix);
    if (pl == 0 || m->c.uid_prefix[pl - 1] != UID_DELIMITER) {
        if (pl + 1 >= sizeof m->c.uid_prefix) { free(m); BAD("uid_prefix too long"); }
        m->c.uid_prefix[pl] = UID_DELIMITER;
        m->c.uid_prefix[pl + 1] = '\0';
    }
    if (!uid_is_valid_prefix(m->c.uid_prefix)) { free(m); BAD("uid_prefix %s is not a valid prefix", c->uid_prefix); }
    for (int d = 0; d < c->ndim; d++) {
        if (c->grid_size[d] < 1 || c->grid_size[d] > (1 << 20)) { free(m); BAD("grid_size[%d] must be in 1..%d", d, 1 << 20); }
        m->off[d] = m->total;
        m->total += c->grid_size[d];
    }
    m->nparams = (size_t)m->total * (size_t)(c->in_features + 1);
    m->params = malloc(m->nparams * sizeof *m->params);
    m->grads = calloc(m->nparams, sizeof *m->grads);
    m->util = malloc((size_t)m->total * sizeof *m->util);
    if (!m->params || !m->grads || !m->util) { moe_layer_free(m); return DMOE_ENOMEM; }
    kern_rng_seed(&m->rng, c->seed);
    float bound = 1.0f / sqrtf((float)c->in_features);
    kern_init_uniform(m->params, m->nparams, bound, &m->rng);
    for (int d = 0; d < c->ndim; d++)
        for (int i = 0; i < c->grid_size[d]; i++) m->util[m->off[d] + i] = 1.0f / (float)c->grid_size[d];
    m->succ = *succ;
    m->caller = *caller;
    m->out_dim = c->out_features > 0 ? c->out_features : 0;
    *out = m;
    return 0;
#undef BAD
}

const moe_cfg *moe_layer_cfg(const moe_layer *m) { return &m->c; }
float *moe_layer_params(moe_layer *m, size_t *n) { *n = m->nparams; return m->params; }
float *moe_layer_grads(moe_layer *m, size_t *n) { *n = m->nparams; return m->grads; }
const float *moe_layer_utilization(const moe_layer *m) { return m->util; }

void moe_layer_free(moe_layer *m)
{
    if (!m) return;
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
    free(o->gy);
    free(o);
}

/* op_release stops o once it has called back and no request is out. */
static void op_release(op *o)
{
    if (o->finished && o->pending == 0) rt_actor_stop(&o->actor);
}

static void arm(op *o)
{
    uint64_t now = rt_clock_us();
    uint64_t at = o->finish_at < o->deadline ? o->finish_at : o->deadline;
    rt_timer_start(&o->timer, at > now ? (at - now + 999) / 1000 : 0, 0);
}

static void op_fail(op *o, int err, const char *msg)
{
    o->finished = 1;
    rt_timer_cancel(&o->timer);
    if (o->search) { moe_search_cancel(o->search); o->search = NULL; }
    if (o->backward) {
        o->bcb(o->arg, err, msg, NULL);
    } else {
        moe_fwd *f = o->f;
        o->f = NULL;
        o->fcb(o->arg, err, msg, NULL);
        moe_fwd_free(f);
    }
    op_release(o);
}

static void fwd_complete(op *o);
static void bwd_complete(op *o);

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

static void op_handle(rt_actor *self, rt_msg *msg)
{
    op *o = (op *)self;
    rt_msg_drop(msg);
    if (o->finished) return;
    uint64_t now = rt_clock_us();
    if (now + 500 < o->finish_at && now + 500 < o->deadline) { arm(o); return; }
    if (o->search) {
        op_fail(o, DMOE_ETIMEDOUT, "beam search did not finish within forward_timeout");
        return;
    }
    op_complete(o);
}

static op *op_new(moe_layer *m, moe_fwd *f, int backward, double timeout_s)
{
    op *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    rt_actor_init(&o->actor, m->loop, backward ? "moe_bwd" : "moe_fwd", op_handle, op_destroy);
    if (rt_timer_init(&o->timer, &o->actor, MSG_TIMER) != 0) { free(o); return NULL; }
    o->m = m;
    o->f = f;
    o->backward = backward;
    o->need = calloc((size_t)f->B, sizeof *o->need);
    o->got = calloc((size_t)f->B, sizeof *o->got);
    o->left = calloc((size_t)f->B, sizeof *o->left);
    if (!o->need || !o->got || !o->left) { rt_actor_stop(&o->actor); return NULL; }
    o->t0 = rt_clock_us();
    o->deadline = o->t0 + (uint64_t)(timeout_s * 1e6);
    o->finish_at = o->deadline;
    arm(o);
    return o;
}

/* ---- dispatch ---- */

static int valid_answer(const op *o, const moe_exp *e, const rx_tensor *t, int D)
{
    if (t->dtype != WIRE_DT_F32 || t->ndim != 2 || t->shape[0] != e->nrows) return 0;
    if (D > 0 && t->shape[1] != D) return 0;
    if (o->m->c.detect_anomalies && t->numel && !kern_all_finite(rx_tensor_f32(t), t->numel)) return 0;
    return 1;
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
        ok = valid_answer(o, e, out, want);
        if (ok && o->backward) e->gx = *out;
        else if (ok) { e->out = *out; if (f->D <= 0) f->D = (int)out->shape[1]; }
        else {
            LOG_WARN("%s %s: answer has the wrong shape%s", o->backward ? "backward" : "forward", e->uid,
                     o->m->c.detect_anomalies ? " or non-finite values" : "");
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
    o->dispatched = 1;
    for (int ei = 0; ei < f->nexp; ei++) {
        moe_exp *e = &f->exp[ei];
        if (o->backward && !e->ok) continue;
        rx_tensor gout = {0};
        if (o->backward) {
            int64_t shape[2] = { e->nrows, f->D };
            if (rx_tensor_alloc(&gout, WIRE_DT_F32, 2, shape) != 0) continue;
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

/* group_experts turns the beam search's per-sample choices into one request per expert. */
static int group_experts(op *o)
{
    moe_fwd *f = o->f;
    moe_layer *m = o->m;
    size_t cap = 64;
    while (cap < (size_t)(f->B * f->k) * 2) cap *= 2;
    int *slots = malloc(cap * sizeof *slots);
    f->exp = calloc((size_t)(f->B * f->k), sizeof *f->exp);
    if (!slots || !f->exp) { free(slots); return DMOE_ENOMEM; }
    for (size_t i = 0; i < cap; i++) slots[i] = -1;
    for (int64_t b = 0; b < f->B; b++) {
        const moe_beam_expert *ch;
        size_t n = moe_beam_result(o->beam, b, &ch);
        for (size_t j = 0; j < n; j++) {
            size_t h = (size_t)XXH3_64bits(ch[j].uid, strlen(ch[j].uid)) & (cap - 1);
            while (slots[h] >= 0 && strcmp(f->exp[slots[h]].uid, ch[j].uid) != 0) h = (h + 1) & (cap - 1);
            if (slots[h] < 0) {
                moe_exp *e = &f->exp[f->nexp];
                snprintf(e->uid, sizeof e->uid, "%s", ch[j].uid);
                e->addr = ch[j].addr;
                if (moe_beam_expert_coords(m->c.uid_prefix, m->c.grid_size, m->c.ndim, e->uid, e->coords) != 0)
                    continue;   /* a FLAT_EXPERT entry of a 1-d grid always parses; anything else was filtered */
                e->rows = malloc((size_t)f->B * sizeof *e->rows);
                if (!e->rows) { free(slots); return DMOE_ENOMEM; }
                slots[h] = f->nexp++;
            }
            int ei = slots[h];
            moe_exp *e = &f->exp[ei];
            f->slot_exp[b * f->k + (int64_t)j] = ei;
            f->slot_row[b * f->k + (int64_t)j] = e->nrows;
            e->rows[e->nrows++] = b;
        }
        o->need[b] = m->c.k_min < (int)n ? m->c.k_min : (int)n;
    }
    free(slots);
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

/* gating computes S = xg W^T + b, and in switch mode the dropout and per-dimension softmax P. */
static void gating(moe_layer *m, moe_fwd *f)
{
    int T = m->total, in = f->in;
    kern_linear_fwd(f->xg, f->B, in, m->params, m->params + (size_t)T * (size_t)in, T, f->S);
    if (!m->c.is_switch) return;
    uint8_t keep[1 << 12];
    uint8_t *kp = T <= (int)sizeof keep ? keep : malloc((size_t)T);
    for (int t = 0; t < T; t++) kp[t] = 1;
    if (kp && m->c.grid_dropout < 1.0)
        for (int t = 0; t < T; t++) kp[t] = kern_rng_uniform(&m->rng) < m->c.grid_dropout;
    for (int64_t b = 0; b < f->B; b++) {
        for (int d = 0; d < m->c.ndim; d++) {
            float *s = f->S + b * T + m->off[d], *p = f->P + b * T + m->off[d];
            int G = m->c.grid_size[d];
            float mx = -INFINITY;
            for (int i = 0; i < G; i++) {
                if (kp && !kp[m->off[d] + i]) s[i] = -INFINITY;
                if (s[i] > mx) mx = s[i];
            }
            double z = 0;
            for (int i = 0; i < G; i++) z += (p[i] = isinf(s[i]) ? 0.0f : expf(s[i] - mx));
            for (int i = 0; i < G; i++) p[i] = z > 0 ? (float)(p[i] / z) : 0.0f;
        }
    }
    if (kp != keep) free(kp);
}

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

int moe_forward_ex(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra, moe_fwd_cb cb,
                   void *arg)
{
    if (B < 1 || B > (1 << 24)) return DMOE_EINVAL;
    if (n_extra < 0 || n_extra > KERN_MAX_IO - 1 || (n_extra > 0 && !extra)) return DMOE_EINVAL;
    for (int i = 0; i < n_extra; i++)
        if (!extra_ok(m, &extra[i], B)) return DMOE_EINVAL;
    int in = m->c.in_features, T = m->total, k = m->c.k_best;
    if (m->c.detect_anomalies && !kern_all_finite(x, (size_t)B * (size_t)in)) return DMOE_EINVAL;
    moe_fwd *f = calloc(1, sizeof *f);
    if (!f) return DMOE_ENOMEM;
    for (int i = 0; i < n_extra; i++) {
        if (rx_tensor_alloc(&f->extra[i], extra[i].dtype, extra[i].ndim, extra[i].shape) != 0) {
            moe_fwd_free(f);
            return DMOE_ENOMEM;
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
        return DMOE_ENOMEM;
    }
    for (int64_t i = 0; i < B * k; i++) f->slot_exp[i] = -1;
    memcpy(f->x, x, nx * sizeof *f->x);
    memcpy(f->xg, x, nx * sizeof *f->xg);
    if (m->c.is_switch) {
        float eps = (float)m->c.jitter_eps;
        for (size_t i = 0; i < nx; i++) {
            f->noise[i] = 1.0f - eps + 2.0f * eps * kern_rng_uniform(&m->rng);
            f->xg[i] *= f->noise[i];
        }
    }
    gating(m, f);
    op *o = op_new(m, f, 0, m->c.forward_timeout);
    if (!o) { moe_fwd_free(f); return DMOE_ENOMEM; }
    o->fcb = cb;
    o->arg = arg;
    int rc = moe_beam_new(m->c.uid_prefix, m->c.grid_size, m->c.ndim, B, f->S, k, &o->beam);
    if (rc == 0) rc = moe_beam_search(&m->succ, o->beam, on_searched, o, &o->search);
    if (rc) {
        o->f = NULL;
        o->finished = 1;
        op_release(o);
        moe_fwd_free(f);
        return rc;
    }
    return 0;
}

/* fwd_complete combines the answers: weights, output, switch utilisation and balancing loss. */
static void fwd_complete(op *o)
{
    moe_fwd *f = o->f;
    moe_layer *m = o->m;
    o->finished = 1;
    rt_timer_cancel(&o->timer);
    int T = m->total, k = f->k;
    if (f->D <= 0) f->D = m->c.out_features > 0 ? m->c.out_features : f->in;
    if (m->out_dim <= 0) m->out_dim = f->D;
    for (int ei = 0; ei < f->nexp; ei++) f->st.experts_answered += f->exp[ei].ok;
    f->y = calloc((size_t)f->B * (size_t)f->D, sizeof *f->y);
    f->gx = calloc((size_t)f->B * (size_t)f->in, sizeof *f->gx);
    if (!f->y || !f->gx) { o->finished = 0; op_fail(o, DMOE_ENOMEM, "out of memory"); return; }
    int64_t bad = -1;
    for (int64_t b = 0; b < f->B; b++) {
        float *w = f->w + b * k, logit[MOE_MAX_BEAM];
        float mx = -INFINITY;
        int any = 0;
        for (int j = 0; j < k; j++) {
            int ei = f->slot_exp[b * k + j];
            w[j] = 0;
            if (ei < 0 || !f->exp[ei].ok) continue;
            any = 1;
            const moe_exp *e = &f->exp[ei];
            if (m->c.is_switch) {
                float p = 1;
                for (int d = 0; d < m->c.ndim; d++) p *= f->P[b * T + m->off[d] + e->coords[d]];
                w[j] = p;
            } else {
                float l = 0;
                for (int d = 0; d < m->c.ndim; d++) l += f->S[b * T + m->off[d] + e->coords[d]];
                logit[j] = l;
                if (l > mx) mx = l;
            }
        }
        if (!any) {
            f->st.zero_rows++;
            if (bad < 0) bad = b;
        } else if (!m->c.is_switch) {
            double z = 0;
            for (int j = 0; j < k; j++) {
                int ei = f->slot_exp[b * k + j];
                if (ei >= 0 && f->exp[ei].ok) z += (w[j] = expf(logit[j] - mx));
            }
            for (int j = 0; j < k; j++) w[j] = (float)(w[j] / z);
        }
        float *y = f->y + b * f->D;
        for (int j = 0; j < k; j++) {
            int ei = f->slot_exp[b * k + j];
            if (ei < 0 || !f->exp[ei].ok || w[j] == 0) continue;
            const float *oe = rx_tensor_f32(&f->exp[ei].out) + f->slot_row[b * k + j] * f->D;
            for (int d = 0; d < f->D; d++) y[d] += w[j] * oe[d];
        }
        if (m->c.is_switch && f->D == f->in)
            for (int d = 0; d < f->D; d++) y[d] += f->x[b * f->in + d];
    }
    if (m->c.is_switch) {
        /* utilisation of the answering experts this batch, L1-normalised per dimension, into the EMA */
        float *bu = calloc((size_t)T, sizeof *bu);
        if (bu) {
            for (int ei = 0; ei < f->nexp; ei++)
                if (f->exp[ei].ok)
                    for (int d = 0; d < m->c.ndim; d++) bu[m->off[d] + f->exp[ei].coords[d]] += (float)f->exp[ei].nrows;
            float a = (float)m->c.utilization_alpha;
            for (int d = 0; d < m->c.ndim; d++) {
                double s = 0;
                for (int i = 0; i < m->c.grid_size[d]; i++) s += bu[m->off[d] + i];
                for (int i = 0; i < m->c.grid_size[d]; i++) {
                    float v = s > 0 ? (float)(bu[m->off[d] + i] / s) : 0.0f;
                    m->util[m->off[d] + i] = a * m->util[m->off[d] + i] + (1 - a) * v;
                }
            }
            free(bu);
        }
        double bal = 0;
        for (int d = 0; d < m->c.ndim; d++) {
            int G = m->c.grid_size[d];
            double s = 0;
            for (int i = 0; i < G; i++) {
                double pm = 0;
                for (int64_t b = 0; b < f->B; b++) pm += f->P[b * T + m->off[d] + i];
                s += pm / (double)f->B * m->util[m->off[d] + i];
            }
            bal += s / G * (double)G * (double)G;
        }
        f->bal = (float)bal;
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
    size_t ny = (size_t)f->B * (size_t)f->D;
    if (m->c.detect_anomalies && !kern_all_finite(gy, ny)) return DMOE_EINVAL;
    for (int ei = 0; ei < f->nexp; ei++) { rx_tensor_free(&f->exp[ei].gx); f->exp[ei].bok = 0; }
    op *o = op_new(m, f, 1, m->c.backward_timeout);
    if (!o) return DMOE_ENOMEM;
    o->gy = malloc(ny * sizeof *o->gy);
    if (!o->gy) { o->f = NULL; o->finished = 1; op_release(o); return DMOE_ENOMEM; }
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
    send_all(o);
    return 0;
}

/* gating_backward turns dL/dS into the gating gradients and adds the gating input's gradient to gx. */
static void gating_backward(moe_layer *m, moe_fwd *f, const float *gS)
{
    int T = m->total, in = f->in;
    float *gxg = malloc((size_t)f->B * (size_t)in * sizeof *gxg);
    if (!gxg) return;
    kern_linear_bwd(f->xg, gS, f->B, in, T, m->params, gxg, m->grads, m->grads + (size_t)T * (size_t)in);
    for (size_t i = 0; i < (size_t)f->B * (size_t)in; i++) f->gx[i] += f->noise ? gxg[i] * f->noise[i] : gxg[i];
    free(gxg);
}

static void bwd_complete(op *o)
{
    moe_fwd *f = o->f;
    moe_layer *m = o->m;
    o->finished = 1;
    rt_timer_cancel(&o->timer);
    int T = m->total, k = f->k, D = f->D;
    for (int64_t b = 0; b < f->B; b++) {
        if (o->got[b] < o->need[b]) {
            char msg[160];
            snprintf(msg, sizeof msg, "backward: sample %lld got %d of the %d expert answers it needs (backward_k_min)",
                     (long long)b, o->got[b], o->need[b]);
            o->f = NULL;
            o->bcb(o->arg, DMOE_ETIMEDOUT, msg, NULL);
            op_release(o);
            return;
        }
    }
    float *gS = calloc((size_t)f->B * (size_t)T, sizeof *gS);
    if (!gS) { o->finished = 0; op_fail(o, DMOE_ENOMEM, "out of memory"); return; }
    memset(f->gx, 0, (size_t)f->B * (size_t)f->in * sizeof *f->gx);
    for (int ei = 0; ei < f->nexp; ei++) {
        const moe_exp *e = &f->exp[ei];
        if (!e->bok) continue;
        const float *g = rx_tensor_f32(&e->gx);
        for (int64_t r = 0; r < e->nrows; r++)
            for (int i = 0; i < f->in; i++) f->gx[e->rows[r] * f->in + i] += g[r * f->in + i];
    }
    float *gP = m->c.is_switch ? calloc((size_t)f->B * (size_t)T, sizeof *gP) : NULL;
    for (int64_t b = 0; b < f->B; b++) {
        const float *gy = o->gy + b * D, *y = f->y + b * D;
        double gyy = 0;
        for (int d = 0; d < D; d++) gyy += (double)gy[d] * y[d];
        if (m->c.is_switch && D == f->in)
            for (int d = 0; d < D; d++) f->gx[b * f->in + d] += gy[d];   /* the residual */
        for (int j = 0; j < k; j++) {
            int ei = f->slot_exp[b * k + j];
            if (ei < 0 || !f->exp[ei].ok) continue;
            const moe_exp *e = &f->exp[ei];
            const float *oe = rx_tensor_f32(&e->out) + f->slot_row[b * k + j] * D;
            double go = 0;
            for (int d = 0; d < D; d++) go += (double)gy[d] * oe[d];
            float w = f->w[b * k + j];
            if (!m->c.is_switch) {
                float gl = (float)(w * (go - gyy));
                for (int d = 0; d < m->c.ndim; d++) gS[b * T + m->off[d] + e->coords[d]] += gl;
            } else if (gP) {
                for (int d = 0; d < m->c.ndim; d++) {
                    float others = 1;
                    for (int q = 0; q < m->c.ndim; q++)
                        if (q != d) others *= f->P[b * T + m->off[q] + e->coords[q]];
                    gP[b * T + m->off[d] + e->coords[d]] += (float)go * others;
                }
            }
        }
    }
    if (gP) {
        for (int d = 0; d < m->c.ndim; d++) {
            int G = m->c.grid_size[d];
            for (int64_t b = 0; b < f->B; b++) {
                float *gp = gP + b * T + m->off[d], *gs = gS + b * T + m->off[d];
                const float *p = f->P + b * T + m->off[d];
                double dot = 0;
                for (int i = 0; i < G; i++) {
                    gp[i] += o->bal_coef * (float)G * m->util[m->off[d] + i] / (float)f->B;
                    dot += (double)p[i] * gp[i];
                }
                for (int i = 0; i < G; i++) gs[i] = p[i] * (float)(gp[i] - dot);
            }
        }
        free(gP);
    }
    gating_backward(m, f, gS);
    free(gS);
    o->f = NULL;
    o->bcb(o->arg, 0, "", f->gx);
    op_release(o);
}

/* ---- the client as a caller ---- */

typedef struct {
    moe_call_cb cb;
    void *arg;
    int backward;
    rx_buf *xbuf;   /* the first input's buffer: a forward's reply leaves its activation handle there */
} client_ctx;

static int on_client_reply(void *arg, int err, const char *msg, wire_msg *reply)
{
    client_ctx *c = arg;
    rx_tensor out[KERN_MAX_IO];
    char e[256];
    if (err) {
        c->cb(c->arg, err, msg ? msg : dmoe_strerror(err), NULL);
    } else {
        int n = rx_result(reply, c->backward ? "grad_inputs" : "outputs", out, KERN_MAX_IO, e, sizeof e);
        if (n < 1) {
            c->cb(c->arg, n < 0 ? n : DMOE_EPROTO, n < 0 ? e : "no tensor in the reply", NULL);
        } else {
            for (int i = 1; i < n; i++) rx_tensor_free(&out[i]);
            /* the backward of these rows will send the handle back, so the node skips the recompute */
            if (!c->backward && c->xbuf) c->xbuf->handle = rx_reply_handle(reply);
            c->cb(c->arg, 0, "", &out[0]);
        }
    }
    rx_buf_unref(c->xbuf);
    free(c);
    return 0;
}

static int client_caller_call(void *impl, const char *uid, const wire_maddr *addr, const rx_tensor *in, int n_in,
                              const rx_tensor *gout, uint64_t timeout_ms, moe_call_cb cb, void *arg)
{
    client *cl = impl;
    if (n_in < 1 || n_in > KERN_MAX_IO) return DMOE_EINVAL;
    const rx_tensor *x = &in[0];
    client_ctx *c = malloc(sizeof *c);
    if (!c) return DMOE_ENOMEM;
    *c = (client_ctx){ cb, arg, gout != NULL, x->buf };
    uint64_t handle = 0;
    if (x->buf) {
        rx_buf_ref(x->buf);
        if (gout) {   /* a handle is good once */
            handle = x->buf->handle;
            x->buf->handle = 0;
        }
    }
    uint64_t id = client_next_id(cl);
    wire_out *req = rx_request_with_handle(id, uid, in, n_in, gout, gout ? 1 : 0, WIRE_COMP_NONE, handle);
    if (!req) { rx_buf_unref(c->xbuf); free(c); return DMOE_ENOMEM; }
    int rc = client_call(cl, addr, id, req, timeout_ms, on_client_reply, c);
    if (rc) { rx_buf_unref(c->xbuf); free(c); }
    return rc;
}

void moe_caller_client(client *cl, moe_caller *out)
{
    out->impl = cl;
    out->call = client_caller_call;
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
