/* test_pool_wake.c -- whom the pool wakes (runtime/rt_pool.c): a trickle of jobs, one at a time, stays on
 * one worker (the one that went idle last, or the one bound to look at the queue anyway), and a burst
 * still wakes a worker per job, also right after such a trickle. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "runtime/rt_actor.h"
#include "runtime/rt_pool.h"

enum { WK_WORKERS = 4, WK_TRICKLE = 400, WK_SETTLED = 300 };   /* by job WK_SETTLED, every worker has started */

typedef struct {
    rt_job job;
    pthread_t ran_on;
    int burst;          /* waits until the whole burst runs at once */
    int saw_all;        /* it did: every job of the burst was running beside it */
} wk_job;

typedef struct {
    rt_actor actor;
    rt_pool *p;
    wk_job trickle[WK_TRICKLE], burst[WK_WORKERS];
    int sent, back, burst_back, burst_after;   /* burst_after: the trickle job whose return starts it */
    atomic_int arrived;
} wk_actor;

static void wk_run(rt_job *j)
{
    wk_job *w = (wk_job *)j;
    w->ran_on = pthread_self();
    if (!w->burst) return;
    wk_actor *a = (wk_actor *)j->owner;
    atomic_fetch_add(&a->arrived, 1);
    for (int i = 0; i < 5000 && atomic_load(&a->arrived) < WK_WORKERS; i++) usleep(1000);   /* 5 s at most */
    w->saw_all = atomic_load(&a->arrived) == WK_WORKERS;
}

static void wk_submit(wk_actor *a, wk_job *w, int burst)
{
    w->job.run = wk_run;
    w->job.owner = &a->actor;
    w->burst = burst;
    cr_assert_eq(rt_pool_submit(a->p, &w->job), 0);
}

/* Whether every job is back: the trickle and, when there was one, the burst. */
static int wk_done(const wk_actor *a)
{
    return a->back == WK_TRICKLE && (a->burst_after >= WK_TRICKLE || a->burst_back == WK_WORKERS);
}

/* Each trickle job's return sends the next; the return of trickle job burst_after also sends the burst,
 * ahead of the next trickle job. */
static void wk_handle(rt_actor *self, rt_msg *m)
{
    wk_actor *a = (wk_actor *)self;
    wk_job *w = (wk_job *)m;
    if (w->burst) {
        a->burst_back++;
    } else {
        if (a->back++ == a->burst_after)
            for (int i = 0; i < WK_WORKERS; i++) wk_submit(a, &a->burst[i], 1);
        if (a->sent < WK_TRICKLE) wk_submit(a, &a->trickle[a->sent++], 0);
    }
    if (wk_done(a)) rt_loop_break(self->loop);
}

static void wk_go(wk_actor *a, int burst_after)
{
    rt_loop *l = rt_loop_new();
    a->p = rt_pool_new(l, WK_WORKERS);
    cr_assert_not_null(a->p);
    a->burst_after = burst_after;
    rt_actor_init(&a->actor, l, "wake", wk_handle, NULL);
    wk_submit(a, &a->trickle[a->sent++], 0);
    rt_loop_run(l);
    cr_assert_eq(a->back, WK_TRICKLE);
    cr_assert_eq(rt_pool_inflight(a->p), 0);
    rt_pool_free(a->p);
    rt_loop_free(l);
}

Test(pool_wake, a_trickle_of_jobs_stays_on_one_worker, .timeout = 30)
{
    /* (the first jobs may go to workers still starting, each bound to look at the queue once) */
    wk_actor *a = calloc(1, sizeof *a);
    wk_go(a, WK_TRICKLE);   /* no burst */
    int moved = 0;
    for (int i = WK_SETTLED; i < WK_TRICKLE; i++)
        moved += !pthread_equal(a->trickle[i].ran_on, a->trickle[WK_SETTLED - 1].ran_on);
    cr_assert_eq(moved, 0, "%d of the last %d jobs, sent one at a time, ran on another worker than the one before",
                 moved, WK_TRICKLE - WK_SETTLED);
    free(a);
}

Test(pool_wake, a_burst_wakes_a_worker_per_job, .timeout = 30)
{
    /* the burst goes out when a trickle job is back, while its worker is bound to look at the queue:
     * that worker takes one job, and the pool must wake three more, or the burst waits out its 5 s */
    for (int after = 0; after < 3; after++) {
        wk_actor *a = calloc(1, sizeof *a);
        wk_go(a, after == 2 ? WK_SETTLED : after);
        cr_assert_eq(a->burst_back, WK_WORKERS);
        for (int i = 0; i < WK_WORKERS; i++)
            cr_assert(a->burst[i].saw_all, "burst after trickle job %d: job %d ran without the others", a->burst_after, i);
        int distinct = 0;
        for (int i = 0; i < WK_WORKERS; i++) {
            int seen = 0;
            for (int k = 0; k < i; k++) seen |= pthread_equal(a->burst[i].ran_on, a->burst[k].ran_on);
            distinct += !seen;
        }
        cr_assert_eq(distinct, WK_WORKERS);
        free(a);
    }
}
