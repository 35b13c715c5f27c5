/* dht_handover.c -- the keys a DHT node stores as a replica, and their hand-over to new peers
 * (Kademlia's rule, as hivemind's DHTProtocol: a newly seen node that is now nearer to a stored key than
 * our farthest known replica, while we are nearer than all of them, is given that key).
 *
 * The storage has no iteration, so this file keeps an index of the keys stored as a replica: a dense
 * array of ids (walked by the hand-over) and an rt_map from id to position (no duplicates, O(1)
 * removal by moving the last id into the hole). Keys that vanished from the storage (expired) leave the
 * index when a hand-over meets them. The index and the hand-over hang on the node as a part
 * (dht_node.h), attached when the first key is stored: the node runs its `joined` hook when learn()
 * admits a new proven peer -- its address is the one the proof came from, never one merely claimed --
 * and frees it through `release`.
 *
 * Bounded and paced (issue 10: a million stored keys, or a flood of new ids, must not stall the loop or
 * make the node send without bound). `joined` only records the peer as a target, with a cursor at the
 * top of the key array; at most DHT_HANDOVER_PEERS targets at once, newcomers beyond are skipped. The
 * work runs as a job on the node's actor (dht_node_impl.h), one turn per round of the loop: a turn takes
 * the next target in turn, examines at most DHT_HANDOVER_SCAN keys below its cursor, and sends what it
 * should have in store RPCs of up to DHT_HANDOVER_BATCH items; a target is done at the bottom of the
 * array or after DHT_HANDOVER_MAX_KEYS keys / DHT_HANDOVER_MAX_BYTES bytes. The cursor walks downwards:
 * keys stored meanwhile are appended above it (their storers send them to the new peer themselves), and
 * a removal moves an already examined key into the hole, so no key present throughout is missed.
 * Loop thread only; calls the node below it (its store RPC, its job queue), never the lookups.
 */
#include "actors/dht/dht_node.h"
#include "actors/dht/dht_node_impl.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

/* Newcomers left out of the neighbours a turn counts (should_have): enough for a burst of joins. */
#define DHT_HANDOVER_RECENT 16

typedef struct {
    dht_node peer;               /* the new peer, at the address its proof came from */
    size_t cursor;               /* keys[cursor..n) were examined for it; the walk goes down */
    size_t keys, bytes;          /* handed over so far */
} target;

typedef struct {
    dht_part part;
    dht *d;
    rt_map pos;                  /* the keys stored as a replica: id -> (position in keys[]) + 1 */
    dht_id *keys;
    size_t n, cap;
    target tg[DHT_HANDOVER_PEERS];
    size_t ntg, turn;
    dht_id recent[DHT_HANDOVER_RECENT];   /* the last peers that joined (a ring), targets or not */
    size_t nrecent;
    dht_job job;                 /* the next turn, queued on the node's actor while queued is 1 */
    int queued;
    dht_handover_stats st;
} replicas;

static const char replicas_kind = 0;

static void ignore_store(void *arg, int err, const char *msg, const dht_store_rep *rep) {}

/* ---- the key index ---- */

/* index_add indexes key (nothing when it is there already). Returns 0 or DMOE_ENOMEM. */
static int index_add(replicas *r, const dht_id *key)
{
    if (rt_map_get(&r->pos, key->b, sizeof key->b)) return 0;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        dht_id *k = realloc(r->keys, cap * sizeof *k);
        if (!k) return DMOE_ENOMEM;
        r->keys = k;
        r->cap = cap;
    }
    r->keys[r->n] = *key;
    if (rt_map_put(&r->pos, key->b, sizeof key->b, (void *)(uintptr_t)(r->n + 1)) != 0) return DMOE_ENOMEM;
    r->n++;
    return 0;
}

/* index_remove drops the key at position i, moving the last key into its place. */
static void index_remove(replicas *r, size_t i)
{
    rt_map_del(&r->pos, r->keys[i].b, sizeof r->keys[i].b);
    if (i != r->n - 1) {
        r->keys[i] = r->keys[r->n - 1];
        rt_map_put(&r->pos, r->keys[i].b, sizeof r->keys[i].b, (void *)(uintptr_t)(i + 1));   /* replaces: no allocation */
    }
    r->n--;
}

/* ---- the hand-over ---- */

/* is_newcomer returns 1 when id is a peer being handed over to or one of the last that joined. */
static int is_newcomer(const replicas *r, const dht_id *id)
{
    for (size_t i = 0; i < r->ntg; i++)
        if (dht_id_eq(&r->tg[i].peer.id, id)) return 1;
    size_t n = r->nrecent < DHT_HANDOVER_RECENT ? r->nrecent : DHT_HANDOVER_RECENT;
    for (size_t i = 0; i < n; i++)
        if (dht_id_eq(&r->recent[i], id)) return 1;
    return 0;
}

/* should_have returns 1 when the new peer should now hold key with us (hivemind's rule): we are
 * nearer to key than every other node we know, and peer is nearer than the farthest of its
 * num_replicas nearest (or we know fewer). Neighbours are counted without the newcomers (the peers
 * being handed over to and the last DHT_HANDOVER_RECENT that joined): by the time a turn runs the table
 * holds them, but they may not hold the key yet (two that join at once would otherwise each make us
 * think the other one responsible for it). */
static int should_have(const replicas *r, const dht_id *key, const dht_id *peer)
{
    dht *d = r->d;
    dht_node nb[DHT_NUM_REPLICAS * 4 + DHT_HANDOVER_PEERS + DHT_HANDOVER_RECENT];
    size_t want = d->cfg.num_replicas < DHT_NUM_REPLICAS * 4 ? d->cfg.num_replicas : DHT_NUM_REPLICAS * 4;
    size_t got = dht_routing_nearest(d->rt, key, want + DHT_HANDOVER_PEERS + DHT_HANDOVER_RECENT, &d->self.id, nb);
    size_t nn = 0;
    for (size_t i = 0; i < got && nn < want; i++)
        if (!is_newcomer(r, &nb[i].id)) nb[nn++] = nb[i];
    if (nn == 0) return 1;
    int should = nn < want || dht_id_distance_cmp(key, peer, &nb[nn - 1].id) < 0;
    int responsible = dht_id_distance_cmp(key, &d->self.id, &nb[0].id) < 0;
    return should && responsible;
}

/* target_done returns 1 when t got its bound or every key was examined for it. */
static int target_done(const target *t)
{
    return t->cursor == 0 || t->keys >= DHT_HANDOVER_MAX_KEYS || t->bytes >= DHT_HANDOVER_MAX_BYTES;
}

/* step examines at most DHT_HANDOVER_SCAN keys below t's cursor and sends t those it should have. */
static void step(replicas *r, target *t)
{
    dht *d = r->d;
    double now = dht_node_now(d);
    /* a get below that finds its key expired drops that key only: the batch's pointers stay valid */
    dht_store_item batch[DHT_HANDOVER_BATCH];
    size_t nb = 0;
    if (t->cursor > r->n) t->cursor = r->n;
    for (size_t scanned = 0; scanned < DHT_HANDOVER_SCAN && !target_done(t); scanned++) {
        size_t i = --t->cursor;
        dht_id key = r->keys[i];
        dht_stored st;
        if (dht_storage_get(d->store, &key, now, &st) != 0) {
            index_remove(r, i);
            continue;
        }
        if (!should_have(r, &key, &t->peer.id)) continue;
        size_t parts = st.is_dict ? st.nsubs : 1, bytes = 0;
        for (size_t j = 0; j < parts; j++) bytes += st.is_dict ? st.subs[j].vlen + st.subs[j].sklen : st.vlen;
        if (t->bytes + bytes > DHT_HANDOVER_MAX_BYTES) {
            t->bytes = DHT_HANDOVER_MAX_BYTES;   /* full: this key and the rest reach it from their storers */
            break;
        }
        t->keys++;
        t->bytes += bytes;
        r->st.keys_sent++;
        for (size_t j = 0; j < parts; j++) {
            dht_store_item *it = &batch[nb++];
            it->key = key;
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
                dht_node_store_rpc(d, &t->peer, batch, nb, 0, ignore_store, NULL);
                nb = 0;
            }
        }
    }
    if (nb) dht_node_store_rpc(d, &t->peer, batch, nb, 0, ignore_store, NULL);
}

/* kick queues the next turn unless one is queued already. */
static void kick(replicas *r)
{
    if (r->queued || r->ntg == 0 || r->d->stopped) return;
    if (dht_node_job(r->d, &r->job) == 0) r->queued = 1;
}

/* turn is one round's share of the hand-over: one step for the next target. */
static void turn(dht *d, dht_job *j)
{
    replicas *r = (replicas *)((char *)j - offsetof(replicas, job));
    r->queued = 0;
    if (d->stopped || r->ntg == 0) return;
    size_t k = r->turn++ % r->ntg;
    step(r, &r->tg[k]);
    if (target_done(&r->tg[k])) {
        r->tg[k] = r->tg[--r->ntg];
        r->st.done++;
    }
    kick(r);
}

static void replicas_joined(dht_part *p, const dht_peer_info *peer)
{
    replicas *r = (replicas *)p;
    if (r->n == 0) return;
    for (size_t i = 0; i < r->ntg; i++)
        if (dht_id_eq(&r->tg[i].peer.id, &peer->id)) return;
    r->recent[r->nrecent++ % DHT_HANDOVER_RECENT] = peer->id;
    if (r->ntg == DHT_HANDOVER_PEERS) {   /* a flood of new ids: the rest get their keys from the storers */
        r->st.skipped++;
        return;
    }
    r->tg[r->ntg++] = (target){ .peer = { .id = peer->id, .addr = peer->addr }, .cursor = r->n };
    r->st.started++;
    kick(r);
}

static void replicas_stop(dht_part *p)
{
    replicas *r = (replicas *)p;
    r->ntg = 0;   /* a turn still queued finds nothing to do */
}

static void replicas_release(dht_part *p)
{
    replicas *r = (replicas *)p;
    rt_map_clear(&r->pos);
    free(r->keys);
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
    r->job.run = turn;
    r->part = (dht_part){ NULL, &replicas_kind, replicas_stop, NULL, replicas_release, replicas_joined };
    dht_node_attach(d, &r->part);
    return r;
}

int dht_node_classify(const dht *d, const dht_store_item *it, char *err, size_t errlen)
{
    return dht_trust_check_store(d->cfg.trusted_keys, d->cfg.max_record_lifetime_s, &it->key, it->subkey, it->sklen,
                                 it->value, it->vlen, it->expiration, dht_node_now(d), err, errlen);
}

int dht_node_store_from(dht *d, const char *owner, const dht_store_item *it, int in_cache, int cls)
{
    int rc = (cls == 1 ? dht_storage_store_signed : dht_storage_store_from)(
        in_cache ? d->cache : d->store, owner, &it->key, it->subkey, it->sklen, it->value, it->vlen, it->expiration,
        dht_node_now(d));
    if (rc == 1) {
        replicas *r = in_cache ? NULL : replicas_of(d, 1);
        if (!in_cache && (!r || index_add(r, &it->key) != 0)) LOG_WARN("out of memory indexing a stored key");
        dht_node_arm_sweep(d);
    }
    return rc;
}

int dht_node_store_local(dht *d, const dht_store_item *it, int in_cache)
{
    char err[256];
    int cls = dht_node_classify(d, it, err, sizeof err);
    if (cls < 0) {
        LOG_DEBUG("local store refused: %s", err);
        return cls;
    }
    return dht_node_store_from(d, NULL, it, in_cache, cls);
}

size_t dht_node_stored_keys(const dht *d)
{
    replicas *r = (replicas *)dht_node_part((dht *)d, &replicas_kind);
    return r ? r->n : 0;
}

dht_handover_stats dht_node_handover_stats(const dht *d)
{
    replicas *r = (replicas *)dht_node_part((dht *)d, &replicas_kind);
    dht_handover_stats st = { 0 };
    if (r) {
        st = r->st;
        st.active = r->ntg;
    }
    return st;
}
