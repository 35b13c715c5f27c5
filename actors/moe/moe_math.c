/* moe_math.c -- the Mixture-of-Experts layer's arithmetic (see moe_math.h).
 *
 * Plain loops over caller-owned buffers plus the two gating GEMMs of kern_ops. The evaluation order of
 * every expression is part of the contract (results are compared bit for bit across versions), so a
 * sum written as a double stays a double and a product keeps its order.
 */
#include "actors/moe/moe_math.h"

#include <math.h>
#include <stddef.h>

#include "kernels/kern_ops.h"

void moe_grid_init(moe_grid *g, const int *grid, int ndim)
{
    g->ndim = ndim;
    g->total = 0;
    for (int d = 0; d < ndim; d++) {
        g->grid[d] = grid[d];
        g->off[d] = g->total;
        g->total += grid[d];
    }
}

void moe_math_gating(const moe_grid *g, const float *xg, int64_t B, int in, const float *W, const float *b,
                     const uint8_t *keep, float *S, float *P)
{
    int T = g->total;
    kern_linear_fwd(xg, B, in, W, b, T, S);
    if (!P) return;
    for (int64_t r = 0; r < B; r++) {
        for (int d = 0; d < g->ndim; d++) {
            float *s = S + r * T + g->off[d], *p = P + r * T + g->off[d];
            int G = g->grid[d];
            float mx = -INFINITY;
            for (int i = 0; i < G; i++) {
                if (keep && !keep[g->off[d] + i]) s[i] = -INFINITY;
                if (s[i] > mx) mx = s[i];
            }
            double z = 0;
            for (int i = 0; i < G; i++) z += (p[i] = isinf(s[i]) ? 0.0f : expf(s[i] - mx));
            for (int i = 0; i < G; i++) p[i] = z > 0 ? (float)(p[i] / z) : 0.0f;
        }
    }
}

int moe_math_weights(const moe_grid *g, const float *s, const float *p, int k, const int *coords,
                     const uint8_t *ok, float *w)
{
    float logit[MOE_MAX_BEAM];
    float mx = -INFINITY;
    int answered = 0;
    for (int j = 0; j < k; j++) {
        const int *c = coords + (size_t)j * (size_t)g->ndim;
        w[j] = 0;
        if (!ok[j]) continue;
        answered++;
        if (p) {
            float prod = 1;
            for (int d = 0; d < g->ndim; d++) prod *= p[g->off[d] + c[d]];
            w[j] = prod;
        } else {
            float l = 0;
            for (int d = 0; d < g->ndim; d++) l += s[g->off[d] + c[d]];
            logit[j] = l;
            if (l > mx) mx = l;
        }
    }
    if (answered && !p) {
        double z = 0;
        for (int j = 0; j < k; j++)
            if (ok[j]) z += (w[j] = expf(logit[j] - mx));
        for (int j = 0; j < k; j++) w[j] = (float)(w[j] / z);
    }
    return answered;
}

void moe_math_mix(int k, const float *w, const float *const *out, int D, const float *x, float *y)
{
    for (int j = 0; j < k; j++) {
        if (!out[j] || w[j] == 0) continue;
        for (int d = 0; d < D; d++) y[d] += w[j] * out[j][d];
    }
    if (x)
        for (int d = 0; d < D; d++) y[d] += x[d];
}

void moe_math_util_update(const moe_grid *g, const float *count, float alpha, float *util)
{
    for (int d = 0; d < g->ndim; d++) {
        const float *c = count + g->off[d];
        float *u = util + g->off[d];
        double s = 0;
        for (int i = 0; i < g->grid[d]; i++) s += c[i];
        for (int i = 0; i < g->grid[d]; i++) {
            float v = s > 0 ? (float)(c[i] / s) : 0.0f;
            u[i] = alpha * u[i] + (1 - alpha) * v;
        }
    }
}

float moe_math_balancing_loss(const moe_grid *g, const float *P, int64_t B, const float *util)
{
    int T = g->total;
    double bal = 0;
    for (int d = 0; d < g->ndim; d++) {
        int G = g->grid[d];
        double s = 0;
        for (int i = 0; i < G; i++) {
            double pm = 0;
            for (int64_t b = 0; b < B; b++) pm += P[b * T + g->off[d] + i];
            s += pm / (double)B * util[g->off[d] + i];
        }
        bal += s / G * (double)G * (double)G;
    }
    return (float)bal;
}

void moe_math_slot_grads(const moe_grid *g, const float *gy, const float *y, int D, int k, const float *const *out,
                         const float *w, const int *coords, const float *p, float *gs, float *gp)
{
    double gyy = 0;
    for (int d = 0; d < D; d++) gyy += (double)gy[d] * y[d];
    for (int j = 0; j < k; j++) {
        if (!out[j]) continue;
        const int *c = coords + (size_t)j * (size_t)g->ndim;
        double go = 0;
        for (int d = 0; d < D; d++) go += (double)gy[d] * out[j][d];
        if (!p) {   /* softmax: d loss / d logit_j = w_j (gy . out_j - gy . y) */
            float gl = (float)(w[j] * (go - gyy));
            for (int d = 0; d < g->ndim; d++) gs[g->off[d] + c[d]] += gl;
        } else {    /* switch: w_j is the product of the coordinates' probabilities */
            for (int d = 0; d < g->ndim; d++) {
                float others = 1;
                for (int q = 0; q < g->ndim; q++)
                    if (q != d) others *= p[g->off[q] + c[q]];
                gp[g->off[d] + c[d]] += (float)go * others;
            }
        }
    }
}

void moe_math_switch_bwd(const moe_grid *g, const float *p, const float *util, float coef, int64_t B, float *gp,
                         float *gs)
{
    for (int d = 0; d < g->ndim; d++) {
        int G = g->grid[d], o = g->off[d];
        double dot = 0;
        for (int i = 0; i < G; i++) {
            gp[o + i] += coef * (float)G * util[o + i] / (float)B;
            dot += (double)p[o + i] * gp[o + i];
        }
        for (int i = 0; i < G; i++) gs[o + i] = p[o + i] * (float)(gp[o + i] - dot);
    }
}

void moe_math_gating_bwd(const moe_grid *g, const float *xg, const float *gS, int64_t B, int in, const float *W,
                         const float *noise, float *gW, float *gb, float *gx, float *gxg)
{
    kern_linear_bwd(xg, gS, B, in, g->total, W, gxg, gW, gb);
    size_t n = (size_t)B * (size_t)in;
    for (size_t i = 0; i < n; i++) gx[i] += noise ? gxg[i] * noise[i] : gxg[i];
}
