/* rt_pool.h -- the worker-thread pool: kernels run on workers, results come back as mail.
 *
 * An actor fills an rt_job (embedded in its own job struct) with a run function and submits it from the
 * loop thread; the submit wakes the worker that went idle last, if no worker is about to look at the
 * queue anyway. A worker runs job->run(job) -- which may only touch the buffers the job carries, never
 * actor state -- then appends the job to the completion list under a mutex and, when that list was
 * empty, wakes the loop once (libevent's event_active). On the loop thread the pool's callback swaps
 * the whole list out and delivers each job to its owner's mailbox as an ordinary message (job->msg),
 * in completion order. The owner's handler sees the message and drops it when done.
 *
 * While a job is out, its owner cannot be destroyed (rt_actor.jobs counts them); a job whose owner was
 * stopped meanwhile is dropped through job->msg.drop instead of being delivered.
 *
 * Order: rt_pool_new -> rt_pool_submit ... -> rt_pool_free (runs what is queued, joins the workers, drops
 * undelivered completions).
 */
#ifndef DMOE_RT_POOL_H
#define DMOE_RT_POOL_H

#include "runtime/rt_actor.h"

typedef struct rt_job {
    rt_msg msg;                     /* delivered to owner when run returns */
    void (*run)(struct rt_job *j);  /* on a worker thread */
    rt_actor *owner;
    struct rt_job *then;            /* NULL, or a follow-up: see rt_pool_submit */
    struct rt_job *next_job;        /* queue link, private */
} rt_job;

typedef struct rt_pool rt_pool;

/* rt_pool_new starts nthreads workers (>= 1) delivering to actors of loop l. Returns NULL on failure. */
rt_pool *rt_pool_new(rt_loop *l, int nthreads);
/* rt_pool_on_idle makes cb(arg) run on the loop thread once the pool has had no job in flight for ms
 * milliseconds (after each busy spell; a pool never busy never calls it). cb NULL removes it. Returns
 * 0 or DMOE_ENOMEM. */
int rt_pool_on_idle(rt_pool *p, uint64_t ms, void (*cb)(void *arg), void *arg);
/* rt_pool_threads returns the number of workers. */
int rt_pool_threads(const rt_pool *p);
/* rt_pool_inflight returns the jobs submitted and not yet delivered (loop thread). */
int rt_pool_inflight(const rt_pool *p);
/* rt_pool_submit queues j (run and owner set) from the loop thread; the pool owns j until it comes
 * back as mail. Returns 0 or DMOE_ESHUTDOWN (owner stopped or pool stopping) / DMOE_EINTERNAL (the
 * loop refused the timer that keeps it running); on error the caller keeps j.
 * A job may carry a chain of follow-ups (j->then, its then, ...; each with run and owner set): the
 * worker that ran j hands j back, then runs j->then at once, without queueing or waking anyone, and so
 * on. Each comes back as mail of its own, in chain order; the whole chain is in flight from the submit
 * (the owner cannot be destroyed before the last link is back), so a first link's handler may use
 * what it produced while the next link still runs on buffers of its own. */
int rt_pool_submit(rt_pool *p, rt_job *j);
/* rt_pool_free finishes the queued jobs, joins the workers, drops completions not yet delivered. */
void rt_pool_free(rt_pool *p);

#endif
