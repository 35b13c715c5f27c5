/* wire_compress.c -- hivemind's wire compression schemes (layouts in wire_compress.h).
 *
 * Each scheme is a pair of static functions, cs_<scheme>_enc / cs_<scheme>_dec, behind the four
 * exported entry points, which check the arguments and the sizes once. Encoders write exactly
 * wire_compress_bound_rows bytes; decoders check the total length against n before reading anything, then
 * every header field, then decode. Bytes are assembled explicitly in little-endian order so the layout
 * does not depend on the host.
 *
 * Arithmetic follows hivemind's float32 torch code: statistics are accumulated in double (torch uses
 * pairwise float sums; the difference is far below the schemes' own error) and rounded to float32 where
 * hivemind holds them in float32 tensors, so the stored means, stds, scales and codebooks are what
 * hivemind would store up to that last-bit difference.
 *
 * Pure and reentrant: no globals, no allocation.
 */
#include "wire/codec/wire_compress.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_moments.h"

#define CS_F16_MAX 65504.0f        /* torch.finfo(torch.float16).max: hivemind clamps to +-this */
#define CS_U8_BINS 256             /* 8-bit indices */
#define CS_UNIFORM_SIGMAS 6.0f     /* hivemind's Uniform8BitQuantization.RANGE_IN_SIGMAS */
#define CS_DYN_EXP_BITS 7          /* bitsandbytes create_dynamic_map(max_exponent_bits=7) */

/* ---- little-endian bytes ---------------------------------------------------------------------- */

static void cs_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static uint16_t cs_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static void cs_put_f32(uint8_t *p, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static float cs_get_f32(const uint8_t *p)
{
    uint32_t v = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

static void cs_put_i64(uint8_t *p, int64_t s)
{
    uint64_t v = (uint64_t)s;
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static int64_t cs_get_i64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return (int64_t)v;
}

/* ---- binary16 ----------------------------------------------------------------------------------- */

uint16_t wire_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)                                   /* NaN: quiet, keep the top payload bits */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u)                                  /* >= 65520 rounds past 65504: Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) {                                 /* below 2^-14: a subnormal half or 0 */
        float a;
        memcpy(&a, &ax, 4);
        float m = nearbyintf(a * 16777216.0f);              /* units of 2^-24, exact scaling; RNE */
        return (uint16_t)(sign | (uint16_t)m);              /* m == 1024 is the smallest normal */
    }
    uint32_t r = ax - 0x38000000u;                          /* rebias the exponent from 127 to 15 */
    r += 0xfffu + ((r >> 13) & 1u);                         /* round to nearest, ties to even */
    return (uint16_t)(sign | (r >> 13));
}

float wire_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t bits;
    if (e == 0) {
        float v = ldexpf((float)m, -24);
        return sign ? -v : v;
    }
    if (e == 31)
        bits = sign | 0x7f800000u | (m << 13);
    else
        bits = sign | ((e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* cs_clamp16 clamps f to the finite half range as torch's clamp_ does (NaN passes through). */
static float cs_clamp16(float f)
{
    if (f > CS_F16_MAX) return CS_F16_MAX;
    if (f < -CS_F16_MAX) return -CS_F16_MAX;
    return f;
}

static bool cs_all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

/* ---- sizes -------------------------------------------------------------------------------------- */

static size_t cs_blocks(size_t n)
{
    return n / WIRE_BLOCKWISE_BLOCK + (n % WIRE_BLOCKWISE_BLOCK != 0);
}

/* cs_rows_ok returns whether rows splits n values into equal rows. */
static bool cs_rows_ok(size_t n, size_t rows)
{
    if (n == 0) return true;
    return rows > 0 && n % rows == 0;
}

size_t wire_compress_bound_rows(wire_scheme scheme, size_t numel, size_t rows)
{
    size_t a, b;
    if (!cs_rows_ok(numel, rows)) return SIZE_MAX;
    switch (scheme) {
    case WIRE_SCHEME_NONE:
        return __builtin_mul_overflow(numel, (size_t)4, &a) ? SIZE_MAX : a;
    case WIRE_SCHEME_FLOAT16:
        return __builtin_mul_overflow(numel, (size_t)2, &a) ? SIZE_MAX : a;
    case WIRE_SCHEME_MEANSTD_16BIT:
        if (__builtin_mul_overflow(numel, (size_t)2, &a) || __builtin_mul_overflow(rows, (size_t)8, &b) ||
            __builtin_add_overflow(a, b, &a))
            return SIZE_MAX;
        return a;
    case WIRE_SCHEME_UNIFORM_8BIT:
        return __builtin_add_overflow(numel, (size_t)(8 + 4 * CS_U8_BINS), &a) ? SIZE_MAX : a;
    case WIRE_SCHEME_BLOCKWISE_8BIT:
        if (__builtin_mul_overflow(cs_blocks(numel), (size_t)4, &a) ||
            __builtin_add_overflow(a, (size_t)(16 + 4 * CS_U8_BINS), &a) || __builtin_add_overflow(a, numel, &a))
            return SIZE_MAX;
        return a;
    }
    return SIZE_MAX;
}

size_t wire_compress_bound(wire_scheme scheme, size_t numel)
{
    return wire_compress_bound_rows(scheme, numel, 1);
}

/* ---- names -------------------------------------------------------------------------------------- */

static const struct {
    wire_scheme scheme;
    const char *name;
} cs_names[] = {
    {WIRE_SCHEME_NONE, "NONE"},
    {WIRE_SCHEME_MEANSTD_16BIT, "MEANSTD_16BIT"},
    {WIRE_SCHEME_FLOAT16, "FLOAT16"},
    {WIRE_SCHEME_UNIFORM_8BIT, "UNIFORM_8BIT"},
    {WIRE_SCHEME_BLOCKWISE_8BIT, "BLOCKWISE_8BIT"},
};

const char *wire_compress_name(wire_scheme scheme)
{
    for (size_t i = 0; i < sizeof cs_names / sizeof cs_names[0]; i++)
        if (cs_names[i].scheme == scheme) return cs_names[i].name;
    return NULL;
}

int wire_compress_parse(const char *name, wire_scheme *scheme)
{
    if (!name || !scheme) return DMOE_EINVAL;
    for (size_t i = 0; i < sizeof cs_names / sizeof cs_names[0]; i++)
        if (strcmp(cs_names[i].name, name) == 0) {
            *scheme = cs_names[i].scheme;
            return 0;
        }
    return DMOE_EINVAL;
}

/* ---- FLOAT16 ------------------------------------------------------------------------------------ */

static void cs_f16_enc(const float *x, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) cs_put_u16(out + 2 * i, wire_f32_to_f16(cs_clamp16(x[i])));
}

static void cs_f16_dec(const uint8_t *in, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) out[i] = wire_f16_to_f32(cs_get_u16(in + 2 * i));
}

/* ---- MEANSTD_16BIT ------------------------------------------------------------------------------ */

static void cs_meanstd_enc(const float *x, size_t n, size_t rows, uint8_t *out)
{
    uint8_t *means = out + 2 * n, *stds = means + 4 * rows;
    size_t len = rows ? n / rows : 0;
    for (size_t r = 0; r < rows; r++) {
        if (len == 0) {                     /* empty rows: nothing to scale; a decoder never reads these */
            cs_put_f32(means + 4 * r, 0.0f);
            cs_put_f32(stds + 4 * r, FLT_EPSILON);
            continue;
        }
        const float *row = x + r * len;
        uint8_t *body = out + 2 * r * len;
        double ss;
        float mean = rt_row_moments(row, len, &ss);
        float std = (float)(sqrt(ss) / sqrt((double)len));
        if (!(std >= FLT_EPSILON)) std = FLT_EPSILON;       /* hivemind's clamp_min_(FP32_EPS) */
        for (size_t i = 0; i < len; i++) {
            float c = row[i] - mean;
            cs_put_u16(body + 2 * i, wire_f32_to_f16(cs_clamp16(c / std)));
        }
        cs_put_f32(means + 4 * r, mean);
        cs_put_f32(stds + 4 * r, std);
    }
}

static int cs_meanstd_dec(const uint8_t *in, size_t n, size_t rows, float *out)
{
    if (n == 0) return 0;
    const uint8_t *means = in + 2 * n, *stds = means + 4 * rows;
    size_t len = n / rows;
    for (size_t r = 0; r < rows; r++) {
        float mean = cs_get_f32(means + 4 * r), std = cs_get_f32(stds + 4 * r);
        if (!isfinite(mean) || !isfinite(std) || !(std > 0.0f)) return DMOE_ENONFINITE;
    }
    for (size_t r = 0; r < rows; r++) {
        float mean = cs_get_f32(means + 4 * r), std = cs_get_f32(stds + 4 * r);
        for (size_t i = 0; i < len; i++) {
            size_t k = r * len + i;
            float v = wire_f16_to_f32(cs_get_u16(in + 2 * k)) * std;
            out[k] = v + mean;
        }
    }
    return 0;
}

/* ---- UNIFORM_8BIT ------------------------------------------------------------------------------- */

static void cs_uniform_enc(const float *x, size_t n, uint8_t *out)
{
    uint8_t *codebook = out + 8, *idx = out + 8 + 4 * CS_U8_BINS;
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += x[i];
    float mean = n ? (float)(sum / (double)n) : 0.0f;
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) {
        float c = x[i] - mean;
        ss += (double)c * c;
    }
    float scale = 0.0f;
    if (n >= 2) {
        float std_unbiased = (float)(sqrt(ss) / sqrt((double)(n - 1)));
        scale = CS_UNIFORM_SIGMAS * std_unbiased / (float)CS_U8_BINS;
    }
    bool spread = isfinite(scale) && scale > 0.0f && isfinite(1.0f / scale);
    float inv = spread ? 1.0f / scale : 0.0f;
    double bin_sum[CS_U8_BINS] = {0};
    size_t bin_cnt[CS_U8_BINS] = {0};
    for (size_t i = 0; i < n; i++) {
        int q = CS_U8_BINS / 2;
        if (spread) {
            float r = nearbyintf((x[i] - mean) * inv);     /* torch quantize_per_tensor: zero point 128 */
            if (r <= -(float)(CS_U8_BINS / 2)) q = 0;
            else if (r >= (float)(CS_U8_BINS / 2 - 1)) q = CS_U8_BINS - 1;
            else q = (int)r + CS_U8_BINS / 2;
        }
        idx[i] = (uint8_t)q;
        bin_sum[q] += x[i];
        bin_cnt[q]++;
    }
    cs_put_i64(out, CS_U8_BINS);
    for (int k = 0; k < CS_U8_BINS; k++)
        cs_put_f32(codebook + 4 * k, bin_cnt[k] ? (float)(bin_sum[k] / (double)bin_cnt[k]) : 0.0f);
}

static int cs_uniform_dec(const uint8_t *in, size_t len, size_t n, float *out)
{
    if (len < 8) return DMOE_EPROTO;
    int64_t k = cs_get_i64(in);
    if (k < 1 || k > CS_U8_BINS) return DMOE_EPROTO;
    size_t head = 8 + 4 * (size_t)k;
    if (n > SIZE_MAX - head || len != head + n) return DMOE_EPROTO;
    float codebook[CS_U8_BINS];
    for (int64_t i = 0; i < k; i++) {
        codebook[i] = cs_get_f32(in + 8 + 4 * i);
        if (!isfinite(codebook[i])) return DMOE_ENONFINITE;
    }
    const uint8_t *idx = in + 8 + 4 * (size_t)k;
    for (size_t i = 0; i < n; i++) {
        if (idx[i] >= k) return DMOE_EPROTO;
        out[i] = codebook[idx[i]];
    }
    return 0;
}

/* ---- BLOCKWISE_8BIT ----------------------------------------------------------------------------- */

/* cs_linspace returns point i of torch.linspace(start, end, steps) as torch computes it in float32:
 * the first half counts up from start, the second half down from end. */
static float cs_linspace(float start, float end, int steps, int i)
{
    float step = (end - start) / (float)(steps - 1);
    if (i < steps / 2) return start + step * (float)i;
    return end - step * (float)(steps - i - 1);
}

static int cs_cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* cs_dynamic_code fills code[256] with bitsandbytes' signed dynamic map, ascending: for each exponent
 * i = 0..6, the 2^i midpoints of linspace(0.1, 1, 2^i + 1) scaled by 10^(i-6), with both signs; then 0
 * and 1.0 (254 + 2 = 256 entries, so no zero padding is needed). */
static void cs_dynamic_code(float code[CS_U8_BINS])
{
    int k = 0;
    for (int i = 0; i < CS_DYN_EXP_BITS; i++) {
        int items = (1 << i) + 1;
        float scale = (float)pow(10.0, (double)(i - (CS_DYN_EXP_BITS - 1)));
        for (int j = 0; j + 1 < items; j++) {
            float mid = (cs_linspace(0.1f, 1.0f, items, j) + cs_linspace(0.1f, 1.0f, items, j + 1)) / 2.0f;
            code[k++] = scale * mid;
            code[k++] = -(scale * mid);
        }
    }
    code[k++] = 0.0f;
    code[k++] = 1.0f;
    qsort(code, CS_U8_BINS, sizeof code[0], cs_cmp_float);
}

/* cs_nearest returns the index of the entry of the ascending code nearest to v (ties: the lower). */
static int cs_nearest(const float code[CS_U8_BINS], float v)
{
    int lo = 0, hi = CS_U8_BINS - 1;
    if (v <= code[lo]) return lo;
    if (v >= code[hi]) return hi;
    while (hi - lo > 1) {                                   /* invariant: code[lo] < v <= code[hi] */
        int mid = (lo + hi) / 2;
        if (code[mid] < v) lo = mid;
        else hi = mid;
    }
    return (v - code[lo] <= code[hi] - v) ? lo : hi;
}

static void cs_blockwise_enc(const float *x, size_t n, uint8_t *out)
{
    float code[CS_U8_BINS];
    cs_dynamic_code(code);
    size_t nb = cs_blocks(n);
    uint8_t *absmax = out + 16, *codes = absmax + 4 * nb, *idx = codes + 4 * CS_U8_BINS;
    int zero = cs_nearest(code, 0.0f);
    cs_put_i64(out, (int64_t)nb);
    cs_put_i64(out + 8, CS_U8_BINS);
    for (size_t b = 0; b < nb; b++) {
        size_t lo = b * WIRE_BLOCKWISE_BLOCK, hi = lo + WIRE_BLOCKWISE_BLOCK < n ? lo + WIRE_BLOCKWISE_BLOCK : n;
        float am = 0.0f;
        for (size_t i = lo; i < hi; i++) am = fmaxf(am, fabsf(x[i]));
        for (size_t i = lo; i < hi; i++) idx[i] = (uint8_t)(am > 0.0f ? cs_nearest(code, x[i] / am) : zero);
        cs_put_f32(absmax + 4 * b, am);
    }
    for (int k = 0; k < CS_U8_BINS; k++) cs_put_f32(codes + 4 * k, code[k]);
}

static int cs_blockwise_dec(const uint8_t *in, size_t len, size_t n, float *out)
{
    size_t nb = cs_blocks(n);
    if (len < 16) return DMOE_EPROTO;
    int64_t hb = cs_get_i64(in), hk = cs_get_i64(in + 8);
    if (hb < 0 || (uint64_t)hb != (uint64_t)nb || hk != CS_U8_BINS) return DMOE_EPROTO;
    if (len != wire_compress_bound(WIRE_SCHEME_BLOCKWISE_8BIT, n)) return DMOE_EPROTO;
    const uint8_t *absmax = in + 16, *codes = absmax + 4 * nb, *idx = codes + 4 * CS_U8_BINS;
    float code[CS_U8_BINS];
    for (int k = 0; k < CS_U8_BINS; k++) {
        code[k] = cs_get_f32(codes + 4 * k);
        if (!isfinite(code[k])) return DMOE_ENONFINITE;
    }
    for (size_t b = 0; b < nb; b++) {
        float am = cs_get_f32(absmax + 4 * b);
        if (!isfinite(am) || am < 0.0f) return DMOE_ENONFINITE;
    }
    for (size_t b = 0; b < nb; b++) {
        float am = cs_get_f32(absmax + 4 * b);
        size_t lo = b * WIRE_BLOCKWISE_BLOCK, hi = lo + WIRE_BLOCKWISE_BLOCK < n ? lo + WIRE_BLOCKWISE_BLOCK : n;
        for (size_t i = lo; i < hi; i++) out[i] = code[idx[i]] * am;
    }
    return 0;
}

/* ---- entry points ------------------------------------------------------------------------------- */

int wire_compress_rows(wire_scheme scheme, const float *x, size_t n, size_t rows, uint8_t *out,
                       size_t *out_len)
{
    if (!wire_compress_name(scheme) || !out_len || (n > 0 && !x) || !cs_rows_ok(n, rows)) return DMOE_EINVAL;
    size_t need = wire_compress_bound_rows(scheme, n, rows);
    if (need == SIZE_MAX) return DMOE_ETOOBIG;
    if (need == 0) {                        /* nothing to write (n = 0 and no per-row statistics) */
        *out_len = 0;
        return 0;
    }
    if (!out) return DMOE_EINVAL;
    switch (scheme) {
    case WIRE_SCHEME_NONE:
        for (size_t i = 0; i < n; i++) cs_put_f32(out + 4 * i, x[i]);
        break;
    case WIRE_SCHEME_FLOAT16:
        cs_f16_enc(x, n, out);
        break;
    case WIRE_SCHEME_MEANSTD_16BIT:
        if (!cs_all_finite(x, n)) return DMOE_ENONFINITE;
        cs_meanstd_enc(x, n, rows, out);
        break;
    case WIRE_SCHEME_UNIFORM_8BIT:
        if (!cs_all_finite(x, n)) return DMOE_ENONFINITE;
        cs_uniform_enc(x, n, out);
        break;
    case WIRE_SCHEME_BLOCKWISE_8BIT:
        if (!cs_all_finite(x, n)) return DMOE_ENONFINITE;
        cs_blockwise_enc(x, n, out);
        break;
    }
    *out_len = need;
    return 0;
}

int wire_compress(wire_scheme scheme, const float *x, size_t n, uint8_t *out, size_t *out_len)
{
    return wire_compress_rows(scheme, x, n, 1, out, out_len);
}

int wire_compress_len_ok(wire_scheme scheme, size_t len, size_t n, size_t rows)
{
    if (scheme == WIRE_SCHEME_UNIFORM_8BIT)   /* 8 + 4K + n bytes, K in 1..256 */
        return len >= n && len - n >= 12 && len - n <= 8 + 4 * CS_U8_BINS && (len - n - 8) % 4 == 0;
    size_t exact = wire_compress_bound_rows(scheme, n, rows);
    return exact != SIZE_MAX && len == exact;
}

int wire_decompress_rows(wire_scheme scheme, const uint8_t *in, size_t len, size_t n, size_t rows,
                         float *out)
{
    if (!wire_compress_name(scheme) || (len > 0 && !in) || (n > 0 && !out) || !cs_rows_ok(n, rows))
        return DMOE_EINVAL;
    size_t exact = wire_compress_bound_rows(scheme, n, rows);
    switch (scheme) {
    case WIRE_SCHEME_NONE:
        if (exact == SIZE_MAX || len != exact) return DMOE_EPROTO;
        for (size_t i = 0; i < n; i++) out[i] = cs_get_f32(in + 4 * i);
        return 0;
    case WIRE_SCHEME_FLOAT16:
        if (exact == SIZE_MAX || len != exact) return DMOE_EPROTO;
        cs_f16_dec(in, n, out);
        return 0;
    case WIRE_SCHEME_MEANSTD_16BIT:
        if (exact == SIZE_MAX || len != exact) return DMOE_EPROTO;
        return cs_meanstd_dec(in, n, rows, out);
    case WIRE_SCHEME_UNIFORM_8BIT:
        return cs_uniform_dec(in, len, n, out);
    case WIRE_SCHEME_BLOCKWISE_8BIT:
        return cs_blockwise_dec(in, len, n, out);
    }
    return DMOE_EINVAL;
}

int wire_decompress(wire_scheme scheme, const uint8_t *in, size_t len, size_t n, float *out)
{
    return wire_decompress_rows(scheme, in, len, n, 1, out);
}
