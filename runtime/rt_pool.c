/* rt_pool.c -- worker threads and the hand-back to the loop (see rt_pool.h).
 *
 * Design notes, after libuv's threadpool and memcached's notify pipe: one mutex guards the submission
 * queue and another guards the completion list.
 *
 * Waking workers: an idle worker waits on a condition variable of its own and is listed on a stack of
 * idle workers. A submit wakes the one that went idle last (LIFO, as folly's LifoSem), and none when a
 * worker is bound to look at the queue anyway (`coming`: one that just handed its last job back, or was
 * woken and has not looked yet). A trickle of small jobs then keeps running on one warm worker instead
 * of going round all of them: with two workers on two CPUs, taking turns made most wake-ups of a 1-row
 * round trip cross CPUs (318-323 us against 182-192 us with one worker, on this project's 2-core
 * virtual machine). A burst still wakes one worker per job past those coming.
 *
 * Waking the loop: only when the completion list goes from empty to non-empty, so a burst of
 * completions costs one wake-up; the loop drains everything it finds per wake-up, unlocked after the
 * swap. The wake-up is libevent's own cross-thread one: the worker makes the pool's fd-less event
 * active (event_active; the base is thread-aware, rt_loop_new), which writes the base's internal notify
 * fd when the loop sleeps. No fd of ours is registered, so a batch costs no epoll_ctl. While jobs are in
 * flight a long persistent timer (keep) is pending, so rt_loop_run does not return under them; an idle
 * pool has nothing pending and does not keep rt_loop_run from returning. Adding and deleting a timer
 * is a heap operation, no system call.
 * The idle timer (rt_pool_on_idle) is armed each time the last job in flight is delivered.
 */
#include "runtime/rt_pool.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/time.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

void rt_actor_job_done(rt_actor *a);   /* rt_actor.c */

struct pool_worker {
    rt_pool *p;
    int index;
    int woken;               /* set under qlock by whoever takes this worker off the idle stack */
    pthread_cond_t cv;
};

struct rt_pool {
    rt_loop *loop;
    int nthreads;
    pthread_t *threads;
    pthread_mutex_t qlock;
    struct pool_worker *workers;   /* nworkers of them (nthreads started) */
    int nworkers;
    int *idle;               /* the idle workers' indices, a stack: the last to go idle on top */
    int nidle;
    int queued;              /* jobs in the queue */
    int coming;              /* workers bound to look at the queue without a wake-up: starting, just
                              * woken, or done with their jobs (a submit wakes one only past these) */
    rt_job *q_head, *q_tail;
    int stopping;
    pthread_mutex_t dlock;
    rt_job *done_head, *done_tail;
    struct event *ev;        /* fd-less: made active by the workers (hand_back) */
    struct event *keep;      /* pending while jobs are in flight: keeps rt_loop_run from returning */
    int inflight;    /* loop thread only */
    struct event *idle_ev;   /* rt_pool_on_idle's timer (NULL: none) */
    uint64_t idle_ms;
    void (*idle_cb)(void *arg);
    void *idle_arg;
};

/* Append a finished job to the completion list; the first one of a burst wakes the loop. */
static void hand_back(rt_pool *p, rt_job *j)
{
    j->next_job = NULL;
    pthread_mutex_lock(&p->dlock);
    int was_empty = p->done_head == NULL;
    if (p->done_tail) p->done_tail->next_job = j;
    else p->done_head = j;
    p->done_tail = j;
    pthread_mutex_unlock(&p->dlock);
    if (was_empty) event_active(p->ev, EV_READ, 0);
}

static void *worker_main(void *arg)
{
    struct pool_worker *w = arg;
    rt_pool *p = w->p;
    for (;;) {
        pthread_mutex_lock(&p->qlock);
        p->coming--;   /* it looks now: counted at its start, or when its last job went back */
        while (!p->q_head && !p->stopping) {   /* go idle: on top of the stack, until taken off it */
            w->woken = 0;
            p->idle[p->nidle++] = w->index;
            while (!w->woken) pthread_cond_wait(&w->cv, &p->qlock);
            p->coming--;   /* counted by whoever woke it */
        }
        rt_job *j = p->q_head;
        if (!j) { pthread_mutex_unlock(&p->qlock); break; }   /* stopping and drained */
        p->q_head = j->next_job;
        if (!p->q_head) p->q_tail = NULL;
        p->queued--;
        pthread_mutex_unlock(&p->qlock);

        while (j) {   /* j, then its follow-ups on this thread (rt_pool_submit) */
            j->run(j);
            rt_job *then = j->then;   /* read before the hand-back: the loop owns j after it */
            if (!then) {   /* counted before the loop can hear of it and submit the next job */
                pthread_mutex_lock(&p->qlock);
                p->coming++;
                pthread_mutex_unlock(&p->qlock);
            }
            hand_back(p, j);
            j = then;
        }
    }
    return NULL;
}

/* take_idle takes the worker that went idle last off the stack (qlock held, nidle > 0) and marks it
 * woken and coming; the caller signals it. */
static struct pool_worker *take_idle(rt_pool *p)
{
    struct pool_worker *w = &p->workers[p->idle[--p->nidle]];
    w->woken = 1;
    p->coming++;
    return w;
}

static rt_job *take_done(rt_pool *p)
{
    pthread_mutex_lock(&p->dlock);
    rt_job *j = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->dlock);
    return j;
}

static void deliver(rt_pool *p, rt_job *j)
{
    while (j) {
        rt_job *next = j->next_job;
        rt_actor *owner = j->owner;
        j->next_job = NULL;
        if (--p->inflight == 0) {
            event_del(p->keep);
            if (p->idle_ev) {   /* (re)armed at each idle start: it fires after idle_ms without work */
                struct timeval tv = {(time_t)(p->idle_ms / 1000), (suseconds_t)(p->idle_ms % 1000 * 1000)};
                event_add(p->idle_ev, &tv);
            }
        }
        if (rt_send(owner, &j->msg) != 0) rt_msg_drop(&j->msg);
        rt_actor_job_done(owner);
        j = next;
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rt_pool *p = arg;
    deliver(p, take_done(p));
}

static void on_keep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;   /* nothing: the timer only has to be pending (it is persistent, so it stays so) */
}

rt_pool *rt_pool_new(rt_loop *l, int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    rt_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->loop = l;
    p->threads = calloc((size_t)nthreads, sizeof *p->threads);
    p->workers = calloc((size_t)nthreads, sizeof *p->workers);
    p->idle = calloc((size_t)nthreads, sizeof *p->idle);
    if (!p->threads || !p->workers || !p->idle) goto fail;
    pthread_mutex_init(&p->qlock, NULL);
    pthread_mutex_init(&p->dlock, NULL);
    for (int i = 0; i < nthreads; i++) {
        p->workers[i].p = p;
        p->workers[i].index = i;
        pthread_cond_init(&p->workers[i].cv, NULL);
    }
    p->nworkers = nthreads;
    p->coming = nthreads;   /* each looks at the queue once started */
    p->ev = event_new(rt_loop_base(l), -1, 0, on_wake, p);
    p->keep = event_new(rt_loop_base(l), -1, EV_PERSIST, on_keep, p);
    if (!p->ev || !p->keep) goto fail_sync;
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, &p->workers[i]) != 0) {
            LOG_ERROR("cannot start worker thread %d", i);
            p->nthreads = i;
            rt_pool_free(p);
            return NULL;
        }
        p->nthreads = i + 1;
    }
    return p;
fail_sync:
    if (p->ev) event_free(p->ev);
    if (p->keep) event_free(p->keep);
    pthread_mutex_destroy(&p->qlock);
    pthread_mutex_destroy(&p->dlock);
    for (int i = 0; i < p->nworkers; i++) pthread_cond_destroy(&p->workers[i].cv);
fail:
    free(p->threads);
    free(p->workers);
    free(p->idle);
    free(p);
    return NULL;
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    rt_pool *p = arg;
    (void)fd;
    (void)what;
    if (p->inflight == 0) p->idle_cb(p->idle_arg);   /* else the next idle start re-arms it */
}

int rt_pool_on_idle(rt_pool *p, uint64_t ms, void (*cb)(void *arg), void *arg)
{
    if (p->idle_ev) event_free(p->idle_ev);
    p->idle_ev = NULL;
    p->idle_cb = cb;
    p->idle_arg = arg;
    p->idle_ms = ms;
    if (!cb) return 0;
    p->idle_ev = evtimer_new(rt_loop_base(p->loop), on_idle, p);
    return p->idle_ev ? 0 : DMOE_ENOMEM;
}

int rt_pool_threads(const rt_pool *p) { return p->nthreads; }
int rt_pool_inflight(const rt_pool *p) { return p->inflight; }

int rt_pool_submit(rt_pool *p, rt_job *j)
{
    if (j->owner->stopped) return DMOE_ESHUTDOWN;
    pthread_mutex_lock(&p->qlock);
    if (p->stopping) { pthread_mutex_unlock(&p->qlock); return DMOE_ESHUTDOWN; }
    static const struct timeval keep_tv = {86400, 0};
    if (p->inflight == 0 && event_add(p->keep, &keep_tv) != 0) { pthread_mutex_unlock(&p->qlock); return DMOE_EINTERNAL; }
    j->next_job = NULL;
    if (p->q_tail) p->q_tail->next_job = j;
    else p->q_head = j;
    p->q_tail = j;
    p->queued++;
    struct pool_worker *w = p->nidle > 0 && p->queued > p->coming ? take_idle(p) : NULL;
    pthread_mutex_unlock(&p->qlock);
    /* signalled after the unlock: a worker woken on this CPU would otherwise preempt the loop only to
     * block on the lock the loop still holds, and wake it again */
    if (w) pthread_cond_signal(&w->cv);
    for (rt_job *k = j; k; k = k->then) {   /* the follow-ups are in flight from now on */
        k->owner->jobs++;
        p->inflight++;
    }
    return 0;
}

void rt_pool_free(rt_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->qlock);
    p->stopping = 1;
    while (p->nidle > 0) pthread_cond_signal(&take_idle(p)->cv);   /* the busy see stopping when they next look */
    pthread_mutex_unlock(&p->qlock);
    for (int i = 0; i < p->nthreads; i++) pthread_join(p->threads[i], NULL);
    /* what finished but was never delivered: give the owners their jobs back as dropped mail */
    rt_job *j = take_done(p);
    while (j) {
        rt_job *next = j->next_job;
        j->next_job = NULL;
        rt_msg_drop(&j->msg);
        rt_actor_job_done(j->owner);
        j = next;
    }
    event_free(p->ev);
    event_free(p->keep);
    if (p->idle_ev) event_free(p->idle_ev);
    pthread_mutex_destroy(&p->qlock);
    pthread_mutex_destroy(&p->dlock);
    for (int i = 0; i < p->nworkers; i++) pthread_cond_destroy(&p->workers[i].cv);
    free(p->threads);
    free(p->workers);
    free(p->idle);
    free(p);
}
