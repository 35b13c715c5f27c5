/* kern_optim.h -- optimizers applied on the server after each batched backward (as hivemind does).
 *
 * Works on an expert's flat parameter and gradient buffers (kern_expert.h). The state (moments, step
 * count) belongs to the expert actor and is touched only by the job that runs the step, so no locking.
 *
 * Order: kern_optim_parse (or fill a cfg by hand) -> kern_optim_init -> kern_optim_step per backward ->
 * kern_optim_free.
 *
 * A step may also be taken in parts, on several threads, bit for bit as kern_optim_step takes it (the
 * expert actor does this across its worker pool):
 *   1. kern_optim_reduce over ranges of the buffer (any threads, disjoint ranges starting at multiples
 *      of KERN_OPTIM_BLOCK): sums the per-worker gradient buffers into the first, in their fixed order,
 *      says whether the sums are finite and, for clipping, writes each block's sum of squares;
 *   2. kern_optim_begin on one thread: the blocks' sums added in order give the norm exactly as
 *      kern_optim_step computes it; counts the step and returns its plan;
 *   3. kern_optim_apply over ranges (any threads, disjoint ranges) when kern_optim_elementwise says the
 *      update of each float depends on that float alone (none, sgd, adam); lamb's per-tensor norms need
 *      one call over the whole buffer.
 * The moments are written only by step 3, each float by the call whose range holds it.
 */
#ifndef DMOE_KERN_OPTIM_H
#define DMOE_KERN_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kern_expert.h"

typedef enum { KERN_OPT_NONE = 0, KERN_OPT_SGD, KERN_OPT_ADAM, KERN_OPT_LAMB } kern_optim_kind;

typedef struct {
    kern_optim_kind kind;
    float lr;              /* PyTorch defaults: sgd 0.01, adam 1e-3, lamb 1e-3 */
    float beta1, beta2;    /* adam/lamb: 0.9, 0.999 */
    float eps;             /* adam: 1e-8; lamb: 1e-6 */
    float weight_decay;    /* 0 */
    float clip_grad_norm;  /* 0: off; else the global L2 norm of the gradients is clipped to this */
} kern_optim_cfg;

typedef struct {
    kern_optim_cfg cfg;
    size_t n;              /* floats */
    int64_t step;          /* steps taken */
    float *m, *v;          /* adam/lamb moments (NULL otherwise), n floats each */
} kern_optim;

/* kern_optim_parse fills cfg with the PyTorch defaults of the optimizer named name
 * ("adam", "sgd", "lamb", "none"). Returns 0 or DMOE_EINVAL. */
int kern_optim_parse(const char *name, kern_optim_cfg *cfg);
/* kern_optim_name returns "adam", "sgd", ... for kind. */
const char *kern_optim_name(kern_optim_kind kind);
/* kern_optim_init allocates the state for n floats (moments zeroed). Returns 0 or DMOE_ENOMEM. */
int kern_optim_init(kern_optim *o, const kern_optim_cfg *cfg, size_t n);
/* kern_optim_free releases the moments; safe on a zeroed or already freed kern_optim. */
void kern_optim_free(kern_optim *o);
/* Floats per partial sum of squares: the norm is summed block by block in this order, so ranges that
 * start at multiples of it reproduce it exactly. */
#define KERN_OPTIM_BLOCK 4096

/* One step's coefficients, fixed by kern_optim_begin before any range is applied. */
typedef struct {
    float lr;
    int scaled;            /* clipping: the gradients are multiplied by scale first */
    float scale;
    float step_size, sqrt_bc2;   /* adam: lr / (1 - b1^t) and sqrt(1 - b2^t) for this step's t */
} kern_optim_plan;

/* kern_optim_elementwise returns 1 when the update of each float depends on that float alone (none, sgd,
 * adam: kern_optim_apply may take disjoint ranges on different threads), 0 for lamb. */
int kern_optim_elementwise(const kern_optim *o);
/* kern_optim_reduce adds the buffers g[1..ng-1] into g[0] over floats [i0, i1) (per float in that
 * order: ((g0 + g1) + g2) + ...; ng 1 adds nothing) and, when sumsq is not NULL, writes the sum of
 * squares of the result's block k (of KERN_OPTIM_BLOCK floats, counted from 0) to sumsq[k]. i0 must be
 * a multiple of KERN_OPTIM_BLOCK. Returns 1 when every float of the result is finite, else 0. Touches
 * only those ranges: disjoint ranges may run on different threads. */
int kern_optim_reduce(float *const *g, int ng, size_t i0, size_t i1, double *sumsq);
/* kern_optim_begin counts one step of o and fills *p: learning rate lr, clipping from sumsq (the sum of
 * squares of all gradients: the block sums of kern_optim_reduce added in block order; pass anything
 * when clip_grad_norm is 0), adam's bias corrections. Returns the gradients' norm, sqrt(sumsq). */
float kern_optim_begin(kern_optim *o, float lr, double sumsq, kern_optim_plan *p);
/* kern_optim_apply applies the step planned in p to floats [i0, i1) of params, given grads (which are
 * scaled in place when clipping). lamb updates whole tensors: call it once with 0, n. */
void kern_optim_apply(kern_optim *o, const kern_model *m, const kern_optim_plan *p, float *params, float *grads,
                      size_t i0, size_t i1);
/* kern_optim_step applies one step with learning rate lr to params given grads (both laid out as m's
 * flat buffer). grads may be modified (clipping). Returns the global gradient norm before clipping.
 * The same as kern_optim_begin with the sum of squares of grads, then kern_optim_apply over 0..n. */
float kern_optim_step(kern_optim *o, const kern_model *m, float *params, float *grads, float lr);

#endif
