/* test_kern_det_dropout.c -- the "det_dropout" expert (kernels/kern_det_dropout.c) against PyTorch
 * reference vectors (test/data/det_dropout_h{16,64}_b{3,5}.msgpack), and its mask validation. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern_classes.h"
#include "runtime/rt_err.h"
#include "test/unit/refdata.h"

/* ddt_close asserts |got - want| <= 1e-5 + 1e-5 |want| element-wise (test/data/README.md). */
static void ddt_close(const char *what, const float *got, const float *want, size_t n)
{
    refdata_expect_close(what, got, want, n, 1e-5f, 1e-5f);
}

/* ddt_mask_f32 returns a malloc'd f32 copy of the reference mask input1 (stored as f32 or u8). */
static float *ddt_mask_f32(const refdata *rd, size_t *n)
{
    const float *f = refdata_f32(rd, "input1", n);
    float *mask = NULL;
    if (f) {
        mask = malloc(*n * sizeof *mask);
        memcpy(mask, f, *n * sizeof *mask);
        return mask;
    }
    const uint8_t *u = refdata_u8(rd, "input1", n);
    cr_assert(u, "input1 missing");
    mask = malloc(*n * sizeof *mask);
    for (size_t i = 0; i < *n; i++) mask[i] = (float)u[i];
    return mask;
}

static void ddt_check_case(const char *file)
{
    refdata *rd = refdata_load(file);
    cr_assert(rd, "cannot load %s", file);
    int64_t shape[REFDATA_MAX_DIMS];
    cr_assert_eq(refdata_shape(rd, "input0", shape), 2);
    int64_t B = shape[0], H = shape[1];

    const kern_class *cls = kern_expert_find("det_dropout");
    cr_assert(cls);
    cr_assert_str_eq(cls->module_name, "DeterministicDropoutNetwork");
    kern_config cfg = {.hidden_dim = (int)H};
    kern_model m;
    cr_assert_eq(cls->setup(&m, &cfg), 0);
    cr_assert_eq(m.n_in, 2);
    cr_assert_str_eq(m.in[1].name, "mask");
    cr_assert_eq(m.n_params, 4);
    cr_assert_eq(m.n_floats, (size_t)(2 * H * H + 2 * H + 2 * H * H + H));

    float *params = calloc(m.n_floats, sizeof *params), *grads = calloc(m.n_floats, sizeof *grads);
    refdata_load_params(rd, &m, params);
    size_t nx = 0, nm = 0;
    const float *x = refdata_f32(rd, "input0", &nx);
    float *mask = ddt_mask_f32(rd, &nm);
    const float *want_y = refdata_f32(rd, "output", NULL), *gy = refdata_f32(rd, "grad_output", NULL);
    const float *want_gx = refdata_f32(rd, "grad_input0", NULL);
    cr_assert(x && want_y && gy && want_gx);
    cr_assert_eq(nm, nx);

    float *y = calloc(nx, sizeof *y), *gx = calloc(nx, sizeof *gx), *gm = malloc(nx * sizeof *gm);
    size_t wsn = cls->forward_ws(&m, B), wbn = cls->backward_ws(&m, B);
    float *ws = malloc((wsn > wbn ? wsn : wbn) * sizeof *ws);

    const void *in[2] = {x, mask};
    float *out[1] = {y};
    cr_assert_eq(cls->forward(&m, params, B, in, out, ws, 7), 0);
    ddt_close("output", y, want_y, nx);

    const float *gout[1] = {gy};
    float *gin[2] = {gx, gm};
    memset(grads, 0xff, m.n_floats * sizeof *grads);
    memset(gm, 0xff, nx * sizeof *gm);
    cr_assert_eq(cls->backward(&m, params, B, in, gout, gin, grads, ws, 7), 0);
    ddt_close("grad_input0", gx, want_gx, nx);
    for (size_t i = 0; i < nx; i++) cr_assert_eq(gm[i], 0.0f, "the mask's gradient is zero");
    refdata_expect_grads(rd, &m, grads, 1e-5f, 1e-5f);

    /* A mask value that is neither 0 nor 1 is refused, in both directions, before any write. */
    float keep = mask[nm - 1];
    mask[nm - 1] = 0.5f;
    memset(y, 0, nx * sizeof *y);
    cr_assert_eq(cls->forward(&m, params, B, in, out, ws, 7), DMOE_EINVAL);
    for (size_t i = 0; i < nx; i++) cr_assert_eq(y[i], 0.0f);
    cr_assert_eq(cls->backward(&m, params, B, in, gout, gin, grads, ws, 7), DMOE_EINVAL);
    mask[nm - 1] = NAN;
    cr_assert_eq(cls->forward(&m, params, B, in, out, ws, 7), DMOE_EINVAL);
    mask[nm - 1] = keep;
    cr_assert_eq(cls->forward(&m, params, B, in, out, ws, 7), 0);

    free(ws);
    free(gm);
    free(gx);
    free(y);
    free(mask);
    free(grads);
    free(params);
    refdata_free(rd);
}

Test(kern_det_dropout, matches_torch_h16_b3, .timeout = 30)
{
    ddt_check_case("det_dropout_h16_b3.msgpack");
}

Test(kern_det_dropout, matches_torch_h64_b5, .timeout = 30)
{
    ddt_check_case("det_dropout_h64_b5.msgpack");
}

Test(kern_det_dropout, init_deterministic_and_bounded, .timeout = 30)
{
    const kern_class *cls = kern_expert_find("det_dropout");
    kern_config cfg = {.hidden_dim = 16};
    kern_model m;
    cr_assert_eq(cls->setup(&m, &cfg), 0);
    float *a = malloc(m.n_floats * sizeof *a), *b = malloc(m.n_floats * sizeof *b);
    cls->init(&m, a, 5);
    cls->init(&m, b, 5);
    cr_assert_eq(memcmp(a, b, m.n_floats * sizeof *a), 0);
    const kern_param_info *w_in = kern_model_param(&m, "linear_in.weight");
    const kern_param_info *w_out = kern_model_param(&m, "linear_out.weight");
    cr_assert(w_in && w_out);
    for (size_t i = 0; i < w_in->numel; i++) cr_assert(fabsf(a[w_in->offset + i]) <= 0.25f);
    for (size_t i = 0; i < w_out->numel; i++) cr_assert(fabsf(a[w_out->offset + i]) <= 1.0f / sqrtf(32.0f));
    free(a);
    free(b);
}
