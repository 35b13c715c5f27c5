/* moe.c -- the Mixture-of-Experts layer (see moe.h): its configuration, gating parameters, random
 * stream and utilisation, and the forward record (moe_fwd) a forward fills and a backward reads: the
 * inputs, the gating scores, one request per chosen expert with its rows, the answers, the weights and
 * the combined output.
 *
 * The call actor that runs a forward or backward is moe_call.c; it calls the record's helpers here
 * (moe_impl.h), nothing here calls it. The arithmetic lives in moe_math.c.
 *
 * Threads: all of it belongs to the loop thread; while a gating job is out, its worker writes the
 * record's scores and probabilities (a forward) or reads the record and writes its input gradient (a
 * backward; moe_call.c), and nothing here touches them before the job is back.
 */
#include "actors/moe/moe.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/moe/moe_impl.h"
#include "kernels/kern_ops.h"
#include "runtime/rt_err.h"
#include "runtime/rt_map.h"

#define MOE_DEFAULT_TIMEOUT_S 30.0   /* hivemind's None would wait forever; a bound keeps programs alive */

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
    c->detect_anomalies = 1;   /* on an open network an answer with NaN/Inf is a failed expert */
    c->neg_cache_s = DHT_NEG_CACHE_S;
    c->jitter_eps = 1e-2;
    c->grid_dropout = 1.0;
    c->utilization_alpha = 0.9;
    c->retry_rounds = MOE_RETRY_ROUNDS;
}

int moe_layer_new(rt_loop *l, const moe_cfg *c, const moe_succ_provider *succ, const moe_caller *caller,
                  moe_layer **out, char *err, size_t errlen)
{
#define BAD(...) do { snprintf(err, errlen, __VA_ARGS__); return DMOE_EINVAL; } while (0)
    if (c->in_features < 1) BAD("in_features must be positive");
    if (c->ndim < 1 || c->ndim > MOE_MAX_DIMS) BAD("grid_size needs 1 to %d dimensions", MOE_MAX_DIMS);
    if (c->k_best < 1 || c->k_best > MOE_MAX_BEAM) BAD("k_best must be in 1..%d", MOE_MAX_BEAM);
    if (c->k_min < 0 || c->backward_k_min < 0) BAD("k_min and backward_k_min must be >= 0");
    if (c->retry_rounds < 0 || c->retry_rounds > MOE_MAX_BEAM) BAD("retry_rounds must be in 0..%d", MOE_MAX_BEAM);
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

void moe_fwd_slots(const moe_fwd *f, int64_t b, int *coords, uint8_t *ok, const float **out)
{
    int ndim = f->m->g.ndim;
    for (int j = 0; j < f->k; j++) {
        int ei = f->slot_exp[b * f->k + j];
        const moe_exp *e = ei >= 0 ? &f->exp[ei] : NULL;
        memcpy(coords + j * ndim, e ? e->coords : (const int[MOE_MAX_DIMS]){ 0 }, (size_t)ndim * sizeof *coords);
        ok[j] = e && e->ok;
        out[j] = ok[j] && e->out.buf ? rx_tensor_f32(&e->out) + f->slot_row[b * f->k + j] * f->D : NULL;
    }
}

moe_fwd *moe_fwd_new(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra)
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


/* ---- grouping and combining ---- */

/* reserve makes room in f->exp for n requests in all (new room zeroed). Returns 0 or DMOE_ENOMEM. */
static int reserve(moe_fwd *f, int64_t n)
{
    if (n <= f->cap_exp) return 0;
    int64_t cap = f->cap_exp ? 2 * (int64_t)f->cap_exp : 8;
    if (cap < n) cap = n;
    if (cap > INT_MAX) return DMOE_ENOMEM;
    moe_exp *grown = realloc(f->exp, (size_t)cap * sizeof *grown);
    if (!grown) return DMOE_ENOMEM;
    memset(grown + f->cap_exp, 0, (size_t)(cap - f->cap_exp) * sizeof *grown);
    f->exp = grown;
    f->cap_exp = (int)cap;
    return 0;
}

/* new_entry writes request f->exp[f->nexp] for expert ch (room reserved) without counting it yet.
 * Returns 0, or -1 when its uid is not a grid coordinate of the layer. */
static int new_entry(moe_fwd *f, const moe_beam_expert *ch)
{
    moe_layer *m = f->m;
    moe_exp *e = &f->exp[f->nexp];
    memset(e, 0, sizeof *e);
    snprintf(e->uid, sizeof e->uid, "%s", ch->uid);
    e->addr = ch->addr;
    if (moe_beam_expert_coords(m->c.uid_prefix, m->c.grid_size, m->c.ndim, e->uid, e->coords) != 0)
        return -1;   /* a FLAT_EXPERT entry of a 1-d grid always parses; anything else was filtered */
    return 0;
}

/* add_expert appends the expert ch to f's requests for this wave (room reserved: the map's keys live in
 * the requests, which must not move) and indexes it by uid in by_uid. Returns its index, -1 when its uid
 * is not a grid coordinate of the layer (skipped), or DMOE_ENOMEM. */
static int add_expert(moe_fwd *f, rt_map *by_uid, const moe_beam_expert *ch)
{
    if (new_entry(f, ch) != 0) return -1;
    moe_exp *e = &f->exp[f->nexp];
    if (rt_map_put(by_uid, e->uid, strlen(e->uid), e) != 0) return DMOE_ENOMEM;   /* the key lives in e */
    return f->nexp++;
}

int moe_fwd_add_expert(moe_fwd *f, const moe_beam_expert *ch)
{
    if (reserve(f, (int64_t)f->nexp + 1) != 0) return DMOE_ENOMEM;
    if (new_entry(f, ch) != 0) return -1;
    moe_exp *e = &f->exp[f->nexp];
    e->rows = malloc((size_t)f->B * sizeof *e->rows);
    if (!e->rows) return DMOE_ENOMEM;
    if (f->ranked) {   /* the uid's rank, or the next one */
        e->rank = -1;
        for (int ej = 0; ej < f->nexp && e->rank < 0; ej++)
            if (strcmp(f->exp[ej].uid, e->uid) == 0) e->rank = f->exp[ej].rank;
        if (e->rank < 0) e->rank = f->nuid++;
    }
    return f->nexp++;
}

int moe_fwd_inputs(moe_fwd *f, int ei)
{
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
    return 0;
}

int moe_fwd_group(moe_fwd *f, const moe_beam *beam, const int64_t *smp, int64_t n, int *need, int *first)
{
    moe_layer *m = f->m;
    /* every new request holds at least one of the wave's n * k slots: room for all of them up front */
    if (reserve(f, (int64_t)f->nexp + n * f->k) != 0) return DMOE_ENOMEM;
    int first_new = f->nexp;
    rt_map by_uid = RT_MAP_INIT;   /* uid -> its moe_exp of this wave */
    /* first the slots and each request's row count, then the rows in sample order */
    for (int64_t i = 0; i < n; i++) {
        int64_t b = smp[i];
        const moe_beam_expert *ch;
        size_t cnt = moe_beam_result(beam, b, &ch);
        if (cnt > (size_t)f->k) cnt = (size_t)f->k;   /* the rest are spares for retries (moe_call.c) */
        for (size_t j = 0; j < cnt; j++) {
            moe_exp *found = rt_map_get(&by_uid, ch[j].uid, strlen(ch[j].uid));
            int ei = found ? (int)(found - f->exp) : add_expert(f, &by_uid, &ch[j]);
            if (ei == DMOE_ENOMEM) { rt_map_clear(&by_uid); return DMOE_ENOMEM; }
            if (ei < 0) continue;
            f->slot_exp[b * f->k + (int64_t)j] = ei;
            f->slot_row[b * f->k + (int64_t)j] = f->exp[ei].nrows++;
        }
        need[b] = m->c.k_min < (int)cnt ? m->c.k_min : (int)cnt;
    }
    rt_map_clear(&by_uid);
    *first = first_new;
    for (int ei = first_new; ei < f->nexp; ei++) {
        moe_exp *e = &f->exp[ei];
        e->rows = malloc((size_t)e->nrows * sizeof *e->rows);
        if (!e->rows) return DMOE_ENOMEM;
    }
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < f->k; j++) {
            int64_t b = smp[i];
            int ei = f->slot_exp[b * f->k + j];
            if (ei >= first_new) f->exp[ei].rows[f->slot_row[b * f->k + j]] = b;
        }
    for (int ei = first_new; ei < f->nexp; ei++)
        if (moe_fwd_inputs(f, ei) != 0) return DMOE_ENOMEM;
    return 0;
}

/* rank_of gives e its uid's rank in the map, or the next one. Returns 0 or DMOE_ENOMEM. */
static int rank_of(moe_fwd *f, rt_map *rank, moe_exp *e)
{
    void *v = rt_map_get(rank, e->uid, strlen(e->uid));
    if (!v) {
        v = (void *)(uintptr_t)(++f->nuid);
        if (rt_map_put(rank, e->uid, strlen(e->uid), v) != 0) return DMOE_ENOMEM;
    }
    e->rank = (int)((uintptr_t)v - 1);
    return 0;
}

int moe_fwd_group_end(moe_fwd *f)
{
    rt_map rank = RT_MAP_INIT;   /* uid -> rank + 1 */
    f->nuid = 0;
    for (int ei = 0; ei < f->nexp; ei++) f->exp[ei].rank = -1;
    for (int64_t s = 0; s < f->B * f->k; s++) {
        int ei = f->slot_exp[s];
        if (ei >= 0 && rank_of(f, &rank, &f->exp[ei]) != 0) { rt_map_clear(&rank); return DMOE_ENOMEM; }
    }
    f->st.experts_chosen = f->nuid;
    /* requests no slot refers to any more: failed before the search ended, their rows retried */
    for (int ei = 0; ei < f->nexp; ei++)
        if (f->exp[ei].rank < 0 && rank_of(f, &rank, &f->exp[ei]) != 0) { rt_map_clear(&rank); return DMOE_ENOMEM; }
    rt_map_clear(&rank);
    f->ranked = 1;
    return 0;
}

int moe_fwd_combine_begin(moe_fwd *f)
{
    moe_layer *m = f->m;
    if (f->D <= 0) f->D = m->c.out_features > 0 ? m->c.out_features : f->in;
    f->y = calloc((size_t)f->B * (size_t)f->D, sizeof *f->y);
    f->gx = calloc((size_t)f->B * (size_t)f->in, sizeof *f->gx);
    /* an expert answered when every one of its requests did */
    uint8_t *failed = calloc((size_t)(f->nuid ? f->nuid : 1), 1);
    if (!f->y || !f->gx || !failed) { free(failed); return DMOE_ENOMEM; }
    if (m->out_dim <= 0) m->out_dim = f->D;
    for (int ei = 0; ei < f->nexp; ei++) failed[f->exp[ei].rank] |= !f->exp[ei].ok;
    for (int u = 0; u < f->nuid; u++) f->st.experts_answered += !failed[u];
    free(failed);
    return 0;
}

void moe_fwd_mix(moe_fwd *f, const moe_grid *g)
{
    int T = g->total, k = f->k;
    int coords[MOE_MAX_BEAM * MOE_MAX_DIMS];
    uint8_t ok[MOE_MAX_BEAM];
    const float *outs[MOE_MAX_BEAM];
    f->bad = -1;
    for (int64_t b = 0; b < f->B; b++) {
        moe_fwd_slots(f, b, coords, ok, outs);
        const float *p = f->P ? f->P + b * T : NULL;
        if (moe_math_weights(g, f->S + b * T, p, k, coords, ok, f->w + b * k) == 0) {
            f->st.zero_rows++;
            if (f->bad < 0) f->bad = b;
        }
        const float *residual = f->P && f->D == f->in ? f->x + b * f->in : NULL;
        moe_math_mix(k, f->w + b * k, outs, f->D, residual, f->y + b * f->D);
    }
}

int moe_fwd_combine_end(moe_fwd *f, int64_t *bad)
{
    moe_layer *m = f->m;
    if (m->c.is_switch) {
        /* rows sent to answering experts per coordinate this batch, into the EMA; then the loss */
        float *count = calloc((size_t)m->g.total, sizeof *count);
        if (!count) return DMOE_ENOMEM;
        for (int ei = 0; ei < f->nexp; ei++)
            if (f->exp[ei].ok)
                for (int d = 0; d < m->g.ndim; d++) count[m->g.off[d] + f->exp[ei].coords[d]] += (float)f->exp[ei].nrows;
        moe_math_util_update(&m->g, count, (float)m->c.utilization_alpha, m->util);
        f->bal = moe_math_balancing_loss(&m->g, f->P, f->B, m->util);
        free(count);
    }
    *bad = f->bad;
    return 0;
}
