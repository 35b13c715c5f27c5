/* rt_lag.c -- the loop-stall meter and its lateness probe (see rt_lag.h).
 *
 * Spans read CLOCK_MONOTONIC (the vDSO: tens of nanoseconds) and CLOCK_THREAD_CPUTIME_ID (a system call:
 * well under a microsecond), twice each per metered handler. The probe is an actor with a periodic
 * rt_timer: its handler compares the time with the tick's due time (the previous tick + the period) and
 * records the excess. Loop thread only.
 */
#include "runtime/rt_lag.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "runtime/rt_err.h"

static uint64_t cpu_us(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void rt_lag_note(rt_lag *m, uint64_t wall, uint64_t cpu)
{
    if (wall > m->max_wall_us) m->max_wall_us = wall;
    if (cpu > m->max_cpu_us) m->max_cpu_us = cpu;
    m->total_wall_us += wall;
    m->count++;
}

static atomic_int spans_off;   /* rt_lag_spans_off */

void rt_lag_spans_off(int off) { atomic_store(&spans_off, off); }

rt_lag_mark rt_lag_begin(rt_lag *m)
{
    rt_lag_mark t = { 0, 0 };
    if (m->depth++ == 0 && !atomic_load_explicit(&spans_off, memory_order_relaxed)) {
        t.wall_us = rt_clock_us();
        t.cpu_us = cpu_us();
    }
    return t;
}

void rt_lag_end(rt_lag *m, rt_lag_mark t0)
{
    if (--m->depth > 0 || atomic_load_explicit(&spans_off, memory_order_relaxed)) return;
    uint64_t wall = rt_clock_us(), cpu = cpu_us();
    rt_lag_note(m, wall > t0.wall_us ? wall - t0.wall_us : 0, cpu > t0.cpu_us ? cpu - t0.cpu_us : 0);
}

void rt_lag_reset(rt_lag *m)
{
    int depth = m->depth;
    *m = (rt_lag){ .depth = depth };
}

struct rt_lag_probe {
    rt_actor actor;
    rt_timer tick;
    rt_lag meter;
    uint64_t due_us;
};

static void probe_handle(rt_actor *self, rt_msg *msg)
{
    rt_lag_probe *p = (rt_lag_probe *)self;
    uint64_t now = rt_clock_us();
    rt_lag_note(&p->meter, now > p->due_us ? now - p->due_us : 0, 0);
    p->due_us = now + RT_LAG_PROBE_MS * 1000u;
    rt_msg_drop(msg);
}

static void probe_destroy(rt_actor *self)
{
    rt_lag_probe *p = (rt_lag_probe *)self;
    rt_timer_deinit(&p->tick);
    free(p);
}

int rt_lag_probe_new(rt_loop *l, rt_lag_probe **out)
{
    rt_lag_probe *p = calloc(1, sizeof *p);
    if (!p) return DMOE_ENOMEM;
    rt_actor_init(&p->actor, l, "lag-probe", probe_handle, probe_destroy);
    if (rt_timer_init(&p->tick, &p->actor, 1) != 0) {
        free(p);
        return DMOE_ENOMEM;
    }
    p->due_us = rt_clock_us() + RT_LAG_PROBE_MS * 1000u;
    rt_timer_start(&p->tick, RT_LAG_PROBE_MS, 1);
    *out = p;
    return 0;
}

const rt_lag *rt_lag_probe_meter(const rt_lag_probe *p) { return &p->meter; }

void rt_lag_probe_free(rt_lag_probe *p)
{
    if (!p) return;
    rt_timer_cancel(&p->tick);
    rt_actor_stop(&p->actor);
}
