/* dht_experts.h -- hivemind's expert declarations on the DHT (moe/server/dht_handler.py and the
 * get_active_successors of moe/client/beam_search.py).
 *
 * Declaring an expert uid stores exactly the records uid_declaration_keys lists (uid.h), each a signed
 * record (dht_record.h) of the node's key pk, in the key's dictionary:
 *   key uid,    subkey [nil, pk]    -> record of msgpack [node id hex, endpoint multiaddr]
 *   key prefix, subkey [coord, pk]  -> record of msgpack [uid, endpoint multiaddr]
 * Keys are hashed as msgpack strings (dht_id_from_str). A server re-declares its experts every
 * update_period with expiration now + expiration (at most max_record_lifetime_s ahead: longer is cut to
 * that), so entries of dead servers fade out. Several servers declaring one uid each keep their entry;
 * a lookup chooses one (dht_experts.c, "Choosing among owners").
 *
 * Lookups are batched: one dht_get per uid or prefix, all in parallel, one callback for the batch.
 * get_active_successors remembers prefixes found empty in the node's negative cache for neg_cache_s
 * seconds, so a beam search does not search the same empty grid cell again and again.
 *
 * Callbacks run on the loop thread, never inside the call that started them; results are borrowed.
 * Loop thread only.
 */
#ifndef DMOE_DHT_EXPERTS_H
#define DMOE_DHT_EXPERTS_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_node.h"
#include "actors/grid/uid.h"
#include "wire/wire_maddr.h"

/* Uids or prefixes in one batch. */
#define DHT_EXPERTS_MAX_BATCH 4096
/* hivemind's default negative-cache time for empty prefixes, in seconds. */
#define DHT_NEG_CACHE_S 10.0

/* Completion of dht_declare_experts: ok[i] is 1 when every record of uids[i] reached a replica. err is
 * 0 when all uids were declared, else DMOE_ENOTFOUND (some were not). */
typedef void (*dht_declare_cb)(void *arg, int err, const char *msg, const uint8_t *ok, size_t n);

/* dht_declare_experts declares uids[0..n) as served at endpoint (a multiaddr that names the server's
 * node id in /p2p/) until expiration (absolute DHT time, dht_node_now). Returns 0 (cb runs later, once)
 * or DMOE_EINVAL with err naming the first invalid uid, DMOE_ETOOBIG, DMOE_ESHUTDOWN, DMOE_ENOMEM. */
int dht_declare_experts(dht *d, const char *const *uids, size_t n, const wire_maddr *endpoint, double expiration,
                        dht_declare_cb cb, void *arg, char *err, size_t errlen);

/* The payload of a withdrawn record: msgpack nil (one byte). */
#define DHT_EXPERTS_WITHDRAWN "\xc0"

/* dht_withdraw_experts withdraws this node's declarations of uids[0..n) before they expire (a graceful
 * stop): it stores, under every key and subkey dht_declare_experts used, a record of the same key whose
 * payload is DHT_EXPERTS_WITHDRAWN, expiring at expiration -- which must be later than the declarations'
 * (per subkey the latest expiration wins), e.g. the last declaration's plus a second (cut, like those,
 * to the lifetime cap). Lookups skip withdrawn records, so clients stop finding this node's experts at
 * once; other nodes' declarations of the same uids are untouched. Completion and returns as
 * dht_declare_experts. */
int dht_withdraw_experts(dht *d, const char *const *uids, size_t n, double expiration, dht_declare_cb cb, void *arg,
                         char *err, size_t errlen);

/* Where one expert lives: found 0 when no live declaration was found. */
typedef struct {
    int found;
    char node_id[WIRE_MADDR_PEER];
    wire_maddr addr;
    size_t owners;         /* live, well-formed signed declarations found (the chosen one included) */
} dht_expert_loc;

/* Completion of dht_get_experts: locs[i] for uids[i]. err 0, or DMOE_ESHUTDOWN. */
typedef void (*dht_experts_cb)(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n);

/* dht_get_experts finds the hosts of uids[0..n). Returns 0 (cb runs later, once) or DMOE_EINVAL with err
 * naming the first invalid uid, DMOE_ETOOBIG, DMOE_ESHUTDOWN, DMOE_ENOMEM. */
int dht_get_experts(dht *d, const char *const *uids, size_t n, dht_experts_cb cb, void *arg, char *err,
                    size_t errlen);

/* dht_get_experts_latest is dht_get_experts asking every one of the k nearest replicas of each uid
 * (dht_get with latest), caches skipped: slower, and no declaration that reached a replica is missed. */
int dht_get_experts_latest(dht *d, const char *const *uids, size_t n, dht_experts_cb cb, void *arg, char *err,
                           size_t errlen);

/* One live successor of a prefix: coord -> (uid, address). */
typedef struct {
    int64_t coord;
    char uid[UID_MAX_LEN + 1];
    wire_maddr addr;
} dht_successor;

/* The successors of one prefix. */
typedef struct {
    const dht_successor *items;
    size_t n;
} dht_successors;

/* Completion of dht_get_active_successors: per[i] for prefixes[i]. err 0, or DMOE_ESHUTDOWN. */
typedef void (*dht_successors_cb)(void *arg, int err, const char *msg, const dht_successors *per, size_t n);

/* dht_get_active_successors finds, for each prefix ("ffn.3."), the live experts one coordinate below it.
 * Prefixes found empty are cached as empty for neg_cache_s seconds (0: no negative caching). Returns 0
 * (cb runs later, once) or DMOE_EINVAL with err naming the first invalid prefix, DMOE_ETOOBIG,
 * DMOE_ESHUTDOWN, DMOE_ENOMEM. */
int dht_get_active_successors(dht *d, const char *const *prefixes, size_t n, double neg_cache_s,
                              dht_successors_cb cb, void *arg, char *err, size_t errlen);

/* dht_get_active_successors_latest is dht_get_active_successors without the negative cache, asking every
 * one of the k nearest replicas of each prefix and merging their dictionaries (dht_get with latest): a
 * cached or lagging copy of a prefix does not hide entries stored since (dht_free.h reads the grid so). */
int dht_get_active_successors_latest(dht *d, const char *const *prefixes, size_t n, dht_successors_cb cb, void *arg,
                                     char *err, size_t errlen);

#endif
