/* kern_ops.h -- the building blocks the expert architectures are made of: Linear (through OpenBLAS
 * cblas_sgemm), GELU (tanh form), ReLU, LayerNorm, each with its backward.
 *
 * Pure functions on caller-owned row-major float buffers; no allocation, no threads of their own (the
 * pool runs OpenBLAS single-threaded inside each worker). Gradients are written, never accumulated,
 * unless the name says _acc.
 */
#ifndef DMOE_KERN_OPS_H
#define DMOE_KERN_OPS_H

#include <stddef.h>
#include <stdint.h>

/* KERN_AVX2_CLONE before an elementwise loop that divisions or square roots bound (Adam): on x86-64
 * the compiler also makes an AVX2 copy, twice the lanes of the SSE2 baseline, and the loader picks it
 * where the CPU has AVX2 (target_clones, an ifunc). Each element sees the same operations in the same
 * order (AVX2 brings no FMA, and -std=c11 contracts nothing), so the results are the baseline's bit for
 * bit. (GELU in kern_ops.c picks its AVX2+FMA copy by hand: its copies are written for two vector
 * widths, and it approximates anyway.) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(DMOE_NO_CLONES)
#define KERN_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define KERN_AVX2_CLONE
#endif

/* kern_linear_fwd: y[B,out] = x[B,in] @ W[out,in]^T + b[out] (b may be NULL). */
void kern_linear_fwd(const float *x, int64_t B, int64_t in, const float *W, const float *b, int64_t out,
                     float *y);
/* kern_linear_bwd: given gy[B,out], writes gW[out,in] = gy^T @ x, gb[out] = sum over rows of gy
 * (gb may be NULL), and gx[B,in] = gy @ W (gx may be NULL). x is read only for gW, W only for gx;
 * each result comes from its own BLAS call, whichever others are asked for. */
void kern_linear_bwd(const float *x, const float *gy, int64_t B, int64_t in, int64_t out, const float *W,
                     float *gx, float *gW, float *gb);

/* kern_gelu_tanh_fwd: y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), n elements; y may be x. */
void kern_gelu_tanh_fwd(const float *x, float *y, size_t n);
/* kern_gelu_tanh_bwd: gx = gy * gelu'(x); gx may alias gy. */
void kern_gelu_tanh_bwd(const float *x, const float *gy, float *gx, size_t n);

/* kern_relu_fwd / kern_relu_bwd: y = max(x, 0); gx = gy where x > 0, else 0. */
void kern_relu_fwd(const float *x, float *y, size_t n);
void kern_relu_bwd(const float *x, const float *gy, float *gx, size_t n);

/* kern_layernorm_fwd: per row of x[B,H], y = (x - mean) * rstd * g + b with rstd = 1/sqrt(var + eps)
 * (biased variance, as PyTorch). Saves mean[B] and rstd[B] for the backward (either may be NULL when
 * no backward follows). y may alias x. */
void kern_layernorm_fwd(const float *x, int64_t B, int64_t H, const float *g, const float *b, float eps,
                        float *y, float *mean, float *rstd);
/* kern_layernorm_bwd: from the forward's x, mean, rstd and gy, writes gx[B,H] (may alias gy),
 * gg[H] and gb[H] (overwritten). */
void kern_layernorm_bwd(const float *x, const float *gy, int64_t B, int64_t H, const float *g,
                        const float *mean, const float *rstd, float *gx, float *gg, float *gb);

/* kern_all_finite returns 1 when none of the n floats is NaN or +-Inf. */
int kern_all_finite(const float *x, size_t n);

#endif
