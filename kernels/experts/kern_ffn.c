/* kern_ffn.c -- the "ffn" expert class: hivemind's FeedforwardBlock,
 *
 *     y = LayerNorm(x + Linear_{4H->H}(gelu_tanh(Linear_{H->4H}(x))))     (LayerNorm eps 1e-12)
 *
 * Implements kern_class (kern_expert.h) over kern_ops.h: no allocation, no I/O, no state; the caller
 * owns the parameters, inputs, outputs, gradients and the workspace, so any worker thread may run a
 * forward or backward while the expert actor keeps its state on the loop thread.
 *
 * Flat parameter layout (PyTorch state_dict names, in this order):
 *     ffn.weight [4H, H], ffn.bias [4H], ffn_output.weight [H, 4H], ffn_output.bias [H],
 *     layer_norm.weight [H], layer_norm.bias [H]                     (H = 512: 2,100,736 floats)
 *
 * Workspace (floats, B rows):
 *     forward:  a [B, 4H]  (pre-activation, then GELU in place); the output buffer holds the
 *               residual sum before LayerNorm normalises it in place.
 *     backward: z1 [B, 4H] (pre-activation), a [B, 4H] (activation), ga [B, 4H] (the gradient of z1),
 *               r [B, H] (pre-LayerNorm sum), gr [B, H] (its gradient), mean [B], rstd [B].
 *               The first stage (backward_inputs) leaves a, ga and gr there for the second
 *               (backward_params): the two Linear weights' gradients, most of the backward's memory
 *               traffic at one row, come after the input gradient can be sent.
 *
 * Activation cache: a row keeps z1 (4H) and r (H), 5H floats. The backward from them skips the
 * forward's two GEMMs (a third of the work); GELU and the LayerNorm statistics are recomputed from them,
 * which costs little next to the products.
 */
#include <string.h>

#include "kernels/kern_expert.h"
#include "kernels/kern_ops.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"

#define FFN_LN_EPS 1e-12f      /* hivemind's FeedforwardBlock builds nn.LayerNorm(hid_dim, eps=1e-12) */
#define FFN_MAX_HIDDEN 65536   /* keeps 4H * H and every BLAS dimension far inside int range */

extern const kern_class kern_ffn_class;

/* The six tensors, in m->params order. */
enum { FFN_W1, FFN_B1, FFN_W2, FFN_B2, FFN_G, FFN_BETA, FFN_NPARAMS };

typedef struct {
    const float *w1, *b1, *w2, *b2, *g, *beta;
} ffn_weights;

static ffn_weights ffn_bind(const kern_model *m, const float *p)
{
    ffn_weights w = {
        .w1 = p + m->params[FFN_W1].offset,
        .b1 = p + m->params[FFN_B1].offset,
        .w2 = p + m->params[FFN_W2].offset,
        .b2 = p + m->params[FFN_B2].offset,
        .g = p + m->params[FFN_G].offset,
        .beta = p + m->params[FFN_BETA].offset,
    };
    return w;
}

static int ffn_setup(kern_model *m, const kern_config *cfg)
{
    if (!m || !cfg || cfg->hidden_dim <= 0 || cfg->hidden_dim > FFN_MAX_HIDDEN) return DMOE_EINVAL;
    int64_t H = cfg->hidden_dim;
    kern_model t;
    kern_model_start(&t, &kern_ffn_class, cfg, H, 0);
    if (kern_model_add_param(&t, "ffn.weight", 4 * H, H) || kern_model_add_param(&t, "ffn.bias", 4 * H, 0) ||
        kern_model_add_param(&t, "ffn_output.weight", H, 4 * H) ||
        kern_model_add_param(&t, "ffn_output.bias", H, 0) || kern_model_add_param(&t, "layer_norm.weight", H, 0) ||
        kern_model_add_param(&t, "layer_norm.bias", H, 0))
        return DMOE_EINVAL;
    *m = t;
    return 0;
}

static void ffn_init(const kern_model *m, float *params, uint64_t seed)
{
    kern_rng r;
    kern_rng_seed(&r, seed);
    kern_init_linear(m, params, FFN_W1, &r);
    kern_init_linear(m, params, FFN_W2, &r);
    const kern_param_info *p = m->params;
    kern_init_const(params + p[FFN_G].offset, p[FFN_G].numel, 1.0f);
    kern_init_const(params + p[FFN_BETA].offset, p[FFN_BETA].numel, 0.0f);
}

static size_t ffn_forward_ws(const kern_model *m, int64_t B)
{
    if (B <= 0) return 0;
    return (size_t)B * 4 * (size_t)m->cfg.hidden_dim;
}

static size_t ffn_backward_ws(const kern_model *m, int64_t B)
{
    if (B <= 0) return 0;
    size_t H = (size_t)m->cfg.hidden_dim;
    return (size_t)B * (12 * H + 2 * H + 2);
}

/* ffn_residual_add: y[i] += x[i], n elements. */
static void ffn_residual_add(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

static int ffn_forward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                       float *const *out, float *ws, uint64_t rng_seed)
{
    if (B < 0 || !in || !in[0] || !out || !out[0]) return DMOE_EINVAL;
    if (B == 0) return 0;
    int64_t H = m->cfg.hidden_dim;
    ffn_weights w = ffn_bind(m, params);
    const float *x = in[0];
    float *y = out[0], *a = ws;
    kern_linear_fwd(x, B, H, w.w1, w.b1, 4 * H, a);
    kern_gelu_tanh_fwd(a, a, (size_t)(B * 4 * H));
    kern_linear_fwd(a, B, 4 * H, w.w2, w.b2, H, y);
    ffn_residual_add(y, x, (size_t)(B * H));
    kern_layernorm_fwd(y, B, H, w.g, w.beta, FFN_LN_EPS, y, NULL, NULL);
    return 0;
}

static size_t ffn_saved_floats(const kern_model *m) { return 5 * (size_t)m->cfg.hidden_dim; }

/* Copy saved rows of 5H back into z1 [B,4H] and r [B,H]. */
static void ffn_unpack_saved(const float *saved, float *z1, float *r, int64_t B, int64_t H)
{
    size_t s4 = 4 * (size_t)H * sizeof(float), s1 = (size_t)H * sizeof(float);
    for (int64_t i = 0; i < B; i++) {
        const float *row = saved + (size_t)i * 5 * (size_t)H;
        memcpy(z1 + (size_t)i * 4 * (size_t)H, row, s4);
        memcpy(r + (size_t)i * (size_t)H, row + 4 * H, s1);
    }
}

static int ffn_forward_save(const kern_model *m, const float *params, int64_t B, const void *const *in,
                            float *const *out, float *ws, uint64_t rng_seed, float *saved)
{
    if (B < 0 || !in || !in[0] || !out || !out[0] || !saved) return DMOE_EINVAL;
    if (B == 0) return 0;
    int64_t H = m->cfg.hidden_dim;
    ffn_weights w = ffn_bind(m, params);
    const float *x = in[0];
    float *y = out[0], *a = ws;
    size_t n4 = (size_t)(B * 4 * H), n1 = (size_t)(B * H);
    kern_linear_fwd(x, B, H, w.w1, w.b1, 4 * H, a);
    /* the rows of saved take z1 first; GELU then runs in place on the workspace */
    for (int64_t i = 0; i < B; i++)
        memcpy(saved + (size_t)i * 5 * (size_t)H, a + (size_t)i * 4 * (size_t)H, 4 * (size_t)H * sizeof(float));
    kern_gelu_tanh_fwd(a, a, n4);
    kern_linear_fwd(a, B, 4 * H, w.w2, w.b2, H, y);
    ffn_residual_add(y, x, n1);
    for (int64_t i = 0; i < B; i++)
        memcpy(saved + (size_t)i * 5 * (size_t)H + 4 * H, y + (size_t)i * (size_t)H, (size_t)H * sizeof(float));
    kern_layernorm_fwd(y, B, H, w.g, w.beta, FFN_LN_EPS, y, NULL, NULL);
    return 0;
}

/* The backward's workspace, carved from ws for B rows (see the layout above). */
typedef struct {
    float *z1, *a, *ga, *r, *gr, *mean, *rstd;
} ffn_bwd_ws;

static ffn_bwd_ws ffn_bwd_carve(float *ws, int64_t B, int64_t H)
{
    size_t n4 = (size_t)(B * 4 * H), n1 = (size_t)(B * H);
    ffn_bwd_ws t = {.z1 = ws, .a = ws + n4, .ga = ws + 2 * n4, .r = ws + 3 * n4};
    t.gr = t.r + n1;
    t.mean = t.gr + n1;
    t.rstd = t.mean + B;
    return t;
}

/* First stage, from z1 and r in the workspace, and a = gelu(z1) when have_a says the caller computed
 * it already: the LayerNorm's parameter gradients and gx. It leaves a, gr and ga (the gradient of z1)
 * for ffn_bwd_params. */
static void ffn_bwd_inputs(const kern_model *m, const ffn_weights *w, int64_t B, const float *gy, float *gx,
                           float *grad_params, float *ws, int have_a)
{
    int64_t H = m->cfg.hidden_dim;
    const kern_param_info *p = m->params;
    size_t n4 = (size_t)(B * 4 * H), n1 = (size_t)(B * H);
    ffn_bwd_ws t = ffn_bwd_carve(ws, B, H);
    if (!have_a) kern_gelu_tanh_fwd(t.z1, t.a, n4);
    kern_layernorm_fwd(t.r, B, H, w->g, w->beta, FFN_LN_EPS, t.gr, t.mean, t.rstd); /* gr: scratch for the output */
    kern_layernorm_bwd(t.r, gy, B, H, w->g, t.mean, t.rstd, t.gr, grad_params + p[FFN_G].offset,
                       grad_params + p[FFN_BETA].offset);
    kern_linear_bwd(t.a, t.gr, B, 4 * H, H, w->w2, t.ga, NULL, NULL);
    kern_gelu_tanh_bwd(t.z1, t.ga, t.ga, n4);
    if (!gx) return;
    kern_linear_bwd(NULL, t.ga, B, H, 4 * H, w->w1, gx, NULL, NULL);
    ffn_residual_add(gx, t.gr, n1);
}

/* Second stage: the two Linear layers' parameter gradients, from x and what ffn_bwd_inputs left. */
static int ffn_backward_params(const kern_model *m, int64_t B, const void *const *in, const float *const *grad_out,
                               float *grad_params, float *ws)
{
    if (B < 0 || !in || !in[0] || !grad_params) return DMOE_EINVAL;
    if (B == 0) return 0;   /* the first stage zeroed them */
    int64_t H = m->cfg.hidden_dim;
    const kern_param_info *p = m->params;
    ffn_bwd_ws t = ffn_bwd_carve(ws, B, H);
    kern_linear_bwd(t.a, t.gr, B, 4 * H, H, NULL, NULL, grad_params + p[FFN_W2].offset,
                    grad_params + p[FFN_B2].offset);
    kern_linear_bwd(in[0], t.ga, B, H, 4 * H, NULL, NULL, grad_params + p[FFN_W1].offset,
                    grad_params + p[FFN_B1].offset);
    return 0;
}

/* The first stage from saved activations (saved non-NULL: z1 and r copied from them) or after the
 * forward again (saved NULL). */
static int ffn_backward_inputs(const kern_model *m, const float *params, int64_t B, const void *const *in,
                               const float *saved, const float *const *grad_out, float *const *grad_in,
                               float *grad_params, float *ws, uint64_t rng_seed)
{
    if (B < 0 || !in || !in[0] || !grad_out || !grad_out[0] || !grad_params) return DMOE_EINVAL;
    if (B == 0) {
        memset(grad_params, 0, m->n_floats * sizeof *grad_params);
        return 0;
    }
    int64_t H = m->cfg.hidden_dim;
    ffn_weights w = ffn_bind(m, params);
    ffn_bwd_ws t = ffn_bwd_carve(ws, B, H);
    const float *x = in[0];
    if (saved) {
        ffn_unpack_saved(saved, t.z1, t.r, B, H);
    } else {   /* forward again, keeping what the backward needs */
        kern_linear_fwd(x, B, H, w.w1, w.b1, 4 * H, t.z1);
        kern_gelu_tanh_fwd(t.z1, t.a, (size_t)(B * 4 * H));
        kern_linear_fwd(t.a, B, 4 * H, w.w2, w.b2, H, t.r);
        ffn_residual_add(t.r, x, (size_t)(B * H));
    }
    ffn_bwd_inputs(m, &w, B, grad_out[0], grad_in ? grad_in[0] : NULL, grad_params, ws, saved == NULL);
    return 0;
}

static int ffn_backward_saved(const kern_model *m, const float *params, int64_t B, const void *const *in,
                              const float *saved, const float *const *grad_out, float *const *grad_in,
                              float *grad_params, float *ws, uint64_t rng_seed)
{
    if (!saved) return DMOE_EINVAL;
    int rc = ffn_backward_inputs(m, params, B, in, saved, grad_out, grad_in, grad_params, ws, rng_seed);
    return rc < 0 ? rc : ffn_backward_params(m, B, in, grad_out, grad_params, ws);
}

static int ffn_backward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                        const float *const *grad_out, float *const *grad_in, float *grad_params, float *ws,
                        uint64_t rng_seed)
{
    int rc = ffn_backward_inputs(m, params, B, in, NULL, grad_out, grad_in, grad_params, ws, rng_seed);
    return rc < 0 ? rc : ffn_backward_params(m, B, in, grad_out, grad_params, ws);
}

const kern_class kern_ffn_class = {
    .name = "ffn",
    .module_name = "FeedforwardBlock",
    .setup = ffn_setup,
    .init = ffn_init,
    .forward_ws = ffn_forward_ws,
    .backward_ws = ffn_backward_ws,
    .forward = ffn_forward,
    .backward = ffn_backward,
    .saved_floats = ffn_saved_floats,
    .forward_save = ffn_forward_save,
    .backward_saved = ffn_backward_saved,
    .backward_inputs = ffn_backward_inputs,
    .backward_params = ffn_backward_params,
};
