/* kern_ops.c -- Linear, GELU (tanh form), ReLU and LayerNorm with their backwards (see kern_ops.h).
 *
 * Pure functions over caller-owned row-major buffers: nothing is allocated, nothing is global, so any
 * worker thread may call them concurrently. OpenBLAS does the matrix products; it runs single-threaded
 * inside each pool worker (the pool, not BLAS, provides the parallelism).
 *
 * Where the time goes: at batch 1024 and hidden 512 the GEMMs are ~99% of the arithmetic, so every
 * other pass must be a single sweep that the compiler turns into SIMD code.
 *   - Linear: the bias is broadcast into y first and the GEMM accumulates onto it (beta = 1), which
 *     costs one streaming write of y and no extra read pass. A single row (B == 1) goes through
 *     cblas_sgemv, which avoids the GEMM's packing of W (measured faster at B == 1).
 *   - GELU: libm's tanhf is a scalar call of ~20 ns, which alone would cost as much as a third of the
 *     GEMM time. Instead gelu(x) = x * sigmoid(2u), with e^v from a branch-free Cody-Waite reduction
 *     and a degree-6 polynomial (relative error ~1e-7), written with GCC/Clang vector extensions: 4
 *     lanes on the baseline ISA, 8 lanes with FMA when the CPU has AVX2 (picked at run time). At
 *     B = 1024, H = 512 this brings the whole ffn forward to ~94% of the plain sgemm FLOP rate.
 *   - LayerNorm: per row, mean and variance are summed in double (two passes over a row that is in L1),
 *     then one pass normalises. Biased variance, eps inside the square root, as torch.nn.LayerNorm.
 */
#include "kernels/kern_ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "runtime/rt_moments.h"

/* ---------------------------------------------------------------- Linear */

void kern_linear_fwd(const float *x, int64_t B, int64_t in, const float *W, const float *b, int64_t out,
                     float *y)
{
    if (B <= 0 || out <= 0) return;
    if (in <= 0) {
        for (int64_t i = 0; i < B; i++) {
            if (b) memcpy(y + i * out, b, (size_t)out * sizeof *y);
            else memset(y + i * out, 0, (size_t)out * sizeof *y);
        }
        return;
    }
    float beta = 0.0f;
    if (b) {
        for (int64_t i = 0; i < B; i++) memcpy(y + i * out, b, (size_t)out * sizeof *y);
        beta = 1.0f;
    }
    if (B == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)out, (int)in, 1.0f, W, (int)in, x, 1, beta, y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)B, (int)out, (int)in, 1.0f, x, (int)in, W,
                    (int)in, beta, y, (int)out);
}

void kern_linear_bwd(const float *x, const float *gy, int64_t B, int64_t in, int64_t out, const float *W,
                     float *gx, float *gW, float *gb)
{
    if (B <= 0 || in <= 0 || out <= 0) {
        if (gW && in > 0 && out > 0) memset(gW, 0, (size_t)(out * in) * sizeof *gW);
        if (gb && out > 0) memset(gb, 0, (size_t)out * sizeof *gb);
        if (gx && B > 0 && in > 0) memset(gx, 0, (size_t)(B * in) * sizeof *gx);
        return;
    }
    if (gW) {
        if (B == 1) {
            memset(gW, 0, (size_t)(out * in) * sizeof *gW);
            cblas_sger(CblasRowMajor, (int)out, (int)in, 1.0f, gy, 1, x, 1, gW, (int)in);
        } else
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)out, (int)in, (int)B, 1.0f, gy, (int)out,
                        x, (int)in, 0.0f, gW, (int)in);
    }
    if (gb) {
        memcpy(gb, gy, (size_t)out * sizeof *gb);
        for (int64_t i = 1; i < B; i++) {
            const float *row = gy + i * out;
            for (int64_t j = 0; j < out; j++) gb[j] += row[j];
        }
    }
    if (gx) {
        if (B == 1)
            cblas_sgemv(CblasRowMajor, CblasTrans, (int)out, (int)in, 1.0f, W, (int)in, gy, 1, 0.0f, gx, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)B, (int)in, (int)out, 1.0f, gy, (int)out,
                        W, (int)in, 0.0f, gx, (int)in);
    }
}

/* ---------------------------------------------------------------- GELU (tanh form) */

/* 0.5 (1 + tanh(u)) is the logistic function of 2u, so gelu(x) = x / (1 + e^(-2u)) with
 * u = sqrt(2/pi) (x + 0.044715 x^3), and gelu'(x) = s + 2 x s (1 - s) du/dx with s = 1 / (1 + e^(-2u))
 * (the same as the tanh form's 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx). u is clamped to +-9, where s is
 * 0 or 1 to float precision, so e^(-2u) stays finite; NaN lanes fail both comparisons and stay NaN.
 * e^v for v = -2u in [-18, 18]: v = n ln2 + r with |r| <= ln2/2 (Cody-Waite, two-part ln2), e^r by a
 * degree-6 polynomial (the classic Cephes expf coefficients), 2^n from the exponent bits.
 *
 * The block is written once, as a macro over the vector type, and instantiated twice: 4 lanes for
 * the baseline ISA (SSE2 on x86-64; GCC scalarises wider generic vectors badly there) and, on x86-64,
 * 8 lanes inside a target("avx2,fma") function chosen at run time when the CPU has both. Vectors are
 * only ever locals, never arguments, so no ISA-dependent calling convention is involved. */
#define OPS_SQRT_2_OVER_PI 0.7978845608028654f
#define OPS_GELU_C 0.044715f

/* OPS_GELU_BLOCK(VF, VI, xp, gyp, bwd, outp): one block of sizeof(VF)/4 floats; outp = gelu(xp) when
 * bwd is 0, else outp = gyp * gelu'(xp) (gyp is only read when bwd is 1). */
#define OPS_GELU_BLOCK(VF, VI, xp, gyp, bwd, outp)                                                                 \
    do {                                                                                                     \
        VF x_, gy_, out_;                                                                                    \
        memcpy(&x_, (xp), sizeof x_);                                                                        \
        VF u_ = OPS_SQRT_2_OVER_PI * x_ * (1.0f + OPS_GELU_C * x_ * x_);                                     \
        VI hi_ = u_ > 9.0f, lo_ = u_ < -9.0f;                                                                \
        u_ = (VF)(((VI)u_ & ~(hi_ | lo_)) | (hi_ & 0x41100000) | (lo_ & (int32_t)0xC1100000)); /* +-9.0f */ \
        VF v_ = -2.0f * u_;                                                                                  \
        VF n_ = (v_ * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */              \
        VF r_ = v_ - n_ * 0.693359375f - n_ * -2.12194440e-4f;                                              \
        VF p_ = 1.9875691500e-4f * r_ + 1.3981999507e-3f;                                                    \
        p_ = p_ * r_ + 8.3334519073e-3f;                                                                     \
        p_ = p_ * r_ + 4.1665795894e-2f;                                                                     \
        p_ = p_ * r_ + 1.6666665459e-1f;                                                                     \
        p_ = p_ * r_ + 5.0000001201e-1f;                                                                     \
        p_ = p_ * (r_ * r_) + r_ + 1.0f;                                                                     \
        VI scale_ = (__builtin_convertvector(n_, VI) + 127) << 23;                                           \
        VF s_ = 1.0f / (1.0f + p_ * (VF)scale_);                                                             \
        if (!(bwd)) {                                                                                        \
            out_ = x_ * s_;                                                                                  \
        } else {                                                                                             \
            memcpy(&gy_, (gyp), sizeof gy_);                                                                 \
            VF du_ = OPS_SQRT_2_OVER_PI * (1.0f + (3.0f * OPS_GELU_C) * x_ * x_);                            \
            out_ = gy_ * (s_ + 2.0f * x_ * s_ * (1.0f - s_) * du_);                                          \
        }                                                                                                    \
        memcpy((outp), &out_, sizeof out_);                                                                  \
    } while (0)

/* OPS_GELU_RUN(VF, VI, LANES): the loop over n floats; the tail goes through a zero-padded block, so
 * every element gets the same arithmetic wherever it sits. */
#define OPS_GELU_RUN(VF, VI, LANES)                                                                          \
    do {                                                                                                     \
        size_t i_ = 0;                                                                                       \
        int bwd_ = gy != NULL;                                                                               \
        for (; i_ + (LANES) <= n; i_ += (LANES)) OPS_GELU_BLOCK(VF, VI, x + i_, bwd_ ? gy + i_ : x, bwd_, out + i_); \
        if (i_ < n) {                                                                                        \
            float xt_[LANES] = {0}, gt_[LANES] = {0}, ot_[LANES];                                           \
            memcpy(xt_, x + i_, (n - i_) * sizeof *x);                                                       \
            if (bwd_) memcpy(gt_, gy + i_, (n - i_) * sizeof *gy);                                           \
            OPS_GELU_BLOCK(VF, VI, xt_, gt_, bwd_, ot_);                                                     \
            memcpy(out + i_, ot_, (n - i_) * sizeof *out);                                                   \
        }                                                                                                    \
    } while (0)

typedef float ops_v4f __attribute__((vector_size(16)));
typedef int32_t ops_v4i __attribute__((vector_size(16)));

/* ops_gelu_base: out = gelu(x) (gy NULL) or gy * gelu'(x), baseline ISA. */
static void ops_gelu_base(const float *x, const float *gy, float *out, size_t n)
{
    OPS_GELU_RUN(ops_v4f, ops_v4i, 4);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define OPS_HAVE_AVX2 1
typedef float ops_v8f __attribute__((vector_size(32)));
typedef int32_t ops_v8i __attribute__((vector_size(32)));

/* ops_gelu_avx2: ops_gelu_base for CPUs with AVX2 and FMA (checked by ops_gelu). */
__attribute__((target("avx2,fma"))) static void ops_gelu_avx2(const float *x, const float *gy, float *out, size_t n)
{
    OPS_GELU_RUN(ops_v8f, ops_v8i, 8);
}
#endif

static void ops_gelu(const float *x, const float *gy, float *out, size_t n)
{
#ifdef OPS_HAVE_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        ops_gelu_avx2(x, gy, out, n);
        return;
    }
#endif
    ops_gelu_base(x, gy, out, n);
}

void kern_gelu_tanh_fwd(const float *x, float *y, size_t n)
{
    ops_gelu(x, NULL, y, n);
}

void kern_gelu_tanh_bwd(const float *x, const float *gy, float *gx, size_t n)
{
    ops_gelu(x, gy, gx, n);
}

/* ---------------------------------------------------------------- ReLU */

void kern_relu_fwd(const float *x, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void kern_relu_bwd(const float *x, const float *gy, float *gx, size_t n)
{
    for (size_t i = 0; i < n; i++) gx[i] = x[i] > 0.0f ? gy[i] : 0.0f;
}

/* ---------------------------------------------------------------- LayerNorm */

void kern_layernorm_fwd(const float *x, int64_t B, int64_t H, const float *g, const float *b, float eps,
                        float *y, float *mean, float *rstd)
{
    if (H <= 0) return;
    for (int64_t i = 0; i < B; i++) {
        const float *xr = x + i * H;
        float *yr = y + i * H;
        double ss;
        float mu = rt_row_moments(xr, (size_t)H, &ss);
        float rs = (float)(1.0 / sqrt(ss / (double)H + (double)eps));
        for (int64_t j = 0; j < H; j++) yr[j] = (xr[j] - mu) * rs * g[j] + b[j];
        if (mean) mean[i] = mu;
        if (rstd) rstd[i] = rs;
    }
}

void kern_layernorm_bwd(const float *x, const float *gy, int64_t B, int64_t H, const float *g,
                        const float *mean, const float *rstd, float *gx, float *gg, float *gb)
{
    if (H <= 0) return;
    memset(gg, 0, (size_t)H * sizeof *gg);
    memset(gb, 0, (size_t)H * sizeof *gb);
    /* With xhat = (x - mean) rstd and d = gy * g: gx = rstd (d - mean(d) - xhat mean(d xhat)). Every
     * gy element of a row is read before the row's gx is written, so gx may alias gy. */
    for (int64_t i = 0; i < B; i++) {
        const float *xr = x + i * H, *gr = gy + i * H;
        float *gxr = gx + i * H;
        float mu = mean[i], rs = rstd[i];
        float sd = 0.0f, sdx = 0.0f;
        for (int64_t j = 0; j < H; j++) {
            float xh = (xr[j] - mu) * rs;
            float d = gr[j] * g[j];
            gg[j] += gr[j] * xh;
            gb[j] += gr[j];
            sd += d;
            sdx += d * xh;
        }
        float md = sd / (float)H, mdx = sdx / (float)H;
        for (int64_t j = 0; j < H; j++) {
            float xh = (xr[j] - mu) * rs;
            gxr[j] = rs * (gr[j] * g[j] - md - xh * mdx);
        }
    }
}

/* ---------------------------------------------------------------- checks */

int kern_all_finite(const float *x, size_t n)
{
    /* A float is NaN or Inf exactly when its exponent bits are all ones. The inner block has no early
     * exit, so it vectorises; the check between blocks keeps the exit prompt. */
    const size_t block = 1024;
    for (size_t start = 0; start < n; start += block) {
        size_t end = n - start < block ? n : start + block;
        uint32_t bad = 0;
        for (size_t i = start; i < end; i++) {
            uint32_t u;
            memcpy(&u, x + i, sizeof u);
            bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
        }
        if (bad) return 0;
    }
    return 1;
}
