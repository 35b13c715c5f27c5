/* rt_actor.h -- actors with mailboxes on a single-threaded libevent loop, and their timers.
 *
 * An actor is a struct embedded in a bigger one (the expert, a batch queue, a connection, a call). It has
 * a FIFO mailbox and a handler. rt_send appends a message; if the actor was idle, it joins the loop's
 * ready list and the loop's run event is activated. On each run the loop takes every ready actor in
 * turn and hands it at most RT_ACTOR_BATCH messages, one at a time and in order, then lets libevent
 * serve sockets and timers before the next round: no actor can starve the others or the network.
 *
 * Messages: a struct that embeds rt_msg as its first member. A handler owns the message it is given and
 * ends with rt_msg_drop (which calls msg->drop, or nothing when drop is NULL: messages embedded in
 * longer-lived structs, like timers and pool jobs, have their own drop or none).
 *
 * Stopping: rt_actor_stop marks the actor stopped; no handler runs for it again; its pending messages
 * are dropped and its destroy callback runs after the current round, on the loop, never inside its
 * own handler, and only once no pool job it owns is still running (see rt_pool.h).
 *
 * Threads: everything here is loop-thread only. The one way in from another thread is rt_pool.
 */
#ifndef DMOE_RT_ACTOR_H
#define DMOE_RT_ACTOR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

struct event_base;
struct event;

#define RT_ACTOR_BATCH 64   /* messages per actor per loop round: bounds the work per wake-up */

typedef struct rt_loop rt_loop;

typedef struct rt_msg {
    struct rt_msg *next;
    int type;                          /* meaning chosen by the receiving actor */
    void (*drop)(struct rt_msg *m);    /* frees or recycles m; NULL: nothing to do */
} rt_msg;

typedef struct rt_actor rt_actor;
typedef void (*rt_handler)(rt_actor *self, rt_msg *m);

struct rt_actor {
    rt_loop *loop;
    const char *name;
    rt_handler handle;
    void (*destroy)(rt_actor *self);   /* frees the enclosing struct; may be NULL */
    rt_msg *head, *tail;
    size_t depth;                      /* messages waiting */
    rt_actor *next_ready, *next_reap;
    int jobs;                          /* pool jobs in flight (rt_pool) */
    unsigned scheduled : 1, stopped : 1, reap_listed : 1;
};

/* rt_loop_new creates a loop with its own event_base (thread support enabled for rt_pool).
 * Returns NULL when out of memory. */
rt_loop *rt_loop_new(void);
/* rt_loop_base returns the libevent base, for sockets, signals and listeners of the loop's actors. */
struct event_base *rt_loop_base(rt_loop *l);
/* rt_loop_run dispatches until rt_loop_break or no events are left. Returns 0 or DMOE_EINTERNAL. */
int rt_loop_run(rt_loop *l);
/* rt_loop_break makes rt_loop_run return after the current callback. */
void rt_loop_break(rt_loop *l);
/* rt_loop_free reaps the actors already stopped, then frees the base. Actors still running belong to
 * their creators, who stop them before this. */
void rt_loop_free(rt_loop *l);
/* rt_loop_now_ms returns a monotonic clock in milliseconds (cached per loop iteration). */
uint64_t rt_loop_now_ms(rt_loop *l);

/* rt_clock_us returns CLOCK_MONOTONIC in microseconds (any thread). */
uint64_t rt_clock_us(void);
/* rt_clock_ns returns CLOCK_MONOTONIC in nanoseconds (any thread; the vDSO, no system call). */
uint64_t rt_clock_ns(void);

/* rt_actor_init prepares a (zeroed or fresh) actor on loop l. name must outlive the actor. */
void rt_actor_init(rt_actor *a, rt_loop *l, const char *name, rt_handler handle, void (*destroy)(rt_actor *));
/* rt_send queues m for a. Returns 0 (a owns m now) or DMOE_ESHUTDOWN when a is stopped (the caller
 * still owns m). */
int rt_send(rt_actor *a, rt_msg *m);
/* rt_actor_stop stops a; see the header comment. Idempotent. */
void rt_actor_stop(rt_actor *a);
/* rt_msg_drop releases m through its drop function; NULL is a no-op. */
void rt_msg_drop(rt_msg *m);

/* A signal: a message embedded in a long-lived struct that tells `to` "something happened" (work is
 * waiting, a pull is wanted). Raising it while it still waits in the mailbox does nothing, so a burst
 * of events costs one message. The handler ends with rt_msg_drop, which re-arms it. */
typedef struct rt_signal {
    rt_msg msg;
    rt_actor *to;
    int queued;
} rt_signal;

/* rt_signal_init binds s to actor to with message type type. */
void rt_signal_init(rt_signal *s, rt_actor *to, int type);
/* rt_signal_raise sends s unless it is already queued. Returns 0 or DMOE_ESHUTDOWN (to is stopped). */
int rt_signal_raise(rt_signal *s);

/* A timer that delivers its embedded message to its owner when it fires. The message is never freed by
 * rt_msg_drop (it belongs to the timer); while it waits in the mailbox the timer does not queue it again. */
typedef struct rt_timer {
    rt_msg msg;
    rt_actor *owner;
    struct event *ev;
    struct timeval period;
    unsigned queued : 1, periodic : 1;
} rt_timer;

/* rt_timer_init binds t to owner; firing delivers t->msg with type msg_type. Returns 0 or DMOE_ENOMEM. */
int rt_timer_init(rt_timer *t, rt_actor *owner, int msg_type);
/* rt_timer_start (re)arms t to fire after ms milliseconds, then every ms if periodic. */
void rt_timer_start(rt_timer *t, uint64_t ms, int periodic);
/* rt_timer_cancel disarms t (a message already in the mailbox stays there). */
void rt_timer_cancel(rt_timer *t);
/* rt_timer_deinit disarms and frees t's event. Call from the owner's destroy (its mailbox has been
 * emptied by then) or when t->msg is not queued. Safe on a zeroed timer. */
void rt_timer_deinit(rt_timer *t);

#endif
