/* test_kern_ffn.c -- the "ffn" expert (kernels/kern_ffn.c) against PyTorch reference vectors
 * (test/data/ffn_h{16,64}_b{3,5}.msgpack, loaded with refdata.h), plus its layout and initialisation. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern_classes.h"
#include "runtime/rt_err.h"
#include "test/unit/refdata.h"

/* ffnt_check_case runs the whole forward/backward comparison for one reference file, then a backward
 * without grad_in, which still writes the parameter gradients. */
static void ffnt_check_case(const char *file)
{
    refdata_case c;
    refdata_case_open(&c, "ffn", file);
    int64_t H = c.m.cfg.hidden_dim;
    cr_assert_eq(c.m.n_in, 1);
    cr_assert_eq(c.m.n_out, 1);
    cr_assert_eq(kern_io_numel(&c.m.in[0]), (size_t)H);
    cr_assert_eq(c.nx, (size_t)(c.B * H));
    size_t ny = 0;
    cr_assert(refdata_f32(c.rd, "output", &ny));
    cr_assert_eq(ny, (size_t)(c.B * H));

    refdata_case_check(&c, 1e-5f, 1e-5f, 1);

    cr_assert_eq(refdata_case_backward(&c, 0, 1), 0);
    refdata_expect_close("grad.ffn.weight (no grad_in)", c.grads + c.m.params[0].offset,
                         refdata_f32(c.rd, "grad.ffn.weight", NULL), c.m.params[0].numel, 1e-5f, 1e-5f);
    refdata_case_close(&c);
}

Test(kern_ffn, matches_torch_h16_b3, .timeout = 30)
{
    ffnt_check_case("ffn_h16_b3.msgpack");
}

Test(kern_ffn, matches_torch_h64_b5, .timeout = 30)
{
    ffnt_check_case("ffn_h64_b5.msgpack");
}

Test(kern_ffn, layout_at_h512, .timeout = 30)
{
    const kern_class *cls = kern_expert_find("ffn");
    cr_assert(cls);
    cr_assert_str_eq(cls->module_name, "FeedforwardBlock");
    kern_config cfg = {.hidden_dim = 512};
    kern_model m;
    cr_assert_eq(cls->setup(&m, &cfg), 0);
    cr_assert_eq(m.n_floats, (size_t)2100736);
    cr_assert_eq(m.n_params, 6);
    const char *names[6] = {"ffn.weight", "ffn.bias", "ffn_output.weight", "ffn_output.bias",
                            "layer_norm.weight", "layer_norm.bias"};
    size_t off = 0;
    for (int i = 0; i < 6; i++) {
        cr_assert_str_eq(m.params[i].name, names[i]);
        cr_assert_eq(m.params[i].offset, off);
        off += m.params[i].numel;
    }
    const kern_param_info *w1 = kern_model_param(&m, "ffn.weight");
    cr_assert(w1);
    cr_assert_eq(w1->shape[0], 2048);
    cr_assert_eq(w1->shape[1], 512);
    cr_assert_eq(kern_model_param(&m, "ffn_output.weight")->shape[1], 2048);

    kern_config bad = {.hidden_dim = 0};
    cr_assert_eq(cls->setup(&m, &bad), DMOE_EINVAL);
}

Test(kern_ffn, init_deterministic_and_bounded, .timeout = 30)
{
    kern_model m;
    const kern_class *cls = refdata_model("ffn", 32, &m);
    float *a = malloc(m.n_floats * sizeof *a), *b = malloc(m.n_floats * sizeof *b),
          *c = malloc(m.n_floats * sizeof *c);
    cr_assert(a && b && c);
    cls->init(&m, a, 42);
    cls->init(&m, b, 42);
    cls->init(&m, c, 43);
    cr_assert_eq(memcmp(a, b, m.n_floats * sizeof *a), 0, "same seed, same parameters");
    cr_assert_neq(memcmp(a, c, m.n_floats * sizeof *a), 0, "another seed, other parameters");

    const struct {
        const char *name;
        float bound;
    } lin[4] = {{"ffn.weight", 1.0f / sqrtf(32.0f)},
                {"ffn.bias", 1.0f / sqrtf(32.0f)},
                {"ffn_output.weight", 1.0f / sqrtf(128.0f)},
                {"ffn_output.bias", 1.0f / sqrtf(128.0f)}};
    for (int k = 0; k < 4; k++) {
        const kern_param_info *p = kern_model_param(&m, lin[k].name);
        cr_assert(p);
        float mx = 0.0f;
        double mean = 0.0;
        for (size_t i = 0; i < p->numel; i++) {
            float v = a[p->offset + i];
            cr_assert(fabsf(v) <= lin[k].bound, "%s[%zu] = %g beyond %g", lin[k].name, i, v, lin[k].bound);
            if (fabsf(v) > mx) mx = fabsf(v);
            mean += v;
        }
        mean /= (double)p->numel;
        if (p->numel >= 1024) {
            /* U(-b, b): the largest |v| of thousands is close to b, and the mean close to 0. */
            cr_assert(mx > 0.9f * lin[k].bound, "%s max %g", lin[k].name, mx);
            cr_assert(fabs(mean) < 0.1 * lin[k].bound, "%s mean %g", lin[k].name, mean);
        }
    }
    const kern_param_info *g = kern_model_param(&m, "layer_norm.weight"),
                          *bt = kern_model_param(&m, "layer_norm.bias");
    for (size_t i = 0; i < g->numel; i++) {
        cr_assert_eq(a[g->offset + i], 1.0f);
        cr_assert_eq(a[bt->offset + i], 0.0f);
    }
    free(a);
    free(b);
    free(c);
}

Test(kern_ffn, empty_batch, .timeout = 30)
{
    kern_model m;
    const kern_class *cls = refdata_model("ffn", 8, &m);
    float *params = calloc(m.n_floats, sizeof *params), *grads = malloc(m.n_floats * sizeof *grads);
    float x = 0.0f, y = 0.0f;
    const void *in[1] = {&x};
    float *out[1] = {&y};
    cr_assert_eq(cls->forward_ws(&m, 0), 0);
    cr_assert_eq(cls->forward(&m, params, 0, in, out, NULL, 0), 0);
    const float *gout[1] = {&y};
    memset(grads, 0xff, m.n_floats * sizeof *grads);
    cr_assert_eq(cls->backward(&m, params, 0, in, gout, NULL, grads, NULL, 0), 0);
    for (size_t i = 0; i < m.n_floats; i++) cr_assert_eq(grads[i], 0.0f);
    cr_assert_eq(cls->forward(&m, params, -1, in, out, NULL, 0), DMOE_EINVAL);
    free(params);
    free(grads);
}

/* The activation cache: forward_save + backward_saved give exactly what backward gives. */
Test(kern_ffn, backward_from_saved_activations_matches_recompute, .timeout = 30)
{
    kern_model m;
    const kern_class *cls = refdata_model("ffn", 24, &m);
    enum { B = 7, H = 24 };
    float *p = calloc(m.n_floats, 4), *g1 = calloc(m.n_floats, 4), *g2 = calloc(m.n_floats, 4);
    float x[B * H], gy[B * H], y1[B * H], y2[B * H], gx1[B * H], gx2[B * H];
    float *saved = calloc(B * cls->saved_floats(&m), 4);
    float *ws = calloc(cls->backward_ws(&m, B) + cls->forward_ws(&m, B), 4);
    cls->init(&m, p, 3);
    for (int i = 0; i < B * H; i++) { x[i] = sinf((float)i); gy[i] = cosf((float)i * 0.7f); }
    const void *in[1] = {x};
    float *o1[1] = {y1}, *o2[1] = {y2}, *gi1[1] = {gx1}, *gi2[1] = {gx2};
    const float *go[1] = {gy};
    cr_assert_eq(cls->forward(&m, p, B, in, o1, ws, 0), 0);
    cr_assert_eq(cls->forward_save(&m, p, B, in, o2, ws, 0, saved), 0);
    cr_assert_eq(memcmp(y1, y2, sizeof y1), 0);
    cr_assert_eq(cls->backward(&m, p, B, in, go, gi1, g1, ws, 0), 0);
    cr_assert_eq(cls->backward_saved(&m, p, B, in, saved, go, gi2, g2, ws, 0), 0);
    cr_assert_eq(memcmp(gx1, gx2, sizeof gx1), 0);
    cr_assert_eq(memcmp(g1, g2, m.n_floats * 4), 0);
    free(p); free(g1); free(g2); free(saved); free(ws);
}

/* The two stages a server runs apart (reply between them): grad_in is final after the first, and with
 * the workspace handed over the second gives backward's parameter gradients, from saved activations or
 * recomputing, at one row and at several. */
Test(kern_ffn, backward_in_two_stages_gives_the_whole_backward, .timeout = 30)
{
    kern_model m;
    const kern_class *cls = refdata_model("ffn", 24, &m);
    cr_assert(cls->backward_inputs && cls->backward_params);
    enum { BMAX = 7, H = 24 };
    float *p = calloc(m.n_floats, 4), *g1 = calloc(m.n_floats, 4), *g2 = calloc(m.n_floats, 4);
    float x[BMAX * H], gy[BMAX * H], y[BMAX * H], gx1[BMAX * H], gx2[BMAX * H], gx_first[BMAX * H];
    float *saved = calloc(BMAX * cls->saved_floats(&m), 4);
    float *ws = calloc(cls->backward_ws(&m, BMAX) + cls->forward_ws(&m, BMAX), 4);
    cls->init(&m, p, 5);
    for (int i = 0; i < BMAX * H; i++) { x[i] = sinf((float)i * 1.3f); gy[i] = cosf((float)i * 0.3f); }
    const void *in[1] = {x};
    float *o[1] = {y}, *gi1[1] = {gx1}, *gi2[1] = {gx2};
    const float *go[1] = {gy};
    const int64_t sizes[2] = {1, BMAX};
    for (int k = 0; k < 2; k++)
        for (int use_saved = 0; use_saved < 2; use_saved++) {
            int64_t B = sizes[k];
            cr_assert_eq(cls->forward_save(&m, p, B, in, o, ws, 0, saved), 0);
            const float *sv = use_saved ? saved : NULL;
            if (use_saved) cr_assert_eq(cls->backward_saved(&m, p, B, in, saved, go, gi1, g1, ws, 0), 0);
            else cr_assert_eq(cls->backward(&m, p, B, in, go, gi1, g1, ws, 0), 0);
            memset(g2, 0xff, m.n_floats * 4);   /* every gradient is written, none accumulated */
            memset(gx2, 0xff, sizeof gx2);
            cr_assert_eq(cls->backward_inputs(&m, p, B, in, sv, go, gi2, g2, ws, 0), 0);
            memcpy(gx_first, gx2, (size_t)B * H * 4);
            cr_assert_eq(memcmp(gx1, gx2, (size_t)B * H * 4), 0, "grad_in after the first stage, B %lld", (long long)B);
            cr_assert_eq(cls->backward_params(&m, B, in, go, g2, ws), 0);
            cr_assert_eq(memcmp(gx_first, gx2, (size_t)B * H * 4), 0, "the second stage left grad_in alone");
            cr_assert_eq(memcmp(g1, g2, m.n_floats * 4), 0, "parameter gradients, B %lld saved %d", (long long)B,
                         use_saved);
        }
    cr_assert_eq(cls->backward_params(&m, 1, in, go, NULL, ws), DMOE_EINVAL);
    free(p); free(g1); free(g2); free(saved); free(ws);
}
