/* rt_budget.c -- the shared byte budget (see rt_budget.h). */
#include "runtime/rt_budget.h"

void rt_budget_init(rt_budget *b, size_t max)
{
    b->max = max;
    b->used = b->peak = 0;
    b->head = b->tail = 0;
}

int rt_budget_try(rt_budget *b, size_t n)
{
    if (b->max && b->used > 0 && (n > b->max || b->used > b->max - n)) return 0;
    b->used += n;
    if (b->used > b->peak) b->peak = b->used;
    return 1;
}

void rt_budget_cancel(rt_budget *b, rt_budget_waiter *w)
{
    if (!w->listed) return;
    if (w->prev) w->prev->next = w->next;
    else b->head = w->next;
    if (w->next) w->next->prev = w->prev;
    else b->tail = w->prev;
    w->next = w->prev = 0;
    w->listed = 0;
}

void rt_budget_wait(rt_budget *b, rt_budget_waiter *w)
{
    if (w->listed) return;
    w->listed = 1;
    w->next = 0;
    w->prev = b->tail;
    if (b->tail) b->tail->next = w;
    else b->head = w;
    b->tail = w;
}

void rt_budget_release(rt_budget *b, size_t n)
{
    b->used = n > b->used ? 0 : b->used - n;
    /* wake the waiters present now; a waiter that fails again re-registers at the tail */
    rt_budget_waiter *w = b->head;
    b->head = b->tail = 0;
    while (w) {
        rt_budget_waiter *next = w->next;
        w->next = w->prev = 0;
        w->listed = 0;
        w->wake(w);
        w = next;
    }
}
