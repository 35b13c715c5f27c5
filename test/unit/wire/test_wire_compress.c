/* test_wire_compress.c -- wire/wire_compress.c: binary16 rounding, each scheme's byte layout on small
 * hand-worked inputs, round-trip error on standard normal data, sizes, refusals of non-finite inputs and
 * of hostile headers, and a fuzz of random and mutated payloads (run under ASan by `make test SAN=1`).
 *
 * Measured round-trip mean squared errors on N(0,1), n = 100000, seed 12345 (this file's generator):
 *   FLOAT16 4.37e-8 and MEANSTD_16BIT 4.36e-8: half precision, rounding error variance ulp^2/12 with
 *   ulp = 2^-10 for |x| in [1, 2) (7.9e-8 there), a quarter of that in [0.5, 1), and so on down, which
 *   averages to ~4.4e-8 over N(0,1);
 *   UNIFORM_8BIT 1.98e-4: the step 6*sigma/256 = 0.0234 costs 0.0234^2/12 = 4.6e-5 inside +-3 sigma; the
 *   rest is the 0.27% of values beyond +-3 sigma, clipped into the end bins (whose averages soften it);
 *   BLOCKWISE_8BIT 1.60e-4: the absmax of 4096 normals is ~3.9 and the dynamic code's coarsest step
 *   (0.9/64 of absmax, 0.055) covers most of the mass: 0.055^2/12 = 2.5e-4 there, finer below.
 * With n = 100000 the sample noise of these figures is about 1%, so the asserted bounds (5e-8 for both
 * 16-bit schemes, 2.5e-4 and 2e-4 for the 8-bit ones) are the measured values plus 15-25%: a change
 * of rounding (truncation instead of nearest, a wrong scale) breaks them.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "wire/codec/wire_compress.h"

#define WCT_N 100000
#define WCT_SEED 12345u

static const wire_scheme wct_all[] = {WIRE_SCHEME_NONE, WIRE_SCHEME_MEANSTD_16BIT, WIRE_SCHEME_FLOAT16,
                                      WIRE_SCHEME_UNIFORM_8BIT, WIRE_SCHEME_BLOCKWISE_8BIT};
#define WCT_NSCHEMES (sizeof wct_all / sizeof wct_all[0])

/* wct_rng is splitmix64: a fixed, portable sequence for a given seed. */
static uint64_t wct_rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double wct_unif(uint64_t *s)
{
    return ((double)(wct_rng(s) >> 11) + 0.5) / 9007199254740992.0;
}

/* wct_normal fills x with n standard normal samples (Box-Muller). */
static void wct_normal(float *x, size_t n, uint32_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i += 2) {
        double u = wct_unif(&s), v = wct_unif(&s);
        double r = sqrt(-2.0 * log(u));
        x[i] = (float)(r * cos(2.0 * M_PI * v));
        if (i + 1 < n) x[i + 1] = (float)(r * sin(2.0 * M_PI * v));
    }
}

/* wct_roundtrip compresses and decompresses x[0..n) in rows rows; returns the MSE and the size. */
static double wct_roundtrip(wire_scheme sc, const float *x, size_t n, size_t rows, size_t *size)
{
    size_t bound = wire_compress_bound_rows(sc, n, rows);
    cr_assert_neq(bound, SIZE_MAX);
    uint8_t *buf = malloc(bound ? bound : 1);
    float *y = malloc((n ? n : 1) * sizeof *y);
    size_t len = 0;
    cr_assert_eq(wire_compress_rows(sc, x, n, rows, buf, &len), 0, "%s", wire_compress_name(sc));
    cr_assert_eq(len, bound);
    cr_assert_eq(wire_decompress_rows(sc, buf, len, n, rows, y), 0, "%s", wire_compress_name(sc));
    double se = 0.0;
    for (size_t i = 0; i < n; i++) se += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
    free(buf);
    free(y);
    if (size) *size = len;
    return n ? se / (double)n : 0.0;
}

Test(wire_compress, names, .timeout = 30)
{
    const char *names[] = {"NONE", "MEANSTD_16BIT", "FLOAT16", "UNIFORM_8BIT", "BLOCKWISE_8BIT"};
    for (size_t i = 0; i < WCT_NSCHEMES; i++) {
        wire_scheme s = (wire_scheme)99;
        cr_assert_str_eq(wire_compress_name(wct_all[i]), names[i]);
        cr_assert_eq(wire_compress_parse(names[i], &s), 0);
        cr_assert_eq(s, wct_all[i]);
    }
    cr_assert_eq((int)WIRE_SCHEME_MEANSTD_16BIT, 1, "hivemind's CompressionType numbers");
    cr_assert_eq((int)WIRE_SCHEME_FLOAT16, 2);
    cr_assert_eq((int)WIRE_SCHEME_UNIFORM_8BIT, 4);
    cr_assert_eq((int)WIRE_SCHEME_BLOCKWISE_8BIT, 5);
    wire_scheme s = WIRE_SCHEME_FLOAT16;
    cr_assert_eq(wire_compress_parse("float16", &s), DMOE_EINVAL);
    cr_assert_eq(wire_compress_parse("QUANTILE_8BIT", &s), DMOE_EINVAL);
    cr_assert_eq(wire_compress_parse(NULL, &s), DMOE_EINVAL);
    cr_assert_eq(s, WIRE_SCHEME_FLOAT16, "untouched on failure");
    cr_assert_null(wire_compress_name((wire_scheme)3));
    cr_assert_eq(wire_compress_bound((wire_scheme)3, 10), SIZE_MAX);
}

Test(wire_compress, half_rounding, .timeout = 30)
{
    cr_assert_eq(wire_f32_to_f16(1.0f), 0x3c00);
    cr_assert_eq(wire_f32_to_f16(-2.0f), 0xc000);
    cr_assert_eq(wire_f32_to_f16(0.0f), 0x0000);
    cr_assert_eq(wire_f32_to_f16(-0.0f), 0x8000);
    cr_assert_eq(wire_f32_to_f16(65504.0f), 0x7bff);
    cr_assert_eq(wire_f32_to_f16(65519.99f), 0x7bff, "below the midpoint to 65536");
    cr_assert_eq(wire_f32_to_f16(65520.0f), 0x7c00, "the midpoint ties to even: Inf");
    cr_assert_eq(wire_f32_to_f16(INFINITY), 0x7c00);
    cr_assert_eq(wire_f32_to_f16(-INFINITY), 0xfc00);
    cr_assert_eq(wire_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00, "tie to even (down)");
    cr_assert_eq(wire_f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3c02, "tie to even (up)");
    cr_assert_eq(wire_f32_to_f16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)), 0x3c01, "above the tie");
    cr_assert_eq(wire_f32_to_f16(ldexpf(1, -24)), 0x0001, "smallest subnormal");
    cr_assert_eq(wire_f32_to_f16(ldexpf(1, -25)), 0x0000, "half of it ties to 0");
    cr_assert_eq(wire_f32_to_f16(3 * ldexpf(1, -25)), 0x0002, "1.5 units tie to 2");
    cr_assert_eq(wire_f32_to_f16(ldexpf(1, -14)), 0x0400, "smallest normal");
    cr_assert_eq(wire_f32_to_f16(ldexpf(1023, -24) + ldexpf(1, -25)), 0x0400, "subnormal rounds up to normal");
    uint16_t nan = wire_f32_to_f16(NAN);
    cr_assert((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0);
    /* every non-NaN half survives f16 -> f32 -> f16 exactly */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = wire_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            cr_assert((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
            continue;
        }
        cr_assert_eq(wire_f32_to_f16(f), h, "half 0x%04x", h);
    }
    cr_assert_eq(wire_f16_to_f32(0x7bff), 65504.0f);
    cr_assert_eq(wire_f16_to_f32(0x0001), ldexpf(1, -24));
    cr_assert(isinf(wire_f16_to_f32(0xfc00)) && wire_f16_to_f32(0xfc00) < 0);
}

Test(wire_compress, float16_layout_and_clamp, .timeout = 30)
{
    float x[6] = {1.0f, -2.0f, 1e6f, -INFINITY, INFINITY, NAN};
    uint8_t b[12];
    size_t len = 0;
    cr_assert_eq(wire_compress_bound(WIRE_SCHEME_FLOAT16, 6), 12);
    cr_assert_eq(wire_compress(WIRE_SCHEME_FLOAT16, x, 6, b, &len), 0);
    cr_assert_eq(len, 12);
    uint8_t want[10] = {0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0xff, 0xfb, 0xff, 0x7b};
    cr_assert_arr_eq(b, want, 10, "little-endian halves; +-Inf and 1e6 clamp to +-65504 as hivemind does");
    float y[6];
    cr_assert_eq(wire_decompress(WIRE_SCHEME_FLOAT16, b, 12, 6, y), 0);
    cr_assert_eq(y[2], 65504.0f);
    cr_assert_eq(y[3], -65504.0f);
    cr_assert(isnan(y[5]), "NaN is carried");
}

Test(wire_compress, none_layout, .timeout = 30)
{
    float x[2] = {1.0f, -0.5f};
    uint8_t b[8];
    size_t len = 0;
    cr_assert_eq(wire_compress(WIRE_SCHEME_NONE, x, 2, b, &len), 0);
    uint8_t want[8] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xbf};
    cr_assert_arr_eq(b, want, 8);
    float y[2];
    cr_assert_eq(wire_decompress(WIRE_SCHEME_NONE, b, 8, 2, y), 0);
    cr_assert_arr_eq(y, x, sizeof x);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_NONE, b, 7, 2, y), DMOE_EPROTO);
}

/* wct_le_f32 reads a little-endian float at p. */
static float wct_le_f32(const uint8_t *p)
{
    uint32_t v = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

static int64_t wct_le_i64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return (int64_t)v;
}

Test(wire_compress, meanstd_layout_rows, .timeout = 30)
{
    /* two rows of 3: [1,2,3] (mean 2, biased std sqrt(2/3)) and [10,10,10] (mean 10, std 0 -> eps) */
    float x[6] = {1, 2, 3, 10, 10, 10};
    uint8_t b[2 * 6 + 8 * 2];
    size_t len = 0;
    cr_assert_eq(wire_compress_bound_rows(WIRE_SCHEME_MEANSTD_16BIT, 6, 2), 28);
    cr_assert_eq(wire_compress_rows(WIRE_SCHEME_MEANSTD_16BIT, x, 6, 2, b, &len), 0);
    cr_assert_eq(len, 28);
    cr_assert_eq(wct_le_f32(b + 12), 2.0f, "means after the body");
    cr_assert_eq(wct_le_f32(b + 16), 10.0f);
    cr_assert_float_eq(wct_le_f32(b + 20), sqrtf(2.0f / 3.0f), 1e-7, "biased std, then the stds");
    cr_assert_eq(wct_le_f32(b + 24), FLT_EPSILON, "hivemind clamps std at float32 eps");
    /* body: (x - mean)/std = -1.2247, 0, 1.2247 as halves; the constant row is all zeros */
    cr_assert_eq(b[0] | (b[1] << 8), wire_f32_to_f16(-1.0f / sqrtf(2.0f / 3.0f)));
    cr_assert_eq(b[2] | (b[3] << 8), 0);
    for (int i = 6; i < 12; i++) cr_assert_eq(b[i], 0);
    float y[6];
    cr_assert_eq(wire_decompress_rows(WIRE_SCHEME_MEANSTD_16BIT, b, len, 6, 2, y), 0);
    for (int i = 0; i < 6; i++) cr_assert_float_eq(y[i], x[i], 2e-3, "element %d", i);
    cr_assert_eq(y[3], 10.0f, "a constant row is exact");
    /* the per-row scaling keeps wildly different rows accurate: relative error ~ 2^-11 each */
    float z[2000];
    wct_normal(z, 2000, 7);
    for (int i = 0; i < 1000; i++) z[i] = z[i] * 1000.0f + 5000.0f;
    for (int i = 1000; i < 2000; i++) z[i] *= 0.001f;
    uint8_t bz[2 * 2000 + 16];
    float yz[2000];
    cr_assert_eq(wire_compress_rows(WIRE_SCHEME_MEANSTD_16BIT, z, 2000, 2, bz, &len), 0);
    cr_assert_eq(wire_decompress_rows(WIRE_SCHEME_MEANSTD_16BIT, bz, len, 2000, 2, yz), 0);
    for (int i = 0; i < 1000; i++) cr_assert(fabsf(yz[i] - z[i]) < 5.0f, "row 0 [%d]", i);
    for (int i = 1000; i < 2000; i++) cr_assert(fabsf(yz[i] - z[i]) < 5e-6f, "row 1 [%d]", i);
    /* rows must divide n */
    cr_assert_eq(wire_compress_rows(WIRE_SCHEME_MEANSTD_16BIT, x, 6, 4, b, &len), DMOE_EINVAL);
    cr_assert_eq(wire_compress_rows(WIRE_SCHEME_MEANSTD_16BIT, x, 6, 0, b, &len), DMOE_EINVAL);
    cr_assert_eq(wire_decompress_rows(WIRE_SCHEME_MEANSTD_16BIT, b, 28, 6, 4, y), DMOE_EINVAL);
    cr_assert_eq(wire_compress_bound_rows(WIRE_SCHEME_MEANSTD_16BIT, 6, 4), SIZE_MAX);
}

Test(wire_compress, uniform_layout, .timeout = 30)
{
    /* x = 1,2,3,4: mean 2.5, c = -1.5,-.5,.5,1.5, std_unbiased = sqrt(5/3) = 1.29099,
     * scale = 6*1.29099/256 = 0.0302576, c/scale = -49.57,-16.52,16.52,49.57 -> round -50,-17,17,50,
     * + 128 = 78, 111, 145, 178; each bin's codebook entry is its single original value. */
    float x[4] = {1, 2, 3, 4};
    uint8_t b[8 + 1024 + 5];
    size_t len = 0;
    cr_assert_eq(wire_compress(WIRE_SCHEME_UNIFORM_8BIT, x, 4, b, &len), 0);
    cr_assert_eq(len, 8 + 1024 + 4);
    cr_assert_eq(wct_le_i64(b), 256);
    const uint8_t *idx = b + 8 + 1024;
    cr_assert_eq(idx[0], 78);
    cr_assert_eq(idx[1], 111);
    cr_assert_eq(idx[2], 145);
    cr_assert_eq(idx[3], 178);
    cr_assert_eq(wct_le_f32(b + 8 + 4 * 78), 1.0f);
    cr_assert_eq(wct_le_f32(b + 8 + 4 * 178), 4.0f);
    cr_assert_eq(wct_le_f32(b + 8 + 4 * 0), 0.0f, "empty bins hold 0");
    float y[5];
    cr_assert_eq(wire_decompress(WIRE_SCHEME_UNIFORM_8BIT, b, len, 4, y), 0);
    cr_assert_arr_eq(y, x, sizeof x);
    /* a constant array and a single value land in bin 128 and come back exactly */
    float c[5] = {3.25f, 3.25f, 3.25f, 3.25f, 3.25f};
    cr_assert_eq(wire_compress(WIRE_SCHEME_UNIFORM_8BIT, c, 5, b, &len), 0);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_UNIFORM_8BIT, b, len, 5, y), 0);
    for (int i = 0; i < 5; i++) cr_assert_eq(y[i], 3.25f);
    cr_assert_eq(wire_compress(WIRE_SCHEME_UNIFORM_8BIT, c, 1, b, &len), 0);
    cr_assert_eq(b[8 + 1024], 128);
    /* a hivemind-style payload with a shorter codebook (K = 2) decodes; index 2 would be outside */
    uint8_t h[8 + 8 + 3] = {2, 0, 0, 0, 0, 0, 0, 0};
    float c0 = -1.5f, c1 = 2.5f;
    memcpy(h + 8, &c0, 4);
    memcpy(h + 12, &c1, 4);
    h[16] = 1, h[17] = 0, h[18] = 1;
    cr_assert_eq(wire_decompress(WIRE_SCHEME_UNIFORM_8BIT, h, sizeof h, 3, y), 0);
    cr_assert_eq(y[0], 2.5f);
    cr_assert_eq(y[1], -1.5f);
    h[18] = 2;
    cr_assert_eq(wire_decompress(WIRE_SCHEME_UNIFORM_8BIT, h, sizeof h, 3, y), DMOE_EPROTO);
}

Test(wire_compress, blockwise_code_and_layout, .timeout = 30)
{
    size_t n = 4097;   /* two blocks, the second of one value */
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)((int)(i % 17) - 8) * 0.25f;
    x[4096] = -3.0f;
    size_t bound = wire_compress_bound(WIRE_SCHEME_BLOCKWISE_8BIT, n);
    cr_assert_eq(bound, 16 + 2 * 4 + 1024 + n);
    uint8_t *b = malloc(bound);
    size_t len = 0;
    cr_assert_eq(wire_compress(WIRE_SCHEME_BLOCKWISE_8BIT, x, n, b, &len), 0);
    cr_assert_eq(wct_le_i64(b), 2, "block count");
    cr_assert_eq(wct_le_i64(b + 8), 256, "code size");
    cr_assert_eq(wct_le_f32(b + 16), 2.0f, "absmax of block 0");
    cr_assert_eq(wct_le_f32(b + 20), 3.0f, "absmax of block 1");
    const uint8_t *code = b + 24;
    float prev = -INFINITY;
    int zeros = 0;
    for (int k = 0; k < 256; k++) {
        float c = wct_le_f32(code + 4 * k);
        cr_assert(c > prev, "the dynamic code ascends strictly (k = %d)", k);
        prev = c;
        zeros += c == 0.0f;
    }
    cr_assert_eq(zeros, 1);
    cr_assert_eq(wct_le_f32(code + 4 * 255), 1.0f, "the top entry is 1");
    /* the bottom entry is -(0.98594 + 1)/2: the last midpoint of linspace(0.1, 1, 65) */
    cr_assert_float_eq(wct_le_f32(code), -(1.0f - 0.9f / 128.0f), 1e-6);
    cr_assert_eq(wct_le_f32(code + 4 * 127), 0.0f, "127 negative entries below 0");
    /* the smallest positive entry: 1e-6 * (0.1 + 1)/2 */
    cr_assert_float_eq(wct_le_f32(code + 4 * 128), 0.55e-6f, 1e-12);
    const uint8_t *idx = code + 1024;
    cr_assert_eq(idx[4096], 0, "-absmax maps to the most negative code");
    float *y = malloc(n * sizeof *y);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_BLOCKWISE_8BIT, b, len, n, y), 0);
    for (size_t i = 0; i < n; i++) cr_assert(fabsf(y[i] - x[i]) <= 0.0141f * 3.0f, "[%zu]", i);
    cr_assert_eq(y[8], 0.0f, "zero is exact");
    cr_assert_eq(y[16], 2.0f, "+absmax is exact (code 1.0)");
    /* an all-zero block decodes to zeros */
    memset(x, 0, n * sizeof *x);
    cr_assert_eq(wire_compress(WIRE_SCHEME_BLOCKWISE_8BIT, x, n, b, &len), 0);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_BLOCKWISE_8BIT, b, len, n, y), 0);
    for (size_t i = 0; i < n; i++) cr_assert_eq(y[i], 0.0f);
    free(x);
    free(y);
    free(b);
}

Test(wire_compress, normal_error_and_sizes, .timeout = 60)
{
    float *x = malloc(WCT_N * sizeof *x);
    wct_normal(x, WCT_N, WCT_SEED);
    size_t sz[WCT_NSCHEMES];
    double mse[WCT_NSCHEMES];
    for (size_t i = 0; i < WCT_NSCHEMES; i++) {
        mse[i] = wct_roundtrip(wct_all[i], x, WCT_N, 1, &sz[i]);
        cr_log_info("%-15s mse %.3g size %zu (%.4f of float32)", wire_compress_name(wct_all[i]), mse[i], sz[i],
                    (double)sz[i] / (4.0 * WCT_N));
    }
    cr_assert_eq(mse[0], 0.0, "NONE is lossless");
    cr_assert_lt(mse[1], 5e-8, "MEANSTD_16BIT %.3g", mse[1]);
    cr_assert_lt(mse[2], 5e-8, "FLOAT16 %.3g", mse[2]);
    cr_assert_lt(mse[3], 2.5e-4, "UNIFORM_8BIT %.3g", mse[3]);
    cr_assert_lt(mse[4], 2e-4, "BLOCKWISE_8BIT %.3g", mse[4]);
    cr_assert_eq(sz[0], 4 * WCT_N);
    cr_assert_eq(sz[1], 2 * WCT_N + 8, "half the bytes plus one mean and one std");
    cr_assert_eq(sz[2], 2 * WCT_N, "exactly half");
    cr_assert_eq(sz[3], WCT_N + 8 + 1024, "a quarter plus the codebook");
    cr_assert_eq(sz[4], WCT_N + 16 + 25 * 4 + 1024, "a quarter plus 25 absmax and the code");
    free(x);
}

Test(wire_compress, empty_and_null, .timeout = 30)
{
    for (size_t i = 0; i < WCT_NSCHEMES; i++) {
        wire_scheme s = wct_all[i];
        uint8_t b[2048];
        size_t len = 77;
        cr_assert_eq(wire_compress(s, NULL, 0, b, &len), 0);
        cr_assert_eq(len, wire_compress_bound(s, 0));
        cr_assert_eq(wire_decompress(s, b, len, 0, NULL), 0, "%s", wire_compress_name(s));
        float one = 1.0f;
        cr_assert_eq(wire_compress(s, NULL, 1, b, &len), DMOE_EINVAL);
        cr_assert_eq(wire_compress(s, &one, 1, b, NULL), DMOE_EINVAL);
        cr_assert_eq(wire_decompress(s, NULL, 4, 1, &one), DMOE_EINVAL);
    }
    size_t len = 0;
    float f = 1.0f;
    uint8_t b[8];
    cr_assert_eq(wire_compress((wire_scheme)3, &f, 1, b, &len), DMOE_EINVAL);
    cr_assert_eq(wire_decompress((wire_scheme)9, b, 4, 1, &f), DMOE_EINVAL);
    cr_assert_eq(wire_compress_bound(WIRE_SCHEME_NONE, SIZE_MAX / 2), SIZE_MAX, "overflow");
    cr_assert_eq(wire_decompress(WIRE_SCHEME_UNIFORM_8BIT, b, 8, SIZE_MAX, &f), DMOE_EPROTO);
}

Test(wire_compress, nonfinite_inputs, .timeout = 30)
{
    float x[4] = {1, 2, NAN, 4};
    uint8_t b[2048];
    size_t len = 5;
    cr_assert_eq(wire_compress(WIRE_SCHEME_MEANSTD_16BIT, x, 4, b, &len), DMOE_ENONFINITE);
    cr_assert_eq(wire_compress(WIRE_SCHEME_UNIFORM_8BIT, x, 4, b, &len), DMOE_ENONFINITE);
    cr_assert_eq(wire_compress(WIRE_SCHEME_BLOCKWISE_8BIT, x, 4, b, &len), DMOE_ENONFINITE);
    cr_assert_eq(len, 5, "untouched on failure");
    x[2] = INFINITY;
    cr_assert_eq(wire_compress(WIRE_SCHEME_BLOCKWISE_8BIT, x, 4, b, &len), DMOE_ENONFINITE);
    cr_assert_eq(wire_compress(WIRE_SCHEME_NONE, x, 4, b, &len), 0);
    cr_assert_eq(wire_compress(WIRE_SCHEME_FLOAT16, x, 4, b, &len), 0);
}

/* wct_put_f32 stores f little-endian at p. */
static void wct_put_f32(uint8_t *p, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

Test(wire_compress, hostile_headers, .timeout = 30)
{
    float x[8] = {1, -2, 3, -4, 5, -6, 7, -8}, y[8];
    uint8_t b[2048], t[2048];
    size_t len;
    /* MEANSTD: NaN mean, Inf std, negative std, zero std, wrong length */
    cr_assert_eq(wire_compress(WIRE_SCHEME_MEANSTD_16BIT, x, 8, b, &len), 0);
    cr_assert_eq(len, 24);
    float bad[] = {NAN, INFINITY, -1.0f, 0.0f};
    for (size_t i = 0; i < 4; i++) {
        memcpy(t, b, len);
        wct_put_f32(t + 20, bad[i]);
        cr_assert_eq(wire_decompress(WIRE_SCHEME_MEANSTD_16BIT, t, len, 8, y), DMOE_ENONFINITE, "std %g", bad[i]);
    }
    memcpy(t, b, len);
    wct_put_f32(t + 16, NAN);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_MEANSTD_16BIT, t, len, 8, y), DMOE_ENONFINITE);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_MEANSTD_16BIT, b, len - 1, 8, y), DMOE_EPROTO);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_MEANSTD_16BIT, b, len, 7, y), DMOE_EPROTO);
    /* FLOAT16: odd length */
    cr_assert_eq(wire_decompress(WIRE_SCHEME_FLOAT16, b, 15, 8, y), DMOE_EPROTO);
    /* UNIFORM: K = 0, K = 257, K negative, NaN codebook, length off by one */
    cr_assert_eq(wire_compress(WIRE_SCHEME_UNIFORM_8BIT, x, 8, b, &len), 0);
    int64_t ks[] = {0, 257, -1, INT64_MIN, INT64_MAX};
    for (size_t i = 0; i < 5; i++) {
        memcpy(t, b, len);
        for (int j = 0; j < 8; j++) t[j] = (uint8_t)((uint64_t)ks[i] >> (8 * j));
        cr_assert_eq(wire_decompress(WIRE_SCHEME_UNIFORM_8BIT, t, len, 8, y), DMOE_EPROTO);
    }
    memcpy(t, b, len);
    wct_put_f32(t + 8 + 4 * 3, NAN);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_UNIFORM_8BIT, t, len, 8, y), DMOE_ENONFINITE);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_UNIFORM_8BIT, b, len + 1, 8, y), DMOE_EPROTO);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_UNIFORM_8BIT, b, 7, 0, y), DMOE_EPROTO);
    /* BLOCKWISE: wrong block count, wrong code size, NaN / negative absmax, NaN code, length */
    cr_assert_eq(wire_compress(WIRE_SCHEME_BLOCKWISE_8BIT, x, 8, b, &len), 0);
    cr_assert_eq(len, 16 + 4 + 1024 + 8);
    memcpy(t, b, len);
    t[0] = 2;
    cr_assert_eq(wire_decompress(WIRE_SCHEME_BLOCKWISE_8BIT, t, len, 8, y), DMOE_EPROTO);
    memcpy(t, b, len);
    t[8] = 255;
    cr_assert_eq(wire_decompress(WIRE_SCHEME_BLOCKWISE_8BIT, t, len, 8, y), DMOE_EPROTO);
    memcpy(t, b, len);
    t[7] = 0x80;
    cr_assert_eq(wire_decompress(WIRE_SCHEME_BLOCKWISE_8BIT, t, len, 8, y), DMOE_EPROTO);
    float badam[] = {NAN, INFINITY, -1.0f};
    for (size_t i = 0; i < 3; i++) {
        memcpy(t, b, len);
        wct_put_f32(t + 16, badam[i]);
        cr_assert_eq(wire_decompress(WIRE_SCHEME_BLOCKWISE_8BIT, t, len, 8, y), DMOE_ENONFINITE);
    }
    memcpy(t, b, len);
    wct_put_f32(t + 20 + 4 * 200, INFINITY);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_BLOCKWISE_8BIT, t, len, 8, y), DMOE_ENONFINITE);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_BLOCKWISE_8BIT, b, len - 1, 8, y), DMOE_EPROTO);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_BLOCKWISE_8BIT, b, 15, 8, y), DMOE_EPROTO);
    cr_assert_eq(wire_decompress(WIRE_SCHEME_BLOCKWISE_8BIT, b, len, 4097, y), DMOE_EPROTO);
}

Test(wire_compress, fuzz_garbage, .timeout = 120)
{
    uint64_t s = 99;
    enum { MAXN = 9000 };
    float *out = malloc(MAXN * sizeof *out);
    float *x = malloc(MAXN * sizeof *x);
    size_t cap = wire_compress_bound(WIRE_SCHEME_NONE, MAXN) + 64;
    uint8_t *buf = malloc(cap);
    for (int iter = 0; iter < 3000; iter++) {
        wire_scheme sc = wct_all[wct_rng(&s) % WCT_NSCHEMES];
        size_t n = (size_t)(wct_rng(&s) % MAXN), rows = 1;
        if (iter % 3 == 0) {
            /* random bytes of a random length: must be refused or decoded, never crash */
            size_t len = (size_t)(wct_rng(&s) % cap);
            for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)wct_rng(&s);
            (void)wire_decompress(sc, buf, len, n, out);
            continue;
        }
        /* a valid payload with random bytes flipped, and with its length changed */
        if (sc == WIRE_SCHEME_MEANSTD_16BIT && n > 0) {
            rows = 1 + (size_t)(wct_rng(&s) % 4);
            n -= n % rows;
        }
        wct_normal(x, n, (uint32_t)iter);
        size_t len = 0;
        cr_assert_eq(wire_compress_rows(sc, x, n, rows, buf, &len), 0);
        size_t cut = len ? (size_t)(wct_rng(&s) % len) : 0;
        int rc = wire_decompress_rows(sc, buf, cut, n, rows, out);
        if (len > 0) cr_assert_neq(rc, 0, "%s: a truncated payload is refused", wire_compress_name(sc));
        int flips = 1 + (int)(wct_rng(&s) % 8);
        for (int f = 0; f < flips && len > 0; f++) {
            size_t at = (size_t)(wct_rng(&s) % (len < 2048 ? len : 2048));   /* mostly headers */
            buf[at] ^= (uint8_t)(1u << (wct_rng(&s) % 8));
        }
        (void)wire_decompress_rows(sc, buf, len, n, rows, out);
    }
    free(buf);
    free(x);
    free(out);
}

Test(wire_compress, length_checked_before_allocating, .timeout = 30)
{
    size_t n = 64 * 1000, rows = 1000;
    for (size_t k = 0; k < sizeof wct_all / sizeof wct_all[0]; k++) {
        wire_scheme sc = wct_all[k];
        size_t exact = wire_compress_bound_rows(sc, n, rows);
        cr_assert(wire_compress_len_ok(sc, exact, n, rows), "%s: its own size", wire_compress_name(sc));
        cr_assert_not(wire_compress_len_ok(sc, exact - 1, n, rows), "%s: a byte short", wire_compress_name(sc));
        /* a header claiming 2^27 x 64 values over a kilobyte */
        cr_assert_not(wire_compress_len_ok(sc, 1024, (size_t)1 << 33, (size_t)1 << 27), "%s", wire_compress_name(sc));
    }
    /* UNIFORM_8BIT's codebook may hold 1..256 entries */
    cr_assert(wire_compress_len_ok(WIRE_SCHEME_UNIFORM_8BIT, 8 + 4 + n, n, rows));
    cr_assert_not(wire_compress_len_ok(WIRE_SCHEME_UNIFORM_8BIT, 8 + n, n, rows));
    cr_assert_not(wire_compress_len_ok(WIRE_SCHEME_UNIFORM_8BIT, 8 + 4 * 257 + n, n, rows));
    cr_assert_not(wire_compress_len_ok(WIRE_SCHEME_UNIFORM_8BIT, 8 + 6 + n, n, rows));
}
