/* kern_optim.h -- optimizers applied on the server after each batched backward (as hivemind does).
 *
 * Works on an expert's flat parameter and gradient buffers (kern_expert.h). The state (moments, step
 * count) belongs to the expert actor and is touched only by the job that runs the step, so no locking.
 *
 * Order: kern_optim_parse (or fill a cfg by hand) -> kern_optim_init -> kern_optim_step per backward ->
 * kern_optim_free.
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
/* kern_optim_step applies one step with learning rate lr to params given grads (both laid out as m's
 * flat buffer). grads may be modified (clipping). Returns the global gradient norm before clipping. */
float kern_optim_step(kern_optim *o, const kern_model *m, float *params, float *grads, float lr);

#endif
