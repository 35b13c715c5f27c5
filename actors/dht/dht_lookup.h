/* dht_lookup.h -- iterative Kademlia lookups (hivemind's traverse_dht, DHTNode.store / get).
 *
 * Each lookup is an actor with its own deadline timer (on the node's clock). It starts from the k
 * nearest peers of the node's routing table and asks at most alpha of them at a time (dht_find) for
 * the target, merging the peers each reply names into its candidate list, until the k nearest
 * candidates that answered have all been asked (or, for a get that does not want the latest value,
 * an unexpired value was found). A peer that fails is skipped (the node evicts it). The whole lookup
 * ends at lookup_timeout_ms.
 *
 *  - dht_find_nodes: the k nearest live nodes to a target.
 *  - dht_store: finds the num_replicas nearest nodes to the key and stores there (and locally when this
 *    node is itself among them); dht_store_dict does the same for several subkeys of one key at once.
 *  - dht_get: the local storage and cache first, then a lookup; with latest, every one of the k
 *    nearest is asked and the newest value wins (dictionaries merge per subkey, newest expiration
 *    wins). Entries that fail the signed-record policy (dht_trust.h) are dropped as if not found. The result is cached locally and on the nearest asked node that lacked it. Concurrent
 *    gets of one key (same latest flag) share one lookup.
 *
 * Callbacks run on the loop thread, never inside the call that started the lookup; what they are given
 * is borrowed for the duration of the callback. Loop thread only.
 */
#ifndef DMOE_DHT_LOOKUP_H
#define DMOE_DHT_LOOKUP_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_node.h"

/* Candidates one lookup remembers, nearest first: a few times k is plenty for convergence. */
#define DHT_LOOKUP_MAX_CAND 96
/* Waiters sharing one get. */
#define DHT_LOOKUP_MAX_WAITERS 256

typedef struct dht_lookup dht_lookup;

/* What a get found. found 0: nothing live. Plain value: value[vlen]; dictionary: subs[nsubs]. hops is
 * the number of RPC rounds on the path to the node that answered (0: found locally); rpcs the number
 * of find RPCs the lookup made, slow how many of them passed the soft timeout (dht_lookup.c). */
typedef struct {
    int found, is_dict;
    const uint8_t *value;
    size_t vlen;
    const dht_subitem *subs;
    size_t nsubs;
    double expiration;
    int hops;
    size_t rpcs, slow;
} dht_get_result;

/* Completion of dht_get: err 0 (r->found says whether a value was found), DMOE_ETIMEDOUT (the deadline
 * passed without a value), DMOE_ESHUTDOWN. r is never NULL and is borrowed. */
typedef void (*dht_get_cb)(void *arg, int err, const char *msg, const dht_get_result *r);
/* Completion of dht_store: n_stored replicas accepted the value (the local one included); err 0 when
 * n_stored > 0, else DMOE_ENOTFOUND (no replica would take it) or DMOE_ESHUTDOWN. */
typedef void (*dht_store_cb)(void *arg, int err, const char *msg, size_t n_stored);
/* Completion of dht_find_nodes: nearest[0..n) (borrowed), nearest first, and the rounds it took. */
typedef void (*dht_nodes_cb)(void *arg, int err, const char *msg, const dht_node *nearest, size_t n, int hops);

/* dht_get looks key up. Returns 0 (cb runs later, once) or DMOE_ESHUTDOWN / DMOE_ENOMEM. */
int dht_get(dht *d, const dht_id *key, int latest, dht_get_cb cb, void *arg);

/* dht_get_signed is dht_get keeping only signed records that pass the policy (dht_trust.h): unsigned
 * values found are dropped as forged ones are, and the lookup goes on past them. For keys whose values
 * name peers (expert declarations). */
int dht_get_signed(dht *d, const dht_id *key, int latest, dht_get_cb cb, void *arg);

/* dht_store stores value[vlen] (with subkey[sklen] into key's dictionary when subkey is not NULL) until
 * expiration on the num_replicas nearest nodes. The bytes are copied. Returns 0 (cb runs later, once),
 * DMOE_ETOOBIG (value or subkey over the protocol bounds), DMOE_EINVAL (expiration not finite),
 * DMOE_ESHUTDOWN, DMOE_ENOMEM. */
int dht_store(dht *d, const dht_id *key, const void *subkey, size_t sklen, const void *value, size_t vlen,
              double expiration, dht_store_cb cb, void *arg);

/* One entry of a dictionary store (dht_store_dict): subkey[sklen] -> value[vlen]. */
typedef struct {
    const void *subkey;
    size_t sklen;
    const void *value;
    size_t vlen;
} dht_dict_entry;

/* Completion of dht_store_dict: n_stored[i] replicas accepted entries[i] (the local one included); err 0
 * when every entry reached one, else DMOE_ENOTFOUND (some reached none) or DMOE_ESHUTDOWN. n_stored is
 * borrowed. */
typedef void (*dht_store_dict_cb)(void *arg, int err, const char *msg, const size_t *n_stored, size_t n);

/* dht_store_dict stores entries[0..n) (1 <= n <= DHT_PROTO_MAX_KEYS, every one with a subkey) into key's
 * dictionary until expiration on the num_replicas nearest nodes: one lookup, and one dht_store request
 * per replica carrying all of them (hivemind's store_many for one key). The bytes are copied. Returns 0
 * (cb runs later, once), DMOE_ETOOBIG (n or an entry over the protocol bounds), DMOE_EINVAL (n 0, an
 * entry without subkey, expiration not finite), DMOE_ESHUTDOWN, DMOE_ENOMEM. */
int dht_store_dict(dht *d, const dht_id *key, const dht_dict_entry *entries, size_t n, double expiration,
                   dht_store_dict_cb cb, void *arg);

/* dht_find_nodes finds the k (0: bucket size) nearest live nodes to target. Returns 0 (cb runs later,
 * once) or DMOE_ESHUTDOWN / DMOE_ENOMEM. */
int dht_find_nodes(dht *d, const dht_id *target, size_t k, dht_nodes_cb cb, void *arg);

/* dht_lookup_attach attaches d's lookups to d (a part, see dht_node.h) if they are not yet: from then
 * on dht_node_stop aborts them with DMOE_ESHUTDOWN and the node's refresh looks its stale buckets up.
 * Every lookup attaches them; dht_node_bootstrap does too. Returns 0 or DMOE_ENOMEM. */
int dht_lookup_attach(dht *d);

#endif
