/* rt_budget.h -- a byte budget shared by the actors of one loop, for backpressure instead of OOM.
 *
 * Connections charge the frames they receive here until the request built from the frame is released;
 * when a new frame would overrun the budget, the connection stops reading and registers a waiter; a
 * release wakes the waiters (in registration order) so they try again. A charge that finds the budget
 * empty always succeeds, so one frame larger than the whole budget (but within the frame limit) still
 * passes when it is alone. Loop thread only.
 */
#ifndef DMOE_RT_BUDGET_H
#define DMOE_RT_BUDGET_H

#include <stddef.h>

typedef struct rt_budget_waiter {
    void (*wake)(struct rt_budget_waiter *w);
    struct rt_budget_waiter *next, *prev;
    int listed;
} rt_budget_waiter;

typedef struct {
    size_t max, used, peak;
    rt_budget_waiter *head, *tail;
} rt_budget;

/* rt_budget_init sets the limit to max bytes (0: unlimited). */
void rt_budget_init(rt_budget *b, size_t max);
/* rt_budget_try charges n bytes; returns 1 on success, 0 when they do not fit now. */
int rt_budget_try(rt_budget *b, size_t n);
/* rt_budget_release returns n bytes and wakes the waiters. */
void rt_budget_release(rt_budget *b, size_t n);
/* rt_budget_wait registers w to be woken by the next release (no-op when already registered). */
void rt_budget_wait(rt_budget *b, rt_budget_waiter *w);
/* rt_budget_cancel unregisters w; safe when not registered. */
void rt_budget_cancel(rt_budget *b, rt_budget_waiter *w);

#endif
