/* node.h -- one dmoe node: a worker pool, the hosted experts, and the server in front of them.
 *
 * node_start does, in order, what dmoe-node logs at start: bind the listening addresses, generate or
 * take the expert uids, create the experts (each with its two batch queues), start serving. node_stop
 * is the graceful end: stop accepting, fail queued requests with "shutting down", let computing batches
 * finish and answer, flush and close every connection (each phase bounded in time), then call done.
 *
 * The node is itself an actor (it owns the stop sequence's timer). Loop thread only.
 */
#ifndef DMOE_NODE_H
#define DMOE_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "actors/expert.h"
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
    size_t max_pending_bytes;    /* budget for received frames not yet batched */
    int max_inflight;            /* per connection */
} node_cfg;

typedef struct node node;

/* node_expert_seed returns the initialisation seed of the expert uid on a node started with seed:
 * an expert's initial weights depend only on --seed and its uid (XXH3-64 of the uid, seeded). */
uint64_t node_expert_seed(uint64_t seed, const char *uid);
/* node_default_cfg fills c with dmoe-node's defaults. */
void node_default_cfg(node_cfg *c);
/* node_start builds and starts a node on loop l. Returns NULL with err filled on failure. */
node *node_start(rt_loop *l, const node_cfg *c, char *err, size_t errlen);
/* node_addr returns the i-th address the node announces (the bound one when not told otherwise),
 * or NULL past the end. */
const wire_maddr *node_addr(const node *n, int i);
/* node_expert returns the hosted expert with uid, or NULL; node_experts lists all of them. */
expert *node_expert(const node *n, const char *uid);
int node_experts(const node *n, expert ***out);
/* node_stop starts the graceful stop; done(arg) runs on the loop when it is over. Idempotent. */
void node_stop(node *n, void (*done)(void *arg), void *arg);
/* node_free releases everything (stop first for a graceful end). NULL is a no-op. */
void node_free(node *n);

#endif
