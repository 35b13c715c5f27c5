/* kern_det_dropout.c -- the "det_dropout" expert class: hivemind's DeterministicDropoutNetwork,
 *
 *     y = Linear_{2H->H}(relu(Linear_{H->2H}(x * mask / 0.8)))
 *
 * The dropout mask is not drawn here: the client sends it as a second input (f32 [H], every value 0 or
 * 1), so the same request always gives the same answer. Any other mask value fails the call with
 * DMOE_EINVAL before anything is written. The mask receives a zero gradient (hivemind returns None).
 *
 * Implements kern_class (kern_expert.h) over kern_ops.h: no allocation, no I/O, no state.
 *
 * Flat parameter layout: linear_in.weight [2H, H], linear_in.bias [2H], linear_out.weight [H, 2H],
 * linear_out.bias [H].
 *
 * Workspace (floats, B rows): forward and backward both use xm [B, H] (the masked, rescaled input)
 * and h [B, 2H] (the hidden activation after ReLU); the backward adds gh [B, 2H] (its gradient).
 * The backward runs in two stages (kern_expert.h): gx first, then both layers' weight gradients from
 * xm, h, gh and grad_out.
 */
#include <string.h>

#include "kernels/kern_expert.h"
#include "kernels/kern_ops.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"

#define DD_KEEP_PROB 0.8f      /* hivemind's DeterministicDropout(drop_prob=0.2): x * mask / 0.8 */
#define DD_MAX_HIDDEN 65536    /* keeps every BLAS dimension far inside int range */

extern const kern_class kern_det_dropout_class;

enum { DD_W1, DD_B1, DD_W2, DD_B2, DD_NPARAMS };

static int dd_setup(kern_model *m, const kern_config *cfg)
{
    if (!m || !cfg || cfg->hidden_dim <= 0 || cfg->hidden_dim > DD_MAX_HIDDEN) return DMOE_EINVAL;
    int64_t H = cfg->hidden_dim;
    kern_model t;
    kern_model_start(&t, &kern_det_dropout_class, cfg, H, 0);
    if (kern_model_add_param(&t, "linear_in.weight", 2 * H, H) || kern_model_add_param(&t, "linear_in.bias", 2 * H, 0) ||
        kern_model_add_param(&t, "linear_out.weight", H, 2 * H) || kern_model_add_param(&t, "linear_out.bias", H, 0))
        return DMOE_EINVAL;
    t.n_in = 2;
    kern_io_set(&t.in[1], "mask", KERN_F32, H, 0);
    t.in[1].mask = 1;
    *m = t;
    return 0;
}

static void dd_init(const kern_model *m, float *params, uint64_t seed)
{
    kern_rng r;
    kern_rng_seed(&r, seed);
    kern_init_linear(m, params, DD_W1, &r);
    kern_init_linear(m, params, DD_W2, &r);
}

static size_t dd_forward_ws(const kern_model *m, int64_t B)
{
    if (B <= 0) return 0;
    return (size_t)B * 3 * (size_t)m->cfg.hidden_dim;
}

static size_t dd_backward_ws(const kern_model *m, int64_t B)
{
    if (B <= 0) return 0;
    return (size_t)B * 5 * (size_t)m->cfg.hidden_dim;
}

/* dd_mask_ok returns 1 when every one of the n mask values is exactly 0 or 1 (NaN fails). */
static int dd_mask_ok(const float *mask, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= (mask[i] == 0.0f) | (mask[i] == 1.0f);
    return ok;
}

/* dd_hidden computes xm = x * mask / 0.8 and h = relu(xm W1^T + b1) for B rows. */
static void dd_hidden(const kern_model *m, const float *params, int64_t B, const float *x, const float *mask,
                      float *xm, float *h)
{
    int64_t H = m->cfg.hidden_dim;
    const kern_param_info *p = m->params;
    size_t n = (size_t)(B * H);
    for (size_t i = 0; i < n; i++) xm[i] = x[i] * mask[i] / DD_KEEP_PROB;
    kern_linear_fwd(xm, B, H, params + p[DD_W1].offset, params + p[DD_B1].offset, 2 * H, h);
    kern_relu_fwd(h, h, (size_t)(B * 2 * H));
}

static int dd_forward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                      float *const *out, float *ws, uint64_t rng_seed)
{
    if (B < 0 || !in || !in[0] || !in[1] || !out || !out[0]) return DMOE_EINVAL;
    int64_t H = m->cfg.hidden_dim;
    if (!dd_mask_ok(in[1], (size_t)(B * H))) return DMOE_EINVAL;
    if (B == 0) return 0;
    const kern_param_info *p = m->params;
    float *xm = ws, *h = xm + B * H;
    dd_hidden(m, params, B, in[0], in[1], xm, h);
    kern_linear_fwd(h, B, 2 * H, params + p[DD_W2].offset, params + p[DD_B2].offset, H, out[0]);
    return 0;
}

/* The backward's first stage: the hidden layer again, then gx (the mask gets zeros); it leaves xm, h
 * and gh (the gradient at the first layer's output) in ws for dd_backward_params. */
static int dd_backward_inputs(const kern_model *m, const float *params, int64_t B, const void *const *in,
                              const float *saved, const float *const *grad_out, float *const *grad_in,
                              float *grad_params, float *ws, uint64_t rng_seed)
{
    if (B < 0 || !in || !in[0] || !in[1] || !grad_out || !grad_out[0] || !grad_params || saved) return DMOE_EINVAL;
    int64_t H = m->cfg.hidden_dim;
    const float *mask = in[1];
    size_t n = (size_t)(B * H);
    if (!dd_mask_ok(mask, n)) return DMOE_EINVAL;
    const kern_param_info *p = m->params;
    float *gx = grad_in ? grad_in[0] : NULL, *gmask = grad_in ? grad_in[1] : NULL;
    if (B == 0) {
        memset(grad_params, 0, m->n_floats * sizeof *grad_params);
        return 0;
    }
    float *xm = ws, *h = xm + B * H, *gh = h + B * 2 * H;
    dd_hidden(m, params, B, in[0], mask, xm, h);
    kern_linear_bwd(NULL, grad_out[0], B, 2 * H, H, params + p[DD_W2].offset, gh, NULL, NULL);
    kern_relu_bwd(h, gh, gh, (size_t)(B * 2 * H)); /* relu(z) > 0 exactly where z > 0 */
    if (gx) {
        kern_linear_bwd(NULL, gh, B, H, 2 * H, params + p[DD_W1].offset, gx, NULL, NULL);
        for (size_t i = 0; i < n; i++) gx[i] = gx[i] * mask[i] / DD_KEEP_PROB;
    }
    if (gmask) memset(gmask, 0, n * sizeof *gmask);
    return 0;
}

/* The second stage: both layers' weight and bias gradients. */
static int dd_backward_params(const kern_model *m, int64_t B, const void *const *in, const float *const *grad_out,
                              float *grad_params, float *ws)
{
    if (B < 0 || !grad_out || !grad_out[0] || !grad_params) return DMOE_EINVAL;
    if (B == 0) return 0;   /* the first stage zeroed them */
    int64_t H = m->cfg.hidden_dim;
    const kern_param_info *p = m->params;
    float *xm = ws, *h = xm + B * H, *gh = h + B * 2 * H;
    kern_linear_bwd(h, grad_out[0], B, 2 * H, H, NULL, NULL, grad_params + p[DD_W2].offset,
                    grad_params + p[DD_B2].offset);
    kern_linear_bwd(xm, gh, B, H, 2 * H, NULL, NULL, grad_params + p[DD_W1].offset, grad_params + p[DD_B1].offset);
    return 0;
}

static int dd_backward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                       const float *const *grad_out, float *const *grad_in, float *grad_params, float *ws,
                       uint64_t rng_seed)
{
    int rc = dd_backward_inputs(m, params, B, in, NULL, grad_out, grad_in, grad_params, ws, rng_seed);
    return rc < 0 ? rc : dd_backward_params(m, B, in, grad_out, grad_params, ws);
}

const kern_class kern_det_dropout_class = {
    .name = "det_dropout",
    .module_name = "DeterministicDropoutNetwork",
    .setup = dd_setup,
    .init = dd_init,
    .forward_ws = dd_forward_ws,
    .backward_ws = dd_backward_ws,
    .forward = dd_forward,
    .backward = dd_backward,
    .backward_inputs = dd_backward_inputs,
    .backward_params = dd_backward_params,
};
