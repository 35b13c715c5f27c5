/* dht_clock.c -- the real and the virtual DHT clock (see dht_clock.h).
 *
 * Design notes. The real clock has no state: its timers are rt_timers and its time is read from the
 * system. A virtual clock keeps its armed timers in a binary min-heap ordered by (due time, arming
 * order), each timer knowing its position so that a cancel is O(log n); timers due at the same moment
 * fire in the order they were armed, so a run repeats exactly. dht_vclock_run alternates two steps:
 * drain the loop (run libevent without blocking while an event -- the actors' run event -- is active),
 * then pop the earliest timer, set the time to its due time and deliver its message (re-arming a
 * periodic one first). Time never moves while an actor has mail, so everything that happens "at once"
 * in virtual time happens before the next timer.
 */
#include "actors/dht/io/dht_clock.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/rt_err.h"

struct dht_clock {
    int is_virtual;
    rt_loop *loop;
    uint64_t now_us, seq;
    dht_timer **heap;
    size_t n, cap;
};

static dht_clock real_clock = { 0, NULL, 0, 0, NULL, 0, 0 };

dht_clock *dht_clock_real(void) { return &real_clock; }

int dht_vclock_new(rt_loop *l, dht_clock **out)
{
    dht_clock *c = calloc(1, sizeof *c);
    if (!c) return DMOE_ENOMEM;
    c->is_virtual = 1;
    c->loop = l;
    *out = c;
    return 0;
}

void dht_vclock_free(dht_clock *c)
{
    if (!c || !c->is_virtual) return;
    for (size_t i = 0; i < c->n; i++) c->heap[i]->pos = 0;
    free(c->heap);
    free(c);
}

double dht_clock_now(const dht_clock *c)
{
    if (c->is_virtual) return DHT_VCLOCK_EPOCH_S + (double)c->now_us * 1e-6;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

uint64_t dht_clock_us(const dht_clock *c) { return c->is_virtual ? c->now_us : rt_clock_us(); }

int dht_clock_is_virtual(const dht_clock *c) { return c->is_virtual; }

/* ---- the virtual clock's heap ---- */

static int earlier(const dht_timer *a, const dht_timer *b)
{
    return a->due_us < b->due_us || (a->due_us == b->due_us && a->seq < b->seq);
}

static void place(dht_clock *c, size_t i, dht_timer *t)
{
    c->heap[i] = t;
    t->pos = i + 1;
}

static void sift_up(dht_clock *c, size_t i)
{
    dht_timer *t = c->heap[i];
    while (i > 0 && earlier(t, c->heap[(i - 1) / 2])) {
        place(c, i, c->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    place(c, i, t);
}

static void sift_down(dht_clock *c, size_t i)
{
    dht_timer *t = c->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const dht_timer *best = t;
        if (l < c->n && earlier(c->heap[l], best)) { m = l; best = c->heap[l]; }
        if (r < c->n && earlier(c->heap[r], best)) m = r;
        if (m == i) break;
        place(c, i, c->heap[m]);
        i = m;
    }
    place(c, i, t);
}

static void heap_remove(dht_clock *c, dht_timer *t)
{
    size_t i = t->pos - 1;
    t->pos = 0;
    dht_timer *last = c->heap[--c->n];
    if (i == c->n) return;
    place(c, i, last);
    sift_up(c, i);
    sift_down(c, last->pos - 1);
}

static int heap_add(dht_clock *c, dht_timer *t)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        dht_timer **h = realloc(c->heap, cap * sizeof *h);
        if (!h) return DMOE_ENOMEM;
        c->heap = h;
        c->cap = cap;
    }
    t->seq = c->seq++;
    place(c, c->n++, t);
    sift_up(c, c->n - 1);
    return 0;
}

/* fire delivers t's message to its owner unless it already waits there (rt_timer's rule). */
static void fire(dht_timer *t)
{
    if (t->rt.queued) return;
    t->rt.queued = 1;
    if (rt_send(t->rt.owner, &t->rt.msg) != 0) t->rt.queued = 0;
}

static void drain(rt_loop *l)
{
    struct event_base *base = rt_loop_base(l);
    while (event_base_get_num_events(base, EVENT_BASE_COUNT_ACTIVE) > 0) event_base_loop(base, EVLOOP_NONBLOCK);
}

int dht_vclock_run(dht_clock *c, int (*done)(void *arg), void *arg, uint64_t limit_ms)
{
    uint64_t end = c->now_us + limit_ms * 1000;
    for (;;) {
        drain(c->loop);
        if (done && done(arg)) return 1;
        if (c->n == 0 || c->heap[0]->due_us > end) {
            c->now_us = end;
            return 0;
        }
        dht_timer *t = c->heap[0];
        heap_remove(c, t);
        if (t->due_us > c->now_us) c->now_us = t->due_us;
        if (t->period_us) {
            t->due_us = c->now_us + t->period_us;
            heap_add(c, t);   /* cannot fail: the slot t just left is free */
        }
        fire(t);
    }
}

/* ---- timers ---- */

int dht_timer_init(dht_timer *t, dht_clock *c, rt_actor *owner, int msg_type)
{
    memset(t, 0, sizeof *t);
    t->clock = c;
    return rt_timer_init(&t->rt, owner, msg_type);
}

int dht_timer_start(dht_timer *t, uint64_t ms, int periodic)
{
    dht_clock *c = t->clock;
    if (!c->is_virtual) {
        rt_timer_start(&t->rt, ms, periodic);
        return 0;
    }
    if (t->pos) heap_remove(c, t);
    t->due_us = c->now_us + ms * 1000;
    t->period_us = periodic ? (ms ? ms * 1000 : 1000) : 0;
    return heap_add(c, t);
}

void dht_timer_cancel(dht_timer *t)
{
    if (!t->clock) return;
    if (!t->clock->is_virtual) rt_timer_cancel(&t->rt);
    else if (t->pos) heap_remove(t->clock, t);
}

void dht_timer_deinit(dht_timer *t)
{
    dht_timer_cancel(t);
    rt_timer_deinit(&t->rt);
}
