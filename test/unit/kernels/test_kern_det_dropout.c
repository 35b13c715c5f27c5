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

/* ddt_check_case compares the forward and backward with one reference file (the mask's gradient must be
 * zero), then checks that a mask value neither 0 nor 1 is refused before any write. */
static void ddt_check_case(const char *file)
{
    refdata_case c;
    refdata_case_open(&c, "det_dropout", file);
    int64_t H = c.m.cfg.hidden_dim;
    cr_assert_str_eq(c.cls->module_name, "DeterministicDropoutNetwork");
    cr_assert_eq(c.m.n_in, 2);
    cr_assert_str_eq(c.m.in[1].name, "mask");
    cr_assert_eq(c.m.n_params, 4);
    cr_assert_eq(c.m.n_floats, (size_t)(2 * H * H + 2 * H + 2 * H * H + H));

    refdata_case_check(&c, 1e-5f, 1e-5f, 7);
    for (size_t i = 0; i < c.nx; i++) cr_assert_eq(c.gin[1][i], 0.0f, "the mask's gradient is zero");

    /* A mask value that is neither 0 nor 1 is refused, in both directions, before any write. */
    float *mask = c.in[1];
    size_t last = c.n_in_elems[1] - 1;
    float keep = mask[last];
    mask[last] = 0.5f;
    memset(c.y, 0, c.nx * sizeof *c.y);
    cr_assert_eq(refdata_case_forward(&c, 7), DMOE_EINVAL);
    for (size_t i = 0; i < c.nx; i++) cr_assert_eq(c.y[i], 0.0f);
    cr_assert_eq(refdata_case_backward(&c, 1, 7), DMOE_EINVAL);
    mask[last] = NAN;
    cr_assert_eq(refdata_case_forward(&c, 7), DMOE_EINVAL);
    mask[last] = keep;
    cr_assert_eq(refdata_case_forward(&c, 7), 0);
    refdata_case_close(&c);
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
    kern_model m;
    const kern_class *cls = refdata_model("det_dropout", 16, &m);
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
