/* dht_memnet.h -- an in-memory transport for DHT nodes: thousands of nodes in one process and one loop.
 *
 * The memnet gives each endpoint a fake IPv4 address (10.x.y.z, port 7000; or another endpoint's IP at
 * port 7001 and up, dht_memnet_add_colocated: one host running many nodes) and moves messages between
 * them through the loop: a request is encoded (wire_out_flatten), delivered after the link's latency
 * (`latency_ms`, or what dht_memnet_set_latency's function says for that pair) to the destination node
 * (dht_node_deliver, decoded by wire_msg_decode exactly as from a socket), and its reply comes back
 * after the latency of the way back, the sender endpoint's IP given as the request's source. A call
 * to an address with no bound node fails with DMOE_ECONN; a call to an endpoint that is down
 * (dht_memnet_set_down) is dropped and times out, as a crashed host would. Every call gets exactly
 * one callback (reply, timeout, DMOE_ECONN, or DMOE_ESHUTDOWN from dht_memnet_free or
 * dht_memnet_close_endpoint). A simulator (actors/dht/sim/) adds loss (dht_memnet_set_filter), its own
 * answers for some endpoints (dht_memnet_set_intercept: hostile peers) and peers that leave for good
 * (dht_memnet_close_endpoint), and reads each endpoint's traffic (dht_memnet_traffic_of).
 *
 * Time is the memnet's clock (dht_clock.h). Give it and every node the same virtual clock and drive
 * the loop with dht_vclock_run: a swarm of thousands then runs with no sleep, at the machine's full
 * speed, and a test waits for a minute of DHT time in the milliseconds it takes to compute.
 *
 * Order: dht_vclock_new -> dht_memnet_new -> dht_memnet_add per node (gives its address and transport)
 * -> dht_node_new (cfg.clock: the same clock) -> dht_memnet_bind -> ... -> dht_node_stop (all) ->
 * dht_memnet_free -> dht_node_free (all) -> rt_loop_free -> dht_vclock_free. The memnet is one actor
 * with one timer and a heap of due events. Loop thread only.
 */
#ifndef DMOE_DHT_MEMNET_H
#define DMOE_DHT_MEMNET_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_node.h"
#include "runtime/rt_actor.h"

/* Events handled per timer wake-up: bounds the work per round, as RT_ACTOR_BATCH does. */
#define DHT_MEMNET_BATCH 4096
/* Endpoints one memnet can address (the 24 bits of 10.x.y.z). */
#define DHT_MEMNET_MAX_NODES (1 << 20)

typedef struct dht_memnet dht_memnet;

/* dht_memnet_new creates a network on l and clock c (NULL: the real clock; a virtual one must outlive
 * the memnet) whose messages take latency_ms each way. Returns 0 and *out, or DMOE_ENOMEM. */
int dht_memnet_new(rt_loop *l, dht_clock *c, uint32_t latency_ms, dht_memnet **out);

/* A link's one-way latency in milliseconds, from endpoint `from` to endpoint `to`. */
typedef uint32_t (*dht_memnet_latency_fn)(void *arg, int from, int to);

/* dht_memnet_set_latency makes fn(arg, from, to) decide every message's latency from now on (NULL: the
 * latency_ms given to dht_memnet_new). fn must not call the memnet. */
void dht_memnet_set_latency(dht_memnet *net, dht_memnet_latency_fn fn, void *arg);

/* dht_memnet_add creates an endpoint: *addr gets its address, *t the transport for its node. Returns
 * the endpoint's index (>= 0) or DMOE_ENOMEM / DMOE_ETOOBIG. */
int dht_memnet_add(dht_memnet *net, dht_addr *addr, dht_transport *t);

/* dht_memnet_add_colocated creates an endpoint on the same IP address as endpoint `with` (made by
 * dht_memnet_add), at the next free port from 7001: many nodes on one host, as an attacker grinding
 * ids would run them. Returns the endpoint's index, DMOE_EINVAL (no such primary endpoint), DMOE_ETOOBIG
 * (ports exhausted) or DMOE_ENOMEM. */
int dht_memnet_add_colocated(dht_memnet *net, int with, dht_addr *addr, dht_transport *t);

/* dht_memnet_bind makes endpoint i deliver incoming requests to d (NULL: none, calls to it get
 * DMOE_ECONN; leave client-mode nodes unbound). d stays the caller's. */
void dht_memnet_bind(dht_memnet *net, int i, dht *d);

/* dht_memnet_set_down marks endpoint i down (1: requests to it and replies from it vanish) or up (0). */
void dht_memnet_set_down(dht_memnet *net, int i, int down);

/* dht_memnet_close_endpoint ends every call endpoint i has in flight now, their callbacks running inside
 * with DMOE_ESHUTDOWN, and unbinds it: what its node's transport must do before dht_node_free when
 * the node leaves a network that goes on (a simulated peer leaving). Requests on their way to it
 * vanish if it is down (dht_memnet_set_down), else are refused. O(events in flight). */
void dht_memnet_close_endpoint(dht_memnet *net, int i);

/* A message's fate, decided by a filter (dht_memnet_set_filter) as it is sent: from and to are endpoint
 * indices (to: -1 for an address no endpoint has), reply 0 for a request and 1 for its reply. Returns 1 to
 * drop it (the caller then times out), 0 to let it go. */
typedef int (*dht_memnet_filter_fn)(void *arg, int from, int to, int reply);

/* dht_memnet_set_filter makes fn(arg, ...) judge every message from now on (NULL: none dropped): a lossy
 * network. fn must not call the memnet. */
void dht_memnet_set_filter(dht_memnet *net, dht_memnet_filter_fn fn, void *arg);

/* Who answers a request delivered to endpoint `to`, whose bound node is d, in place of d: it takes m (as
 * dht_node_deliver does) and either hands it on with dht_node_deliver(d, m, from, respond, ctx) or
 * answers through respond(ctx, reply or NULL) itself, exactly once, now or later. A simulator's hostile
 * peers are made this way. */
typedef void (*dht_memnet_intercept_fn)(void *arg, int to, dht *d, wire_msg *m, const char *from,
                                        dht_respond_fn respond, void *ctx);

/* dht_memnet_set_intercept routes every delivered request through fn(arg, ...) from now on (NULL: straight
 * to the bound node). */
void dht_memnet_set_intercept(dht_memnet *net, dht_memnet_intercept_fn fn, void *arg);

/* The traffic of one endpoint: messages and bytes (encoded maps, as a socket would carry them less the
 * 4-byte frame header) it sent (requests and replies) and received. */
typedef struct {
    uint64_t sent_msgs, sent_bytes, recv_msgs, recv_bytes;
} dht_memnet_traffic;

/* dht_memnet_traffic_of returns endpoint i's traffic so far (zeros for no such endpoint). */
dht_memnet_traffic dht_memnet_traffic_of(const dht_memnet *net, int i);

/* dht_memnet_pending returns the events (messages and timeouts) in flight. */
size_t dht_memnet_pending(const dht_memnet *net);

/* dht_memnet_messages returns the requests delivered so far. */
uint64_t dht_memnet_messages(const dht_memnet *net);

/* dht_memnet_free fails every pending call with DMOE_ESHUTDOWN (callbacks run inside) and frees the
 * network once the last request still held by a node is answered or dropped. NULL is a no-op. */
void dht_memnet_free(dht_memnet *net);

/* Lookup figures measured by dht_memnet_measure. */
typedef struct {
    size_t nodes, lookups, found;
    double hops_mean;
    int hops_p50, hops_p99, hops_max;
    double lat_p50_ms, lat_p99_ms;
    double rpcs_per_lookup;
    double setup_s, run_s;
} dht_memnet_stats;

/* dht_memnet_measure builds n_nodes nodes on a fresh loop, virtual clock and memnet (latency_ms each
 * way), bootstraps them, stores n_lookups keys from random nodes, then gets each key from another
 * random node (caching off, so every get is a real lookup) and reports hops and latency percentiles
 * (virtual time: network latency only) and run_s (the real seconds it took). Bounded by 300 s of
 * virtual time. Returns 0 and *out, DMOE_EINVAL (n_nodes < 2), DMOE_ETIMEDOUT, or DMOE_ENOMEM. */
int dht_memnet_measure(size_t n_nodes, size_t n_lookups, uint32_t latency_ms, uint64_t seed, dht_memnet_stats *out);

#endif
