/* kern_sched.h -- learning-rate schedules for the server-side optimizer, as hivemind's --scheduler.
 *
 * hivemind offers "none" (a constant learning rate) and "linear" (transformers'
 * get_linear_schedule_with_warmup wrapped in torch's LambdaLR). The schedule is a pure function of the
 * number of optimizer steps already taken, so it needs no state of its own: the step count lives in the
 * optimizer (kern_optim.step) and travels with its checkpoints.
 *
 * Step numbering, matching LambdaLR: the scheduler is built before any step, which sets the rate to
 * base_lr * lambda(0); hivemind then runs optimizer.step() followed by scheduler.step() after each
 * batched backward. So the k-th optimizer step (k = 0, 1, 2, ...) uses kern_sched_lr(cfg, base_lr, k),
 * where k is the number of steps taken before it. With warm-up the very first step uses rate 0.
 *
 * Order: kern_sched_parse (or fill a cfg by hand) -> kern_sched_check -> kern_sched_lr per step.
 * Pure functions; safe from any thread.
 */
#ifndef DMOE_KERN_SCHED_H
#define DMOE_KERN_SCHED_H

#include <stdint.h>

typedef enum { KERN_SCHED_NONE = 0, KERN_SCHED_LINEAR } kern_sched_kind;

typedef struct {
    kern_sched_kind kind;
    int64_t num_warmup_steps;   /* linear: steps of linear warm-up from 0 to base_lr (hivemind's flag) */
    int64_t num_total_steps;    /* linear: the step at which the rate has decayed to 0 (num_training_steps) */
} kern_sched_cfg;

/* kern_sched_parse fills cfg for the schedule named name ("none" or "linear") with zero step counts
 * (set them before kern_sched_check). Returns 0 or DMOE_EINVAL (unknown name; cfg untouched). */
int kern_sched_parse(const char *name, kern_sched_cfg *cfg);
/* kern_sched_name returns "none" or "linear" for kind, NULL for anything else. */
const char *kern_sched_name(kern_sched_kind kind);
/* kern_sched_check returns 0 when cfg is usable, DMOE_EINVAL otherwise: an unknown kind, or for
 * "linear" a negative step count or num_total_steps < 1 (hivemind requires both counts for it). */
int kern_sched_check(const kern_sched_cfg *cfg);
/* kern_sched_factor returns LambdaLR's multiplier lambda(step) for step >= 0 optimizer steps already
 * taken (negative steps count as 0): "none" 1; "linear" step / max(1, warmup) while step < warmup,
 * then max(0, (total - step) / max(1, total - warmup)). Computed in double, as Python does. */
double kern_sched_factor(const kern_sched_cfg *cfg, int64_t step);
/* kern_sched_lr returns the learning rate of the optimizer step taken after step earlier steps:
 * base_lr * kern_sched_factor(cfg, step), rounded once to float. */
float kern_sched_lr(const kern_sched_cfg *cfg, float base_lr, int64_t step);

#endif
