/* rt_actor.c -- the actor loop (see rt_actor.h for the model).
 *
 * Design notes. The loop keeps two intrusive lists: ready (actors with mail, in the order they became
 * ready) and reap (stopped actors waiting to be destroyed). One libevent event, run_ev, with no fd, is
 * activated whenever the ready or the reap list goes from empty to non-empty. Its callback runs one
 * round: it detaches the ready list, lets each actor handle up to RT_ACTOR_BATCH messages, puts actors
 * that still have mail at the tail of the (new) ready list, then reaps. If mail remains, run_ev is
 * activated again, so sockets and timers get served between rounds.
 */
#include "runtime/rt_actor.h"

#include <event2/event.h>
#include <event2/thread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

struct rt_loop {
    struct event_base *base;
    struct event *run_ev;
    rt_actor *ready_head, *ready_tail;
    rt_actor *reap_head;
    int run_pending;
};

static void loop_kick(rt_loop *l)
{
    if (!l->run_pending) {
        l->run_pending = 1;
        event_active(l->run_ev, 0, 0);
    }
}

static void ready_push(rt_loop *l, rt_actor *a)
{
    a->next_ready = NULL;
    if (l->ready_tail) l->ready_tail->next_ready = a;
    else l->ready_head = a;
    l->ready_tail = a;
    a->scheduled = 1;
    loop_kick(l);
}

static void drop_mail(rt_actor *a)
{
    rt_msg *m = a->head;
    a->head = a->tail = NULL;
    a->depth = 0;
    while (m) {
        rt_msg *next = m->next;
        m->next = NULL;
        rt_msg_drop(m);
        m = next;
    }
}

static void reap_push(rt_loop *l, rt_actor *a)
{
    if (a->reap_listed) return;
    a->reap_listed = 1;
    a->next_reap = l->reap_head;
    l->reap_head = a;
    loop_kick(l);
}

/* Destroy the stopped actors whose jobs have all come back; keep the others listed. */
static void reap(rt_loop *l)
{
    rt_actor *a = l->reap_head, *keep = NULL;
    l->reap_head = NULL;
    while (a) {
        rt_actor *next = a->next_reap;
        if (a->jobs > 0) {
            a->next_reap = keep;
            keep = a;
        } else {
            if (a->scheduled) {   /* unlink from the ready list (rare: stopped while holding mail) */
                rt_actor **pp = &l->ready_head, *prev = NULL;
                while (*pp && *pp != a) { prev = *pp; pp = &(*pp)->next_ready; }
                if (*pp) {
                    *pp = a->next_ready;
                    if (l->ready_tail == a) l->ready_tail = prev;
                }
                a->scheduled = 0;
            }
            drop_mail(a);
            if (a->destroy) a->destroy(a);
        }
        a = next;
    }
    /* actors with jobs in flight are re-listed when their last job returns (rt_actor_job_done) */
    while (keep) {
        rt_actor *next = keep->next_reap;
        keep->reap_listed = 0;
        keep = next;
    }
}

static void run_round(evutil_socket_t fd, short what, void *arg)
{
    rt_loop *l = arg;
    l->run_pending = 0;
    rt_actor *a = l->ready_head;
    l->ready_head = l->ready_tail = NULL;
    while (a) {
        rt_actor *next = a->next_ready;
        a->next_ready = NULL;
        a->scheduled = 0;
        for (int n = 0; n < RT_ACTOR_BATCH && a->head && !a->stopped; n++) {
            rt_msg *m = a->head;
            a->head = m->next;
            if (!a->head) a->tail = NULL;
            a->depth--;
            m->next = NULL;
            a->handle(a, m);
        }
        if (a->head && !a->stopped && !a->scheduled) ready_push(l, a);
        a = next;
    }
    if (l->reap_head) reap(l);
}

rt_loop *rt_loop_new(void)
{
    static int threads_ready;
    if (!threads_ready) {
        if (evthread_use_pthreads() != 0) return NULL;
        threads_ready = 1;
    }
    rt_loop *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->base = event_base_new();
    if (!l->base) { free(l); return NULL; }
    l->run_ev = event_new(l->base, -1, 0, run_round, l);
    if (!l->run_ev) { event_base_free(l->base); free(l); return NULL; }
    return l;
}

struct event_base *rt_loop_base(rt_loop *l) { return l->base; }

int rt_loop_run(rt_loop *l) { return event_base_dispatch(l->base) < 0 ? DMOE_EINTERNAL : 0; }

void rt_loop_break(rt_loop *l) { event_base_loopbreak(l->base); }

uint64_t rt_loop_now_ms(rt_loop *l)
{
    struct timeval tv;
    if (event_base_gettimeofday_cached(l->base, &tv) != 0) gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

void rt_loop_free(rt_loop *l)
{
    if (!l) return;
    for (int i = 0; i < 4 && l->reap_head; i++) reap(l);
    event_free(l->run_ev);
    event_base_free(l->base);
    free(l);
}

uint64_t rt_clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t rt_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void rt_actor_init(rt_actor *a, rt_loop *l, const char *name, rt_handler handle, void (*destroy)(rt_actor *))
{
    memset(a, 0, sizeof *a);
    a->loop = l;
    a->name = name;
    a->handle = handle;
    a->destroy = destroy;
}

int rt_send(rt_actor *a, rt_msg *m)
{
    if (a->stopped) return DMOE_ESHUTDOWN;
    m->next = NULL;
    if (a->tail) a->tail->next = m;
    else a->head = m;
    a->tail = m;
    a->depth++;
    if (!a->scheduled) ready_push(a->loop, a);
    return 0;
}

void rt_actor_stop(rt_actor *a)
{
    if (a->stopped) return;
    a->stopped = 1;
    reap_push(a->loop, a);
}

/* rt_actor_job_done is rt_pool's hook: one job of a came back. Declared in rt_pool.c. */
void rt_actor_job_done(rt_actor *a);
void rt_actor_job_done(rt_actor *a)
{
    a->jobs--;
    if (a->stopped && a->jobs == 0) reap_push(a->loop, a);
}

void rt_msg_drop(rt_msg *m)
{
    if (m && m->drop) m->drop(m);
}

/* ---- signals ---- */

static void signal_drop(rt_msg *m)
{
    ((rt_signal *)m)->queued = 0;
}

void rt_signal_init(rt_signal *s, rt_actor *to, int type)
{
    memset(s, 0, sizeof *s);
    s->to = to;
    s->msg.type = type;
    s->msg.drop = signal_drop;
}

int rt_signal_raise(rt_signal *s)
{
    if (s->queued) return 0;
    if (s->to->stopped) return DMOE_ESHUTDOWN;
    s->queued = 1;
    return rt_send(s->to, &s->msg);
}

/* ---- timers ---- */

static void timer_msg_drop(rt_msg *m)
{
    ((rt_timer *)m)->queued = 0;
}

static void timer_fire(evutil_socket_t fd, short what, void *arg)
{
    rt_timer *t = arg;
    if (t->queued) return;
    t->queued = 1;
    if (rt_send(t->owner, &t->msg) != 0) t->queued = 0;
}

int rt_timer_init(rt_timer *t, rt_actor *owner, int msg_type)
{
    memset(t, 0, sizeof *t);
    t->owner = owner;
    t->msg.type = msg_type;
    t->msg.drop = timer_msg_drop;
    t->ev = event_new(owner->loop->base, -1, 0, timer_fire, t);
    return t->ev ? 0 : DMOE_ENOMEM;
}

void rt_timer_start(rt_timer *t, uint64_t ms, int periodic)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    event_del(t->ev);
    event_assign(t->ev, t->owner->loop->base, -1, periodic ? EV_PERSIST : 0, timer_fire, t);
    t->periodic = periodic ? 1 : 0;
    t->period = tv;
    event_add(t->ev, &tv);
}

void rt_timer_cancel(rt_timer *t)
{
    if (t->ev) event_del(t->ev);
}

void rt_timer_deinit(rt_timer *t)
{
    if (!t->ev) return;
    event_free(t->ev);
    t->ev = NULL;
}
