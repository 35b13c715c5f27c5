/* kern_sched.c -- the learning-rate schedules "none" and "linear" (see kern_sched.h).
 *
 * "linear" is transformers' get_linear_schedule_with_warmup as LambdaLR evaluates it: the multiplier
 * rises linearly from 0 at step 0 to 1 at step num_warmup_steps, then falls linearly to 0 at
 * num_total_steps and stays there. The max(1, ...) guards are transformers' own, so a zero warm-up or a
 * total equal to the warm-up divides by 1 instead of 0. Pure: no state, no I/O.
 */
#include "kernels/kern_sched.h"

#include <string.h>

#include "runtime/rt_err.h"

int kern_sched_parse(const char *name, kern_sched_cfg *cfg)
{
    if (!name || !cfg) return DMOE_EINVAL;
    kern_sched_cfg c;
    memset(&c, 0, sizeof c);
    if (strcmp(name, "none") == 0)
        c.kind = KERN_SCHED_NONE;
    else if (strcmp(name, "linear") == 0)
        c.kind = KERN_SCHED_LINEAR;
    else
        return DMOE_EINVAL;
    *cfg = c;
    return 0;
}

const char *kern_sched_name(kern_sched_kind kind)
{
    switch (kind) {
    case KERN_SCHED_NONE: return "none";
    case KERN_SCHED_LINEAR: return "linear";
    }
    return NULL;
}

int kern_sched_check(const kern_sched_cfg *cfg)
{
    if (!cfg) return DMOE_EINVAL;
    switch (cfg->kind) {
    case KERN_SCHED_NONE: return 0;
    case KERN_SCHED_LINEAR:
        if (cfg->num_warmup_steps < 0 || cfg->num_total_steps < 1) return DMOE_EINVAL;
        return 0;
    }
    return DMOE_EINVAL;
}

/* ks_max1 returns max(1, v), transformers' guard against dividing by zero. */
static double ks_max1(double v)
{
    return v < 1.0 ? 1.0 : v;
}

double kern_sched_factor(const kern_sched_cfg *cfg, int64_t step)
{
    if (!cfg || cfg->kind != KERN_SCHED_LINEAR) return 1.0;
    if (step < 0) step = 0;
    int64_t warm = cfg->num_warmup_steps, total = cfg->num_total_steps;
    if (step < warm) return (double)step / ks_max1((double)warm);
    /* differences in double: the counts are user input, so int64 subtraction could overflow */
    double f = ((double)total - (double)step) / ks_max1((double)total - (double)warm);
    return f > 0.0 ? f : 0.0;
}

float kern_sched_lr(const kern_sched_cfg *cfg, float base_lr, int64_t step)
{
    return (float)((double)base_lr * kern_sched_factor(cfg, step));
}
