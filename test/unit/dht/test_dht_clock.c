/* test_dht_clock.c -- the DHT's clocks (actors/dht/io/dht_clock.h).
 *
 * The virtual clock: timers fire in due order (ties in arming order) at exactly their due time; a
 * cancelled or re-armed timer does not fire at its old time; a periodic one fires every period; time
 * stands still while an actor has mail and jumps over idle stretches; a run stops when its goal holds
 * or at its limit. The real clock: the wall time, and a timer that fires through the loop. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actors/dht/io/dht_clock.h"
#include "runtime/rt_err.h"

#define MAX_FIRES 64
#define MSG_FOLLOW_UP 100

typedef struct {
    rt_actor actor;
    dht_clock *clock;
    dht_timer t[4];
    int fired[MAX_FIRES];        /* message types, in the order handled */
    uint64_t at[MAX_FIRES];      /* the clock's microseconds when handled */
    int n;
    int follow_up;               /* 1: the first timer's handler mails a follow-up to itself */
    rt_msg extra;
    rt_loop *loop;
} rig;

static void handle(rt_actor *self, rt_msg *m)
{
    rig *r = (rig *)self;
    if (r->n < MAX_FIRES) {
        r->fired[r->n] = m->type;
        r->at[r->n] = dht_clock_us(r->clock);
        r->n++;
    }
    if (r->follow_up && m->type == 0) {
        r->follow_up = 0;
        r->extra.type = MSG_FOLLOW_UP;
        r->extra.drop = NULL;
        cr_assert_eq(rt_send(&r->actor, &r->extra), 0);
    }
    if (r->loop && !dht_clock_is_virtual(r->clock)) rt_loop_break(r->loop);
    rt_msg_drop(m);
}

static void rig_up(rig *r, rt_loop *l, dht_clock *c)
{
    memset(r, 0, sizeof *r);
    r->clock = c;
    rt_actor_init(&r->actor, l, "rig", handle, NULL);
    for (int i = 0; i < 4; i++) cr_assert_eq(dht_timer_init(&r->t[i], c, &r->actor, i), 0);
}

static void rig_down(rig *r)
{
    for (int i = 0; i < 4; i++) dht_timer_deinit(&r->t[i]);
}

/* virtual_up makes a loop and a virtual clock with a rig on them. */
static dht_clock *virtual_up(rig *r, rt_loop **l)
{
    dht_clock *c;
    *l = rt_loop_new();
    cr_assert(*l);
    cr_assert_eq(dht_vclock_new(*l, &c), 0);
    rig_up(r, *l, c);
    return c;
}

/* all_down frees the rig's timers, then the loop (which reaps the rig's actor), then the clock. */
static void all_down(rig *r, rt_loop *l, dht_clock *c)
{
    rig_down(r);
    rt_actor_stop(&r->actor);
    rt_loop_free(l);
    dht_vclock_free(c);
}

static int fired_at_least(void *arg)
{
    rig *r = arg;
    return r->n >= 4;
}

Test(dht_clock, virtual_timers_fire_in_due_order_at_their_due_time)
{
    rt_loop *l;
    rig r;
    dht_clock *c = virtual_up(&r, &l);
    cr_assert(dht_clock_is_virtual(c));
    cr_expect_eq(dht_clock_now(c), DHT_VCLOCK_EPOCH_S);
    cr_assert_eq(dht_timer_start(&r.t[3], 30, 0), 0);
    cr_assert_eq(dht_timer_start(&r.t[1], 10, 0), 0);
    cr_assert_eq(dht_timer_start(&r.t[2], 20, 0), 0);
    cr_assert_eq(dht_timer_start(&r.t[0], 10, 0), 0);   /* due with t[1]: armed later, fires later */
    cr_assert_eq(dht_vclock_run(c, fired_at_least, &r, 1000), 1);
    cr_assert_eq(r.n, 4);
    int order[4] = { 1, 0, 2, 3 };
    uint64_t at[4] = { 10000, 10000, 20000, 30000 };
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(r.fired[i], order[i], "fire %d: timer %d", i, r.fired[i]);
        cr_expect_eq(r.at[i], at[i], "fire %d at %llu us", i, (unsigned long long)r.at[i]);
    }
    cr_expect_eq(dht_clock_us(c), 30000, "time stops at the last timer once the goal holds");
    cr_expect(fabs(dht_clock_now(c) - (DHT_VCLOCK_EPOCH_S + 0.03)) < 1e-9);
    all_down(&r, l, c);
}

Test(dht_clock, cancelled_and_rearmed_timers_do_not_fire_at_their_old_time)
{
    rt_loop *l;
    rig r;
    dht_clock *c = virtual_up(&r, &l);
    cr_assert_eq(dht_timer_start(&r.t[0], 5, 0), 0);
    cr_assert_eq(dht_timer_start(&r.t[1], 7, 0), 0);
    cr_assert_eq(dht_timer_start(&r.t[2], 9, 0), 0);
    dht_timer_cancel(&r.t[1]);
    cr_assert_eq(dht_timer_start(&r.t[0], 50, 0), 0);   /* re-armed: the 5 ms firing is gone */
    cr_expect_eq(dht_vclock_run(c, NULL, NULL, 100), 0, "no goal: the run ends at its limit");
    cr_assert_eq(r.n, 2);
    cr_expect_eq(r.fired[0], 2);
    cr_expect_eq(r.at[0], 9000);
    cr_expect_eq(r.fired[1], 0);
    cr_expect_eq(r.at[1], 50000);
    cr_expect_eq(dht_clock_us(c), 100000, "the clock stands at the limit");
    all_down(&r, l, c);
}

Test(dht_clock, a_periodic_timer_fires_every_period_and_idle_time_jumps)
{
    rt_loop *l;
    rig r;
    dht_clock *c = virtual_up(&r, &l);
    cr_assert_eq(dht_timer_start(&r.t[0], 100000, 1), 0);   /* every 100 s */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_expect_eq(dht_vclock_run(c, NULL, NULL, 350000), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_eq(r.n, 3);
    for (int i = 0; i < 3; i++) cr_expect_eq(r.at[i], (uint64_t)(i + 1) * 100000000u);
    cr_expect_eq(dht_clock_us(c), 350000000u);
    double real_s = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    cr_expect(real_s < 5.0, "350 s of virtual time took %.3f s", real_s);
    dht_timer_cancel(&r.t[0]);
    cr_expect_eq(dht_vclock_run(c, NULL, NULL, 1000000), 0);
    cr_expect_eq(r.n, 3, "a cancelled periodic timer stops");
    all_down(&r, l, c);
}

Test(dht_clock, time_stands_still_while_an_actor_has_mail)
{
    rt_loop *l;
    rig r;
    dht_clock *c = virtual_up(&r, &l);
    r.follow_up = 1;
    cr_assert_eq(dht_timer_start(&r.t[0], 10, 0), 0);
    cr_assert_eq(dht_timer_start(&r.t[1], 10, 0), 0);
    cr_assert_eq(dht_timer_start(&r.t[2], 11, 0), 0);
    dht_vclock_run(c, NULL, NULL, 20);
    cr_assert_eq(r.n, 4);
    /* Both timers due at 10 ms are delivered one by one, the loop drained after each: the follow-up
     * mailed by the first is handled before the second timer fires and before time moves on. */
    cr_expect_eq(r.fired[0], 0);
    cr_expect_eq(r.fired[1], MSG_FOLLOW_UP);
    cr_expect_eq(r.at[1], 10000);
    cr_expect_eq(r.fired[2], 1);
    cr_expect_eq(r.fired[3], 2);
    cr_expect_eq(r.at[3], 11000);
    all_down(&r, l, c);
}

Test(dht_clock, the_real_clock_is_the_wall_clock_and_fires_through_the_loop, .timeout = 10)
{
    dht_clock *c = dht_clock_real();
    cr_assert(!dht_clock_is_virtual(c));
    cr_expect(fabs(dht_clock_now(c) - (double)time(NULL)) < 2.0);
    rt_loop *l = rt_loop_new();
    rig r;
    rig_up(&r, l, c);
    r.loop = l;
    uint64_t t0 = dht_clock_us(c);
    cr_assert_eq(dht_timer_start(&r.t[0], 20, 0), 0);
    rt_loop_run(l);
    cr_assert_eq(r.n, 1);
    cr_expect(dht_clock_us(c) - t0 >= 19000, "the real timer waited its 20 ms");
    all_down(&r, l, c);   /* its dht_vclock_free is a no-op on the real clock */
}
