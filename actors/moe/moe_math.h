/* moe_math.h -- the Mixture-of-Experts layer's arithmetic: pure functions on buffers.
 *
 * Everything the layer (moe.c, moe_call.c) computes, as opposed to waits for: the gating projection and
 * the switch layer's per-dimension softmax, one sample's mixing weights and output, the switch layer's
 * utilisation average and load-balancing loss, and the backward of each of them. No I/O, no clock, no
 * random draws (the layer draws the jitter and the dropout mask and hands them in), no allocation: the
 * caller owns every buffer. moe_math_gating and moe_math_gating_bwd, the two GEMMs, run on a worker
 * thread (the layer hands them buffers nothing else touches meanwhile); the rest run on the loop.
 *
 * Layout. The gating output has sum(grid) columns, the scores of dimension d at off[d] .. off[d] +
 * grid[d] - 1 (a moe_grid). An expert is its coordinates c[0..ndim); its logit is the sum of its
 * coordinates' scores in dimension order, its switch weight the product of its coordinates'
 * probabilities. A sample's slots 0..k-1 are the experts the beam search chose for it; coords holds
 * slot j's coordinates at j * ndim, ok[j] says whether it answered.
 *
 * The formulas are hivemind's (RemoteMixtureOfExperts, RemoteSwitchMixtureOfExperts), in float with
 * the sums hivemind's autograd would need in double where noted; the order of every sum is fixed, so
 * results are reproducible bit for bit.
 */
#ifndef DMOE_MOE_MATH_H
#define DMOE_MOE_MATH_H

#include <stdint.h>

#include "actors/moe/route/moe_beam.h"

/* The shape of a grid's gating output. */
typedef struct {
    int ndim;
    int grid[MOE_MAX_DIMS];
    int off[MOE_MAX_DIMS];   /* off[d]: the first column of dimension d */
    int total;               /* sum(grid): the columns */
} moe_grid;

/* moe_grid_init fills g from grid[0..ndim). */
void moe_grid_init(moe_grid *g, const int *grid, int ndim);

/* moe_math_gating computes the scores S[B, total] = xg[B, in] W[total, in]^T + b. With P (the switch
 * layer) it then drops the columns whose keep[t] is 0 (keep NULL: none; a dropped score becomes -inf in
 * S) and writes per dimension P = softmax(S) (0 for a dropped column, all 0 when a dimension lost
 * every column). */
void moe_math_gating(const moe_grid *g, const float *xg, int64_t B, int in, const float *W, const float *b,
                     const uint8_t *keep, float *S, float *P);

/* moe_math_weights writes one sample's mixing weights w[0..k): 0 for a slot that did not answer; else,
 * with p NULL, softmax over the answering slots of their logits (from the sample's scores s[total]);
 * with p (switch), the product of the slot's probabilities p[total], not renormalised. Returns how many
 * slots answered. */
int moe_math_weights(const moe_grid *g, const float *s, const float *p, int k, const int *coords,
                     const uint8_t *ok, float *w);

/* moe_math_mix adds to one sample's output y[D] w[j] * out[j][0..D) for every slot j with out[j] not
 * NULL and w[j] not 0, in slot order, then the residual x[D] when x is not NULL. */
void moe_math_mix(int k, const float *w, const float *const *out, int D, const float *x, float *y);

/* moe_math_util_update folds a batch's per-coordinate row counts count[total] (rows sent to answering
 * experts with that coordinate) into the utilisation average: util = alpha util + (1 - alpha) count
 * normalised to sum 1 per dimension (0 where a dimension counted nothing). */
void moe_math_util_update(const moe_grid *g, const float *count, float alpha, float *util);

/* moe_math_balancing_loss returns the switch layer's load-balancing loss: per dimension of size G,
 * G * sum_i mean_b(P[b, i]) util[i], summed over the dimensions. */
float moe_math_balancing_loss(const moe_grid *g, const float *P, int64_t B, const float *util);

/* moe_math_slot_grads adds one sample's gradients with respect to its gating values, given the output
 * gradient gy[D], the output y[D] and the slots' outputs out[j] (NULL: did not answer) and weights w[j].
 * With P NULL (softmax mixing) it adds d loss / d score to gs[total]; with p (switch: the sample's
 * probabilities) it adds d loss / d probability to gp[total]. */
void moe_math_slot_grads(const moe_grid *g, const float *gy, const float *y, int D, int k, const float *const *out,
                         const float *w, const int *coords, const float *p, float *gs, float *gp);

/* moe_math_switch_bwd finishes one switch sample: adds the balancing loss's gradient (coef * G *
 * util[i] / B per column) to gp[total], then writes the per-dimension softmax backward into gs[total]. */
void moe_math_switch_bwd(const moe_grid *g, const float *p, const float *util, float coef, int64_t B, float *gp,
                         float *gs);

/* moe_math_gating_bwd is the gating projection's backward: from gS[B, total] it writes the weight
 * gradients gW[total, in] and gb[total], and adds the gating input's gradient to gx[B, in], multiplied
 * by the jitter factors noise[B, in] when noise is not NULL; gxg[B, in] is scratch. */
void moe_math_gating_bwd(const moe_grid *g, const float *xg, const float *gS, int64_t B, int in, const float *W,
                         const float *noise, float *gW, float *gb, float *gx, float *gxg);

#endif
