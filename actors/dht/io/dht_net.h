/* dht_net.h -- the DHT's TCP transport: outgoing RPCs through client.h, incoming through the node's server.
 *
 * dmoe-node serves experts and the DHT on one port: dht_net_serve registers a server handler for every
 * method starting with "dht_" and hands those requests to the DHT node (dht_node_deliver), which answers
 * on the same connection (a conn reference is held until it has). Outgoing DHT RPCs go through the
 * node's client (pooled, pipelined connections; one callback per call). A client-mode node creates the
 * transport but never calls dht_net_serve.
 *
 * Order: client_new (and server_new + server_listen) -> dht_net_new -> dht_node_new(..., transport) ->
 * dht_net_serve -> ... -> server_shutdown/server_free -> dht_node_stop -> client_free -> dht_node_free ->
 * dht_net_free. Loop thread only.
 */
#ifndef DMOE_DHT_NET_H
#define DMOE_DHT_NET_H

#include "actors/net/client.h"
#include "actors/dht/dht_node.h"
#include "actors/serve/server.h"

typedef struct dht_net dht_net;

/* dht_net_new creates a transport over cl (which stays the caller's and must outlive every call) and
 * fills *t for dht_node_new. Returns 0 and *out, or DMOE_ENOMEM. */
int dht_net_new(client *cl, dht_net **out, dht_transport *t);

/* dht_net_serve routes srv's "dht_*" requests to d from now on. Returns 0 or what server_add_handler
 * returns (DMOE_ETOOBIG when the server has no handler slot left). */
int dht_net_serve(dht_net *n, server *srv, dht *d);

/* dht_net_free frees n (after the server and the client, see the order above). NULL is a no-op. */
void dht_net_free(dht_net *n);

#endif
