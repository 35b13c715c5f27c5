/* kern_nop.c -- the "nop" and "nop_delay" expert classes: hivemind's NopExpert and DelayedNopExpert.
 *
 * Both are the identity on one input "x" (f32 [H]) with no parameters (n_floats 0), for benchmarks of
 * the network path alone. Backward is the identity too: grad_in[0] = grad_out[0].
 *
 * nop_delay differs only in its name: its delay (cfg.delay_ms) is NOT slept here. The expert actor
 * reads cfg.delay_ms and answers after a timer, so no worker thread ever sleeps. Implements kern_class
 * (kern_expert.h); no allocation, no state, no workspace.
 */
#include <string.h>

#include "kernels/kern_expert.h"
#include "runtime/rt_err.h"

#define NOP_MAX_HIDDEN (1 << 24) /* a row larger than 64 MiB is a configuration mistake */

extern const kern_class kern_nop_class;
extern const kern_class kern_nop_delay_class;

/* nop_setup_as fills m for cls: one f32 [H] input, one f32 [H] output, no parameters. */
static int nop_setup_as(const kern_class *cls, kern_model *m, const kern_config *cfg)
{
    if (!m || !cfg || cfg->hidden_dim <= 0 || cfg->hidden_dim > NOP_MAX_HIDDEN || cfg->delay_ms < 0)
        return DMOE_EINVAL;
    kern_model_start(m, cls, cfg, cfg->hidden_dim, 0);
    return 0;
}

static int nop_setup(kern_model *m, const kern_config *cfg)
{
    return nop_setup_as(&kern_nop_class, m, cfg);
}

static int nop_delay_setup(kern_model *m, const kern_config *cfg)
{
    return nop_setup_as(&kern_nop_delay_class, m, cfg);
}

static void nop_init(const kern_model *m, float *params, uint64_t seed)
{
    (void)m;
    (void)params;
    (void)seed;
}

static size_t nop_ws(const kern_model *m, int64_t B)
{
    return 0;
}

static int nop_forward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                       float *const *out, float *ws, uint64_t rng_seed)
{
    if (B < 0 || !in || !in[0] || !out || !out[0]) return DMOE_EINVAL;
    size_t n = (size_t)B * (size_t)m->cfg.hidden_dim;
    if (n && out[0] != in[0]) memmove(out[0], in[0], n * sizeof(float));
    return 0;
}

static int nop_backward(const kern_model *m, const float *params, int64_t B, const void *const *in,
                        const float *const *grad_out, float *const *grad_in, float *grad_params, float *ws,
                        uint64_t rng_seed)
{
    if (B < 0 || !grad_out || !grad_out[0]) return DMOE_EINVAL;
    size_t n = (size_t)B * (size_t)m->cfg.hidden_dim;
    if (grad_in && grad_in[0] && n && grad_in[0] != grad_out[0])
        memmove(grad_in[0], grad_out[0], n * sizeof(float));
    return 0;
}

const kern_class kern_nop_class = {
    .name = "nop",
    .module_name = "NopExpert",
    .setup = nop_setup,
    .init = nop_init,
    .forward_ws = nop_ws,
    .backward_ws = nop_ws,
    .forward = nop_forward,
    .backward = nop_backward,
};

const kern_class kern_nop_delay_class = {
    .name = "nop_delay",
    .module_name = "DelayedNopExpert",
    .setup = nop_delay_setup,
    .init = nop_init,
    .forward_ws = nop_ws,
    .backward_ws = nop_ws,
    .forward = nop_forward,
    .backward = nop_backward,
};
