/* test_kern_ops.c -- the building blocks of kernels/kern_ops.c: GELU and LayerNorm forward against
 * double-precision formulas, their backwards against central finite differences of those formulas
 * (evaluated in double, so the differences are exact to ~1e-9), Linear against a naive triple loop
 * (both the GEMM path and the B == 1 GEMV path), ReLU, and kern_all_finite. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern_ops.h"
#include "kernels/kern_rng.h"

static double opst_gelu(double x)
{
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

/* opst_fill writes n values drawn from U(-scale, scale). */
static void opst_fill(float *p, size_t n, float scale, uint64_t seed)
{
    kern_rng r;
    kern_rng_seed(&r, seed);
    kern_init_uniform(p, n, scale, &r);
}

Test(kern_ops, gelu_forward_matches_formula, .timeout = 30)
{
    enum { N = 4099 }; /* not a multiple of the SIMD width: the tail path runs too */
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    for (int i = 0; i < N; i++) x[i] = -12.0f + 24.0f * (float)i / (float)(N - 1);
    kern_gelu_tanh_fwd(x, y, N);
    for (int i = 0; i < N; i++) {
        double want = opst_gelu(x[i]);
        cr_assert(fabs(y[i] - want) <= 1e-6 + 1e-6 * fabs(want), "gelu(%g) = %.9g, want %.9g", x[i], y[i], want);
    }
    /* In place gives the same values. */
    float *z = malloc(N * sizeof *z);
    memcpy(z, x, N * sizeof *z);
    kern_gelu_tanh_fwd(z, z, N);
    cr_assert_eq(memcmp(z, y, N * sizeof *z), 0);
    float special[3] = {NAN, INFINITY, 0.0f}, out[3];
    kern_gelu_tanh_fwd(special, out, 3);
    cr_assert(isnan(out[0]));
    cr_assert(isinf(out[1]) && out[1] > 0);
    cr_assert_eq(out[2], 0.0f);
    free(x);
    free(y);
    free(z);
}

Test(kern_ops, gelu_backward_matches_finite_differences, .timeout = 30)
{
    enum { N = 1027 };
    float *x = malloc(N * sizeof *x), *gy = malloc(N * sizeof *gy), *gx = malloc(N * sizeof *gx);
    opst_fill(x, N, 6.0f, 1);
    opst_fill(gy, N, 2.0f, 2);
    kern_gelu_tanh_bwd(x, gy, gx, N);
    const double h = 1e-5;
    for (int i = 0; i < N; i++) {
        double d = (opst_gelu((double)x[i] + h) - opst_gelu((double)x[i] - h)) / (2 * h);
        double want = gy[i] * d;
        cr_assert(fabs(gx[i] - want) <= 2e-6 + 2e-6 * fabs(want), "gelu'(%g): %.9g vs %.9g", x[i], gx[i], want);
    }
    /* gx may alias gy. */
    kern_gelu_tanh_bwd(x, gy, gy, N);
    cr_assert_eq(memcmp(gx, gy, N * sizeof *gx), 0);
    free(x);
    free(gy);
    free(gx);
}

/* opst_ln_loss returns sum(gy * LayerNorm(x)) in double, with one of x/g/b perturbed by delta at
 * index (which, j): which 0 = x[j], 1 = g[j], 2 = b[j]. */
static double opst_ln_loss(const float *x, const float *g, const float *b, const float *gy, int B, int H,
                           float eps, int which, int j, double delta)
{
    double loss = 0.0;
    for (int r = 0; r < B; r++) {
        double xs[64];
        for (int k = 0; k < H; k++) xs[k] = x[r * H + k] + (which == 0 && j == r * H + k ? delta : 0.0);
        double mu = 0.0, var = 0.0;
        for (int k = 0; k < H; k++) mu += xs[k];
        mu /= H;
        for (int k = 0; k < H; k++) var += (xs[k] - mu) * (xs[k] - mu);
        var /= H;
        double rs = 1.0 / sqrt(var + eps);
        for (int k = 0; k < H; k++) {
            double gk = g[k] + (which == 1 && j == k ? delta : 0.0);
            double bk = b[k] + (which == 2 && j == k ? delta : 0.0);
            loss += gy[r * H + k] * ((xs[k] - mu) * rs * gk + bk);
        }
    }
    return loss;
}

Test(kern_ops, layernorm_matches_formula_and_finite_differences, .timeout = 30)
{
    enum { B = 3, H = 37 };
    const float eps = 1e-5f;
    float x[B * H], g[H], b[H], gy[B * H], y[B * H], mean[B], rstd[B], gx[B * H], gg[H], gb[H];
    opst_fill(x, B * H, 2.0f, 3);
    for (int i = 0; i < B * H; i++) x[i] += (float)(i / H); /* a different mean per row */
    opst_fill(g, H, 1.0f, 4);
    opst_fill(b, H, 1.0f, 5);
    opst_fill(gy, B * H, 1.0f, 6);
    kern_layernorm_fwd(x, B, H, g, b, eps, y, mean, rstd);
    for (int r = 0; r < B; r++) {
        double mu = 0.0, var = 0.0;
        for (int k = 0; k < H; k++) mu += x[r * H + k];
        mu /= H;
        for (int k = 0; k < H; k++) var += (x[r * H + k] - mu) * (x[r * H + k] - mu);
        var /= H; /* biased, as torch */
        double rs = 1.0 / sqrt(var + eps);
        cr_assert(fabs(mean[r] - mu) < 1e-6);
        cr_assert(fabs(rstd[r] - rs) < 1e-5 * rs);
        for (int k = 0; k < H; k++) {
            double want = (x[r * H + k] - mu) * rs * g[k] + b[k];
            cr_assert(fabs(y[r * H + k] - want) < 1e-5, "y[%d,%d]", r, k);
        }
    }
    kern_layernorm_bwd(x, gy, B, H, g, mean, rstd, gx, gg, gb);
    const double h = 1e-6;
    for (int j = 0; j < B * H; j++) {
        double fd = (opst_ln_loss(x, g, b, gy, B, H, eps, 0, j, h) - opst_ln_loss(x, g, b, gy, B, H, eps, 0, j, -h)) /
                    (2 * h);
        cr_assert(fabs(gx[j] - fd) < 1e-4 + 1e-4 * fabs(fd), "gx[%d] %.7g vs %.7g", j, gx[j], fd);
    }
    for (int j = 0; j < H; j++) {
        double fg = (opst_ln_loss(x, g, b, gy, B, H, eps, 1, j, h) - opst_ln_loss(x, g, b, gy, B, H, eps, 1, j, -h)) /
                    (2 * h);
        double fb = (opst_ln_loss(x, g, b, gy, B, H, eps, 2, j, h) - opst_ln_loss(x, g, b, gy, B, H, eps, 2, j, -h)) /
                    (2 * h);
        cr_assert(fabs(gg[j] - fg) < 1e-4 + 1e-4 * fabs(fg), "gg[%d] %.7g vs %.7g", j, gg[j], fg);
        cr_assert(fabs(gb[j] - fb) < 1e-4 + 1e-4 * fabs(fb), "gb[%d] %.7g vs %.7g", j, gb[j], fb);
    }
    /* gx may alias gy; y may alias x. */
    float gy2[B * H];
    memcpy(gy2, gy, sizeof gy2);
    kern_layernorm_bwd(x, gy2, B, H, g, mean, rstd, gy2, gg, gb);
    cr_assert_eq(memcmp(gy2, gx, sizeof gx), 0);
    float x2[B * H];
    memcpy(x2, x, sizeof x2);
    kern_layernorm_fwd(x2, B, H, g, b, eps, x2, NULL, NULL);
    cr_assert_eq(memcmp(x2, y, sizeof y), 0);
}

/* opst_check_linear compares kern_linear_fwd/bwd with naive double loops for one shape. */
static void opst_check_linear(int B, int in, int out)
{
    size_t nx = (size_t)B * in, ny = (size_t)B * out, nw = (size_t)out * in;
    float *x = malloc((nx + 1) * sizeof *x), *W = malloc(nw * sizeof *W), *b = malloc(out * sizeof *b);
    float *y = malloc((ny + 1) * sizeof *y), *gy = malloc((ny + 1) * sizeof *gy), *gx = malloc((nx + 1) * sizeof *gx);
    float *gW = malloc(nw * sizeof *gW), *gb = malloc(out * sizeof *gb);
    opst_fill(x, nx, 1.0f, 10);
    opst_fill(W, nw, 0.5f, 11);
    opst_fill(b, out, 0.5f, 12);
    opst_fill(gy, ny, 1.0f, 13);
    kern_linear_fwd(x, B, in, W, b, out, y);
    for (int i = 0; i < B; i++)
        for (int o = 0; o < out; o++) {
            double s = b[o];
            for (int k = 0; k < in; k++) s += (double)x[i * in + k] * W[o * in + k];
            cr_assert(fabs(y[i * out + o] - s) < 1e-5 + 1e-5 * fabs(s), "y[%d,%d] B=%d", i, o, B);
        }
    kern_linear_fwd(x, B, in, W, NULL, out, y);
    for (int i = 0; i < B; i++) {
        double s = 0.0;
        for (int k = 0; k < in; k++) s += (double)x[i * in + k] * W[k];
        cr_assert(fabs(y[i * out] - s) < 1e-5 + 1e-5 * fabs(s), "no bias, B=%d", B);
    }
    memset(gW, 0xff, nw * sizeof *gW);
    memset(gb, 0xff, out * sizeof *gb);
    kern_linear_bwd(x, gy, B, in, out, W, gx, gW, gb);
    for (int o = 0; o < out; o++) {
        double sb = 0.0;
        for (int i = 0; i < B; i++) sb += gy[i * out + o];
        cr_assert(fabs(gb[o] - sb) < 1e-5 + 1e-5 * fabs(sb));
        for (int k = 0; k < in; k++) {
            double s = 0.0;
            for (int i = 0; i < B; i++) s += (double)gy[i * out + o] * x[i * in + k];
            cr_assert(fabs(gW[o * in + k] - s) < 1e-5 + 1e-5 * fabs(s), "gW[%d,%d] B=%d", o, k, B);
        }
    }
    for (int i = 0; i < B; i++)
        for (int k = 0; k < in; k++) {
            double s = 0.0;
            for (int o = 0; o < out; o++) s += (double)gy[i * out + o] * W[o * in + k];
            cr_assert(fabs(gx[i * in + k] - s) < 1e-5 + 1e-5 * fabs(s), "gx[%d,%d] B=%d", i, k, B);
        }
    free(x);
    free(W);
    free(b);
    free(y);
    free(gy);
    free(gx);
    free(gW);
    free(gb);
}

Test(kern_ops, linear_matches_naive, .timeout = 30)
{
    opst_check_linear(1, 17, 9);  /* the GEMV / GER path */
    opst_check_linear(5, 17, 9);  /* the GEMM path */
    opst_check_linear(64, 33, 40);
}

Test(kern_ops, linear_empty_batch_zeroes_gradients, .timeout = 30)
{
    float W[6] = {1, 2, 3, 4, 5, 6}, gW[6], gb[2];
    memset(gW, 0xff, sizeof gW);
    memset(gb, 0xff, sizeof gb);
    kern_linear_bwd(NULL, NULL, 0, 3, 2, W, NULL, gW, gb);
    for (int i = 0; i < 6; i++) cr_assert_eq(gW[i], 0.0f);
    cr_assert_eq(gb[0], 0.0f);
    cr_assert_eq(gb[1], 0.0f);
}

Test(kern_ops, relu, .timeout = 30)
{
    float x[5] = {-2.0f, -0.0f, 0.0f, 0.5f, 3.0f}, y[5], gy[5] = {1, 2, 3, 4, 5}, gx[5];
    kern_relu_fwd(x, y, 5);
    cr_assert_eq(y[0], 0.0f);
    cr_assert_eq(y[2], 0.0f);
    cr_assert_eq(y[3], 0.5f);
    cr_assert_eq(y[4], 3.0f);
    kern_relu_bwd(x, gy, gx, 5);
    float want[5] = {0, 0, 0, 4, 5};
    cr_assert_eq(memcmp(gx, want, sizeof gx), 0);
}

Test(kern_ops, all_finite, .timeout = 30)
{
    enum { N = 5000 };
    float *x = calloc(N, sizeof *x);
    cr_assert_eq(kern_all_finite(x, N), 1);
    cr_assert_eq(kern_all_finite(x, 0), 1);
    x[0] = 3.4e38f;
    x[1] = -3.4e38f;
    x[2] = 1e-45f; /* subnormal */
    cr_assert_eq(kern_all_finite(x, N), 1);
    x[N - 1] = NAN;
    cr_assert_eq(kern_all_finite(x, N), 0);
    cr_assert_eq(kern_all_finite(x, N - 1), 1);
    x[2000] = -INFINITY;
    cr_assert_eq(kern_all_finite(x, N - 1), 0);
    x[2000] = INFINITY;
    cr_assert_eq(kern_all_finite(x + 1500, 1000), 0);
    free(x);
}
