/* test_kern_optim.c -- kernels/kern_optim.c against values worked out by hand (the arithmetic is in
 * the comments): SGD, Adam over three steps (bias correction), weight decay, clipping, LAMB's trust
 * ratio and clamp, and empty parameter buffers; a step taken in parts (ranges, summed buffers) gives
 * the bits of the whole step. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "kernels/kern_expert.h"
#include "kernels/kern_optim.h"
#include "runtime/rt_err.h"

#define OPTT_TOL 1e-6f

static void optt_near(float got, float want, const char *what)
{
    cr_assert(fabsf(got - want) <= OPTT_TOL + 1e-6f * fabsf(want), "%s: got %.9g, want %.9g", what, got, want);
}

/* optt_model builds a kern_model whose parameters are the tensors of the given sizes. */
static kern_model optt_model(const int64_t *sizes, int n)
{
    kern_model m;
    memset(&m, 0, sizeof m);
    for (int i = 0; i < n; i++) {
        char name[16] = {'t', (char)('0' + i), 0};
        cr_assert_eq(kern_model_add_param(&m, name, sizes[i], 0), 0);
    }
    return m;
}

Test(kern_optim, parse_defaults, .timeout = 30)
{
    kern_optim_cfg c;
    cr_assert_eq(kern_optim_parse("sgd", &c), 0);
    cr_assert_eq(c.kind, KERN_OPT_SGD);
    cr_assert_float_eq(c.lr, 0.01f, 1e-9);
    cr_assert_eq(kern_optim_parse("adam", &c), 0);
    cr_assert_eq(c.kind, KERN_OPT_ADAM);
    cr_assert_float_eq(c.lr, 1e-3f, 1e-9);
    cr_assert_float_eq(c.beta1, 0.9f, 1e-9);
    cr_assert_float_eq(c.beta2, 0.999f, 1e-9);
    cr_assert_float_eq(c.eps, 1e-8f, 1e-12);
    cr_assert_eq(c.weight_decay, 0.0f);
    cr_assert_eq(c.clip_grad_norm, 0.0f);
    cr_assert_eq(kern_optim_parse("lamb", &c), 0);
    cr_assert_eq(c.kind, KERN_OPT_LAMB);
    cr_assert_float_eq(c.eps, 1e-6f, 1e-12);
    cr_assert_eq(kern_optim_parse("none", &c), 0);
    cr_assert_eq(c.kind, KERN_OPT_NONE);
    cr_assert_eq(kern_optim_parse("adagrad", &c), DMOE_EINVAL);
    cr_assert_str_eq(kern_optim_name(KERN_OPT_LAMB), "lamb");
    cr_assert_str_eq(kern_optim_name(KERN_OPT_ADAM), "adam");
}

Test(kern_optim, sgd_one_step, .timeout = 30)
{
    kern_optim_cfg c;
    kern_optim_parse("sgd", &c);
    kern_optim o;
    cr_assert_eq(kern_optim_init(&o, &c, 3), 0);
    cr_assert_null(o.m);
    float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.5f, 0.25f, -1.0f};
    /* p -= 0.1 g:  1 - 0.05 = 0.95;  -2 - 0.025 = -2.025;  0.5 + 0.1 = 0.6.
     * Returned norm: sqrt(0.25 + 0.0625 + 1) = sqrt(1.3125) = 1.14564392. */
    float norm = kern_optim_step(&o, NULL, p, g, 0.1f);
    optt_near(norm, 1.14564392f, "norm");
    optt_near(p[0], 0.95f, "p0");
    optt_near(p[1], -2.025f, "p1");
    optt_near(p[2], 0.6f, "p2");
    cr_assert_eq(o.step, 1);
    kern_optim_free(&o);
}

Test(kern_optim, sgd_weight_decay, .timeout = 30)
{
    kern_optim_cfg c;
    kern_optim_parse("sgd", &c);
    c.weight_decay = 0.1f;
    kern_optim o;
    kern_optim_init(&o, &c, 3);
    float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.5f, 0.25f, -1.0f};
    /* g' = g + 0.1 p = {0.6, 0.05, -0.95};  p -= 0.1 g' = {0.94, -2.005, 0.595}. */
    kern_optim_step(&o, NULL, p, g, 0.1f);
    optt_near(p[0], 0.94f, "p0");
    optt_near(p[1], -2.005f, "p1");
    optt_near(p[2], 0.595f, "p2");
    kern_optim_free(&o);
}

Test(kern_optim, adam_one_step, .timeout = 30)
{
    kern_optim_cfg c;
    kern_optim_parse("adam", &c);
    kern_optim o;
    cr_assert_eq(kern_optim_init(&o, &c, 3), 0);
    float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.5f, 0.25f, -1.0f};
    /* Step 1: m = 0.1 g, v = 0.001 g^2; m_hat = m / (1 - 0.9) = g, v_hat = v / (1 - 0.999) = g^2, so
     * p -= lr g / (|g| + 1e-8) = lr sign(g) (the eps shifts it by < 1e-8 relative):
     * {1 - 0.1, -2 - 0.1, 0.5 + 0.1} = {0.9, -2.1, 0.6}; m = {0.05, 0.025, -0.1}. */
    kern_optim_step(&o, NULL, p, g, 0.1f);
    optt_near(p[0], 0.9f, "p0");
    optt_near(p[1], -2.1f, "p1");
    optt_near(p[2], 0.6f, "p2");
    optt_near(o.m[0], 0.05f, "m0");
    optt_near(o.v[2], 0.001f, "v2");
    kern_optim_free(&o);
    kern_optim_free(&o); /* twice is safe */
}

Test(kern_optim, adam_three_steps_bias_correction, .timeout = 30)
{
    kern_optim_cfg c;
    kern_optim_parse("adam", &c);
    kern_optim o;
    kern_optim_init(&o, &c, 1);
    float p = 0.0f;
    /* lr 0.01, gradients 1, -1, 2:
     * t=1: m = 0.1, v = 0.001; m_hat = 1, v_hat = 1; p = 0 - 0.01 * 1 = -0.01.
     * t=2: m = 0.09 - 0.1 = -0.01; v = 0.000999 + 0.001 = 0.001999; bc1 = 1 - 0.81 = 0.19,
     *      bc2 = 1 - 0.998001 = 0.001999; m_hat = -0.0526315789, v_hat = 1;
     *      p = -0.01 + 0.01 * 0.0526315789 = -0.00947368421.
     * t=3: m = -0.009 + 0.2 = 0.191; v = 0.001997001 + 0.004 = 0.005997001; bc1 = 0.271,
     *      bc2 = 0.002997001; m_hat = 0.70479705, v_hat = 2.00100067, sqrt = 1.41456731;
     *      p = -0.00947368421 - 0.01 * 0.70479705 / 1.41456731 = -0.0144561055.
     * Without bias correction step 1 alone would move p by 0.01 * 0.1 / sqrt(0.001) = 0.0316. */
    float g = 1.0f;
    kern_optim_step(&o, NULL, &p, &g, 0.01f);
    optt_near(p, -0.01f, "t1");
    g = -1.0f;
    kern_optim_step(&o, NULL, &p, &g, 0.01f);
    optt_near(p, -0.00947368421f, "t2");
    g = 2.0f;
    kern_optim_step(&o, NULL, &p, &g, 0.01f);
    optt_near(p, -0.0144561055f, "t3");
    cr_assert_eq(o.step, 3);
    kern_optim_free(&o);
}

Test(kern_optim, adam_weight_decay_is_l2_in_the_gradient, .timeout = 30)
{
    kern_optim_cfg c;
    kern_optim_parse("adam", &c);
    c.weight_decay = 1.0f;
    kern_optim o;
    kern_optim_init(&o, &c, 1);
    /* g' = g + wd p = -0.5 + 1 * 1 = 0.5 > 0, so the first step is -lr sign(g') = -0.1: p = 0.9
     * (without weight decay it would be +0.1: p = 1.1). */
    float p = 1.0f, g = -0.5f;
    kern_optim_step(&o, NULL, &p, &g, 0.1f);
    optt_near(p, 0.9f, "p");
    optt_near(o.m[0], 0.05f, "m = 0.1 g'");
    kern_optim_free(&o);
}

Test(kern_optim, clipping_bounds_the_norm, .timeout = 30)
{
    kern_optim_cfg c;
    kern_optim_parse("sgd", &c);
    c.clip_grad_norm = 1.0f;
    kern_optim o;
    kern_optim_init(&o, &c, 2);
    /* ||(3, 4)|| = 5 > 1: g *= 1 / (5 + 1e-6) -> (0.6, 0.8) to 1e-7; p -= 1 * g. Returns 5. */
    float p[2] = {0.0f, 0.0f}, g[2] = {3.0f, 4.0f};
    float norm = kern_optim_step(&o, NULL, p, g, 1.0f);
    optt_near(norm, 5.0f, "norm before clipping");
    optt_near(g[0], 0.6f, "g0");
    optt_near(g[1], 0.8f, "g1");
    cr_assert(sqrtf(g[0] * g[0] + g[1] * g[1]) <= 1.0f);
    optt_near(p[0], -0.6f, "p0");
    optt_near(p[1], -0.8f, "p1");
    /* Below the bound nothing changes: ||(0.3, 0.4)|| = 0.5. */
    g[0] = 0.3f;
    g[1] = 0.4f;
    norm = kern_optim_step(&o, NULL, p, g, 1.0f);
    optt_near(norm, 0.5f, "small norm");
    cr_assert_eq(g[0], 0.3f);
    cr_assert_eq(g[1], 0.4f);
    kern_optim_free(&o);
}

Test(kern_optim, lamb_trust_ratio_per_tensor, .timeout = 30)
{
    const int64_t sizes[2] = {2, 1};
    kern_model m = optt_model(sizes, 2);
    kern_optim_cfg c;
    kern_optim_parse("lamb", &c);
    kern_optim o;
    cr_assert_eq(kern_optim_init(&o, &c, m.n_floats), 0);
    float p[3] = {3.0f, 4.0f, 0.0f}, g[3] = {1.0f, -1.0f, 2.0f};
    /* No bias correction (torch_optimizer): r_i = 0.1 g_i / (sqrt(0.001 g_i^2) + 1e-6).
     * Tensor t0 = (3, 4): r = (c, -c) with c = 3.1621777, ||r|| = c sqrt(2); ||p|| = 5;
     *   trust = 5 / (c sqrt 2); p -= 0.1 trust r = 0.1 * 5 / sqrt(2) * (1, -1) = (0.35355339, -0.35355339)
     *   -> (2.64644661, 4.35355339), whatever c is.
     * Tensor t1 = (0): ||p|| = 0 so trust = 1; r = 0.2 / (sqrt(0.004) + 1e-6) = 3.16222766;
     *   p = -0.1 * 3.16222766 = -0.316222766 (with bias correction r would be ~1). */
    kern_optim_step(&o, &m, p, g, 0.1f);
    optt_near(p[0], 2.64644661f, "t0[0]");
    optt_near(p[1], 4.35355339f, "t0[1]");
    optt_near(p[2], -0.316222766f, "t1[0]");
    kern_optim_free(&o);
}

Test(kern_optim, lamb_clamps_the_weight_norm, .timeout = 30)
{
    const int64_t sizes[1] = {2};
    kern_model m = optt_model(sizes, 1);
    kern_optim_cfg c;
    kern_optim_parse("lamb", &c);
    kern_optim o;
    kern_optim_init(&o, &c, 2);
    /* ||(30, 40)|| = 50 is clamped to 10: p -= 0.1 * 10 / sqrt(2) * (1, -1) = (0.70710678, -0.70710678). */
    float p[2] = {30.0f, 40.0f}, g[2] = {1.0f, -1.0f};
    kern_optim_step(&o, &m, p, g, 0.1f);
    cr_assert(fabsf(p[0] - 29.2928932f) < 1e-5f, "p0 %.9g", p[0]);
    cr_assert(fabsf(p[1] - 40.7071068f) < 1e-5f, "p1 %.9g", p[1]);
    kern_optim_free(&o);
}

Test(kern_optim, lamb_weight_decay, .timeout = 30)
{
    kern_optim_cfg c;
    kern_optim_parse("lamb", &c);
    c.weight_decay = 0.5f;
    kern_optim o;
    kern_optim_init(&o, &c, 1);
    /* Single tensor (3): r = 0.1 * 1 / (sqrt(0.001) + 1e-6) + 0.5 * 3 = 3.1621777 + 1.5 = 4.6621777;
     * trust = 3 / 4.6621777; p -= 0.1 * trust * r = 0.3 -> 2.7 (r cancels for one element). */
    float p = 3.0f, g = 1.0f;
    kern_optim_step(&o, NULL, &p, &g, 0.1f);
    optt_near(p, 2.7f, "p");
    kern_optim_free(&o);
}

Test(kern_optim, none_only_measures, .timeout = 30)
{
    kern_optim_cfg c;
    kern_optim_parse("none", &c);
    kern_optim o;
    kern_optim_init(&o, &c, 2);
    float p[2] = {1.0f, 2.0f}, g[2] = {3.0f, 4.0f};
    optt_near(kern_optim_step(&o, NULL, p, g, 0.1f), 5.0f, "norm");
    cr_assert_eq(p[0], 1.0f);
    cr_assert_eq(p[1], 2.0f);
    kern_optim_free(&o);
}

Test(kern_optim, zero_floats, .timeout = 30)
{
    const char *names[4] = {"none", "sgd", "adam", "lamb"};
    kern_model m;
    memset(&m, 0, sizeof m);
    for (int i = 0; i < 4; i++) {
        kern_optim_cfg c;
        cr_assert_eq(kern_optim_parse(names[i], &c), 0);
        c.clip_grad_norm = 1.0f;
        kern_optim o;
        cr_assert_eq(kern_optim_init(&o, &c, 0), 0);
        cr_assert_eq(kern_optim_step(&o, &m, NULL, NULL, 0.1f), 0.0f);
        cr_assert_eq(kern_optim_step(&o, NULL, NULL, NULL, 0.1f), 0.0f);
        kern_optim_free(&o);
    }
}

/* optt_fill writes n pseudo-random floats in [-scale, scale) from seed (an LCG: reproducible). */
static void optt_fill(float *x, size_t n, uint32_t seed, float scale)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = scale * ((float)(seed >> 8) / 8388608.0f - 1.0f);
    }
}

/* One optimizer and clipping setting: three steps taken in parts (three gradient buffers summed by
 * kern_optim_reduce over ranges taken last to first, the norm from the block sums, kern_optim_apply over
 * the same ranges) against kern_optim_step on the buffers summed one after the other: the same bits
 * in parameters, moments, step count and (clipped) gradients. */
static void optt_parts_match(const char *name, float clip)
{
    enum { N = 3 * KERN_OPTIM_BLOCK + 1000, NB = 3, NR = 3 };
    const int64_t sizes[2] = {KERN_OPTIM_BLOCK + 17, N - KERN_OPTIM_BLOCK - 17};
    kern_model m = optt_model(sizes, 2);
    kern_optim_cfg c;
    cr_assert_eq(kern_optim_parse(name, &c), 0);
    c.clip_grad_norm = clip;
    c.weight_decay = 0.01f;
    kern_optim a, b;
    cr_assert_eq(kern_optim_init(&a, &c, N), 0);
    cr_assert_eq(kern_optim_init(&b, &c, N), 0);
    static float pa[N], pb[N], ga[N], gb[NB][N];
    static double sumsq[N / KERN_OPTIM_BLOCK + 1];
    optt_fill(pa, N, 1, 1.0f);
    memcpy(pb, pa, sizeof pa);
    /* ranges of whole blocks, the last one ragged */
    const size_t r0[NR + 1] = {0, KERN_OPTIM_BLOCK, 3 * KERN_OPTIM_BLOCK, N};
    for (int step = 0; step < 3; step++) {
        for (int k = 0; k < NB; k++) optt_fill(gb[k], N, 100u * (uint32_t)step + (uint32_t)k + 7, 2.0f);
        memcpy(ga, gb[0], sizeof ga);
        for (int k = 1; k < NB; k++)
            for (size_t i = 0; i < N; i++) ga[i] += gb[k][i];
        float na = kern_optim_step(&a, &m, pa, ga, 0.05f);

        float *bufs[NB] = {gb[0], gb[1], gb[2]};
        for (int r = NR - 1; r >= 0; r--) cr_assert_eq(kern_optim_reduce(bufs, NB, r0[r], r0[r + 1], sumsq), 1);
        double total = 0.0;
        for (size_t k = 0; k < (N + KERN_OPTIM_BLOCK - 1) / KERN_OPTIM_BLOCK; k++) total += sumsq[k];
        kern_optim_plan plan;
        float nb = kern_optim_begin(&b, 0.05f, total, &plan);
        cr_assert_eq(na, nb, "%s: norm %.9g in parts, %.9g whole", name, nb, na);
        if (kern_optim_elementwise(&b))
            for (int r = NR - 1; r >= 0; r--) kern_optim_apply(&b, &m, &plan, pb, gb[0], r0[r], r0[r + 1]);
        else
            kern_optim_apply(&b, &m, &plan, pb, gb[0], 0, N);
        cr_assert_eq(memcmp(ga, gb[0], sizeof ga), 0, "%s clip %g step %d: gradients differ", name, clip, step);
        cr_assert_eq(memcmp(pa, pb, sizeof pa), 0, "%s clip %g step %d: parameters differ", name, clip, step);
        cr_assert_eq(a.step, b.step);
        if (a.m) {
            cr_assert_eq(memcmp(a.m, b.m, N * sizeof(float)), 0, "%s step %d: first moments differ", name, step);
            cr_assert_eq(memcmp(a.v, b.v, N * sizeof(float)), 0, "%s step %d: second moments differ", name, step);
        }
    }
    kern_optim_free(&a);
    kern_optim_free(&b);
}

Test(kern_optim, a_step_in_parts_is_the_whole_step_bit_for_bit, .timeout = 30)
{
    const char *names[4] = {"none", "sgd", "adam", "lamb"};
    for (int i = 0; i < 4; i++) {
        optt_parts_match(names[i], 0.0f);
        optt_parts_match(names[i], 1.0f);   /* the random gradients' norm is far above 1: clipped */
    }
}

Test(kern_optim, reduce_reports_sums_that_are_not_finite, .timeout = 30)
{
    enum { N = 2 * KERN_OPTIM_BLOCK };
    static float g0[N], g1[N];
    float *bufs[2] = {g0, g1};
    g0[5] = 3e38f;   /* each finite; their sum is not */
    g1[5] = 3e38f;
    cr_assert_eq(kern_optim_reduce(bufs, 2, KERN_OPTIM_BLOCK, N, NULL), 1, "the range without it is fine");
    cr_assert_eq(kern_optim_reduce(bufs, 2, 0, KERN_OPTIM_BLOCK, NULL), 0);
    g0[N - 1] = NAN;
    cr_assert_eq(kern_optim_reduce(bufs, 1, KERN_OPTIM_BLOCK, N, NULL), 0, "one buffer is checked too");
}

/* Adam, whichever copy of its loop the CPU runs (KERN_AVX2_CLONE), gives the bits of torch's formula
 * written out element by element: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
 * p -= step_size m / (sqrt(v) / sqrt(1 - b2^t) + eps), over a length that is no multiple of any
 * vector width, with weight decay, for three steps. */
Test(kern_optim, adam_gives_the_formula_bit_for_bit, .timeout = 30)
{
    enum { N = 4099 };
    kern_optim_cfg c;
    cr_assert_eq(kern_optim_parse("adam", &c), 0);
    c.weight_decay = 0.01f;
    kern_optim o;
    cr_assert_eq(kern_optim_init(&o, &c, N), 0);
    static float p[N], g[N], want_p[N], want_m[N], want_v[N];
    optt_fill(p, N, 3, 1.0f);
    memcpy(want_p, p, sizeof p);
    const float lr = 0.01f;
    for (int t = 1; t <= 3; t++) {
        optt_fill(g, N, 40u + (uint32_t)t, 0.5f);
        for (int i = 0; i < 7; i++) g[i * 500] *= 1e-20f;   /* tiny and zero-ish moments too */
        kern_optim_step(&o, NULL, p, g, lr);
        double b1 = 0.9, b2 = 0.999;   /* torch's betas: the written values, in double */
        float step_size = (float)((double)lr / (1.0 - pow(b1, t))), sqrt_bc2 = (float)sqrt(1.0 - pow(b2, t));
        for (int i = 0; i < N; i++) {
            volatile float gi = g[i] + c.weight_decay * want_p[i];
            volatile float mi = (float)b1 * want_m[i] + (float)(1.0 - b1) * gi;
            volatile float vi = (float)b2 * want_v[i] + (float)(1.0 - b2) * gi * gi;
            volatile float denom = sqrtf(vi) / sqrt_bc2 + c.eps;
            volatile float upd = step_size * mi / denom;
            want_m[i] = mi;
            want_v[i] = vi;
            want_p[i] = want_p[i] - upd;
        }
        for (int i = 0; i < N; i++) {
            cr_assert_eq(memcmp(&p[i], &want_p[i], 4), 0, "step %d p[%d]: %.9g, want %.9g", t, i, p[i], want_p[i]);
            cr_assert_eq(memcmp(&o.m[i], &want_m[i], 4), 0, "step %d m[%d]", t, i);
            cr_assert_eq(memcmp(&o.v[i], &want_v[i], 4), 0, "step %d v[%d]", t, i);
        }
    }
    kern_optim_free(&o);
}
