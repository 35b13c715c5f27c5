/* dht_join.h -- a short-lived client-mode DHT node over TCP, for command-line tools (dmoe-call, and
 * moe_net's remote mixture).
 *
 * dht_join_start creates a client-mode DHT node on the caller's loop and client (it answers no
 * requests and never enters others' routing tables: it needs no server), with its TCP transport
 * (dht_net.h), bootstraps it from the initial peers, and calls back once: joined, or failed with a
 * message naming the peers that did not answer. The caller then runs lookups on dht_join_node.
 *
 * Order: client_new -> dht_join_start -> cb -> lookups on dht_join_node ... -> dht_node_stop(node) ->
 * client_free (the node's calls in flight end) -> dht_join_free. Loop thread only.
 */
#ifndef DMOE_DHT_JOIN_H
#define DMOE_DHT_JOIN_H

#include <stddef.h>

#include "actors/net/client.h"
#include "actors/dht/dht_node.h"

typedef struct dht_join dht_join;

typedef void (*dht_join_cb)(void *arg, int err, const char *msg);

/* dht_join_start starts joining through peers[0..n) over cl (which stays the caller's and must outlive
 * the join); trusted (NULL: none) makes the node use only records signed by those keys (dht_trust.h; it
 * must outlive the join). Returns the join, or NULL with err filled when the node cannot be created or an address is
 * malformed; else cb runs later, once. */
dht_join *dht_join_start(rt_loop *l, client *cl, const char *const *peers, size_t n, const dht_trust *trusted,
                         dht_join_cb cb, void *arg, char *err, size_t errlen);
/* dht_join_node returns the DHT node (owned by the join), for one's own lookups. */
dht *dht_join_node(dht_join *j);
/* dht_join_free stops and frees the node and its transport (after the client, see the order above).
 * NULL is a no-op. */
void dht_join_free(dht_join *j);

#endif
