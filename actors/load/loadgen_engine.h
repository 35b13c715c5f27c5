/* loadgen_engine.h -- how a load run is made: the run (lg), its users (lg_user), the tunables, the
 * engine's calls, and lg_mode_ops, the table through which the engine drives a mode. Not a public
 * header: only loadgen*.c include it; the API is loadgen.h.
 *
 * The files, bottom up. loadgen_cfg.c: the settings and the report. loadgen_engine.c: the run's state
 * machine (phases, bounds, timers, the figures and the report). loadgen_node.c, loadgen_moe.c and
 * loadgen_dht.c: the modes; each exports one const lg_mode_ops that sets up its users, sends one request
 * for a user, and closes what its users hold. loadgen.c (the top): picks the mode's table and hands it
 * to lg_engine_run, and prints reports. The engine never names a mode: it calls only through the table
 * it was given, so the calls go one way: modes -> engine, loadgen.c -> both.
 *
 * Calls, in run order:
 *   engine -> ops->start (node: the info call, whose reply builds the users and calls lg_start_run;
 *             MoE, DHT: blocking joins, then lg_start_run);
 *   engine -> ops->send, one per request (ops->can_backward says whether a user may send a backward);
 *   mode   -> lg_user_done, once per request that was sent (from the mode's completion callback), which
 *             records the outcome and sends that user's next request through ops->send again;
 *   engine -> ops->close at the end (may run twice: idempotent), then ops->free when the loop is gone.
 *
 * Loop thread only; nothing here is shared between runs. The prefix lg_ is this module's internal one.
 */
#ifndef DMOE_LOADGEN_ENGINE_H
#define DMOE_LOADGEN_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "actors/net/client.h"
#include "actors/dht/io/dht_net.h"
#include "actors/dht/dht_node.h"
#include "actors/load/loadgen_cfg.h"
#include "actors/moe/moe.h"
#include "actors/moe/route/moe_net.h"
#include "actors/net/remote.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_actor.h"

#define LG_RAMP 128            /* users started per loop round: far below the node's listen backlog (511) */
#define LG_TICK_MS 1000        /* per-second samples */
#define LG_DRAIN_EXTRA_MS 1000 /* wait for replies in flight: the call timeout plus this (twice the timeout
                                * when a forward's backward may still have to follow) */
#define LG_DHT_POOL (1 << 16)  /* stored keys gets draw from: plenty for variety, 512 KiB at most */
#define LG_DHT_EXPIRATION_S 600.0 /* outlives any run; the nodes forget the keys afterwards */

enum { LG_MSG_TICK = 1, LG_MSG_DEADLINE = 2, LG_MSG_START = 3 };
enum { PH_INFO, PH_RUN, PH_DRAIN, PH_DONE };

/* A buffer of rows referenced by requests in flight (node mode; defined in loadgen_node.c). */
typedef struct lg_buf lg_buf;

/* A growable vector of latencies in microseconds. */
typedef struct {
    uint32_t *v;
    size_t n, cap;
} lg_vec;

typedef struct lg lg;
typedef struct lg_mode_ops lg_mode_ops;

/* One simulated user: at most one request in flight. */
typedef struct {
    lg *g;
    client *cl;
    kern_rng rng;
    lg_buf *in[KERN_MAX_IO], *gout[KERN_MAX_IO];
    double acc;              /* the mix accumulator */
    int owed;                /* paired modes: the forward in flight (or just answered) opened a training
                              * pair, so this user's next request is its backward */
    int has_prev;            /* a forward was sent: a backward may follow */
    int prev_target;
    int64_t prev_rows;
    uint64_t prev_handle;    /* the activation handle of that forward's reply (0: none) */
    int busy, dir, target;   /* the request in flight */
    int64_t rows;
    uint64_t t_send_us;
    /* MoE mode */
    moe_net *net;
    moe_layer *moe;
    moe_fwd *fwd;            /* the last successful forward, kept for a backward (mix > 0) */
    float *x, *gy;           /* batch_max input rows; batch_max output gradients (made at the first need) */
    int gy_D;
    /* DHT mode */
    dht_net *dn;
    dht *d;
    uint64_t key;            /* the key of the request in flight */
    uint64_t n_keys;         /* keys this user has stored */
} lg_user;

/* One run. The actor comes first: the engine's handler casts its rt_actor back to lg. */
struct lg {
    rt_actor actor;
    rt_timer tick, deadline;
    rt_signal start_sig;
    rt_loop *loop;
    const loadgen_cfg *cfg;
    const lg_mode_ops *ops;  /* the mode */
    loadgen_report *r;
    int phase;
    int rc;
    char *err;
    size_t errlen;
    /* targets */
    int n_targets;
    char (*uids)[256];
    rx_schema schema;
    /* users */
    lg_user *users;
    int n_users, n_started, inflight;
    uint64_t reserved;       /* backwards owed by forwards already sent (counted against max_requests) */
    client *info_cl;
    /* time */
    uint64_t t0_us, window_us, t_last_us, t_tick_us;
    /* figures */
    lg_vec lat[2];           /* the window's latencies by direction */
    lg_vec tick_lat;         /* this second's latencies */
    uint64_t tick_ok, tick_rows, tick_err;
    FILE *csv;
    int wait_lost;           /* after the run: the loop runs until the calls still in flight have ended */
    /* DHT mode */
    uint64_t nonce;
    uint64_t *keys;          /* the pool of stored keys */
    size_t n_keys;
    int joined, join_err;
    char join_msg[256];
};

/* What the engine calls a mode through. One const table per mode (below). */
struct lg_mode_ops {
    const char *name;        /* "node", "moe", "dht" */
    /* start makes the users and starts the run by calling lg_start_run, at once or later from a callback
     * (the run then stays in PH_INFO until it does). Returns 0, or a code with g->err filled. */
    int (*start)(lg *g);
    /* send sends u's request (u->dir 0 forward, 1 backward; u->target, u->rows); 0, or a code when
     * nothing was sent. A request sent ends in exactly one lg_user_done. */
    int (*send)(lg_user *u);
    /* can_backward returns whether u may send a backward now (it has something to go backward on). */
    int (*can_backward)(const lg_user *u);
    /* close ends what the users hold; calls in flight end as lost. Idempotent. */
    void (*close)(lg *g);
    /* free drops what the mode allocated for the run, after the loop is gone; NULL when nothing. */
    void (*free)(lg *g);
    int one_row_per_request; /* each request counts one row (DHT), not u->rows */
    int paired;              /* a backward is the backward of the user's own previous forward (node, MoE);
                              * else (DHT) a "backward" is a get of any stored key */
};

/* The modes (loadgen_node.c, loadgen_moe.c, loadgen_dht.c). */
extern const lg_mode_ops lg_node_ops;
extern const lg_mode_ops lg_moe_ops;
extern const lg_mode_ops lg_dht_ops;

/* ---- the engine (loadgen_engine.c) ---- */

/* lg_engine_run runs the load test c (already checked) with the mode ops on a fresh loop on the calling
 * thread, and fills *r (zeroed first). Returns 0 when the run took place, or a code with err filled; on
 * error r holds no samples. */
int lg_engine_run(const loadgen_cfg *c, const lg_mode_ops *ops, loadgen_report *r, char *err, size_t errlen);
/* lg_user_done records the outcome of u's request (err 0: success; msg describes an error and stays the
 * caller's) and sends u's next one. Every request sent ends here exactly once. */
void lg_user_done(lg_user *u, int err, const char *msg);
/* lg_set_err makes the run fail with rc and the message fmt (two %s: a, b), unless it failed already. */
void lg_set_err(lg *g, int rc, const char *fmt, const char *a, const char *b);
/* lg_finish ends the run: the last sample, run_s, phase DONE, timers off, the loop breaks. */
void lg_finish(lg *g);
/* lg_start_run starts the clock, the timers and the first wave of users (phase RUN). */
void lg_start_run(lg *g);

#endif
