/* dht_node.h -- one Kademlia DHT node (hivemind's DHTNode + DHTProtocol) as an actor, transport-agnostic.
 *
 * The node owns its routing table, blacklist, storage (values it is a replica for), cache (values seen
 * by its own gets) and a negative cache (used by dht_experts.c). It talks to the world only through a
 * dht_transport: outgoing requests go through transport->call (one callback each: reply, remote error,
 * timeout, connection failure); incoming requests are handed to dht_node_deliver by the transport, which
 * also supplies how to answer them. The TCP transport is dht_net.h, the in-memory one dht_memnet.h.
 * It reads the time and arms its timers only through its dht_clock (dht_clock.h): the wall clock, or a
 * virtual one under which a test swarm runs with no sleep.
 *
 * Identity (dht_ident.h, wire/PROTOCOL_DHT.md): the node's id is the hash of its Ed25519 public key, and
 * nothing a peer claims enters the routing table before the peer has proven it: an outgoing request to
 * a peer not already known at that id and address carries a random challenge, which the reply must sign;
 * an incoming request from an unknown sender is answered, and the sender is sent a challenge ping at the
 * address it claims when that address is on the IP the request came from (a probe: one extra round
 * trip per new peer; a third host named in a request is sent nothing); only a proof from that very
 * address adds it. One IP address holds at most max_per_host entries of the table (dht_routing.h), so ids
 * ground on one host cannot fill the slots nearest to a key; a sender beyond it is not even probed.
 * What a request stores is charged to the IP address it came from (the transport's word, not the PEER
 * it claims), and one address may fill only its share of the storage (DHT_OWNER_SHARE). Every item stored,
 * from a peer or from our own lookups, passes the signed-record policy first (dht_trust.h): a forged,
 * over-long or (in a private swarm) untrusted record or unsigned value refuses the whole request. A claim that is not proven changes nothing: no routing entry, no hand-over, no ban.
 *
 * Rules applied here, as hivemind's DHTProtocol: every request and every reply from a proven peer
 * refreshes it in the routing table, unless the sender is in client mode (its PEER is nil); a failed
 * RPC (no answer, a refused connection, a garbled or unproven reply, or an error reply saying the peer
 * is stopping) removes the peer (the freshest replacement takes its place) and feeds the blacklist; a full bucket offers its
 * least-recently-seen node for a ping and drops it if the ping fails; a newly proven node that is now
 * nearer to a stored key than our farthest known replica, while we are nearer than all of them, is
 * given that key (Kademlia's hand-over: at the address its proof came from, at most
 * DHT_HANDOVER_MAX_KEYS keys and DHT_HANDOVER_MAX_BYTES bytes, DHT_HANDOVER_SCAN keys examined per loop
 * turn, DHT_HANDOVER_PEERS new peers at a time -- dht_handover.c); every refresh_period the stale buckets are refreshed with a
 * lookup of a random id inside them. A client-mode node makes requests and answers none.
 *
 * The floors above. The lookups (dht_lookup.h) and the bootstrap (dht_boot.h) call the node's RPCs
 * below; the node never calls them. Each attaches a dht_part whose hooks the node runs: stop (from
 * dht_node_stop), refresh (the stale buckets to look up) and release (when the node is freed).
 *
 * Order: dht_node_new -> dht_node_bootstrap (dht_boot.h) -> dht_store / dht_get (dht_lookup.h),
 * dht_declare_experts... (dht_experts.h) -> dht_node_stop -> free the transport (its pending calls end)
 * -> dht_node_free. Loop thread only.
 */
#ifndef DMOE_DHT_NODE_H
#define DMOE_DHT_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_id.h"
#include "actors/dht/trust/dht_ident.h"
#include "actors/dht/trust/dht_trust.h"
#include "actors/dht/io/dht_clock.h"
#include "actors/dht/io/dht_proto.h"
#include "actors/dht/dht_routing.h"
#include "actors/dht/dht_rtt.h"
#include "actors/dht/dht_storage.h"
#include "runtime/rt_actor.h"
#include "runtime/rt_lag.h"
#include "wire/wire_maddr.h"
#include "wire/wire_msg.h"

/* Defaults (hivemind's DHTNode.create): replicas per key, RPCs in flight per lookup, timeouts. */
#define DHT_NUM_REPLICAS 5
#define DHT_ALPHA 3
#define DHT_RPC_TIMEOUT_MS 3000           /* one RPC; hivemind's wait_timeout */
#define DHT_LOOKUP_TIMEOUT_MS 15000       /* a whole lookup */
#define DHT_REFRESH_PERIOD_S 600.0        /* stale-bucket refresh (hivemind's refresh_timeout) */
#define DHT_BOOTSTRAP_RETRIES 2           /* extra ping rounds for initial peers that did not answer */
#define DHT_BOOTSTRAP_RETRY_MS 500        /* pause before each extra round */
#define DHT_HANDOVER_BATCH DHT_PROTO_MAX_KEYS /* keys per hand-over store request */
/* Hand-over bounds (dht_handover.c). It is a head start, not the only way a new peer gets its keys:
 * their storers re-store them (declarations every update period) to the nearest nodes, the new one
 * included. So it may stop early, and must, for a peer cannot be allowed to make a node send without
 * bound or stall it: */
#define DHT_HANDOVER_MAX_KEYS 4096        /* keys to one new peer: ~5x the keys an honest node of a 1,000-
                                           * node swarm holding 1M values is nearest to (5 replicas) */
#define DHT_HANDOVER_MAX_BYTES (4u << 20) /* value bytes to one new peer (64 values at the 64 KiB limit) */
#define DHT_HANDOVER_PEERS 4              /* new peers handed over to at once; newcomers beyond are skipped
                                           * (a real join meets a few holders per key region at a time) */
#define DHT_HANDOVER_SCAN 256             /* keys examined per loop turn: ~0.5 ms of work, however many
                                           * keys are stored */
#define DHT_PROBES_MAX 256                /* unknown senders challenged at once; more are ignored until later */
/* Replies to an address no round trip has proven are at most this many times the request's bytes (a
 * find reply is cut to fit: wire/PROTOCOL_DHT.md, "Reply sizes"): a spoofed or reflected request
 * cannot make the node send much more than it received. */
#define DHT_REPLY_FACTOR 4
#define DHT_PROVEN_HOSTS 4096             /* proven IP addresses remembered (a set that starts over when full) */

typedef struct dht dht;

/* The reply to one outgoing call. err 0: reply is a WIRE_REPLY_OK message; else a DMOE_* code (a remote
 * error's code with reply set, or DMOE_ETIMEDOUT / DMOE_ECONN / DMOE_ESHUTDOWN with reply NULL) and msg
 * a human description. reply is borrowed: valid only during the callback. */
typedef void (*dht_reply_fn)(void *arg, int err, const char *msg, const wire_msg *reply);
/* How a transport answers a delivered request: called exactly once per delivery with the reply (which
 * it consumes) or NULL (no answer: just release ctx). */
typedef void (*dht_respond_fn)(void *ctx, wire_out *reply);

/* A transport: the node's only way out. call consumes req in every case; returns 0 (cb will run later,
 * exactly once, never inside call) or a negative code (cb will not run). */
typedef struct {
    void *impl;
    uint64_t (*next_id)(void *impl);
    int (*call)(void *impl, const wire_maddr *to, uint64_t id, wire_out *req, uint64_t timeout_ms, dht_reply_fn cb,
                void *arg);
} dht_transport;

typedef struct {
    const dht_ident *ident;      /* the node's key pair (copied; its id is the node id); NULL: a fresh one */
    dht_addr addr;               /* the address others reach us at (ignored in client mode) */
    int client_mode;
    uint64_t seed;
    size_t bucket_size;          /* k (0: DHT_BUCKET_SIZE) */
    size_t num_replicas;         /* 0: DHT_NUM_REPLICAS */
    size_t alpha;                /* 0: DHT_ALPHA */
    uint64_t rpc_timeout_ms;     /* 0: DHT_RPC_TIMEOUT_MS */
    uint64_t soft_timeout_ms;    /* a lookup's soft timeout (dht_lookup.c): 0 adaptive, from the node's RTT
                                  * (dht_rtt.h); else this fixed value, at most rpc_timeout_ms */
    uint64_t lookup_timeout_ms;  /* 0: DHT_LOOKUP_TIMEOUT_MS */
    double refresh_period_s;     /* 0: DHT_REFRESH_PERIOD_S; < 0: never */
    int bootstrap_retries;       /* -1: DHT_BOOTSTRAP_RETRIES */
    uint64_t bootstrap_retry_ms; /* 0: DHT_BOOTSTRAP_RETRY_MS */
    int no_cache;                /* 1: gets neither cache locally nor on the nearest node lacking the value */
    const dht_storage_limits *limits; /* NULL: defaults */
    size_t max_per_host;         /* routing entries and lookup candidates per IP address (0: DHT_MAX_PER_HOST) */
    int limit_loopback;          /* 1: the per-host limit counts loopback too (default 0: exempt, for tests) */
    dht_clock *clock;            /* NULL: dht_clock_real(); a virtual one must outlive the node */
    const dht_trust *trusted_keys; /* a private swarm: only records signed by these keys are stored or used
                                    * (dht_trust.h; must outlive the node); NULL: an open swarm */
    double max_record_lifetime_s;  /* a signed record expires at most this far ahead (0: DHT_RECORD_MAX_LIFETIME_S) */
} dht_cfg;

/* dht_cfg_default fills c with defaults: a fresh key (hence a random id), client_mode 0, addr empty (set
 * it). */
void dht_cfg_default(dht_cfg *c);

/* dht_node_new creates a node on loop l speaking through *t (copied; t->impl must outlive the node).
 * Returns 0 and *out, or DMOE_EINVAL (no address outside client mode), DMOE_ENOMEM or DMOE_EINTERNAL
 * (libsodium could not start). */
int dht_node_new(rt_loop *l, const dht_cfg *c, const dht_transport *t, dht **out);

/* dht_node_deliver hands an incoming request to the node, which takes m (wire_msg_free + free) and
 * answers through respond(ctx, ...) exactly once, now or later. from is the IP address the request came
 * from, as the transport saw it (NULL or "?": unknown; copied): what a sender stores is charged to it
 * (dht_storage.h's owner shares). */
void dht_node_deliver(dht *d, wire_msg *m, const char *from, dht_respond_fn respond, void *ctx);

/* dht_node_stop stops timers and lookups (their callbacks get DMOE_ESHUTDOWN) and answers later
 * requests with DMOE_ESHUTDOWN. Idempotent. */
void dht_node_stop(dht *d);
/* dht_node_free stops the node if needed and frees it (after its transport, see the order above).
 * NULL is a no-op. */
void dht_node_free(dht *d);

/* dht_node_id returns the node's id. */
const dht_id *dht_node_id(const dht *d);
/* dht_node_self returns the node's PEER as sent on the wire (present 0 in client mode). */
const dht_peer_info *dht_node_self(const dht *d);
/* dht_node_maddr writes the node's multiaddr text ("/ip4/.../tcp/PORT/p2p/ID") into buf[cap]. */
void dht_node_maddr(const dht *d, char *buf, size_t cap);
/* dht_node_ident returns the node's key pair (owned by the node). */
const dht_ident *dht_node_ident(const dht *d);
/* dht_node_cfg returns the node's configuration with every default filled in (ident: the node's own). */
const dht_cfg *dht_node_cfg(const dht *d);
/* dht_node_loop returns the node's loop. */
rt_loop *dht_node_loop(const dht *d);
/* dht_node_now returns the DHT time in seconds from the node's clock (the wall clock, as hivemind's
 * get_dht_time, unless cfg.clock is virtual). */
double dht_node_now(const dht *d);
/* dht_node_clock returns the node's clock, for the timers of the floors above. */
dht_clock *dht_node_clock(const dht *d);
/* dht_node_blacklist returns the node's blacklist (owned by the node). */
dht_blacklist *dht_node_blacklist(dht *d);
/* dht_node_routing / dht_node_storage / dht_node_cache / dht_node_negcache return the node's tables
 * (owned by the node; loop thread only). */
dht_routing *dht_node_routing(dht *d);
dht_storage *dht_node_storage(dht *d);
dht_storage *dht_node_cache(dht *d);
dht_storage *dht_node_negcache(dht *d);
/* dht_node_is_stopped returns 1 after dht_node_stop. */
int dht_node_is_stopped(const dht *d);
/* dht_node_stored_keys returns how many keys the node holds as a replica (expired ones included until
 * the next sweep). */
size_t dht_node_stored_keys(const dht *d);
/* dht_node_rpc_count returns the outgoing RPCs this node has started (probes included). */
uint64_t dht_node_rpc_count(const dht *d);
/* dht_node_rtt returns the node's round-trip estimator: every successful reply (find, store, ping; not an
 * error reply, a garbled or unproven one) is one sample, from the send to the reply on the node's clock. */
dht_rtt dht_node_rtt(const dht *d);
/* dht_node_soft_timeout_ms returns how long a lookup's find may go unanswered before the lookup stops
 * waiting for it (dht_lookup.c; the RPC itself runs on to rpc_timeout_ms): cfg.soft_timeout_ms when set
 * (at most rpc_timeout_ms), else dht_rtt_timeout_ms of the node's estimator (SRTT + 4 RTTVAR within
 * [DHT_SOFT_TIMEOUT_MIN_MS, rpc_timeout_ms]; rpc_timeout_ms / 3 before the first reply). */
uint64_t dht_node_soft_timeout_ms(const dht *d);
/* Identity counters: proofs signed (replies to challenges), proofs checked and refused, probes sent,
 * replies cut to the unproven-address cap. */
typedef struct {
    uint64_t signed_proofs, checked_proofs, refused_proofs, probes;
    uint64_t cut_replies;        /* find replies cut to the cap on unproven addresses */
} dht_ident_stats;
/* Hand-over counters: new peers handed over to (started, done), skipped because DHT_HANDOVER_PEERS
 * were in progress, in progress now (active), and keys sent. */
typedef struct {
    uint64_t started, done, skipped, keys_sent;
    size_t active;
} dht_handover_stats;
/* dht_node_handover_stats returns the node's hand-over counters. */
dht_handover_stats dht_node_handover_stats(const dht *d);
/* dht_node_ident_stats returns the node's identity counters. */
dht_ident_stats dht_node_ident_stats(const dht *d);
/* dht_node_lag returns the node's stall meter (owned by the node): the longest any of its handlers --
 * its mail (requests served, timers, hand-over turns) and its RPC completions with the callbacks they
 * run -- kept the loop, in wall and thread CPU time. */
const rt_lag *dht_node_lag(const dht *d);

/* ---- the node's RPCs, for the lookups and the bootstrap (they apply the routing and blacklist rules
 * above) ---- */

/* Completion of dht_node_find: err 0 and rep (borrowed) or a DMOE_* code and msg. */
typedef void (*dht_find_done)(void *arg, int err, const char *msg, const dht_find_rep *rep);
/* Completion of dht_node_store_rpc: err 0 and rep (borrowed) or a DMOE_* code and msg. */
typedef void (*dht_store_done)(void *arg, int err, const char *msg, const dht_store_rep *rep);

/* dht_node_find sends dht_find for keys[0..n) to peer. Returns 0 (cb runs later, once) or a negative code
 * (DMOE_ECONN: peer is blacklisted; DMOE_ENOMEM; DMOE_ESHUTDOWN). */
int dht_node_find(dht *d, const dht_node *peer, const dht_id *keys, size_t n, dht_find_done cb, void *arg);
/* dht_node_store_rpc sends dht_store for items[0..n) to peer; as dht_node_find. */
int dht_node_store_rpc(dht *d, const dht_node *peer, const dht_store_item *items, size_t n, int in_cache,
                       dht_store_done cb, void *arg);
/* Completion of dht_node_ping: err 0 and who (borrowed: the PEER the node answered with) or a DMOE_*
 * code and msg. */
typedef void (*dht_ping_done)(void *arg, int err, const char *msg, const dht_peer_info *who);
/* dht_node_ping sends dht_ping to peer (whose id is checked against the answer when has_id); as
 * dht_node_find. Every RPC to a peer the table does not hold at that id and address carries a challenge:
 * its reply must prove the id (else the call fails with DMOE_EINVAL), and it is learned only when the
 * PEER it answers with has the address called. */
int dht_node_ping(dht *d, const dht_node *peer, int has_id, dht_ping_done cb, void *arg);
/* dht_node_store_local stores one item in the node's storage (or cache) and indexes the key for
 * hand-over. Returns what dht_storage_store returns. */
int dht_node_store_local(dht *d, const dht_store_item *it, int in_cache);


/* ---- parts: how the floors above hang on the node ---- */

/* A part, embedded in the state a file above keeps per node (the lookups' list, a running bootstrap,
 * the replica keys). The node runs its hooks, on the loop thread: stop from dht_node_stop (end
 * everything with DMOE_ESHUTDOWN; it may detach its own part, no other), refresh (may be NULL) with the
 * ids of the stale buckets to look up, release (may be NULL) when the node is freed with the part still
 * attached, joined (may be NULL) when a proven peer the table did not hold enters it (p: its PEER, whose
 * address is the one its proof came from; not in client mode). kind tells parts apart: the address of a
 * static of the file that owns it. */
typedef struct dht_part dht_part;
struct dht_part {
    dht_part *next;
    const void *kind;
    void (*stop)(dht_part *p);
    void (*refresh)(dht_part *p, const dht_id *ids, size_t n);
    void (*release)(dht_part *p);
    void (*joined)(dht_part *part, const dht_peer_info *p);
};

/* dht_node_attach attaches p (which stays its owner's; it must stay valid until detached or released). */
void dht_node_attach(dht *d, dht_part *p);
/* dht_node_detach detaches p; nothing when p is not attached. */
void dht_node_detach(dht *d, dht_part *p);
/* dht_node_part returns the attached part of this kind, or NULL. */
dht_part *dht_node_part(dht *d, const void *kind);

#endif
