/* loadgen_impl.h -- what the load generator's files share: the run (lg), its users (lg_user), the
 * tunables, and the calls between the engine and its three modes. Not a public header: only
 * loadgen*.c include it; the API is loadgen.h.
 *
 * The files. loadgen.c is the engine: it owns the run's state machine (phases, bounds, timers, the
 * figures and the report), loadgen_run, the printing and loadgen_main. loadgen_node.c, loadgen_moe.c
 * and loadgen_dht.c are the modes: each sets up its users, sends one request for a user, and closes
 * what its users hold. Every request a mode sends ends in exactly one lg_user_done, from the mode's
 * completion callback; lg_user_done records the outcome and sends that user's next request through
 * the engine again.
 *
 * Calls between them, in run order:
 *   engine -> lg_node_start (the info call; its reply builds the users and calls lg_start_run), or
 *             lg_moe_setup / lg_dht_setup (blocking joins) followed by lg_start_run;
 *   engine -> lg_node_send / lg_moe_send / lg_dht_send, one per request (from user_send);
 *   mode   -> lg_user_done, once per request that was sent;
 *   engine -> lg_node_close / lg_moe_close / lg_dht_close at the end (may run twice: idempotent), then
 *             lg_node_free when the loop is gone.
 *
 * Loop thread only; nothing here is shared between runs. The prefix lg_ is this module's internal one.
 */
#ifndef DMOE_LOADGEN_IMPL_H
#define DMOE_LOADGEN_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "actors/net/client.h"
#include "actors/dht/rpc/dht_net.h"
#include "actors/dht/dht_node.h"
#include "actors/load/loadgen.h"
#include "actors/moe/moe.h"
#include "actors/moe/moe_net.h"
#include "actors/net/remote.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_actor.h"

#define LG_RAMP 128            /* users started per loop round: far below the node's listen backlog (511) */
#define LG_TICK_MS 1000        /* per-second samples */
#define LG_DRAIN_EXTRA_MS 1000 /* wait for replies in flight: the call timeout plus this */
#define LG_DHT_POOL (1 << 16)  /* stored keys gets draw from: plenty for variety, 512 KiB at most */
#define LG_DHT_EXPIRATION_S 600.0 /* outlives any run; the nodes forget the keys afterwards */
#define LG_DHT_MAX_VALUE 60000 /* value bytes: under the DHT's 64 KiB bound with the msgpack header */

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

/* One simulated user: at most one request in flight. */
typedef struct {
    lg *g;
    client *cl;
    kern_rng rng;
    lg_buf *in[KERN_MAX_IO], *gout[KERN_MAX_IO];
    double acc;              /* the mix accumulator */
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

/* ---- the engine (loadgen.c) ---- */

/* lg_user_done records the outcome of u's request (err 0: success; msg describes an error and stays the
 * caller's) and sends u's next one. Every request sent ends here exactly once. */
void lg_user_done(lg_user *u, int err, const char *msg);
/* lg_set_err makes the run fail with rc and the message fmt (two %s: a, b), unless it failed already. */
void lg_set_err(lg *g, int rc, const char *fmt, const char *a, const char *b);
/* lg_finish ends the run: the last sample, run_s, phase DONE, timers off, the loop breaks. */
void lg_finish(lg *g);
/* lg_start_run starts the clock, the timers and the first wave of users (phase RUN). */
void lg_start_run(lg *g);

/* ---- node mode (loadgen_node.c) ---- */

/* lg_node_start sends the info call to cfg->peer; its reply picks the targets, builds the users and
 * starts the run (or fails it). Returns 0, or a code with g->err filled when the call could not start. */
int lg_node_start(lg *g);
/* lg_node_send sends u's forward or backward (u->dir, u->target, u->rows) to its expert. Returns 0 or a
 * code when nothing was sent. */
int lg_node_send(lg_user *u);
/* lg_node_close frees the users' clients (calls in flight end as lost). Idempotent. */
void lg_node_close(lg *g);
/* lg_node_free drops the users' row buffers and the target list; after the loop is freed. */
void lg_node_free(lg *g);

/* ---- MoE mode (loadgen_moe.c) ---- */

/* lg_moe_setup makes the users: each joins the DHT (blocking) and makes its layer and rows. Returns 0
 * or a code with g->err filled. */
int lg_moe_setup(lg *g);
/* lg_moe_send runs u's layer forward, or the backward of its kept forward. Returns 0 or a code. */
int lg_moe_send(lg_user *u);
/* lg_moe_close waits for the calls in flight to end by their deadline, then frees the users' layers,
 * forwards, networks and rows. Idempotent. */
void lg_moe_close(lg *g);

/* ---- DHT mode (loadgen_dht.c) ---- */

/* lg_dht_setup makes the users client-mode DHT nodes and joins them all (blocking). Returns 0 or a
 * code with g->err filled. */
int lg_dht_setup(lg *g);
/* lg_dht_send stores a fresh key (forward) or gets a stored one (backward) for u. Returns 0 or a code. */
int lg_dht_send(lg_user *u);
/* lg_dht_close stops and frees the users' DHT nodes and clients (lookups in flight end as lost).
 * Idempotent. */
void lg_dht_close(lg *g);

#endif
