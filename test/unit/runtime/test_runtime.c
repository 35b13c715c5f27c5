/* test_runtime.c -- the actor runtime: mailbox order, bounded rounds, stop and reap, timers, and the
 * pool handing finished jobs back on the loop thread. */
#include <criterion/criterion.h>
#include <event2/event.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/rt_actor.h"
#include "runtime/rt_err.h"
#include "runtime/rt_mem.h"
#include "runtime/rt_pool.h"

typedef struct { rt_msg msg; int seq; } num_msg;
static void num_drop(rt_msg *m) { free(m); }

typedef struct {
    rt_actor actor;
    int seen[1000];
    int n_seen;
    int stop_at;
    int *destroyed;
} rec_actor;

static void rec_handle(rt_actor *self, rt_msg *m)
{
    rec_actor *r = (rec_actor *)self;
    r->seen[r->n_seen++] = ((num_msg *)m)->seq;
    rt_msg_drop(m);
    if (r->stop_at && r->n_seen == r->stop_at) rt_actor_stop(self);
    if (r->n_seen == 1000 || (r->stop_at && r->n_seen == r->stop_at)) rt_loop_break(self->loop);
}

static void rec_destroy(rt_actor *self)
{
    rec_actor *r = (rec_actor *)self;
    if (r->destroyed) (*r->destroyed)++;
}

static void send_num(rt_actor *a, int seq)
{
    num_msg *m = calloc(1, sizeof *m);
    m->msg.drop = num_drop;
    m->seq = seq;
    cr_assert_eq(rt_send(a, &m->msg), 0);
}

Test(runtime, mailbox_is_fifo, .timeout = 10)
{
    rt_loop *l = rt_loop_new();
    rec_actor r = {0};
    rt_actor_init(&r.actor, l, "rec", rec_handle, NULL);
    for (int i = 0; i < 1000; i++) send_num(&r.actor, i);
    cr_assert_eq(r.actor.depth, 1000);
    rt_loop_run(l);
    cr_assert_eq(r.n_seen, 1000);
    for (int i = 0; i < 1000; i++) cr_assert_eq(r.seen[i], i);
    rt_loop_free(l);
}

/* Two actors with long mailboxes take turns in rounds of RT_ACTOR_BATCH. */
typedef struct { rt_actor actor; int id; int *log; int *n; } turn_actor;
static void turn_handle(rt_actor *self, rt_msg *m)
{
    turn_actor *t = (turn_actor *)self;
    t->log[(*t->n)++] = t->id;
    rt_msg_drop(m);
    if (*t->n == 4 * RT_ACTOR_BATCH) rt_loop_break(self->loop);
}

Test(runtime, rounds_are_bounded_and_fair, .timeout = 10)
{
    rt_loop *l = rt_loop_new();
    int log[4 * RT_ACTOR_BATCH], n = 0;
    turn_actor a = {.id = 1, .log = log, .n = &n}, b = {.id = 2, .log = log, .n = &n};
    rt_actor_init(&a.actor, l, "a", turn_handle, NULL);
    rt_actor_init(&b.actor, l, "b", turn_handle, NULL);
    for (int i = 0; i < 2 * RT_ACTOR_BATCH; i++) { send_num(&a.actor, i); send_num(&b.actor, i); }
    rt_loop_run(l);
    cr_assert_eq(n, 4 * RT_ACTOR_BATCH);
    for (int i = 0; i < RT_ACTOR_BATCH; i++) cr_assert_eq(log[i], 1);
    for (int i = RT_ACTOR_BATCH; i < 2 * RT_ACTOR_BATCH; i++) cr_assert_eq(log[i], 2);
    cr_assert_eq(log[2 * RT_ACTOR_BATCH], 1);
    rt_loop_free(l);
}

Test(runtime, stop_drops_mail_and_reaps_after_handler, .timeout = 10)
{
    rt_loop *l = rt_loop_new();
    int destroyed = 0;
    rec_actor r = {.stop_at = 3, .destroyed = &destroyed};
    rt_actor_init(&r.actor, l, "rec", rec_handle, rec_destroy);
    for (int i = 0; i < 10; i++) send_num(&r.actor, i);
    rt_loop_run(l);   /* breaks at the 3rd message, inside the handler that stopped the actor */
    cr_assert_eq(r.n_seen, 3);
    rt_loop_run(l);   /* the round that reaps: mail dropped (ASan checks the frees), destroy once */
    cr_assert_eq(destroyed, 1);
    num_msg *m = calloc(1, sizeof *m);
    cr_assert_eq(rt_send(&r.actor, &m->msg), DMOE_ESHUTDOWN);
    free(m);
    rt_loop_free(l);
}

/* A timer fires its embedded message; periodic timers keep firing; cancel stops them. */
typedef struct { rt_actor actor; rt_timer t; int fired; } tick_actor;
static void tick_handle(rt_actor *self, rt_msg *m)
{
    tick_actor *t = (tick_actor *)self;
    cr_assert_eq(m->type, 7);
    rt_msg_drop(m);
    if (++t->fired == 3) { rt_timer_cancel(&t->t); rt_loop_break(self->loop); }
}

Test(runtime, periodic_timer, .timeout = 10)
{
    rt_loop *l = rt_loop_new();
    tick_actor t = {0};
    rt_actor_init(&t.actor, l, "tick", tick_handle, NULL);
    cr_assert_eq(rt_timer_init(&t.t, &t.actor, 7), 0);
    uint64_t t0 = rt_loop_now_ms(l);
    rt_timer_start(&t.t, 5, 1);
    rt_loop_run(l);
    cr_assert_eq(t.fired, 3);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t t1 = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
    /* three periods cannot pass in less than two (timers may fire a little early on a coarse clock) */
    cr_assert_geq(t1 - t0, 10, "three 5 ms periods took %llu ms", (unsigned long long)(t1 - t0));
    rt_timer_deinit(&t.t);
    rt_loop_free(l);
}

/* Jobs run on workers (not the loop thread) and come back on the loop thread, each exactly once. */
typedef struct { rt_job job; pthread_t ran_on; long sum; int n; } sum_job;
typedef struct { rt_actor actor; pthread_t loop_thread; int back; int total; long sums; int wrong_thread; } sum_actor;

static void sum_run(rt_job *j)
{
    sum_job *s = (sum_job *)j;
    s->ran_on = pthread_self();
    for (int i = 1; i <= s->n; i++) s->sum += i;
}
static void sum_drop(rt_msg *m) { free(m); }
static void sum_handle(rt_actor *self, rt_msg *m)
{
    sum_actor *a = (sum_actor *)self;
    sum_job *s = (sum_job *)m;
    if (!pthread_equal(pthread_self(), a->loop_thread)) a->wrong_thread++;
    if (pthread_equal(s->ran_on, a->loop_thread)) a->wrong_thread++;
    a->sums += s->sum;
    rt_msg_drop(m);
    if (++a->back == a->total) rt_loop_break(self->loop);
}

Test(runtime, pool_hands_back_on_loop_thread, .timeout = 20)
{
    rt_loop *l = rt_loop_new();
    rt_pool *p = rt_pool_new(l, 2);
    cr_assert_not_null(p);
    sum_actor a = {.loop_thread = pthread_self(), .total = 500};
    rt_actor_init(&a.actor, l, "sum", sum_handle, NULL);
    long expect = 0;
    for (int i = 0; i < a.total; i++) {
        sum_job *s = calloc(1, sizeof *s);
        s->job.msg.drop = sum_drop;
        s->job.run = sum_run;
        s->job.owner = &a.actor;
        s->n = i;
        expect += (long)i * (i + 1) / 2;
        cr_assert_eq(rt_pool_submit(p, &s->job), 0);
    }
    rt_loop_run(l);
    cr_assert_eq(a.back, a.total);
    cr_assert_eq(a.sums, expect);
    cr_assert_eq(a.wrong_thread, 0);
    cr_assert_eq(a.actor.jobs, 0);
    cr_assert_eq(rt_pool_inflight(p), 0);
    rt_pool_free(p);
    rt_loop_free(l);
}

/* An actor stopped while its job runs is destroyed only after the job is back; the job is dropped. */
static int stopped_destroyed;
static void count_destroy(rt_actor *self) { stopped_destroyed++; rt_loop_break(self->loop); }
static void slow_run(rt_job *j) { usleep(20000); sum_run(j); }

Test(runtime, stopped_owner_waits_for_its_jobs, .timeout = 20)
{
    rt_loop *l = rt_loop_new();
    rt_pool *p = rt_pool_new(l, 1);
    sum_actor a = {.loop_thread = pthread_self(), .total = 1};
    rt_actor_init(&a.actor, l, "sum", sum_handle, count_destroy);
    sum_job *s = calloc(1, sizeof *s);
    s->job.msg.drop = sum_drop;
    s->job.run = slow_run;
    s->job.owner = &a.actor;
    cr_assert_eq(rt_pool_submit(p, &s->job), 0);
    rt_actor_stop(&a.actor);
    rt_loop_run(l);
    cr_assert_eq(stopped_destroyed, 1);
    cr_assert_eq(a.back, 0);
    rt_pool_free(p);
    rt_loop_free(l);
}

/* The pool's idle hook: once per busy spell, on the loop thread, after the last job is back. */
typedef struct { rt_pool *p; pthread_t loop_thread; int calls, wrong, busy; rt_loop *l; } idle_seen;
static void on_pool_idle(void *arg)
{
    idle_seen *s = arg;
    s->calls++;
    if (!pthread_equal(pthread_self(), s->loop_thread)) s->wrong++;
    if (rt_pool_inflight(s->p) != 0) s->busy++;
    rt_loop_break(s->l);
}

static void submit_sums(rt_pool *p, sum_actor *a, int n)
{
    for (int i = 0; i < n; i++) {
        sum_job *s = calloc(1, sizeof *s);
        s->job.msg.drop = sum_drop;
        s->job.run = sum_run;
        s->job.owner = &a->actor;
        s->n = 1000;
        cr_assert_eq(rt_pool_submit(p, &s->job), 0);
    }
}

Test(runtime, pool_idle_hook_runs_once_after_each_busy_spell, .timeout = 20)
{
    rt_loop *l = rt_loop_new();
    rt_pool *p = rt_pool_new(l, 2);
    idle_seen seen = {.p = p, .loop_thread = pthread_self(), .l = l};
    cr_assert_eq(rt_pool_on_idle(p, 30, on_pool_idle, &seen), 0);
    sum_actor a = {.loop_thread = pthread_self(), .total = 1 << 30};
    rt_actor_init(&a.actor, l, "sum", sum_handle, NULL);
    /* never busy: nothing to call */
    struct timeval tv = {0, 80000};
    event_base_loopexit(rt_loop_base(l), &tv);
    rt_loop_run(l);
    cr_assert_eq(seen.calls, 0, "an idle pool that was never busy called its hook");
    for (int spell = 1; spell <= 2; spell++) {
        submit_sums(p, &a, 8);
        rt_loop_run(l);   /* the hook breaks it */
        cr_assert_eq(a.back, 8 * spell, "the hook ran before every job was back");
        cr_assert_eq(seen.calls, spell);
    }
    cr_assert_eq(seen.wrong, 0, "the hook ran off the loop thread");
    cr_assert_eq(seen.busy, 0, "the hook ran with jobs in flight");
    /* removed: a busy spell ends without it */
    cr_assert_eq(rt_pool_on_idle(p, 30, NULL, NULL), 0);
    submit_sums(p, &a, 4);
    event_base_loopexit(rt_loop_base(l), &tv);
    rt_loop_run(l);
    cr_assert_eq(a.back, 20);
    cr_assert_eq(seen.calls, 2);
    rt_pool_free(p);
    rt_loop_free(l);
}

#if defined(__SANITIZE_ADDRESS__)
#define RT_TEST_OWN_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RT_TEST_OWN_ALLOCATOR 1
#endif
#endif

/* The heap policy (rt_mem.h): a big block comes from the heap and stays there once freed, until the
 * idle trim returns it. (Criterion runs each test in its own process: the policy ends with it.) */
Test(runtime, big_blocks_stay_in_the_heap_until_the_trim, .timeout = 20)
{
#ifdef RT_TEST_OWN_ALLOCATOR
    cr_skip_test("the sanitizer's allocator keeps its own policy");
#endif
    cr_assert_eq(rt_mem_tune(), 0);
    size_t big = (size_t)64 << 20;
    struct mallinfo2 before = mallinfo2();
    char *b = malloc(big);
    cr_assert_not_null(b);
    memset(b, 1, big);
    struct mallinfo2 mid = mallinfo2();
    cr_assert_eq(mid.hblkhd, before.hblkhd, "a 64 MiB block was mapped on its own");
    free(b);
    struct mallinfo2 after = mallinfo2();
    cr_assert_geq(after.fordblks, big, "the freed block left the heap at once");
    cr_assert_eq(rt_mem_trim(), 1, "the trim returned nothing");
}

/* A job's follow-up (rt_job.then) runs on the same worker after the first link is handed back: the
 * loop sees the first link's mail while the second still runs (the second waits for that mail, bounded
 * at 5 s), the chain counts as in flight until its last link is back, and the mail comes in order. */
typedef struct {
    rt_job job;
    int link;
    pthread_t ran_on;
    atomic_int *first_seen;
    int waited_out;
} chain_job;
typedef struct {
    rt_actor actor;
    atomic_int first_seen;
    int order[2], n, inflight_after_first, jobs_after_first;
    rt_pool *p;
} chain_actor;

static void chain_run(rt_job *j)
{
    chain_job *c = (chain_job *)j;
    c->ran_on = pthread_self();
    if (c->link == 0) return;
    for (int i = 0; i < 5000 && !atomic_load(c->first_seen); i++) usleep(1000);
    c->waited_out = !atomic_load(c->first_seen);
}
static void chain_handle(rt_actor *self, rt_msg *m)
{
    chain_actor *a = (chain_actor *)self;
    chain_job *c = (chain_job *)m;
    if (a->n < 2) a->order[a->n++] = c->link;
    if (c->link == 0) {
        a->inflight_after_first = rt_pool_inflight(a->p);
        a->jobs_after_first = a->actor.jobs;
        atomic_store(&a->first_seen, 1);
    } else {
        rt_loop_break(self->loop);
    }
}

Test(runtime, pool_follow_up_runs_on_the_same_worker_after_the_first_is_back, .timeout = 20)
{
    rt_loop *l = rt_loop_new();
    rt_pool *p = rt_pool_new(l, 2);
    chain_actor a = {.p = p};
    rt_actor_init(&a.actor, l, "chain", chain_handle, NULL);
    chain_job c[2] = {{.link = 0, .first_seen = &a.first_seen}, {.link = 1, .first_seen = &a.first_seen}};
    for (int i = 0; i < 2; i++) {
        c[i].job.run = chain_run;
        c[i].job.owner = &a.actor;
    }
    c[0].job.then = &c[1].job;
    cr_assert_eq(rt_pool_submit(p, &c[0].job), 0);
    cr_assert_eq(rt_pool_inflight(p), 2);
    cr_assert_eq(a.actor.jobs, 2);
    rt_loop_run(l);
    cr_assert_eq(a.n, 2);
    cr_assert(a.order[0] == 0 && a.order[1] == 1);
    cr_assert_eq(c[1].waited_out, 0, "the first link's mail came only after the second link ended");
    cr_assert(pthread_equal(c[0].ran_on, c[1].ran_on));
    cr_assert_eq(a.inflight_after_first, 1);
    cr_assert_eq(a.jobs_after_first, 1);
    cr_assert_eq(a.actor.jobs, 0);
    cr_assert_eq(rt_pool_inflight(p), 0);
    rt_pool_free(p);
    rt_loop_free(l);
}
