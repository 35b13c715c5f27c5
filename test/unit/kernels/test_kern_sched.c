/* test_kern_sched.c -- kernels/kern_sched.c: the "linear" schedule (warm-up 3, total 10) at every step
 * against values worked out by hand from transformers' get_linear_schedule_with_warmup, the LambdaLR
 * step numbering (the first optimizer step uses lambda(0)), the edge cases and the option checks. */
#include <criterion/criterion.h>
#include <math.h>

#include "kernels/kern_sched.h"
#include "runtime/rt_err.h"

Test(kern_sched, linear_every_step, .timeout = 30)
{
    kern_sched_cfg c;
    cr_assert_eq(kern_sched_parse("linear", &c), 0);
    c.num_warmup_steps = 3;
    c.num_total_steps = 10;
    cr_assert_eq(kern_sched_check(&c), 0);
    /* warm-up: step/3 for steps 0, 1, 2; then (10 - step)/(10 - 3) for steps 3..10; then 0 */
    const double want[13] = {0.0,       1.0 / 3.0, 2.0 / 3.0, 7.0 / 7.0, 6.0 / 7.0, 5.0 / 7.0, 4.0 / 7.0,
                             3.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0, 0.0,       0.0,       0.0};
    for (int s = 0; s < 13; s++) {
        cr_assert_eq(kern_sched_factor(&c, s), want[s], "factor at step %d", s);
        cr_assert_eq(kern_sched_lr(&c, 0.5f, s), (float)(0.5 * want[s]), "lr at step %d", s);
    }
    cr_assert_eq(kern_sched_lr(&c, 0.5f, 0), 0.0f, "LambdaLR: the first optimizer step uses lambda(0) = 0");
    cr_assert_eq(kern_sched_lr(&c, 0.5f, 3), 0.5f, "the peak, at the end of the warm-up");
    cr_assert_eq(kern_sched_lr(&c, 0.5f, 1000000), 0.0f, "clamped at 0 long after the end");
    cr_assert_eq(kern_sched_lr(&c, 0.5f, -5), 0.0f, "negative steps count as step 0");
}

Test(kern_sched, linear_edges, .timeout = 30)
{
    /* no warm-up: (10 - step)/10 from the first step */
    kern_sched_cfg c = {.kind = KERN_SCHED_LINEAR, .num_warmup_steps = 0, .num_total_steps = 10};
    cr_assert_eq(kern_sched_factor(&c, 0), 1.0);
    cr_assert_eq(kern_sched_factor(&c, 4), 0.6);
    /* total == warm-up: max(1, 0) = 1 in the denominator, so (4 - step)/1: 0 at the peak step */
    c = (kern_sched_cfg){.kind = KERN_SCHED_LINEAR, .num_warmup_steps = 4, .num_total_steps = 4};
    cr_assert_eq(kern_sched_factor(&c, 3), 0.75);
    cr_assert_eq(kern_sched_factor(&c, 4), 0.0);
    /* total < warm-up: the warm-up still runs, then the rate is 0 */
    c = (kern_sched_cfg){.kind = KERN_SCHED_LINEAR, .num_warmup_steps = 5, .num_total_steps = 3};
    cr_assert_eq(kern_sched_factor(&c, 2), 0.4);
    cr_assert_eq(kern_sched_factor(&c, 5), 0.0);
    /* huge counts do not overflow */
    c = (kern_sched_cfg){.kind = KERN_SCHED_LINEAR, .num_warmup_steps = 0, .num_total_steps = INT64_MAX};
    cr_assert_eq(kern_sched_factor(&c, INT64_MAX), 0.0);
    cr_assert(kern_sched_factor(&c, 0) == 1.0);
}

Test(kern_sched, none_is_constant, .timeout = 30)
{
    kern_sched_cfg c;
    cr_assert_eq(kern_sched_parse("none", &c), 0);
    cr_assert_eq(c.kind, KERN_SCHED_NONE);
    cr_assert_eq(kern_sched_check(&c), 0);
    for (int s = 0; s < 5; s++) cr_assert_eq(kern_sched_lr(&c, 1e-3f, s), 1e-3f);
    cr_assert_eq(kern_sched_lr(NULL, 0.25f, 7), 0.25f, "no schedule: the base rate");
}

Test(kern_sched, names_and_checks, .timeout = 30)
{
    kern_sched_cfg c = {.kind = KERN_SCHED_LINEAR, .num_warmup_steps = 7, .num_total_steps = 9};
    cr_assert_eq(kern_sched_parse("cosine", &c), DMOE_EINVAL);
    cr_assert_eq(kern_sched_parse(NULL, &c), DMOE_EINVAL);
    cr_assert_eq(c.num_warmup_steps, 7, "untouched on failure");
    cr_assert_str_eq(kern_sched_name(KERN_SCHED_NONE), "none");
    cr_assert_str_eq(kern_sched_name(KERN_SCHED_LINEAR), "linear");
    cr_assert_null(kern_sched_name((kern_sched_kind)9));
    cr_assert_eq(kern_sched_parse("linear", &c), 0);
    cr_assert_eq(c.num_total_steps, 0, "parse zeroes the counts");
    cr_assert_eq(kern_sched_check(&c), DMOE_EINVAL, "linear needs a total");
    c.num_total_steps = 10;
    c.num_warmup_steps = -1;
    cr_assert_eq(kern_sched_check(&c), DMOE_EINVAL);
    c.num_warmup_steps = 0;
    cr_assert_eq(kern_sched_check(&c), 0);
    c.kind = (kern_sched_kind)5;
    cr_assert_eq(kern_sched_check(&c), DMOE_EINVAL);
    cr_assert_eq(kern_sched_check(NULL), DMOE_EINVAL);
}
