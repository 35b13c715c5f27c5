/* dht_boot.h -- joining a DHT network: ping the initial peers, then look up our own id.
 *
 * A bootstrap is a small actor of its own, attached to its node as a part (dht_node.h) while it runs.
 * Round 0 pings every initial peer; a peer that fails is pinged again in up to bootstrap_retries more
 * rounds, bootstrap_retry_ms apart (each retry lifts the ban the failure put on the address). As soon
 * as one round ends with at least one answer, a lookup of our own id (dht_find_nodes) fills the
 * routing table, and the bootstrap ends -- unless the table is empty after it (every peer that
 * answered failed the lookup, e.g. its find was lost, and was evicted): that round counts as failed.
 * It also attaches the node's lookups (dht_lookup_attach), so the node's refresh has someone to look
 * its stale buckets up from then on.
 *
 * Order: dht_node_new -> dht_node_bootstrap -> cb, once (dht_node_stop ends a running bootstrap with
 * DMOE_ESHUTDOWN). The bootstrap's memory lives until its last ping has come back, which the
 * transport guarantees before dht_node_free. Loop thread only.
 */
#ifndef DMOE_DHT_BOOT_H
#define DMOE_DHT_BOOT_H

#include <stddef.h>

#include "actors/dht/dht_node.h"

/* Initial peers one bootstrap takes: a config lists a handful. */
#define DHT_MAX_INITIAL_PEERS 32

/* Called once when a bootstrap ends: err 0 when at least one initial peer answered and the lookup of our
 * own id that followed left the routing table non-empty, else DMOE_ECONN or DMOE_ETIMEDOUT with msg
 * naming every address that did not answer and why, or DMOE_ESHUTDOWN when the node stopped. */
typedef void (*dht_bootstrap_cb)(void *arg, int err, const char *msg);

/* dht_node_bootstrap pings the n initial peers (multiaddr texts; a /p2p/ part must be the id the peer
 * answers with), retrying those that fail up to bootstrap_retries times, then looks up our own id.
 * n == 0 completes at once (a first node). cb runs later, never inside this call. Returns 0, or
 * DMOE_EINVAL with err naming the malformed address (or saying a bootstrap already runs),
 * DMOE_ETOOBIG (over DHT_MAX_INITIAL_PEERS), DMOE_ESHUTDOWN, DMOE_ENOMEM; cb is then not called. */
int dht_node_bootstrap(dht *d, const char *const *peers, size_t n, dht_bootstrap_cb cb, void *arg, char *err,
                       size_t errlen);

#endif
