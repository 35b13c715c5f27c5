/* node.h -- one dmoe node: a worker pool, the hosted experts, the server in front of them, its DHT node,
 * checkpoints, statistics and metrics.
 *
 * Start-up runs in two parts. node_start does the synchronous part: raise the descriptor limit (soft to
 * hard; at most half of it goes to served connections), bind the listening addresses, create
 * the DHT node on the same port (unless client mode), start the metrics endpoint. Then, on the loop: join
 * the DHT through the initial peers (a failure to reach any of them is fatal, reported through
 * cfg->on_fatal), choose the expert uids (checkpointed ones first, then the given ones -- warning about
 * those the DHT says another node serves -- or fresh ones from the pattern: a node joining a swarm
 * chooses among the uids the DHT's prefix dictionaries leave free, dht_free.h; too few free ones is a
 * WARN, or fatal with strict_experts), create the experts, serve them,
 * declare them in the DHT; every update_period declare them again and checkpoint them.
 *
 * node_stop is the graceful end: withdraw the experts' declarations from the DHT (dht_withdraw_experts;
 * still serving meanwhile, so clients stop choosing the node before it refuses anything), then refuse
 * new forwards with "shutting down" (the MoE layer retries them on other experts) while still serving
 * backwards and queued work until none has come for a moment, then stop accepting, fail queued requests
 * with "shutting down", let computing batches finish and answer, write a last checkpoint, flush and close every connection (each
 * phase bounded in time), stop the DHT node, then call done.
 *
 * The node is itself an actor (it owns the timers of these phases). Loop thread only.
 */
#ifndef DMOE_NODE_H
#define DMOE_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "actors/serve/expert.h"
#include "runtime/rt_actor.h"
#include "wire/wire_maddr.h"

#define NODE_MAX_ADDRS 8

typedef struct {
    const char *expert_cls;      /* "ffn" */
    kern_config kcfg;            /* hidden_dim, seq_len, dropout, delay_ms */
    int num_experts;
    const char *expert_pattern;  /* NULL: expert.0, expert.1, ... */
    char **expert_uids;          /* NULL-terminated, or NULL: use the pattern */
    int64_t max_batch_size, min_batch_size;
    int batch_wait_ms;
    wire_maddr host[NODE_MAX_ADDRS];
    int n_host;
    wire_maddr announce[NODE_MAX_ADDRS];
    int n_announce;
    kern_optim_cfg opt;
    kern_sched_cfg sched;
    uint64_t seed;
    int num_workers;
    size_t max_frame;
    size_t max_pending_bytes;    /* what clients make the node hold: frames, decoded, decompressed (netq.h) */
    int max_inflight;            /* per connection */
    size_t reply_soft_bytes;     /* per connection: unread replies past this stop reading it */
    size_t reply_hard_bytes;     /* per connection: ... past this close it */
    size_t max_replies_bytes;    /* all connections' unread replies (netq.h) */
    size_t min_rate;             /* bytes/s a frame must arrive at after min_rate_grace_ms (0: any) */
    int min_rate_grace_ms;
    int idle_timeout_s;          /* close connections idle this long (0: never) */
    int max_connections;         /* open connections; the quietest makes room for a new one */
    wire_scheme compression;     /* clients compress inputs, the node input gradients, this way */
    size_t activation_cache_bytes;  /* forward activations kept for their backward (0: none) */
    /* DHT */
    char **initial_peers;        /* NULL-terminated multiaddrs, or NULL: a first node */
    int client_mode;             /* join the DHT without serving it (experts are then not declared) */
    double update_period;        /* seconds between declarations and checkpoints (30) */
    double expiration;           /* seconds a declaration lives (0: max(2 * update_period, 3)) */
    const char *identity_path;   /* the node's key file (dht_ident.h), or NULL: a new key each start */
    const char *trusted_keys_path; /* a private swarm's public keys (dht_trust.h), or NULL: an open swarm */
    /* checkpoints */
    const char *checkpoint_dir;  /* NULL: none */
    int keep_checkpoints;        /* files kept per expert (3) */
    /* observability */
    double stats_report_interval;/* seconds between per-expert stats lines (0: never) */
    int metrics_port;            /* -1: no endpoint; 0: the OS picks */
    int strict_experts;          /* fewer free uids in the pattern than num_experts is fatal (else: a WARN) */
    /* start-up failures after node_start returned (bootstrap, experts): called once, on the loop, with
     * the exit status a program should end with: 2 when strict_experts found too few free uids, else 1 */
    void (*on_fatal)(void *arg, int status, const char *msg);
    void *fatal_arg;
    /* called once when every expert is created and served (may be NULL) */
    void (*on_ready)(void *arg);
    void *ready_arg;
} node_cfg;

typedef struct node node;

/* node_expert_seed returns the initialisation seed of the expert uid on a node started with seed:
 * an expert's initial weights depend only on --seed and its uid (XXH3-64 of the uid, seeded). */
uint64_t node_expert_seed(uint64_t seed, const char *uid);
/* node_default_cfg fills c with dmoe-node's defaults. */
void node_default_cfg(node_cfg *c);
/* node_start builds a node on loop l and starts its asynchronous part (see above). c's strings and
 * arrays must outlive the node. Returns NULL with err filled on a synchronous failure. */
node *node_start(rt_loop *l, const node_cfg *c, char *err, size_t errlen);
/* node_stop starts the graceful stop; done(arg) runs on the loop when it is over. Idempotent. */
void node_stop(node *n, void (*done)(void *arg), void *arg);
/* node_free releases everything (stop first for a graceful end). NULL is a no-op. */
void node_free(node *n);

#endif
