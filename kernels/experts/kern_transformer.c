/* kern_transformer.c -- the "transformer" expert: hivemind's TransformerEncoderLayer expert, a
 * post-LayerNorm encoder layer (PyTorch nn.TransformerEncoderLayer, 16 heads, norm_first=False,
 * activation gelu in its tanh form, feed-forward width 4H).
 *
 * Interface: kern_transformer_class (kern_expert.h), found through the registry in kern_classes.c.
 * Call order as for every class: setup -> init -> forward/backward (concurrently from several threads
 * is fine: the class keeps no state, every byte it writes is in the caller's out/grad/ws buffers).
 *
 * Inputs, per row of the batch: "x" f32 [S, H] and "mask" u8 [S] (PyTorch's key_padding_mask:
 * 1 = padded key, 0 = real key; any other value is DMOE_EINVAL). Output "output" f32 [S, H].
 * S is cfg.seq_len (0: hivemind's default 128), H is cfg.hidden_dim and must be divisible by 16.
 *
 * The computation, over the N = B*S tokens of a batch (dropout sites d1..d4 as in PyTorch):
 *   qkv   = x @ in_proj_weight^T + in_proj_bias                       [N, 3H]
 *   per row b and head h (head_dim D = H/16, scale 1/sqrt(D)):
 *     P   = softmax(scale * q k^T, keys with mask = 1 set to -inf)    [S, S]
 *     ctx = d1(P) @ v                                                 [S, D] into ctx[N, H]
 *   r1    = x + d2(ctx @ out_proj.weight^T + out_proj.bias);   x1 = norm1(r1)
 *   a     = d3(gelu_tanh(x1 @ linear1.weight^T + linear1.bias))      [N, 4H]
 *   r2    = x1 + d4(a @ linear2.weight^T + linear2.bias);      out = norm2(r2)   (eps 1e-5)
 *
 * Fully padded rows: PyTorch produces NaN when every key of a row is padded (softmax over all -inf).
 * We define the attention probabilities of such a query as all zeros instead, so its context is zero
 * and its self-attention output is exactly out_proj.bias; the rest of the layer runs as usual and the
 * output is finite. The backward is the exact gradient of that definition (no gradient reaches q, k
 * or v through such a row).
 *
 * Dropout: cfg.dropout = p, applied in training at the four sites above (kept values scaled by
 * 1/(1-p); p = 1 drops everything). The keep/drop decision of element idx at site s is a pure hash of
 * (rng_seed, s, idx) (a splitmix64 stream keyed per site), so masks cost no memory, the forward needs
 * no sequential generator, and the backward, which recomputes the forward, regenerates the very same
 * masks from the same rng_seed. With p = 0 the layer is PyTorch's eval mode and matches the reference
 * vectors in test/data/transformer_h32_s5_b2.msgpack.
 *
 * Workspace (floats): the forward keeps every activation the backward needs (qkv, P, ctx, r1, x1, the
 * linear1 pre-activation, a, r2 and the LayerNorm statistics) plus two S*S scratch blocks; the backward
 * adds its gradient buffers on top. The backward runs in two stages (kern_expert.h): backward_inputs
 * recomputes the forward and takes every gradient back to x, with the LayerNorms' parameter
 * gradients; backward_params then takes the four projections' weight and bias gradients from the
 * gradients it left at their outputs. GEMMs go through kern_linear_fwd/bwd for the projections and
 * strided cblas_sgemm calls per (row, head) for the attention.
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/kern_expert.h"
#include "kernels/kern_ops.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"

#define TR_HEADS       16     /* hivemind's TransformerEncoderLayer expert uses nhead=16 */
#define TR_DEFAULT_SEQ 128    /* hivemind's schema for this expert is [batch, 128, H] (since its PR #126) */
#define TR_LN_EPS      1e-5f  /* PyTorch's layer_norm_eps default */
#define TR_MAX_DIM     65536  /* keeps S, 4H and every BLAS size and leading dimension inside int range */

/* The parameter slots, in the reference file's (and PyTorch's state_dict) order. */
enum {
    P_IN_W, P_IN_B, P_OUT_W, P_OUT_B, P_L1_W, P_L1_B, P_L2_W, P_L2_B, P_N1_W, P_N1_B, P_N2_W, P_N2_B, P_COUNT
};

/* kern_transformer_class is defined at the end of this file; setup points models at it. */
extern const kern_class kern_transformer_class;

/* The dropout sites, each keyed separately. */
enum { SITE_ATTN = 1, SITE_SA = 2, SITE_FF_ACT = 3, SITE_FF_OUT = 4 };

/* Sizes of one call, derived from the model and B. */
typedef struct {
    int64_t B, S, H, F, D, N; /* F = 4H, D = head_dim, N = B*S tokens */
    float p;                  /* dropout probability */
} tr_dims;

/* Forward activations carved from the workspace. */
typedef struct {
    float *qkv, *P, *ctx, *r1, *x1, *h1, *a, *r2;
    float *mean1, *rstd1, *mean2, *rstd2;
    float *pd;                /* S*S scratch: the dropped-out probabilities of one (row, head) */
} tr_acts;

/* Backward buffers carved from the workspace after the activations. */
typedef struct {
    float *gy;                /* N*H: scratch output of the recomputed forward, then d r2 */
    float *gh;                /* N*H: d of linear2's output (before dropout d4) */
    float *gh_sa;             /* N*H: d of out_proj's output (before dropout d2) */
    float *ga;                /* N*F: d a, then d h1 */
    float *gx1;               /* N*H: d x1, then d r1 */
    float *gctx;              /* N*H */
    float *gqkv;              /* N*3H */
    float *gs;                /* S*S scratch: d scores of one (row, head) */
} tr_grads;

static tr_dims tr_dims_of(const kern_model *m, int64_t B)
{
    tr_dims d;
    d.B = B;
    d.S = m->in[0].dims[0];
    d.H = m->in[0].dims[1];
    d.F = 4 * d.H;
    d.D = d.H / TR_HEADS;
    d.N = B * d.S;
    d.p = m->cfg.dropout;
    return d;
}

static size_t tr_fwd_floats(const tr_dims *d)
{
    size_t N = (size_t)d->N, H = (size_t)d->H, F = (size_t)d->F, S = (size_t)d->S;
    return N * 3 * H                          /* qkv */
           + (size_t)d->B * TR_HEADS * S * S  /* P */
           + N * H * 3                        /* ctx, r1, x1 */
           + N * F * 2                        /* h1, a */
           + N * H                            /* r2 */
           + N * 4                            /* LayerNorm statistics */
           + S * S;                           /* pd */
}

static size_t tr_bwd_extra_floats(const tr_dims *d)
{
    size_t N = (size_t)d->N, H = (size_t)d->H, F = (size_t)d->F, S = (size_t)d->S;
    return N * H * 5 + N * F + N * 3 * H + S * S;
}

static float *tr_take(float **cur, size_t n)
{
    float *p = *cur;
    *cur += n;
    return p;
}

static void tr_carve_acts(const tr_dims *d, float **cur, tr_acts *a)
{
    size_t N = (size_t)d->N, H = (size_t)d->H, F = (size_t)d->F, S = (size_t)d->S;
    a->qkv = tr_take(cur, N * 3 * H);
    a->P = tr_take(cur, (size_t)d->B * TR_HEADS * S * S);
    a->ctx = tr_take(cur, N * H);
    a->r1 = tr_take(cur, N * H);
    a->x1 = tr_take(cur, N * H);
    a->h1 = tr_take(cur, N * F);
    a->a = tr_take(cur, N * F);
    a->r2 = tr_take(cur, N * H);
    a->mean1 = tr_take(cur, N);
    a->rstd1 = tr_take(cur, N);
    a->mean2 = tr_take(cur, N);
    a->rstd2 = tr_take(cur, N);
    a->pd = tr_take(cur, S * S);
}

static void tr_carve_grads(const tr_dims *d, float **cur, tr_grads *g)
{
    size_t N = (size_t)d->N, H = (size_t)d->H, F = (size_t)d->F, S = (size_t)d->S;
    g->gy = tr_take(cur, N * H);
    g->gh = tr_take(cur, N * H);
    g->gh_sa = tr_take(cur, N * H);
    g->ga = tr_take(cur, N * F);
    g->gx1 = tr_take(cur, N * H);
    g->gctx = tr_take(cur, N * H);
    g->gqkv = tr_take(cur, N * 3 * H);
    g->gs = tr_take(cur, S * S);
}

/* ---- dropout masks: a counter-based hash, so forward and backward agree without storing them ---- */

static uint64_t tr_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* tr_site_key returns the per-site key of the hash stream for rng_seed. */
static uint64_t tr_site_key(uint64_t rng_seed, unsigned site)
{
    return tr_mix64(rng_seed ^ ((uint64_t)site * 0xD1B54A32D192ED03ULL));
}

/* tr_drop_mult returns 0 (dropped) or 1/(1-p) (kept) for element idx of the stream with key. */
static float tr_drop_mult(uint64_t key, uint64_t idx, float p)
{
    if (p <= 0.0f) return 1.0f;
    if (p >= 1.0f) return 0.0f;
    uint64_t z = tr_mix64(key + (idx + 1) * 0x9E3779B97F4A7C15ULL);
    float u = (float)(z >> 40) * (1.0f / 16777216.0f);
    return u >= p ? 1.0f / (1.0f - p) : 0.0f;
}

/* tr_dropout_apply multiplies x[n] (stream positions base..base+n-1) by its dropout multipliers. */
static void tr_dropout_apply(float *x, size_t n, uint64_t key, uint64_t base, float p)
{
    if (p <= 0.0f) return;
    for (size_t i = 0; i < n; i++) x[i] *= tr_drop_mult(key, base + i, p);
}

/* ---- attention ---- */

static int tr_check_mask(const uint8_t *mask, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (mask[i] > 1) return DMOE_EINVAL;
    return 0;
}

/* tr_softmax_rows turns the scores sc[S,S] of one (row, head) into probabilities in place, giving
 * masked keys probability 0 and a query with no unmasked key an all-zero row. */
static void tr_softmax_rows(float *sc, int64_t S, const uint8_t *kmask)
{
    for (int64_t i = 0; i < S; i++) {
        float *r = sc + i * S;
        float mx = -INFINITY;
        for (int64_t j = 0; j < S; j++)
            if (!kmask[j] && r[j] > mx) mx = r[j];
        if (mx == -INFINITY) {
            memset(r, 0, (size_t)S * sizeof *r);
            continue;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < S; j++) {
            r[j] = kmask[j] ? 0.0f : expf(r[j] - mx);
            sum += r[j];
        }
        float inv = 1.0f / sum;
        for (int64_t j = 0; j < S; j++) r[j] *= inv;
    }
}

/* tr_probs_dropped writes d1(P) of (row b, head h) into pd, or returns P itself without dropout. */
static const float *tr_probs_dropped(const tr_dims *d, const float *P, float *pd, int64_t b, int64_t h,
                                     uint64_t key)
{
    if (d->p <= 0.0f) return P;
    size_t SS = (size_t)(d->S * d->S);
    memcpy(pd, P, SS * sizeof *pd);
    tr_dropout_apply(pd, SS, key, (uint64_t)(b * TR_HEADS + h) * SS, d->p);
    return pd;
}

/* tr_attn_scale is the scale 1/sqrt(D) of one head's scores q k^T. */
static float tr_attn_scale(const tr_dims *d) { return 1.0f / sqrtf((float)d->D); }

/* tr_head_at is where head h of row b starts in a packed [B, S, 3H] projection (or its gradient): its q
 * there, its k H floats on, its v 2H floats on, each row 3H floats after the last. */
static int64_t tr_head_at(const tr_dims *d, int64_t b, int64_t h) { return b * d->S * 3 * d->H + h * d->D; }

/* tr_attention_fwd fills A->P and A->ctx from A->qkv and the key masks. */
static void tr_attention_fwd(const tr_dims *d, const uint8_t *mask, tr_acts *A, uint64_t rng_seed)
{
    const int64_t S = d->S, H = d->H, D = d->D, ld = 3 * H;
    const float scale = tr_attn_scale(d);
    const uint64_t key = tr_site_key(rng_seed, SITE_ATTN);
    for (int64_t b = 0; b < d->B; b++) {
        for (int64_t h = 0; h < TR_HEADS; h++) {
            const float *q = A->qkv + tr_head_at(d, b, h), *k = q + H, *v = q + 2 * H;
            float *P = A->P + (b * TR_HEADS + h) * S * S;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)S, (int)S, (int)D, scale, q, (int)ld, k,
                        (int)ld, 0.0f, P, (int)S);
            tr_softmax_rows(P, S, mask + b * S);
            const float *Pd = tr_probs_dropped(d, P, A->pd, b, h, key);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)S, (int)D, (int)S, 1.0f, Pd, (int)S, v,
                        (int)ld, 0.0f, A->ctx + b * S * H + h * D, (int)H);
        }
    }
}

/* tr_attention_bwd writes G->gqkv from G->gctx and the saved activations. */
static void tr_attention_bwd(const tr_dims *d, const tr_acts *A, tr_grads *G, uint64_t rng_seed)
{
    const int64_t S = d->S, H = d->H, D = d->D, ld = 3 * H;
    const float scale = tr_attn_scale(d);
    const uint64_t key = tr_site_key(rng_seed, SITE_ATTN);
    for (int64_t b = 0; b < d->B; b++) {
        const float *gctx = G->gctx + b * S * H;
        for (int64_t h = 0; h < TR_HEADS; h++) {
            const float *q = A->qkv + tr_head_at(d, b, h), *k = q + H, *v = q + 2 * H;
            float *gq = G->gqkv + tr_head_at(d, b, h), *gk = gq + H, *gv = gq + 2 * H;
            const float *P = A->P + (b * TR_HEADS + h) * S * S;
            const float *Pd = tr_probs_dropped(d, P, A->pd, b, h, key);
            float *gs = G->gs;
            /* d Pd = gctx_h @ v^T; d v = Pd^T @ gctx_h */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)S, (int)S, (int)D, 1.0f, gctx + h * D,
                        (int)H, v, (int)ld, 0.0f, gs, (int)S);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)S, (int)D, (int)S, 1.0f, Pd, (int)S,
                        gctx + h * D, (int)H, 0.0f, gv, (int)ld);
            /* through the dropout on the probabilities, then the softmax */
            tr_dropout_apply(gs, (size_t)(S * S), key, (uint64_t)(b * TR_HEADS + h) * (uint64_t)(S * S), d->p);
            for (int64_t i = 0; i < S; i++) {
                const float *pr = P + i * S;
                float *gr = gs + i * S;
                float dot = 0.0f;
                for (int64_t j = 0; j < S; j++) dot += pr[j] * gr[j];
                for (int64_t j = 0; j < S; j++) gr[j] = pr[j] * (gr[j] - dot);
            }
            /* scores = scale * q k^T: d q = scale * gs @ k; d k = scale * gs^T @ q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)S, (int)D, (int)S, scale, gs, (int)S, k,
                        (int)ld, 0.0f, gq, (int)ld);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)S, (int)D, (int)S, scale, gs, (int)S, q,
                        (int)ld, 0.0f, gk, (int)ld);
        }
    }
}

/* ---- the layer ---- */

static const float *tr_param(const kern_model *m, const float *params, int slot)
{
    return params + m->params[slot].offset;
}

/* tr_forward_acts runs the whole layer, keeping the activations in A and writing the output to y. */
static void tr_forward_acts(const kern_model *m, const float *params, const tr_dims *d, const float *x,
                            const uint8_t *mask, tr_acts *A, float *y, uint64_t rng_seed)
{
    const int64_t N = d->N, H = d->H, F = d->F;
    const size_t NH = (size_t)(N * H), NF = (size_t)(N * F);

    kern_linear_fwd(x, N, H, tr_param(m, params, P_IN_W), tr_param(m, params, P_IN_B), 3 * H, A->qkv);
    tr_attention_fwd(d, mask, A, rng_seed);

    kern_linear_fwd(A->ctx, N, H, tr_param(m, params, P_OUT_W), tr_param(m, params, P_OUT_B), H, A->r1);
    tr_dropout_apply(A->r1, NH, tr_site_key(rng_seed, SITE_SA), 0, d->p);
    for (size_t i = 0; i < NH; i++) A->r1[i] += x[i];
    kern_layernorm_fwd(A->r1, N, H, tr_param(m, params, P_N1_W), tr_param(m, params, P_N1_B), TR_LN_EPS, A->x1,
                       A->mean1, A->rstd1);

    kern_linear_fwd(A->x1, N, H, tr_param(m, params, P_L1_W), tr_param(m, params, P_L1_B), F, A->h1);
    kern_gelu_tanh_fwd(A->h1, A->a, NF);
    tr_dropout_apply(A->a, NF, tr_site_key(rng_seed, SITE_FF_ACT), 0, d->p);
    kern_linear_fwd(A->a, N, F, tr_param(m, params, P_L2_W), tr_param(m, params, P_L2_B), H, A->r2);
    tr_dropout_apply(A->r2, NH, tr_site_key(rng_seed, SITE_FF_OUT), 0, d->p);
    for (size_t i = 0; i < NH; i++) A->r2[i] += A->x1[i];
    kern_layernorm_fwd(A->r2, N, H, tr_param(m, params, P_N2_W), tr_param(m, params, P_N2_B), TR_LN_EPS, y,
                       A->mean2, A->rstd2);
}

static int tr_setup(kern_model *m, const kern_config *cfg)
{
    if (!m || !cfg) return DMOE_EINVAL;
    int64_t H = cfg->hidden_dim;
    int64_t S = cfg->seq_len ? cfg->seq_len : TR_DEFAULT_SEQ;
    if (H <= 0 || H % TR_HEADS != 0 || S <= 0) return DMOE_EINVAL;
    if (!(cfg->dropout >= 0.0f && cfg->dropout <= 1.0f)) return DMOE_EINVAL; /* NaN fails too */
    if (S > TR_MAX_DIM || H > TR_MAX_DIM) return DMOE_EINVAL;

    kern_model t;
    kern_model_start(&t, &kern_transformer_class, cfg, S, H);
    t.cfg.seq_len = (int)S;
    int rc = 0;
    rc |= kern_model_add_param(&t, "self_attn.in_proj_weight", 3 * H, H);
    rc |= kern_model_add_param(&t, "self_attn.in_proj_bias", 3 * H, 0);
    rc |= kern_model_add_param(&t, "self_attn.out_proj.weight", H, H);
    rc |= kern_model_add_param(&t, "self_attn.out_proj.bias", H, 0);
    rc |= kern_model_add_param(&t, "linear1.weight", 4 * H, H);
    rc |= kern_model_add_param(&t, "linear1.bias", 4 * H, 0);
    rc |= kern_model_add_param(&t, "linear2.weight", H, 4 * H);
    rc |= kern_model_add_param(&t, "linear2.bias", H, 0);
    rc |= kern_model_add_param(&t, "norm1.weight", H, 0);
    rc |= kern_model_add_param(&t, "norm1.bias", H, 0);
    rc |= kern_model_add_param(&t, "norm2.weight", H, 0);
    rc |= kern_model_add_param(&t, "norm2.bias", H, 0);
    if (rc) return DMOE_EINVAL;

    t.n_in = 2;
    kern_io_set(&t.in[1], "mask", KERN_U8, S, 0);
    t.in[1].mask = 1;
    *m = t;
    return 0;
}

static void tr_init(const kern_model *m, float *params, uint64_t seed)
{
    kern_rng r;
    kern_rng_seed(&r, seed);
    const float H = (float)m->in[0].dims[1];
    for (int i = 0; i < m->n_params; i++) {
        const kern_param_info *p = &m->params[i];
        float *w = params + p->offset;
        switch (i) {
        case P_IN_W: /* xavier_uniform over the packed [3H, H]: fan_in H, fan_out 3H */
            kern_init_uniform(w, p->numel, sqrtf(6.0f / (H + 3.0f * H)), &r);
            break;
        case P_IN_B:
        case P_OUT_B:
        case P_N1_B:
        case P_N2_B:
            kern_init_const(w, p->numel, 0.0f);
            break;
        case P_N1_W:
        case P_N2_W:
            kern_init_const(w, p->numel, 1.0f);
            break;
        default: /* out_proj.weight, linear1.*, linear2.*: U(+-1/sqrt(fan_in)) */
            kern_init_uniform(w, p->numel, 1.0f / sqrtf((float)(i == P_L2_W || i == P_L2_B ? 4.0f * H : H)),
                              &r);
            break;
        }
    }
}

static size_t tr_forward_ws(const kern_model *m, int64_t B)
{
    tr_dims d = tr_dims_of(m, B);
    return tr_fwd_floats(&d);
}

static size_t tr_backward_ws(const kern_model *m, int64_t B)
{
    tr_dims d = tr_dims_of(m, B);
    return tr_fwd_floats(&d) + tr_bwd_extra_floats(&d);
}

static int tr_forward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                      float *const *out, float *ws, uint64_t rng_seed)
{
    if (B < 0) return DMOE_EINVAL;
    if (B == 0) return 0;
    tr_dims d = tr_dims_of(m, B);
    const uint8_t *mask = in[1];
    int rc = tr_check_mask(mask, (size_t)d.N);
    if (rc) return rc;
    tr_acts A;
    float *cur = ws;
    tr_carve_acts(&d, &cur, &A);
    tr_forward_acts(m, params, &d, in[0], mask, &A, out[0], rng_seed);
    return 0;
}

#define GP(slot) (grad_params + m->params[(slot)].offset)

/* The backward's first stage: the forward again, then every gradient back to x (grad_in) and the
 * LayerNorms' parameter gradients; the four projections' weight and bias gradients are left to
 * tr_backward_params, from what stays in ws (the activations, and gh, ga, gh_sa, gqkv: the gradients
 * at the four projections' outputs). */
static int tr_backward_inputs(const kern_model *m, const float *params, int64_t B, const void *const *in,
                              const float *saved, const float *const *grad_out, float *const *grad_in,
                              float *grad_params, float *ws, uint64_t rng_seed)
{
    if (B < 0 || saved) return DMOE_EINVAL;   /* no activation cache: the forward runs again */
    if (B == 0) {
        memset(grad_params, 0, m->n_floats * sizeof *grad_params);
        return 0;
    }
    tr_dims d = tr_dims_of(m, B);
    const int64_t N = d.N, H = d.H, F = d.F;
    const size_t NH = (size_t)(N * H), NF = (size_t)(N * F);
    const float *x = in[0];
    const uint8_t *mask = in[1];
    int rc = tr_check_mask(mask, (size_t)N);
    if (rc) return rc;

    tr_acts A;
    tr_grads G;
    float *cur = ws;
    tr_carve_acts(&d, &cur, &A);
    tr_carve_grads(&d, &cur, &G);
    tr_forward_acts(m, params, &d, x, mask, &A, G.gy, rng_seed);

    /* out = norm2(r2) */
    kern_layernorm_bwd(A.r2, grad_out[0], N, H, tr_param(m, params, P_N2_W), A.mean2, A.rstd2, G.gy, GP(P_N2_W),
                       GP(P_N2_B));
    /* r2 = x1 + d4(linear2(a)) */
    memcpy(G.gh, G.gy, NH * sizeof *G.gh);
    tr_dropout_apply(G.gh, NH, tr_site_key(rng_seed, SITE_FF_OUT), 0, d.p);
    kern_linear_bwd(NULL, G.gh, N, F, H, tr_param(m, params, P_L2_W), G.ga, NULL, NULL);
    /* a = d3(gelu(h1)); h1 = linear1(x1) */
    tr_dropout_apply(G.ga, NF, tr_site_key(rng_seed, SITE_FF_ACT), 0, d.p);
    kern_gelu_tanh_bwd(A.h1, G.ga, G.ga, NF);
    kern_linear_bwd(NULL, G.ga, N, H, F, tr_param(m, params, P_L1_W), G.gx1, NULL, NULL);
    for (size_t i = 0; i < NH; i++) G.gx1[i] += G.gy[i];
    /* x1 = norm1(r1) */
    kern_layernorm_bwd(A.r1, G.gx1, N, H, tr_param(m, params, P_N1_W), A.mean1, A.rstd1, G.gx1, GP(P_N1_W),
                       GP(P_N1_B));
    /* r1 = x + d2(out_proj(ctx)) */
    memcpy(G.gh_sa, G.gx1, NH * sizeof *G.gh_sa);
    tr_dropout_apply(G.gh_sa, NH, tr_site_key(rng_seed, SITE_SA), 0, d.p);
    kern_linear_bwd(NULL, G.gh_sa, N, H, H, tr_param(m, params, P_OUT_W), G.gctx, NULL, NULL);
    tr_attention_bwd(&d, &A, &G, rng_seed);
    /* qkv = in_proj(x) */
    float *gx = grad_in ? grad_in[0] : NULL;
    if (gx) {
        kern_linear_bwd(NULL, G.gqkv, N, H, 3 * H, tr_param(m, params, P_IN_W), gx, NULL, NULL);
        for (size_t i = 0; i < NH; i++) gx[i] += G.gx1[i];
    }
    return 0;
}

/* The second stage: the four projections' weight and bias gradients. */
static int tr_backward_params(const kern_model *m, int64_t B, const void *const *in, const float *const *grad_out,
                              float *grad_params, float *ws)
{
    if (B < 0 || !in || !in[0] || !grad_params) return DMOE_EINVAL;
    if (B == 0) return 0;   /* the first stage zeroed them */
    tr_dims d = tr_dims_of(m, B);
    const int64_t N = d.N, H = d.H, F = d.F;
    tr_acts A;
    tr_grads G;
    float *cur = ws;
    tr_carve_acts(&d, &cur, &A);
    tr_carve_grads(&d, &cur, &G);
    kern_linear_bwd(A.a, G.gh, N, F, H, NULL, NULL, GP(P_L2_W), GP(P_L2_B));
    kern_linear_bwd(A.x1, G.ga, N, H, F, NULL, NULL, GP(P_L1_W), GP(P_L1_B));
    kern_linear_bwd(A.ctx, G.gh_sa, N, H, H, NULL, NULL, GP(P_OUT_W), GP(P_OUT_B));
    kern_linear_bwd(in[0], G.gqkv, N, H, 3 * H, NULL, NULL, GP(P_IN_W), GP(P_IN_B));
#undef GP
    return 0;
}

static int tr_backward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                       const float *const *grad_out, float *const *grad_in, float *grad_params, float *ws,
                       uint64_t rng_seed)
{
    int rc = tr_backward_inputs(m, params, B, in, NULL, grad_out, grad_in, grad_params, ws, rng_seed);
    return rc < 0 ? rc : tr_backward_params(m, B, in, grad_out, grad_params, ws);
}

const kern_class kern_transformer_class = {
    .name = "transformer",
    .module_name = "TransformerEncoderLayer",
    .setup = tr_setup,
    .init = tr_init,
    .forward_ws = tr_forward_ws,
    .backward_ws = tr_backward_ws,
    .forward = tr_forward,
    .backward = tr_backward,
    .backward_inputs = tr_backward_inputs,
    .backward_params = tr_backward_params,
};
