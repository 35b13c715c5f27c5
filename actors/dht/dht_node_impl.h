/* dht_node_impl.h -- the DHT node's state, shared by the files that make up the node (not for callers:
 * they use dht_node.h).
 *
 * The node is three rooms, one floor above the other, none calling the one above it:
 *  - dht_node.c: the actor, its configuration and timers, the outgoing RPCs and who gets into the
 *    routing table (learn / heard / probe), the parts;
 *  - dht_handover.c: the keys stored as a replica (store_from, the key index) and their hand-over to
 *    new peers; it hangs on the node as a part whose `joined` hook learn() runs;
 *  - dht_serve.c: the incoming requests (dht_node_deliver): decoded, applied, answered.
 * Work of the floors above reaches the node's actor as a dht_job: a message that carries its own run
 * function, so the node's handler calls nothing above it. Loop thread only.
 *
 * Include dht_node.h first: this header completes its types, and does not include it itself, so that
 * dht_node.c (whose header that is) can include this one without a cycle between the two.
 */
#ifndef DMOE_DHT_NODE_IMPL_H
#define DMOE_DHT_NODE_IMPL_H

#ifndef DMOE_DHT_NODE_H
#error "include actors/dht/dht_node.h before actors/dht/dht_node_impl.h"
#endif

#include "runtime/rt_map.h"

typedef struct dht_job dht_job;
/* A job for the node's actor: the node runs run(d, j) in turn; run owns the message (it ends with
 * rt_msg_drop or keeps it, as its sender arranged). */
struct dht_job {
    rt_msg msg;
    void (*run)(dht *d, dht_job *j);
};

struct dht {
    rt_actor actor;
    rt_loop *loop;
    dht_cfg cfg;
    dht_transport t;
    dht_peer_info self;
    dht_ident ident;
    dht_ident_stats istats;
    rt_lag lag;                  /* the node's handlers, metered (dht_node_lag) */
    rt_map probing;              /* ids being probed: id -> &dht_present */
    rt_map proven_hosts;         /* IP addresses a round trip proved: host -> its malloc'd copy (the key) */
    uint8_t token_key[32];       /* keys the address tokens of cut replies (dht_serve.c) */
    dht_routing *rt;
    dht_blacklist *bl;
    dht_storage *store, *cache, *neg;
    dht_clock *clock;
    dht_timer refresh, sweep;
    double sweep_at;
    dht_part *parts;
    dht_rtt rtt;                 /* round trips of successful replies (dht_node_soft_timeout_ms) */
    uint64_t rpcs;
    int stopped;
};

/* The value of every entry of a set kept as an rt_map (an rt_map value is never NULL). */
extern char dht_present;

/* dht_node_job queues j on d's actor. Returns 0 or DMOE_ESHUTDOWN (the caller keeps j). */
int dht_node_job(dht *d, dht_job *j);

/* dht_node_arm_sweep arms the storage sweep at the earliest expiration held (after a store). */
void dht_node_arm_sweep(dht *d);

/* dht_node_heard handles the sender p of an incoming request that came from IP address src (the
 * transport's word; NULL or "?": unknown): refreshed when held at that id and address, else probed (a
 * challenge ping; the proof adds it) -- only when the address it claims is on src, so that a request
 * naming a third host sends nothing there. */
void dht_node_heard(dht *d, const dht_peer_info *p, const char *src);

/* dht_node_prove_host records that a round trip proved host (an IP address) real: we called it and its
 * proof came back, or a request from it carried the token we sent there. At most DHT_PROVEN_HOSTS are
 * kept; when full the set starts over (its members prove themselves again on their next round trip). */
void dht_node_prove_host(dht *d, const char *host);
/* dht_node_host_proven returns 1 when host was proven (dht_node_prove_host). */
int dht_node_host_proven(const dht *d, const char *host);

/* dht_node_classify applies the signed-record policy (dht_trust.h) to it: 1 a valid record, 0 an
 * unsigned value, or DMOE_EINVAL with the reason in err. */
int dht_node_classify(const dht *d, const dht_store_item *it, char *err, size_t errlen);
/* dht_node_store_from stores it, of class cls (dht_node_classify), charged to owner (NULL: the node's
 * own), indexing a key stored as a replica for the hand-over (dht_handover.c). Returns what
 * dht_storage_store_from (or _store_signed, for a record) returns. */
int dht_node_store_from(dht *d, const char *owner, const dht_store_item *it, int in_cache, int cls);

#endif
