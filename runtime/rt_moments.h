/* rt_moments.h -- the mean and spread of a row of floats, the one way the tree computes them: the
 * LayerNorm kernels (kernels/kern_ops.c) and the mean/std compression codec (wire/codec/wire_compress.c)
 * both normalise rows by it, and both must round exactly as PyTorch-checked vectors expect.
 *
 * Header only (inline); no state, any thread.
 */
#ifndef DMOE_RT_MOMENTS_H
#define DMOE_RT_MOMENTS_H

#include <stddef.h>

/* rt_row_moments returns the mean of x[0..n) (summed in double, then rounded to float) and sets *ss to
 * the sum of the squared deviations from that float mean, in double. n must be positive. */
static inline float rt_row_moments(const float *x, size_t n, double *ss)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += x[i];
    float mean = (float)(s / (double)n);
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        float d = x[i] - mean;
        acc += (double)d * d;
    }
    *ss = acc;
    return mean;
}

#endif
