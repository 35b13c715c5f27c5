/* dht_clock.h -- the time a DHT node lives in: the wall clock, or a virtual one that jumps.
 *
 * The DHT's protocol core reads no clock of its own (as jech/dht, which is fed the time): the node,
 * its lookups, its bootstrap and the in-memory transport ask a dht_clock for the time and arm
 * dht_timers on it. Two clocks exist:
 *
 *  - the real clock (dht_clock_real): DHT time is the wall clock, as hivemind's get_dht_time, and a
 *    timer is the loop's rt_timer. What dmoe-node, dmoe-call and the TCP tests use.
 *  - a virtual clock (dht_vclock_new): a discrete-event scheduler over one loop. Time stands still
 *    while the loop's actors have mail; when none has, it jumps to the earliest armed timer and fires
 *    it. dht_vclock_run drives the loop this way, so an in-memory swarm (dht_memnet.h) of any size runs
 *    with no sleep, in the same order on every machine and at any speed.
 *
 * A timer delivers its embedded message to its owner actor when it fires, exactly as rt_timer does
 * (rt_actor.h): the owner handles it in turn, and a timer whose message still waits in the mailbox is
 * not queued again.
 *
 * Order: dht_vclock_new (or dht_clock_real) -> dht_timer_init on it -> dht_timer_start / cancel ... ->
 * dht_timer_deinit (every timer, in its owner's destroy) -> dht_vclock_free. Loop thread only.
 */
#ifndef DMOE_DHT_CLOCK_H
#define DMOE_DHT_CLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/rt_actor.h"

/* Where a virtual clock starts, in DHT seconds (a fixed date, so that runs repeat exactly). */
#define DHT_VCLOCK_EPOCH_S 1700000000.0

typedef struct dht_clock dht_clock;

/* A timer on a clock. Its fields are the clock's; init it with dht_timer_init. */
typedef struct dht_timer {
    rt_timer rt;             /* the real clock's timer; its message is what either clock delivers */
    dht_clock *clock;
    uint64_t due_us, period_us, seq;
    size_t pos;              /* virtual clock: index in its heap + 1; 0 while not armed */
} dht_timer;

/* dht_clock_real returns the real clock (shared by every loop, never freed). */
dht_clock *dht_clock_real(void);

/* dht_vclock_new creates a virtual clock for loop l, starting at DHT_VCLOCK_EPOCH_S. Returns 0 and *out
 * or DMOE_ENOMEM. */
int dht_vclock_new(rt_loop *l, dht_clock **out);

/* dht_vclock_free frees a virtual clock after every timer on it was deinitialized. NULL and the real
 * clock are no-ops. */
void dht_vclock_free(dht_clock *c);

/* dht_clock_now returns the DHT time in seconds: the wall clock, or the virtual time. */
double dht_clock_now(const dht_clock *c);

/* dht_clock_us returns a monotonic time in microseconds, for durations (CLOCK_MONOTONIC, or the virtual
 * time since the clock was created). */
uint64_t dht_clock_us(const dht_clock *c);

/* dht_clock_is_virtual returns 1 for a virtual clock. */
int dht_clock_is_virtual(const dht_clock *c);

/* dht_vclock_run drives the loop of virtual clock c: it runs the actors until none has mail, checks
 * done(arg) (NULL: never true), then moves time to the earliest armed timer and fires it, and so on.
 * Returns 1 as soon as done holds; 0 when the next timer lies more than limit_ms of virtual time ahead
 * or none is armed (the clock then stands limit_ms later: that much time passed with nothing left to
 * happen). */
int dht_vclock_run(dht_clock *c, int (*done)(void *arg), void *arg, uint64_t limit_ms);

/* dht_timer_init binds t to clock c and owner; firing delivers t->rt.msg with type msg_type. Returns 0
 * or DMOE_ENOMEM. */
int dht_timer_init(dht_timer *t, dht_clock *c, rt_actor *owner, int msg_type);
/* dht_timer_start (re)arms t to fire after ms milliseconds, then every ms if periodic. Returns 0 or
 * DMOE_ENOMEM (a virtual clock could not grow its heap; t is then disarmed). */
int dht_timer_start(dht_timer *t, uint64_t ms, int periodic);
/* dht_timer_cancel disarms t (a message already in the mailbox stays there). */
void dht_timer_cancel(dht_timer *t);
/* dht_timer_deinit disarms t and frees what it holds; as rt_timer_deinit. Safe on a zeroed timer. */
void dht_timer_deinit(dht_timer *t);

#endif
