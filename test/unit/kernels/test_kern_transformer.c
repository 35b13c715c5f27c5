/* test_kern_transformer.c -- unit tests of the "transformer" expert (kernels/kern_transformer.c).
 *
 * Checks the forward output, the input gradient and every parameter gradient against PyTorch's
 * reference vectors (test/data/transformer_h32_s5_b2.msgpack, read through test/unit/refdata.h), the
 * defined behaviour on a fully padded row, the determinism of dropout in rng_seed, and the backward
 * with dropout against central finite differences of a double-accumulated loss.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern_expert.h"
#include "kernels/kern_ops.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"
#include "test/unit/refdata.h"

extern const kern_class kern_transformer_class;

#define TR_REF_FILE "transformer_h32_s5_b2.msgpack"

/* One expert instance with its buffers, owned by the test that made it. */
typedef struct {
    kern_model m;
    int64_t B, S, H;
    float *params, *x, *out, *gout, *gx, *gparams, *ws;
    uint8_t *mask;
} tr_case;

static void tr_case_make(tr_case *c, int H, int S, float dropout, int64_t B)
{
    memset(c, 0, sizeof *c);
    kern_config cfg = { .hidden_dim = H, .seq_len = S, .dropout = dropout };
    cr_assert_eq(kern_transformer_class.setup(&c->m, &cfg), 0);
    c->B = B;
    c->S = S;
    c->H = H;
    size_t n = (size_t)(B * S * H);
    c->params = calloc(c->m.n_floats, sizeof(float));
    c->gparams = calloc(c->m.n_floats, sizeof(float));
    c->x = calloc(n, sizeof(float));
    c->out = calloc(n, sizeof(float));
    c->gout = calloc(n, sizeof(float));
    c->gx = calloc(n, sizeof(float));
    c->mask = calloc((size_t)(B * S), 1);
    size_t ws = kern_transformer_class.backward_ws(&c->m, B);
    cr_assert_geq(ws, kern_transformer_class.forward_ws(&c->m, B));
    c->ws = malloc(ws * sizeof(float));
    cr_assert(c->params && c->gparams && c->x && c->out && c->gout && c->gx && c->mask && c->ws);
}

static void tr_case_free(tr_case *c)
{
    free(c->params);
    free(c->gparams);
    free(c->x);
    free(c->out);
    free(c->gout);
    free(c->gx);
    free(c->mask);
    free(c->ws);
}

/* tr_random fills p[n] with U(-a, a) from r. */
static void tr_random(float *p, size_t n, float a, kern_rng *r)
{
    for (size_t i = 0; i < n; i++) p[i] = (2.0f * kern_rng_uniform(r) - 1.0f) * a;
}

static int tr_fwd(tr_case *c, uint64_t seed)
{
    const void *in[2] = { c->x, c->mask };
    float *out[1] = { c->out };
    return kern_transformer_class.forward(&c->m, c->params, c->B, in, out, c->ws, seed);
}

static int tr_bwd(tr_case *c, uint64_t seed)
{
    const void *in[2] = { c->x, c->mask };
    const float *gout[1] = { c->gout };
    float *gin[2] = { c->gx, NULL };
    return kern_transformer_class.backward(&c->m, c->params, c->B, in, gout, gin, c->gparams, c->ws, seed);
}

/* tr_expect_close asserts got[n] == want[n] within atol + rtol * |want|. */
static void tr_expect_close(const char *what, const float *got, const float *want, size_t n, float atol,
                            float rtol)
{
    refdata_expect_close(what, got, want, n, atol, rtol);
}

/* tr_ref returns the f32 reference tensor called name, asserting that it has numel elements. */
static const float *tr_ref(const refdata *r, const char *name, size_t numel)
{
    size_t got = 0;
    const float *t = refdata_f32(r, name, &got);
    cr_assert(t, "reference tensor %s missing", name);
    cr_assert_eq(got, numel, "reference tensor %s has %zu elements, want %zu", name, got, numel);
    return t;
}

/* tr_load_ref builds the H=32, S=5, B=2 case from the reference file; returns the file for the wants. */
static refdata *tr_load_ref(tr_case *c)
{
    refdata *r = refdata_load(TR_REF_FILE);
    cr_assert(r, "cannot load %s (set DMOE_TEST_DATA to test/data)", TR_REF_FILE);
    tr_case_make(c, 32, 5, 0.0f, 2);
    size_t n = (size_t)(c->B * c->S * c->H);
    memcpy(c->x, tr_ref(r, "input0", n), n * sizeof(float));
    size_t nm = 0;
    const uint8_t *mask = refdata_u8(r, "input1", &nm);
    cr_assert(mask && nm == (size_t)(c->B * c->S));
    memcpy(c->mask, mask, nm);
    memcpy(c->gout, tr_ref(r, "grad_output", n), n * sizeof(float));
    cr_assert_eq(c->m.n_params, 12);
    refdata_load_params(r, &c->m, c->params);
    return r;
}

Test(kern_transformer, setup_schema_and_errors, .timeout = 30)
{
    static const char *const names[12] = {
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",  "linear1.weight",         "linear1.bias",
        "linear2.weight",           "linear2.bias",           "norm1.weight",
        "norm1.bias",               "norm2.weight",           "norm2.bias",
    };
    kern_model m;
    kern_config cfg = { .hidden_dim = 64, .seq_len = 0, .dropout = 0.1f };
    cr_assert_eq(kern_transformer_class.setup(&m, &cfg), 0);
    cr_assert_str_eq(kern_transformer_class.name, "transformer");
    cr_assert_str_eq(kern_transformer_class.module_name, "TransformerEncoderLayer");
    cr_assert_eq(m.cls, &kern_transformer_class);
    cr_assert_eq(m.n_params, 12);
    for (int i = 0; i < 12; i++) cr_assert_str_eq(m.params[i].name, names[i]);
    cr_assert_eq(m.n_floats, (size_t)(12 * 64 * 64 + 3 * 64 + 64 + 4 * 64 + 64 + 4 * 64));
    cr_assert_eq(m.n_in, 2);
    cr_assert_eq(m.in[0].dtype, KERN_F32);
    cr_assert_eq(m.in[0].dims[0], 128); /* hivemind's default sequence length */
    cr_assert_eq(m.in[0].dims[1], 64);
    cr_assert_eq(m.in[1].dtype, KERN_U8);
    cr_assert_eq(kern_io_numel(&m.in[1]), 128);
    cr_assert(m.in[1].mask, "the padding mask is a 0/1 mask");
    cr_assert_eq(m.n_out, 1);
    cr_assert_eq(kern_io_numel(&m.out[0]), 128 * 64);

    cfg.hidden_dim = 24; /* not divisible by 16 heads */
    cr_assert_eq(kern_transformer_class.setup(&m, &cfg), DMOE_EINVAL);
    cfg.hidden_dim = 0;
    cr_assert_eq(kern_transformer_class.setup(&m, &cfg), DMOE_EINVAL);
    cfg.hidden_dim = 32;
    cfg.dropout = 1.5f;
    cr_assert_eq(kern_transformer_class.setup(&m, &cfg), DMOE_EINVAL);
    cfg.dropout = 0.0f;
    cfg.seq_len = -3;
    cr_assert_eq(kern_transformer_class.setup(&m, &cfg), DMOE_EINVAL);
}

Test(kern_transformer, init_pytorch_defaults, .timeout = 30)
{
    tr_case c;
    tr_case_make(&c, 32, 4, 0.0f, 1);
    kern_transformer_class.init(&c.m, c.params, 7);
    const float H = 32.0f;
    const float bounds[12] = { sqrtf(6.0f / (4.0f * H)), 0.0f, 1.0f / sqrtf(H), 0.0f, 1.0f / sqrtf(H), 1.0f / sqrtf(H),
                               1.0f / sqrtf(4.0f * H),   1.0f / sqrtf(4.0f * H), 1.0f, 0.0f, 1.0f, 0.0f };
    for (int i = 0; i < 12; i++) {
        const kern_param_info *p = &c.m.params[i];
        const float *w = c.params + p->offset;
        float mx = 0.0f;
        for (size_t j = 0; j < p->numel; j++) mx = fmaxf(mx, fabsf(w[j]));
        if (i >= 8) { /* LayerNorm: constants */
            for (size_t j = 0; j < p->numel; j++) cr_assert_eq(w[j], bounds[i], "%s", p->name);
        } else if (bounds[i] == 0.0f) {
            cr_assert_eq(mx, 0.0f, "%s", p->name);
        } else { /* uniform: inside the bound and spread over most of it */
            cr_assert(mx <= bounds[i] && mx > 0.5f * bounds[i], "%s: max %g, bound %g", p->name, (double)mx,
                      (double)bounds[i]);
        }
    }
    float *again = malloc(c.m.n_floats * sizeof(float));
    cr_assert(again);
    kern_transformer_class.init(&c.m, again, 7);
    cr_assert_eq(memcmp(again, c.params, c.m.n_floats * sizeof(float)), 0);
    free(again);
    tr_case_free(&c);
}

Test(kern_transformer, forward_matches_reference, .timeout = 30)
{
    tr_case c;
    refdata *r = tr_load_ref(&c);
    size_t n = (size_t)(c.B * c.S * c.H);
    cr_assert_eq(tr_fwd(&c, 1), 0);
    tr_expect_close("output", c.out, tr_ref(r, "output", n), n, 1e-4f, 1e-4f);
    refdata_free(r);
    tr_case_free(&c);
}

Test(kern_transformer, backward_matches_reference, .timeout = 30)
{
    tr_case c;
    refdata *r = tr_load_ref(&c);
    size_t n = (size_t)(c.B * c.S * c.H);
    memset(c.gparams, 0xff, c.m.n_floats * sizeof(float)); /* NaN: every gradient must be overwritten */
    cr_assert_eq(tr_bwd(&c, 1), 0);
    tr_expect_close("grad_input0", c.gx, tr_ref(r, "grad_input0", n), n, 1e-4f, 1e-4f);
    refdata_expect_grads(r, &c.m, c.gparams, 1e-4f, 1e-4f);
    refdata_free(r);
    tr_case_free(&c);
}

Test(kern_transformer, fully_padded_row_is_finite, .timeout = 30)
{
    tr_case c;
    refdata *r = tr_load_ref(&c);
    size_t n = (size_t)(c.B * c.S * c.H), row = (size_t)(c.S * c.H);
    float *ref_row0 = malloc(row * sizeof(float));
    cr_assert(ref_row0);
    cr_assert_eq(tr_fwd(&c, 1), 0);
    memcpy(ref_row0, c.out, row * sizeof(float));

    memset(c.mask + c.S, 1, (size_t)c.S); /* every key of row 1 padded */
    cr_assert_eq(tr_fwd(&c, 1), 0);
    cr_assert(kern_all_finite(c.out, n));
    /* row 0 does not see row 1 */
    cr_assert_eq(memcmp(ref_row0, c.out, row * sizeof(float)), 0);
    cr_assert_eq(tr_bwd(&c, 1), 0);
    cr_assert(kern_all_finite(c.gx, n));
    cr_assert(kern_all_finite(c.gparams, c.m.n_floats));

    /* the attention part of a fully padded row is out_proj.bias alone: the output equals the layer run
     * with zero attention weights, i.e. a layer whose in_proj no longer matters */
    float *out1 = malloc(row * sizeof(float));
    cr_assert(out1);
    memcpy(out1, c.out + row, row * sizeof(float));
    const kern_param_info *w = kern_model_param(&c.m, "self_attn.in_proj_weight");
    for (size_t i = 0; i < w->numel; i++) c.params[w->offset + i] *= -3.0f;
    cr_assert_eq(tr_fwd(&c, 1), 0);
    tr_expect_close("padded row", c.out + row, out1, row, 1e-6f, 1e-6f);

    /* a mask value other than 0/1 is rejected */
    c.mask[0] = 2;
    cr_assert_eq(tr_fwd(&c, 1), DMOE_EINVAL);
    cr_assert_eq(tr_bwd(&c, 1), DMOE_EINVAL);
    free(out1);
    free(ref_row0);
    refdata_free(r);
    tr_case_free(&c);
}

Test(kern_transformer, dropout_is_seeded, .timeout = 30)
{
    tr_case c0, c1;
    refdata *r = tr_load_ref(&c0);
    tr_case_make(&c1, 32, 5, 0.1f, 2);
    size_t n = (size_t)(c0.B * c0.S * c0.H);
    memcpy(c1.params, c0.params, c0.m.n_floats * sizeof(float));
    memcpy(c1.x, c0.x, n * sizeof(float));
    memcpy(c1.mask, c0.mask, (size_t)(c0.B * c0.S));

    cr_assert_eq(tr_fwd(&c0, 11), 0);
    cr_assert_eq(tr_fwd(&c1, 11), 0);
    float *first = malloc(n * sizeof(float));
    cr_assert(first);
    memcpy(first, c1.out, n * sizeof(float));
    cr_assert(kern_all_finite(first, n));
    cr_assert_neq(memcmp(first, c0.out, n * sizeof(float)), 0, "dropout 0.1 changed nothing");

    cr_assert_eq(tr_fwd(&c1, 11), 0);
    cr_assert_eq(memcmp(first, c1.out, n * sizeof(float)), 0, "same rng_seed, different output");
    cr_assert_eq(tr_fwd(&c1, 12), 0);
    cr_assert_neq(memcmp(first, c1.out, n * sizeof(float)), 0, "different rng_seed, same output");

    /* dropout 0 ignores the seed */
    memcpy(first, c0.out, n * sizeof(float));
    cr_assert_eq(tr_fwd(&c0, 99), 0);
    cr_assert_eq(memcmp(first, c0.out, n * sizeof(float)), 0);
    free(first);
    refdata_free(r);
    tr_case_free(&c0);
    tr_case_free(&c1);
}

/* tr_loss returns sum(out * gout) in double for the current inputs and parameters. */
static double tr_loss(tr_case *c, uint64_t seed)
{
    cr_assert_eq(tr_fwd(c, seed), 0);
    double s = 0.0;
    size_t n = (size_t)(c->B * c->S * c->H);
    for (size_t i = 0; i < n; i++) s += (double)c->out[i] * (double)c->gout[i];
    return s;
}

/* tr_fd returns the central difference of tr_loss in *v with step h, restoring *v. */
static double tr_fd(tr_case *c, float *v, float h, uint64_t seed)
{
    float keep = *v;
    *v = keep + h;
    double lp = tr_loss(c, seed);
    *v = keep - h;
    double lm = tr_loss(c, seed);
    *v = keep;
    return (lp - lm) / (2.0 * (double)h);
}

Test(kern_transformer, backward_with_dropout_matches_finite_differences, .timeout = 30)
{
    const uint64_t seed = 0x5eed;
    tr_case c;
    tr_case_make(&c, 16, 3, 0.25f, 2);
    kern_rng r;
    kern_rng_seed(&r, 3);
    kern_transformer_class.init(&c.m, c.params, 5);
    /* non-trivial biases and LayerNorm affine so that every gradient path is exercised */
    for (int i = 0; i < c.m.n_params; i++) {
        const kern_param_info *p = &c.m.params[i];
        if (p->ndim == 1) tr_random(c.params + p->offset, p->numel, 0.3f, &r);
    }
    for (int i = 8; i < 12; i += 2) {
        const kern_param_info *p = &c.m.params[i];
        for (size_t j = 0; j < p->numel; j++) c.params[p->offset + j] += 1.0f;
    }
    size_t n = (size_t)(c.B * c.S * c.H);
    tr_random(c.x, n, 1.0f, &r);
    tr_random(c.gout, n, 1.0f, &r);
    c.mask[c.S + 2] = 1; /* one padded key in row 1 */

    cr_assert_eq(tr_bwd(&c, seed), 0);
    /* the backward's recomputed forward used the same masks as a plain forward */
    float *gx = malloc(n * sizeof(float)), *gp = malloc(c.m.n_floats * sizeof(float));
    cr_assert(gx && gp);
    memcpy(gx, c.gx, n * sizeof(float));
    memcpy(gp, c.gparams, c.m.n_floats * sizeof(float));

    const float h = 1e-2f;
    const size_t xs[] = { 0, 5, 17, 33, 47, 50, 70, 95 };
    for (size_t k = 0; k < sizeof xs / sizeof xs[0]; k++) {
        double fd = tr_fd(&c, &c.x[xs[k]], h, seed);
        cr_assert(fabs(fd - gx[xs[k]]) <= 5e-4 + 5e-3 * fabs(fd), "x[%zu]: backward %.6g, finite difference %.6g",
                  xs[k], (double)gx[xs[k]], fd);
    }
    int checked = 0;
    for (int i = 0; i < c.m.n_params; i++) {
        const kern_param_info *p = &c.m.params[i];
        size_t picks[3] = { 0, p->numel / 2 + 1, p->numel - 1 };
        for (int k = 0; k < 3; k++) {
            size_t j = p->offset + picks[k];
            double fd = tr_fd(&c, &c.params[j], h, seed);
            cr_assert(fabs(fd - gp[j]) <= 5e-4 + 5e-3 * fabs(fd), "%s[%zu]: backward %.6g, finite difference %.6g",
                      p->name, picks[k], (double)gp[j], fd);
            checked++;
        }
    }
    cr_assert_eq(checked, 36);
    free(gx);
    free(gp);
    tr_case_free(&c);
}

/* The two stages a server runs apart (the reply between them), with dropout and a padded key: grad_in
 * is final after the first, and the second gives the whole backward's parameter gradients bit for bit. */
Test(kern_transformer, backward_in_two_stages_gives_the_whole_backward, .timeout = 30)
{
    const kern_class *cls = &kern_transformer_class;
    cr_assert(cls->backward_inputs && cls->backward_params);
    tr_case c;
    tr_case_make(&c, 32, 4, 0.1f, 3);
    kern_rng r;
    kern_rng_seed(&r, 11);
    cls->init(&c.m, c.params, 4);
    size_t n = (size_t)(c.B * c.S * c.H);
    tr_random(c.x, n, 1.0f, &r);
    tr_random(c.gout, n, 1.0f, &r);
    c.mask[c.S + 1] = 1;
    cr_assert_eq(tr_bwd(&c, 99), 0);
    float *gx_whole = malloc(n * sizeof(float)), *gp_whole = malloc(c.m.n_floats * sizeof(float));
    memcpy(gx_whole, c.gx, n * sizeof(float));
    memcpy(gp_whole, c.gparams, c.m.n_floats * sizeof(float));
    memset(c.gx, 0xff, n * sizeof(float));
    memset(c.gparams, 0xff, c.m.n_floats * sizeof(float));   /* every gradient is written, none accumulated */
    const void *in[2] = {c.x, c.mask};
    const float *gout[1] = {c.gout};
    float *gin[2] = {c.gx, NULL};
    cr_assert_eq(cls->backward_inputs(&c.m, c.params, c.B, in, NULL, gout, gin, c.gparams, c.ws, 99), 0);
    cr_assert_eq(memcmp(c.gx, gx_whole, n * sizeof(float)), 0, "grad_in after the first stage");
    cr_assert_eq(cls->backward_params(&c.m, c.B, in, gout, c.gparams, c.ws), 0);
    cr_assert_eq(memcmp(c.gx, gx_whole, n * sizeof(float)), 0, "the second stage left grad_in alone");
    cr_assert_eq(memcmp(c.gparams, gp_whole, c.m.n_floats * sizeof(float)), 0, "parameter gradients");
    float dummy = 0;
    cr_assert_eq(cls->backward_inputs(&c.m, c.params, c.B, in, &dummy, gout, gin, c.gparams, c.ws, 99), DMOE_EINVAL,
                 "no activation cache for this class");
    free(gx_whole);
    free(gp_whole);
    tr_case_free(&c);
}
