/* api_moe.c -- the Mixture-of-Experts pieces through the public API: the standalone beam search and
 * the layers (moe.h) with their forwards and backwards.
 *
 * A layer lives on the loop thread over its DHT handle's successors provider and expert caller. The
 * gating parameters stay the caller's to train: a forward may load them first (so a framework's
 * optimizer owns them), a backward copies out the input gradient and the parameters' gradient the
 * layer computed. Layers and forwards are reference-counted on the loop thread: a forward result and
 * every running call hold the layer, the layer holds its DHT handle; the layer goes with the last
 * reference, once no call of it runs.
 */
#include "actors/api/api_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/grid/dht_experts.h"

/* ---- beam search ---- */

struct dmoe_beam {
    moe_beam *b;
};

typedef struct {
    api_op op;
    dmoe_dht *d;
    moe_beam *b;
    dmoe_beam **out;
} beam_op;

static void beam_free(api_op *op)
{
    beam_op *s = (beam_op *)op;
    moe_beam_free(s->b);
    free(s);
}

static void on_searched(void *arg, int err, const char *msg, moe_beam *b)
{
    beam_op *s = arg;
    dmoe_beam *r = err ? NULL : malloc(sizeof *r);
    if (err || !r) { api_done(&s->op, err ? err : DMOE_ENOMEM, err ? msg : "out of memory"); return; }
    r->b = s->b;
    s->b = NULL;
    *s->out = r;
    api_done(&s->op, 0, "");
}

static void run_beam(api_op *op)
{
    beam_op *s = (beam_op *)op;
    if (s->d->stopped) { api_done(op, DMOE_ESHUTDOWN, "the DHT was shut down"); return; }
    moe_search *h;
    int rc = moe_beam_search(moe_health_succ(s->d->health), s->b, on_searched, s, &h);
    if (rc) api_done(op, rc, "cannot start the beam search");
}

int dmoe_beam_search(dmoe_dht *d, const char *uid_prefix, const int *grid, int ndim, const float *scores,
                     int64_t batch, int beam_size, dmoe_beam **out, char *err, size_t errlen)
{
    if (!d || !uid_prefix || !grid || !scores || !out) { dmoe_set_err(err, errlen, "dmoe_beam_search: NULL argument"); return DMOE_EINVAL; }
    if (beam_size < 1 || beam_size > MOE_MAX_BEAM) { dmoe_set_err(err, errlen, "beam_size must be in 1..%d", MOE_MAX_BEAM); return DMOE_EINVAL; }
    beam_op *s = calloc(1, sizeof *s);
    if (!s) { dmoe_set_err(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    s->op.run = run_beam;
    s->op.free = beam_free;
    s->d = d;
    s->out = out;
    int rc = moe_beam_new(uid_prefix, grid, ndim, batch, scores, beam_size, &s->b);   /* plain data: any thread */
    if (rc) {
        free(s);
        dmoe_set_err(err, errlen, "bad beam search: uid_prefix, grid sizes (1..%d dimensions) or batch", MOE_MAX_DIMS);
        return rc;
    }
    return api_sync(d->ctx, &s->op, err, errlen);
}

int dmoe_beam_count(const dmoe_beam *b, int64_t s)
{
    const moe_beam_expert *e;
    return b ? (int)moe_beam_result(b->b, s, &e) : 0;
}

const char *dmoe_beam_expert(const dmoe_beam *b, int64_t s, int j, char *maddr, size_t cap, float *score)
{
    const moe_beam_expert *e;
    size_t n = b ? moe_beam_result(b->b, s, &e) : 0;
    if (j < 0 || (size_t)j >= n) return NULL;
    if (maddr) wire_maddr_format(&e[j].addr, maddr, cap);
    if (score) *score = e[j].score;
    return e[j].uid;
}

void dmoe_beam_free(dmoe_beam *b)
{
    if (!b) return;
    moe_beam_free(b->b);
    free(b);
}

/* ---- layers ---- */

struct dmoe_moe {
    dmoe_dht *d;
    moe_layer *m;
    int refs;
    size_t nparams, nutil;
    int in_features;
};

struct dmoe_moe_fwd {
    dmoe_moe *m;
    moe_fwd *f;
};

static void moe_unref(dmoe_moe *m)
{
    if (--m->refs > 0) return;
    moe_layer_free(m->m);
    api_dht_unref(m->d);
    free(m);
}

void dmoe_moe_config_init(dmoe_moe_config *c, int is_switch)
{
    moe_cfg mc;
    moe_cfg_default(&mc);
    memset(c, 0, sizeof *c);
    snprintf(c->uid_prefix, sizeof c->uid_prefix, "%s", mc.uid_prefix);
    c->k_best = is_switch ? 1 : mc.k_best;
    c->k_min = mc.k_min;
    c->forward_timeout = mc.forward_timeout;
    c->timeout_after_k_min = mc.timeout_after_k_min;
    c->backward_k_min = mc.backward_k_min;
    c->backward_timeout = mc.backward_timeout;
    c->detect_anomalies = mc.detect_anomalies;
    c->is_switch = is_switch;
    c->jitter_eps = mc.jitter_eps;
    c->grid_dropout = mc.grid_dropout;
    c->utilization_alpha = mc.utilization_alpha;
}

typedef struct {
    api_op op;
    dmoe_dht *d;
    moe_cfg c;
    dmoe_moe **out;
} new_op;

static void run_new(api_op *op)
{
    new_op *n = (new_op *)op;
    char err[512];
    if (n->d->stopped) { api_done(op, DMOE_ESHUTDOWN, "the DHT was shut down"); return; }
    dmoe_moe *m = calloc(1, sizeof *m);
    if (!m) { api_done(op, DMOE_ENOMEM, "out of memory"); return; }
    int rc = moe_layer_new(api_loop(op->ctx), &n->c, moe_health_succ(n->d->health), moe_health_caller(n->d->health),
                           &m->m, err, sizeof err);
    if (rc) { free(m); api_done(op, rc, err); return; }
    m->d = n->d;
    m->refs = 1;
    n->d->refs++;
    moe_layer_params(m->m, &m->nparams);
    m->nutil = 0;
    for (int i = 0; i < n->c.ndim; i++) m->nutil += (size_t)n->c.grid_size[i];
    m->in_features = n->c.in_features;
    *n->out = m;
    api_done(op, 0, "");
}

int dmoe_moe_new(dmoe_dht *d, const dmoe_moe_config *c, dmoe_moe **out, char *err, size_t errlen)
{
    if (!d || !c || !out) { dmoe_set_err(err, errlen, "dmoe_moe_new: NULL argument"); return DMOE_EINVAL; }
    if (c->ndim < 1 || c->ndim > MOE_MAX_DIMS) { dmoe_set_err(err, errlen, "grid_size needs 1 to %d dimensions", MOE_MAX_DIMS); return DMOE_EINVAL; }
    if (!memchr(c->uid_prefix, 0, sizeof c->uid_prefix)) { dmoe_set_err(err, errlen, "uid_prefix is not terminated"); return DMOE_EINVAL; }
    new_op *n = calloc(1, sizeof *n);
    if (!n) { dmoe_set_err(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    n->op.run = run_new;
    n->d = d;
    n->out = out;
    moe_cfg *mc = &n->c;
    moe_cfg_default(mc);
    mc->in_features = c->in_features;
    mc->out_features = c->out_features;
    mc->ndim = c->ndim;
    memcpy(mc->grid_size, c->grid_size, (size_t)c->ndim * sizeof c->grid_size[0]);
    snprintf(mc->uid_prefix, sizeof mc->uid_prefix, "%s", c->uid_prefix);
    mc->k_best = c->k_best;
    mc->k_min = c->k_min;
    mc->forward_timeout = c->forward_timeout;
    mc->timeout_after_k_min = c->timeout_after_k_min;
    mc->backward_k_min = c->backward_k_min;
    mc->backward_timeout = c->backward_timeout;
    mc->detect_anomalies = c->detect_anomalies;
    mc->allow_zero_outputs = c->allow_zero_outputs;
    mc->seed = c->seed;
    mc->is_switch = c->is_switch;
    mc->jitter_eps = c->jitter_eps;
    mc->grid_dropout = c->grid_dropout;
    mc->utilization_alpha = c->utilization_alpha;
    return api_sync(d->ctx, &n->op, err, errlen);
}

size_t dmoe_moe_nparams(const dmoe_moe *m) { return m ? m->nparams : 0; }   /* fixed at creation */

/* Copies of parameters and utilisation, on the loop thread. */
typedef struct {
    api_op op;
    dmoe_moe *m;
    int what;           /* 0 get params, 1 set params, 2 utilisation, 3 release */
    float *buf;
    const float *src;
} copy_op;

static void run_copy(api_op *op)
{
    copy_op *c = (copy_op *)op;
    size_t n;
    if (c->what == 0) memcpy(c->buf, moe_layer_params(c->m->m, &n), c->m->nparams * sizeof(float));
    else if (c->what == 1) memcpy(moe_layer_params(c->m->m, &n), c->src, c->m->nparams * sizeof(float));
    else if (c->what == 2) memcpy(c->buf, moe_layer_utilization(c->m->m), c->m->nutil * sizeof(float));
    else moe_unref(c->m);
    api_done(op, 0, "");
}

static int copy_call(dmoe_moe *m, int what, float *buf, const float *src)
{
    copy_op *c = calloc(1, sizeof *c);
    if (!c) return DMOE_ENOMEM;
    c->op.run = run_copy;
    c->m = m;
    c->what = what;
    c->buf = buf;
    c->src = src;
    return api_sync(m->d->ctx, &c->op, NULL, 0);
}

int dmoe_moe_get_params(dmoe_moe *m, float *p, size_t n)
{
    return m && p && n == m->nparams ? copy_call(m, 0, p, NULL) : DMOE_EINVAL;
}

int dmoe_moe_set_params(dmoe_moe *m, const float *p, size_t n)
{
    return m && p && n == m->nparams ? copy_call(m, 1, NULL, p) : DMOE_EINVAL;
}

int dmoe_moe_utilization(dmoe_moe *m, float *u, size_t n)
{
    return m && u && n == m->nutil ? copy_call(m, 2, u, NULL) : DMOE_EINVAL;
}

/* Drop a reference in a later op (loop thread or any). */
static void moe_release_later(dmoe_moe *m)
{
    copy_op *c = calloc(1, sizeof *c);
    if (!c) return;   /* out of memory: the layer leaks rather than being freed under its own call */
    c->op.run = run_copy;
    c->m = m;
    c->what = 3;
    api_async(m->d->ctx, &c->op, NULL, NULL);
}

void dmoe_moe_free(dmoe_moe *m)
{
    if (m) moe_release_later(m);
}

/* ---- forward ---- */

typedef struct {
    api_op op;
    dmoe_moe *m;
    float *params;       /* NULL: keep the layer's */
    float *x;
    int64_t B;
    rx_tensor extra[KERN_MAX_IO];
    int n_extra;
    int held;            /* the op holds a reference on m */
    dmoe_moe_fwd **out;
} fwd_op;

static void moe_release_later(dmoe_moe *m);

static void fwd_free(api_op *op)
{
    fwd_op *o = (fwd_op *)op;
    if (o->held) moe_release_later(o->m);   /* maybe the last reference: not inside the layer's callback */
    free(o->params);
    free(o->x);
    for (int i = 0; i < o->n_extra; i++) rx_tensor_free(&o->extra[i]);
    free(o);
}

static void on_forward(void *arg, int err, const char *msg, moe_fwd *f)
{
    fwd_op *o = arg;
    if (err) { api_done(&o->op, err, msg); return; }
    dmoe_moe_fwd *r = malloc(sizeof *r);
    if (!r) { moe_fwd_free(f); api_done(&o->op, DMOE_ENOMEM, "out of memory"); return; }
    r->m = o->m;
    r->f = f;
    o->m->refs++;
    *o->out = r;
    api_done(&o->op, 0, "");
}

static void run_forward(api_op *op)
{
    fwd_op *o = (fwd_op *)op;
    if (o->m->d->stopped) { api_done(op, DMOE_ESHUTDOWN, "the DHT was shut down"); return; }
    o->m->refs++;
    o->held = 1;
    size_t n;
    if (o->params) memcpy(moe_layer_params(o->m->m, &n), o->params, o->m->nparams * sizeof(float));
    int rc = moe_forward_ex(o->m->m, o->x, o->B, o->extra, o->n_extra, on_forward, o);
    if (rc) api_done(op, rc, rc == DMOE_EINVAL ? "bad input: batch size, extra inputs, or non-finite values with "
                                                 "detect_anomalies" : dmoe_strerror(rc));
}

static fwd_op *fwd_new(dmoe_moe *m, const float *params, const float *x, int64_t B, const dmoe_tensor *extra,
                       int n_extra, dmoe_moe_fwd **out, char *err, size_t errlen, int *rc)
{
    *rc = DMOE_EINVAL;
    if (!m || !x || !out || B < 1 || n_extra < 0 || n_extra >= KERN_MAX_IO || (n_extra && !extra)) {
        dmoe_set_err(err, errlen, "dmoe_moe_forward: bad argument (batch >= 1, at most %d extra inputs)", KERN_MAX_IO - 1);
        return NULL;
    }
    *rc = DMOE_ENOMEM;
    fwd_op *o = calloc(1, sizeof *o);
    size_t nx = (size_t)B * (size_t)m->in_features;
    if (!o || !(o->x = malloc(nx * sizeof(float))) || (params && !(o->params = malloc(m->nparams * sizeof(float))))) {
        if (o) fwd_free(&o->op);
        dmoe_set_err(err, errlen, "out of memory");
        return NULL;
    }
    o->op.run = run_forward;
    o->op.free = fwd_free;
    o->m = m;
    o->B = B;
    o->out = out;
    memcpy(o->x, x, nx * sizeof(float));
    if (params) memcpy(o->params, params, m->nparams * sizeof(float));
    for (int i = 0; i < n_extra; i++, o->n_extra++)
        if ((*rc = api_tensor_copy(&extra[i], &o->extra[i], err, errlen)) != 0) { fwd_free(&o->op); return NULL; }
    *rc = 0;
    return o;
}

int dmoe_moe_forward(dmoe_moe *m, const float *params, const float *x, int64_t B, const dmoe_tensor *extra,
                     int n_extra, dmoe_moe_fwd **out, char *err, size_t errlen)
{
    int rc;
    fwd_op *o = fwd_new(m, params, x, B, extra, n_extra, out, err, errlen, &rc);
    return o ? api_sync(m->d->ctx, &o->op, err, errlen) : rc;
}

int dmoe_moe_forward_async(dmoe_moe *m, const float *params, const float *x, int64_t B, const dmoe_tensor *extra,
                           int n_extra, dmoe_moe_fwd **out, dmoe_callback cb, void *arg)
{
    int rc;
    fwd_op *o = fwd_new(m, params, x, B, extra, n_extra, out, NULL, 0, &rc);
    return o ? api_async(m->d->ctx, &o->op, cb, arg) : rc;
}

/* The accessors read what the forward wrote before its completion; the loop changes none of it later. */
const float *dmoe_moe_fwd_output(const dmoe_moe_fwd *f, int64_t *B, int *D) { return moe_fwd_output(f->f, B, D); }
float dmoe_moe_fwd_balancing_loss(const dmoe_moe_fwd *f) { return moe_fwd_balancing_loss(f->f); }

void dmoe_moe_fwd_stats(const dmoe_moe_fwd *f, int *chosen, int *answered)
{
    const moe_fwd_stats *s = moe_fwd_stats_of(f->f);
    if (chosen) *chosen = s->experts_chosen;
    if (answered) *answered = s->experts_answered;
}

float dmoe_moe_fwd_expert_weight(const dmoe_moe_fwd *f, int64_t b, const char *uid)
{
    return moe_fwd_expert_weight(f->f, b, uid);
}

/* ---- backward ---- */

typedef struct {
    api_op op;
    dmoe_moe_fwd *f;
    float *gy;
    float coef;
    float *gx, *gparams;
} bwd_op;

static void bwd_free(api_op *op)
{
    bwd_op *o = (bwd_op *)op;
    free(o->gy);
    free(o);
}

static void on_backward(void *arg, int err, const char *msg, const float *gx)
{
    bwd_op *o = arg;
    if (err) { api_done(&o->op, err, msg); return; }
    int64_t B;
    int D;
    moe_fwd_output(o->f->f, &B, &D);
    dmoe_moe *m = o->f->m;
    if (o->gx) memcpy(o->gx, gx, (size_t)B * (size_t)m->in_features * sizeof(float));
    size_t n;
    if (o->gparams) memcpy(o->gparams, moe_layer_grads(m->m, &n), m->nparams * sizeof(float));
    api_done(&o->op, 0, "");
}

static void run_backward(api_op *op)
{
    bwd_op *o = (bwd_op *)op;
    if (o->f->m->d->stopped) { api_done(op, DMOE_ESHUTDOWN, "the DHT was shut down"); return; }
    int rc = moe_backward(o->f->m->m, o->f->f, o->gy, o->coef, on_backward, o);
    if (rc) api_done(op, rc, rc == DMOE_EINVAL ? "bad backward: a non-finite gradient with detect_anomalies?" : dmoe_strerror(rc));
}

static bwd_op *bwd_new(dmoe_moe_fwd *f, const float *gy, float coef, float *gx, float *gparams, char *err, size_t errlen,
                       int *rc)
{
    if (!f || !gy) { *rc = DMOE_EINVAL; dmoe_set_err(err, errlen, "dmoe_moe_backward: NULL argument"); return NULL; }
    int64_t B;
    int D;
    moe_fwd_output(f->f, &B, &D);
    size_t n = (size_t)B * (size_t)D;
    bwd_op *o = calloc(1, sizeof *o);
    if (!o || !(o->gy = malloc(n * sizeof(float)))) {
        free(o);
        *rc = DMOE_ENOMEM;
        dmoe_set_err(err, errlen, "out of memory");
        return NULL;
    }
    memcpy(o->gy, gy, n * sizeof(float));
    o->op.run = run_backward;
    o->op.free = bwd_free;
    o->f = f;
    o->coef = coef;
    o->gx = gx;
    o->gparams = gparams;
    *rc = 0;
    return o;
}

int dmoe_moe_backward(dmoe_moe_fwd *f, const float *gy, float balance_coef, float *gx, float *gparams, char *err,
                      size_t errlen)
{
    int rc;
    bwd_op *o = bwd_new(f, gy, balance_coef, gx, gparams, err, errlen, &rc);
    return o ? api_sync(f->m->d->ctx, &o->op, err, errlen) : rc;
}

int dmoe_moe_backward_async(dmoe_moe_fwd *f, const float *gy, float balance_coef, float *gx, float *gparams,
                            dmoe_callback cb, void *arg)
{
    int rc;
    bwd_op *o = bwd_new(f, gy, balance_coef, gx, gparams, NULL, 0, &rc);
    return o ? api_async(f->m->d->ctx, &o->op, cb, arg) : rc;
}

typedef struct {
    api_op op;
    dmoe_moe_fwd *f;
} fwd_release_op;

static void run_fwd_release(api_op *op)
{
    dmoe_moe_fwd *f = ((fwd_release_op *)op)->f;
    moe_fwd_free(f->f);
    moe_unref(f->m);
    free(f);
    api_done(op, 0, "");
}

void dmoe_moe_fwd_free(dmoe_moe_fwd *f)
{
    if (!f) return;
    fwd_release_op *r = calloc(1, sizeof *r);
    if (!r) return;
    r->op.run = run_fwd_release;
    r->f = f;
    api_async(f->m->d->ctx, &r->op, NULL, NULL);
}
