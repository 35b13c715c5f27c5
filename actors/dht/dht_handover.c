/* dht_handover.c -- the keys a DHT node stores as a replica, and their hand-over to new peers
 * (Kademlia's rule, as hivemind's DHTProtocol: a newly seen node that is now nearer to a stored key than
 * our farthest known replica, while we are nearer than all of them, is given that key).
 *
 * The storage has no iteration, so this file keeps an index of the keys stored as a replica (an rt_map
 * of ids); keys that vanished from the storage (expired) leave the index when the hand-over next meets
 * them. The index and the hand-over hang on the node as a part (dht_node.h), attached when the first
 * key is stored: the node runs its `joined` hook when learn() admits a new proven peer, and frees it
 * through `release`. Loop thread only; calls the node below it (its store RPC), never the lookups.
 */
#include "actors/dht/dht_node.h"
#include "actors/dht/dht_node_impl.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

typedef struct {
    dht_part part;
    dht *d;
    rt_map keys;                 /* the keys stored as a replica: id -> &dht_present */
} replicas;

static const char replicas_kind = 0;

static void ignore_store(void *arg, int err, const char *msg, const dht_store_rep *rep) {}

/* handover sends the new node p the keys it should now store with us (hivemind's rule). */
static void handover(replicas *r, const dht_peer_info *p)
{
    dht *d = r->d;
    if (rt_map_count(&r->keys) == 0) return;
    double now = dht_node_now(d);
    dht_storage_expire(d->store, now);
    dht_node peer = { .id = p->id, .addr = p->addr };
    dht_store_item batch[DHT_HANDOVER_BATCH];
    size_t nb = 0;
    dht_node nb_nodes[DHT_NUM_REPLICAS * 4];
    size_t want = d->cfg.num_replicas < DHT_NUM_REPLICAS * 4 ? d->cfg.num_replicas : DHT_NUM_REPLICAS * 4;
    rt_map_iter iter = RT_MAP_ITER_INIT;
    const void *kb;
    size_t klen;
    while (rt_map_next(&r->keys, &iter, &kb, &klen)) {
        dht_id kcopy;
        memcpy(kcopy.b, kb, sizeof kcopy.b);
        const dht_id *key = &kcopy;
        dht_stored st;
        if (dht_storage_get(d->store, key, now, &st) != 0) {
            rt_map_del_at(&r->keys, &iter);
            continue;
        }
        size_t nn = dht_routing_nearest(d->rt, key, want, &d->self.id, nb_nodes);
        if (nn > 0) {
            int should = nn < want || dht_id_distance_cmp(key, &p->id, &nb_nodes[nn - 1].id) < 0;
            int responsible = dht_id_distance_cmp(key, &d->self.id, &nb_nodes[0].id) < 0;
            if (!should || !responsible) continue;
        }
        size_t parts = st.is_dict ? st.nsubs : 1;
        for (size_t j = 0; j < parts; j++) {
            dht_store_item *it = &batch[nb++];
            it->key = *key;
            if (st.is_dict) {
                it->subkey = st.subs[j].subkey;
                it->sklen = st.subs[j].sklen;
                it->value = st.subs[j].value;
                it->vlen = st.subs[j].vlen;
                it->expiration = st.subs[j].expiration;
            } else {
                it->subkey = NULL;
                it->sklen = 0;
                it->value = st.value;
                it->vlen = st.vlen;
                it->expiration = st.expiration;
            }
            if (nb == DHT_HANDOVER_BATCH) {
                dht_node_store_rpc(d, &peer, batch, nb, 0, ignore_store, NULL);
                nb = 0;
            }
        }
    }
    if (nb) dht_node_store_rpc(d, &peer, batch, nb, 0, ignore_store, NULL);
}

static void replicas_joined(dht_part *p, const dht_peer_info *peer) { handover((replicas *)p, peer); }
static void replicas_stop(dht_part *p) {}

static void replicas_release(dht_part *p)
{
    replicas *r = (replicas *)p;
    rt_map_clear(&r->keys);
    free(r);
}

/* replicas_of returns d's replica index, attached on first use when create (NULL: none, or out of
 * memory). */
static replicas *replicas_of(dht *d, int create)
{
    replicas *r = (replicas *)dht_node_part(d, &replicas_kind);
    if (r || !create) return r;
    r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->d = d;
    r->part = (dht_part){ NULL, &replicas_kind, replicas_stop, NULL, replicas_release, replicas_joined };
    dht_node_attach(d, &r->part);
    return r;
}

int dht_node_store_from(dht *d, const char *owner, const dht_store_item *it, int in_cache)
{
    int rc = dht_storage_store_from(in_cache ? d->cache : d->store, owner, &it->key, it->subkey, it->sklen,
                                    it->value, it->vlen, it->expiration, dht_node_now(d));
    if (rc == 1) {
        replicas *r = in_cache ? NULL : replicas_of(d, 1);
        if (!in_cache && (!r || rt_map_put(&r->keys, it->key.b, sizeof it->key.b, &dht_present) != 0))
            LOG_WARN("out of memory indexing a stored key");
        dht_node_arm_sweep(d);
    }
    return rc;
}

int dht_node_store_local(dht *d, const dht_store_item *it, int in_cache)
{
    return dht_node_store_from(d, NULL, it, in_cache);
}

size_t dht_node_stored_keys(const dht *d)
{
    replicas *r = (replicas *)dht_node_part((dht *)d, &replicas_kind);
    return r ? rt_map_count(&r->keys) : 0;
}
