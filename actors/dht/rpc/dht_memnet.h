/* dht_memnet.h -- an in-memory transport for DHT nodes: thousands of nodes in one process and one loop.
 *
 * The memnet gives each endpoint a fake IPv4 address (10.x.y.z, port 7000) and moves messages between
 * them through the loop: a request is encoded (wire_out_flatten), delivered after `latency_ms` to the
 * destination node (dht_node_deliver, decoded by wire_msg_decode exactly as from a socket), and its
 * reply comes back after `latency_ms` more. A call to an address with no bound node fails with
 * DMOE_ECONN; a call to an endpoint that is down (dht_memnet_set_down) is dropped and times out, as a
 * crashed host would. Every call gets exactly one callback (reply, timeout, DMOE_ECONN, or
 * DMOE_ESHUTDOWN from dht_memnet_free).
 *
 * Order: dht_memnet_new -> dht_memnet_add per node (gives its address and transport) -> dht_node_new ->
 * dht_memnet_bind -> ... -> dht_node_stop (all) -> dht_memnet_free -> dht_node_free (all).
 * The memnet is one actor with one timer and a heap of due events. Loop thread only.
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

/* dht_memnet_new creates a network on l whose messages take latency_ms each way. Returns 0 and *out,
 * or DMOE_ENOMEM. */
int dht_memnet_new(rt_loop *l, uint32_t latency_ms, dht_memnet **out);

/* dht_memnet_add creates an endpoint: *addr gets its address, *t the transport for its node. Returns
 * the endpoint's index (>= 0) or DMOE_ENOMEM / DMOE_ETOOBIG. */
int dht_memnet_add(dht_memnet *net, dht_addr *addr, dht_transport *t);

/* dht_memnet_bind makes endpoint i deliver incoming requests to d (NULL: none, calls to it get
 * DMOE_ECONN; leave client-mode nodes unbound). d stays the caller's. */
void dht_memnet_bind(dht_memnet *net, int i, dht *d);

/* dht_memnet_set_down marks endpoint i down (1: requests to it and replies from it vanish) or up (0). */
void dht_memnet_set_down(dht_memnet *net, int i, int down);

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

/* dht_memnet_measure builds n_nodes nodes on a fresh loop and memnet (latency_ms each way), bootstraps
 * them, stores n_lookups keys from random nodes, then gets each key from another random node (caching
 * off, so every get is a real lookup) and reports hops and latency percentiles. Bounded by 300 s.
 * Returns 0 and *out, DMOE_EINVAL (n_nodes < 2), DMOE_ETIMEDOUT, or DMOE_ENOMEM. */
int dht_memnet_measure(size_t n_nodes, size_t n_lookups, uint32_t latency_ms, uint64_t seed, dht_memnet_stats *out);

#endif
