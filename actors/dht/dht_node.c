/* dht_node.c -- the DHT node actor: routing table, storage, RPC handlers, refresh, hand-over
 * (see dht_node.h).
 *
 * Design notes. Identity first: learn() is the only way into the routing table, and it takes a peer only
 * when it is already held at that id and address or has just proven itself: a reply that signed our
 * challenge (rpc.chal) from the address it claims. An incoming request from a sender not held goes to
 * probe(): a challenge ping to the claimed address, at most one in flight per id (the probing map), at
 * most DHT_PROBES_MAX in all; its failure changes nothing (an attacker could otherwise get an honest
 * address banned by naming it).
 *
 * Incoming requests arrive as mail (dht_node_deliver wraps them in an inreq message), so
 * a burst of requests is served at most RT_ACTOR_BATCH per round; each is decoded by dht_proto, applied
 * to the tables, and answered at once (nothing in a DHT request waits for anything else). Outgoing RPCs
 * are rpc records handed to the transport; their completion (on_reply) applies the liveness rules --
 * learn the peer on success, evict and blacklist it on timeout or connection failure -- before the
 * caller's callback runs. A remote error reply proves the peer alive, so it neither evicts nor learns --
 * except DMOE_ESHUTDOWN, which says the peer is leaving: that evicts it as a timeout would.
 *
 * The storage has no iteration, so the node keeps an index of the keys it stored as a replica (an
 * rt_map of ids) for Kademlia's hand-over; keys that vanished from the storage (expired) leave the
 * index when the hand-over next meets them.
 *
 * Timers, both on the node actor and on the node's clock (dht_clock.h): the sweep (one-shot, armed at
 * the earliest expiration held) and the refresh (periodic: expired keys swept, stale buckets handed to
 * the parts' refresh hooks -- the lookups look them up). The node calls nothing above it: the lookups
 * and the bootstrap attach parts, and dht_node_stop and the refresh reach them through their hooks.
 */
#include "actors/dht/dht_node.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/rt_map.h"

enum { MSG_REQ = 1, MSG_REFRESH = 2, MSG_SWEEP = 3 };
enum { RPC_PING = 0, RPC_FIND = 1, RPC_STORE = 2 };

/* Stale buckets refreshed per refresh tick: bounds the lookups one tick can start. */
#define DHT_REFRESH_MAX_BUCKETS 8

typedef struct {
    rt_msg msg;
    dht *d;
    wire_msg *m;
    dht_respond_fn respond;
    void *ctx;
    int answered;
    char from[DHT_OWNER_MAX_BYTES];   /* the sender's IP address ("?": unknown) */
} inreq;

typedef struct {
    dht *d;
    int kind;
    dht_node peer;
    int has_id;
    int has_chal;                /* the request carried chal: the reply must prove the peer's id */
    int probe;                   /* a challenge ping to an unproven sender: no failure rules */
    uint8_t chal[DHT_CHALLENGE_BYTES];
    size_t n;
    dht_find_done find_cb;
    dht_store_done store_cb;
    dht_ping_done ping_cb;
    void *arg;
} rpc;

struct dht {
    rt_actor actor;
    rt_loop *loop;
    dht_cfg cfg;
    dht_transport t;
    dht_peer_info self;
    dht_ident ident;
    dht_ident_stats istats;
    rt_map probing;              /* ids being probed: id -> &key_present */
    dht_routing *rt;
    dht_blacklist *bl;
    dht_storage *store, *cache, *neg;
    dht_clock *clock;
    rt_map keys;                 /* the keys stored as a replica: id -> &key_present */
    dht_timer refresh, sweep;
    double sweep_at;
    dht_part *parts;
    uint64_t rpcs;
    int stopped;
};

/* The value of every entry of the key index (an rt_map value is never NULL). */
static char key_present;

/* ---- time, configuration ---- */

double dht_node_now(const dht *d) { return dht_clock_now(d->clock); }

void dht_cfg_default(dht_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->seed = rt_clock_us() ^ 0x5DEECE66Dull;
    c->bootstrap_retries = -1;
}

static void fill_defaults(dht_cfg *c)
{
    if (!c->bucket_size) c->bucket_size = DHT_BUCKET_SIZE;
    if (!c->num_replicas) c->num_replicas = DHT_NUM_REPLICAS;
    if (!c->alpha) c->alpha = DHT_ALPHA;
    if (!c->rpc_timeout_ms) c->rpc_timeout_ms = DHT_RPC_TIMEOUT_MS;
    if (!c->lookup_timeout_ms) c->lookup_timeout_ms = DHT_LOOKUP_TIMEOUT_MS;
    if (!c->max_per_host) c->max_per_host = DHT_MAX_PER_HOST;
    if (c->refresh_period_s == 0) c->refresh_period_s = DHT_REFRESH_PERIOD_S;
    if (!c->clock) c->clock = dht_clock_real();
    if (c->bootstrap_retries < 0) c->bootstrap_retries = DHT_BOOTSTRAP_RETRIES;
    if (!c->bootstrap_retry_ms) c->bootstrap_retry_ms = DHT_BOOTSTRAP_RETRY_MS;
}

/* ---- outgoing RPCs ---- */

static void learn(dht *d, const dht_peer_info *p, int proven);

/* rpc_failed applies the failure rules: evict (the entry at the address called only) and blacklist,
 * unless the peer answered with an error (which proves it alive) or our own transport is shutting down
 * (no reply, DMOE_ESHUTDOWN). A peer that answers DMOE_ESHUTDOWN is leaving: it is evicted and banned as
 * if it had not answered. Probes fail silently. */
static void rpc_failed(dht *d, const rpc *r, int err, const wire_msg *reply)
{
    if (d->stopped || r->probe) return;
    if (reply ? err != DMOE_ESHUTDOWN : err == DMOE_ESHUTDOWN) return;
    if (r->has_id) dht_routing_remove_at(d->rt, &r->peer.id, &r->peer.addr);
    dht_blacklist_fail(d->bl, &r->peer.addr, dht_node_now(d));
}

static void on_reply(void *arg, int err, const char *msg, const wire_msg *reply)
{
    rpc *r = arg;
    dht *d = r->d;
    int wrong_peer = 0, proven = 0;
    char emsg[256] = "";
    dht_find_rep frep;
    dht_store_rep srep;
    dht_peer_info who;
    memset(&frep, 0, sizeof frep);
    memset(&who, 0, sizeof who);
    if (err == 0) {
        int rc;
        if (r->kind == RPC_FIND) {
            rc = dht_proto_find_rep_decode(reply->result, r->n, dht_node_now(d), &frep, emsg, sizeof emsg);
            who = frep.node;
        } else if (r->kind == RPC_STORE) {
            rc = dht_proto_store_rep_decode(reply->result, r->n, &srep, emsg, sizeof emsg);
            who = srep.node;
        } else {
            rc = reply->result && reply->result->type == MSGPACK_OBJECT_MAP
                     ? dht_proto_peer_decode(reply->result, "node", &who, emsg, sizeof emsg)
                     : DMOE_EINVAL;
            if (rc && !emsg[0]) snprintf(emsg, sizeof emsg, "ping reply is not a map");
        }
        if (rc == 0 && r->has_id && who.present && !dht_id_eq(&who.id, &r->peer.id)) {
            char a[DHT_ID_HEX_LEN + 1], b[DHT_ID_HEX_LEN + 1];
            snprintf(emsg, sizeof emsg, "peer answered with node id %s, expected %s", dht_id_to_hex(&who.id, a),
                     dht_id_to_hex(&r->peer.id, b));
            rc = DMOE_EINVAL;
            wrong_peer = 1;
        }
        if (rc == 0 && r->has_chal && who.present) {
            d->istats.checked_proofs++;
            rc = dht_proto_proof_check(reply->result, r->chal, &who, emsg, sizeof emsg);
            if (rc) d->istats.refused_proofs++;
            proven = rc == 0 && dht_addr_eq(&who.addr, &r->peer.addr);
        }
        if (rc) {
            err = rc;
            msg = emsg;
            reply = NULL;   /* a garbled or unproven answer counts as a failure of the peer */
        }
    }
    if (wrong_peer) {
        /* Someone else answers at that address: whatever pointed us there was stale or a lie. The address
         * is alive, so it is not banned. */
        if (!d->stopped && !r->probe) dht_routing_remove_at(d->rt, &r->peer.id, &r->peer.addr);
    } else if (err) {
        rpc_failed(d, r, err, reply);
    } else if (!d->stopped) {
        dht_blacklist_ok(d->bl, &r->peer.addr);
        learn(d, &who, proven);
    }
    if (r->probe) rt_map_del(&d->probing, r->peer.id.b, sizeof r->peer.id.b);
    if (r->kind == RPC_FIND) r->find_cb(r->arg, err, msg, err ? NULL : &frep);
    else if (r->kind == RPC_STORE) r->store_cb(r->arg, err, msg, err ? NULL : &srep);
    else r->ping_cb(r->arg, err, msg, err ? NULL : &who);
    dht_proto_find_rep_free(&frep);
    free(r);
}

/* send_rpc hands req to the transport for r's peer; consumes req and r on failure too. */
static int send_rpc(dht *d, rpc *r, uint64_t id, wire_out *req)
{
    wire_maddr to;
    if (!req) {
        free(r);
        return DMOE_ENOMEM;
    }
    if (d->stopped || dht_proto_addr_to_maddr(&r->peer.addr, r->has_id ? &r->peer.id : NULL, &to) != 0 ||
        dht_blacklist_banned(d->bl, &r->peer.addr, dht_node_now(d))) {
        int rc = d->stopped ? DMOE_ESHUTDOWN : DMOE_ECONN;
        wire_out_free(req);
        free(r);
        return rc;
    }
    d->rpcs++;
    int rc = d->t.call(d->t.impl, &to, id, req, d->cfg.rpc_timeout_ms, on_reply, r);
    if (rc) free(r);
    return rc;
}

/* rpc_new returns a call record for peer, with a fresh challenge unless the table holds peer's id at
 * peer's address already (NULL when out of memory). */
static rpc *rpc_new(dht *d, int kind, const dht_node *peer, int has_id, size_t n, void *arg)
{
    rpc *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->d = d;
    r->kind = kind;
    r->peer = *peer;
    r->has_id = has_id;
    r->n = n;
    r->arg = arg;
    r->has_chal = !has_id || !dht_routing_knows(d->rt, &peer->id, &peer->addr);
    if (r->has_chal) dht_ident_random(r->chal, sizeof r->chal);
    return r;
}

/* chal_of returns r's challenge for the encoders, or NULL. */
static const uint8_t *chal_of(const rpc *r) { return r->has_chal ? r->chal : NULL; }

int dht_node_find(dht *d, const dht_node *peer, const dht_id *keys, size_t n, dht_find_done cb, void *arg)
{
    if (d->stopped) return DMOE_ESHUTDOWN;
    rpc *r = rpc_new(d, RPC_FIND, peer, 1, n, arg);
    if (!r) return DMOE_ENOMEM;
    r->find_cb = cb;
    uint64_t id = d->t.next_id(d->t.impl);
    return send_rpc(d, r, id, dht_proto_find_req(id, &d->self, keys, n, chal_of(r)));
}

int dht_node_store_rpc(dht *d, const dht_node *peer, const dht_store_item *items, size_t n, int in_cache,
                       dht_store_done cb, void *arg)
{
    if (d->stopped) return DMOE_ESHUTDOWN;
    rpc *r = rpc_new(d, RPC_STORE, peer, 1, n, arg);
    if (!r) return DMOE_ENOMEM;
    r->store_cb = cb;
    uint64_t id = d->t.next_id(d->t.impl);
    return send_rpc(d, r, id, dht_proto_store_req(id, &d->self, items, n, in_cache, chal_of(r)));
}

int dht_node_ping(dht *d, const dht_node *peer, int has_id, dht_ping_done cb, void *arg)
{
    if (d->stopped) return DMOE_ESHUTDOWN;
    rpc *r = rpc_new(d, RPC_PING, peer, has_id, 0, arg);
    if (!r) return DMOE_ENOMEM;
    r->ping_cb = cb;
    uint64_t id = d->t.next_id(d->t.impl);
    return send_rpc(d, r, id, dht_proto_ping_req(id, &d->self, chal_of(r)));
}

static void ignore_store(void *arg, int err, const char *msg, const dht_store_rep *rep) {}
static void ignore_ping(void *arg, int err, const char *msg, const dht_peer_info *who) {}

/* probe sends a challenge ping to p, an unproven sender of a request; the reply adds it when it proves
 * its id from the address it claims (on_reply -> learn). One probe per id at a time, DHT_PROBES_MAX in
 * all: beyond, the claim is ignored until the peer writes again. */
static void probe(dht *d, const dht_peer_info *p)
{
    if (rt_map_get(&d->probing, p->id.b, sizeof p->id.b) || rt_map_count(&d->probing) >= DHT_PROBES_MAX) return;
    if (dht_blacklist_banned(d->bl, &p->addr, dht_node_now(d)) || !dht_routing_admits(d->rt, &p->id, &p->addr))
        return;
    dht_node peer = { .id = p->id, .addr = p->addr };
    rpc *r = rpc_new(d, RPC_PING, &peer, 1, 0, NULL);
    if (!r) return;
    if (!r->has_chal) {   /* learn() found it held already; nothing to prove */
        free(r);
        return;
    }
    r->probe = 1;
    r->ping_cb = ignore_ping;
    if (rt_map_put(&d->probing, p->id.b, sizeof p->id.b, &key_present) != 0) {
        free(r);
        return;
    }
    d->istats.probes++;
    uint64_t id = d->t.next_id(d->t.impl);
    if (send_rpc(d, r, id, dht_proto_ping_req(id, &d->self, chal_of(r))) != 0)
        rt_map_del(&d->probing, p->id.b, sizeof p->id.b);
}

/* ---- storage, hand-over ---- */

static void arm_sweep(dht *d)
{
    double next = dht_storage_next_expiration(d->store);
    double c = dht_storage_next_expiration(d->cache);
    if (c < next) next = c;
    if (!isfinite(next) || d->stopped || (d->sweep_at > 0 && d->sweep_at <= next)) return;
    double now = dht_node_now(d);
    double wait = next - now;
    d->sweep_at = next;
    /* at least 1 ms: a record expires only once now is past its expiration (dht_storage_expire), so a
     * sweep due at the expiration itself would find it live and re-arm at 0 ms forever in virtual time */
    if (dht_timer_start(&d->sweep, wait > 0 ? (uint64_t)(wait * 1000.0) + 1 : 1, 0) != 0) {
        LOG_WARN("out of memory arming the storage sweep; the refresh sweeps instead");
        d->sweep_at = 0;
    }
}

/* store_from stores it charged to owner (NULL: the node's own); see dht_node_store_local. */
static int store_from(dht *d, const char *owner, const dht_store_item *it, int in_cache)
{
    int rc = dht_storage_store_from(in_cache ? d->cache : d->store, owner, &it->key, it->subkey, it->sklen,
                                    it->value, it->vlen, it->expiration, dht_node_now(d));
    if (rc == 1) {
        if (!in_cache && rt_map_put(&d->keys, it->key.b, sizeof it->key.b, &key_present) != 0)
            LOG_WARN("out of memory indexing a stored key");
        arm_sweep(d);
    }
    return rc;
}

int dht_node_store_local(dht *d, const dht_store_item *it, int in_cache)
{
    return store_from(d, NULL, it, in_cache);
}

/* handover sends the new node p the keys it should now store with us (hivemind's rule). */
static void handover(dht *d, const dht_peer_info *p)
{
    if (rt_map_count(&d->keys) == 0) return;
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
    while (rt_map_next(&d->keys, &iter, &kb, &klen)) {
        dht_id kcopy;
        memcpy(kcopy.b, kb, sizeof kcopy.b);
        const dht_id *key = &kcopy;
        dht_stored st;
        if (dht_storage_get(d->store, key, now, &st) != 0) {
            rt_map_del_at(&d->keys, &iter);
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

/* learn refreshes peer p in the routing table when it is proven (just now, or held at that id and
 * address already); nothing for nil senders, ourselves or unproven claims. */
static void learn(dht *d, const dht_peer_info *p, int proven)
{
    if (d->stopped || !p->present || dht_id_eq(&p->id, &d->self.id)) return;
    if (!proven && !dht_routing_knows(d->rt, &p->id, &p->addr)) return;
    if (!dht_routing_admits(d->rt, &p->id, &p->addr)) return;   /* its host holds its share of the table */
    dht_node known, to_ping;
    int is_new = dht_routing_get(d->rt, &p->id, &known) != 0;
    if (is_new && !d->cfg.client_mode) handover(d, p);
    int rc = dht_routing_add_or_update(d->rt, &p->id, &p->addr, dht_node_now(d), &to_ping);
    if (rc == DHT_RT_PING) dht_node_ping(d, &to_ping, 1, ignore_ping, NULL);
}

/* heard handles the sender of an incoming request: refreshed when held at that id and address, else
 * probed. */
static void heard(dht *d, const dht_peer_info *p)
{
    if (d->stopped || !p->present || dht_id_eq(&p->id, &d->self.id)) return;
    if (dht_routing_knows(d->rt, &p->id, &p->addr)) learn(d, p, 1);
    else probe(d, p);
}

/* ---- incoming requests ---- */

static void answer(inreq *q, wire_out *o)
{
    q->answered = 1;
    q->respond(q->ctx, o);
}

static void answer_error(inreq *q, int code, const char *msg)
{
    LOG_DEBUG("dht request %s refused: %s", q->m->method, msg);
    answer(q, wire_error_reply(q->m->id, code, msg));
}

/* proof_for returns the proof answering q's challenge (NULL when it carried none). */
static const dht_proof *proof_for(dht *d, const uint8_t *chal, dht_proof *out)
{
    if (!chal || dht_proto_proof_make(&d->ident, chal, &d->self, out) != 0) return NULL;
    d->istats.signed_proofs++;
    return out;
}

static void serve_find(dht *d, inreq *q, const uint8_t *chal)
{
    dht_find_req req;
    char err[256] = "";
    int rc = dht_proto_find_decode(&q->m->root, &req, err, sizeof err);
    if (rc) {
        answer_error(q, rc, err);
        return;
    }
    heard(d, &req.sender);
    double now = dht_node_now(d);
    size_t k = d->cfg.bucket_size < DHT_PROTO_MAX_NEAREST ? d->cfg.bucket_size : DHT_PROTO_MAX_NEAREST;
    dht_find_entry *e = calloc(req.n, sizeof *e);
    dht_stored *st = calloc(req.n, sizeof *st);
    dht_node *near = calloc(req.n * k, sizeof *near);
    if (!e || !st || !near) {
        free(e);
        free(st);
        free(near);
        answer_error(q, DMOE_ENOMEM, "out of memory");
        return;
    }
    /* Expire first so that the gets below drop nothing and every pointer stays valid. */
    dht_storage_expire(d->store, now);
    dht_storage_expire(d->cache, now);
    for (size_t i = 0; i < req.n; i++) {
        if (dht_storage_get(d->store, &req.keys[i], now, &st[i]) == 0 ||
            dht_storage_get(d->cache, &req.keys[i], now, &st[i]) == 0)
            e[i].found = &st[i];
        e[i].nearest = near + i * k;
        e[i].n_nearest = dht_routing_nearest(d->rt, &req.keys[i], k, req.sender.present ? &req.sender.id : NULL,
                                             near + i * k);
    }
    dht_proof proof;
    answer(q, dht_proto_find_reply(q->m->id, &d->self, e, req.n, proof_for(d, chal, &proof)));
    free(e);
    free(st);
    free(near);
}

static void serve_store(dht *d, inreq *q, const uint8_t *chal)
{
    dht_store_req req;
    char err[256] = "";
    double now = dht_node_now(d);
    int rc = dht_proto_store_decode(&q->m->root, now, &req, err, sizeof err);
    if (rc) {
        answer_error(q, rc, err);
        return;
    }
    heard(d, &req.sender);
    uint8_t stored[DHT_PROTO_MAX_KEYS];
    for (size_t i = 0; i < req.n; i++) {
        const dht_store_item *it = &req.items[i];
        stored[i] = store_from(d, q->from, it, req.in_cache) == 1;
    }
    dht_proof proof;
    answer(q, dht_proto_store_reply(q->m->id, &d->self, stored, req.n, proof_for(d, chal, &proof)));
}

static void serve(dht *d, inreq *q)
{
    uint8_t chal[DHT_CHALLENGE_BYTES];
    int has_chal = 0;
    char err[256] = "";
    if (d->stopped) {
        answer_error(q, DMOE_ESHUTDOWN, "the DHT node is stopping");
    } else if (d->cfg.client_mode) {
        answer_error(q, DMOE_ENOMETHOD, "a client-mode DHT node answers no DHT requests");
    } else if (strncmp(q->m->method, "dht_", 4) == 0 &&
               dht_proto_challenge_decode(&q->m->root, chal, &has_chal, err, sizeof err) != 0) {
        answer_error(q, DMOE_EINVAL, err);
    } else if (strcmp(q->m->method, "dht_ping") == 0) {
        dht_peer_info who;
        int rc = dht_proto_peer_decode(&q->m->root, "node", &who, err, sizeof err);
        if (rc) {
            answer_error(q, rc, err);
            return;
        }
        heard(d, &who);
        dht_proof proof;
        answer(q, dht_proto_ping_reply(q->m->id, &d->self, proof_for(d, has_chal ? chal : NULL, &proof)));
    } else if (strcmp(q->m->method, "dht_find") == 0) {
        serve_find(d, q, has_chal ? chal : NULL);
    } else if (strcmp(q->m->method, "dht_store") == 0) {
        serve_store(d, q, has_chal ? chal : NULL);
    } else {
        snprintf(err, sizeof err, "unknown DHT method %.40s", q->m->method);
        answer_error(q, DMOE_ENOMETHOD, err);
    }
}

static void inreq_drop(rt_msg *m)
{
    inreq *q = (inreq *)m;
    if (!q->answered) q->respond(q->ctx, NULL);
    wire_msg_free(q->m);
    free(q->m);
    free(q);
}

void dht_node_deliver(dht *d, wire_msg *m, const char *from, dht_respond_fn respond, void *ctx)
{
    inreq *q = calloc(1, sizeof *q);
    if (!q) {
        respond(ctx, wire_error_reply(m->id, DMOE_ENOMEM, "out of memory"));
        wire_msg_free(m);
        free(m);
        return;
    }
    q->msg.type = MSG_REQ;
    q->msg.drop = inreq_drop;
    q->d = d;
    q->m = m;
    q->respond = respond;
    q->ctx = ctx;
    snprintf(q->from, sizeof q->from, "%s", from && *from ? from : "?");
    if (rt_send(&d->actor, &q->msg) != 0) {
        answer(q, wire_error_reply(m->id, DMOE_ESHUTDOWN, "the DHT node is stopping"));
        inreq_drop(&q->msg);
    }
}

/* ---- parts ---- */

void dht_node_attach(dht *d, dht_part *p)
{
    p->next = d->parts;
    d->parts = p;
}

void dht_node_detach(dht *d, dht_part *p)
{
    for (dht_part **pp = &d->parts; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            p->next = NULL;
            return;
        }
}

dht_part *dht_node_part(dht *d, const void *kind)
{
    for (dht_part *p = d->parts; p; p = p->next)
        if (p->kind == kind) return p;
    return NULL;
}

/* ---- the actor ---- */

static void refresh_tick(dht *d)
{
    double now = dht_node_now(d);
    dht_storage_expire(d->store, now);
    dht_storage_expire(d->cache, now);
    dht_storage_expire(d->neg, now);
    dht_id ids[DHT_REFRESH_MAX_BUCKETS];
    size_t n = dht_routing_stale(d->rt, now, d->cfg.refresh_period_s, ids, DHT_REFRESH_MAX_BUCKETS);
    for (size_t i = 0; i < n; i++) dht_routing_touch(d->rt, &ids[i], now);
    for (dht_part *p = d->parts, *next; n > 0 && p; p = next) {
        next = p->next;
        if (p->refresh) p->refresh(p, ids, n);
    }
}

static void handle(rt_actor *self, rt_msg *m)
{
    dht *d = (dht *)self;
    switch (m->type) {
    case MSG_REQ:
        serve(d, (inreq *)m);
        break;
    case MSG_REFRESH:
        if (!d->stopped) refresh_tick(d);
        break;
    case MSG_SWEEP: {
        double now = dht_node_now(d);
        dht_storage_expire(d->store, now);
        dht_storage_expire(d->cache, now);
        d->sweep_at = 0;
        arm_sweep(d);
        break;
    }
    }
    rt_msg_drop(m);
}

static void destroy(rt_actor *self)
{
    dht *d = (dht *)self;
    for (dht_part *p = d->parts, *next; p; p = next) {
        next = p->next;
        p->next = NULL;
        if (p->release) p->release(p);
    }
    dht_timer_deinit(&d->refresh);
    dht_timer_deinit(&d->sweep);
    dht_routing_free(d->rt);
    dht_blacklist_free(d->bl);
    dht_storage_free(d->store);
    dht_storage_free(d->cache);
    dht_storage_free(d->neg);
    rt_map_clear(&d->keys);
    rt_map_clear(&d->probing);
    dht_ident_wipe(&d->ident);
    free(d);
}

int dht_node_new(rt_loop *l, const dht_cfg *c, const dht_transport *t, dht **out)
{
    if (!c->client_mode && (c->addr.host[0] == 0 || c->addr.port == 0)) return DMOE_EINVAL;
    dht *d = calloc(1, sizeof *d);
    if (!d) return DMOE_ENOMEM;
    d->loop = l;
    d->cfg = *c;
    fill_defaults(&d->cfg);
    d->cfg.limits = NULL;
    d->t = *t;
    d->clock = d->cfg.clock;
    uint64_t rng = c->seed;
    if (c->ident) d->ident = *c->ident;
    if ((!c->ident && dht_ident_generate(&d->ident) != 0) || dht_ident_init() != 0) {
        free(d);
        return DMOE_EINTERNAL;
    }
    dht_ident_id(&d->ident, &d->self.id);
    d->cfg.ident = &d->ident;
    d->self.addr = c->addr;
    d->self.present = !c->client_mode;
    rt_actor_init(&d->actor, l, "dht", handle, destroy);
    double now = dht_node_now(d);
    if (dht_routing_new(&d->rt, &d->self.id, d->cfg.bucket_size, 0, rng ^ 0xA5A5A5A5ull, now) != 0 ||
        dht_blacklist_new(&d->bl, 0, 0, 0) != 0 || dht_storage_new(&d->store, c->limits) != 0 ||
        dht_storage_new(&d->cache, c->limits) != 0 || dht_storage_new(&d->neg, NULL) != 0 ||
        dht_timer_init(&d->refresh, d->clock, &d->actor, MSG_REFRESH) != 0 ||
        dht_timer_init(&d->sweep, d->clock, &d->actor, MSG_SWEEP) != 0 ||
        (d->cfg.refresh_period_s > 0 &&
         dht_timer_start(&d->refresh, (uint64_t)(d->cfg.refresh_period_s * 1000.0), 1) != 0)) {
        destroy(&d->actor);
        return DMOE_ENOMEM;
    }
    dht_routing_set_host_limit(d->rt, d->cfg.max_per_host, d->cfg.limit_loopback);
    *out = d;
    return 0;
}

void dht_node_stop(dht *d)
{
    if (d->stopped) return;
    d->stopped = 1;
    dht_timer_cancel(&d->refresh);
    dht_timer_cancel(&d->sweep);
    for (dht_part *p = d->parts, *next; p; p = next) {   /* a stop hook may detach its own part only */
        next = p->next;
        p->stop(p);
    }
}

void dht_node_free(dht *d)
{
    if (!d) return;
    dht_node_stop(d);
    rt_actor_stop(&d->actor);
}

const dht_id *dht_node_id(const dht *d) { return &d->self.id; }
const dht_peer_info *dht_node_self(const dht *d) { return &d->self; }
const dht_cfg *dht_node_cfg(const dht *d) { return &d->cfg; }
const dht_ident *dht_node_ident(const dht *d) { return &d->ident; }
dht_ident_stats dht_node_ident_stats(const dht *d) { return d->istats; }
rt_loop *dht_node_loop(const dht *d) { return d->loop; }
dht_routing *dht_node_routing(dht *d) { return d->rt; }
dht_storage *dht_node_storage(dht *d) { return d->store; }
dht_storage *dht_node_cache(dht *d) { return d->cache; }
dht_storage *dht_node_negcache(dht *d) { return d->neg; }
int dht_node_is_stopped(const dht *d) { return d->stopped; }
size_t dht_node_stored_keys(const dht *d) { return rt_map_count(&d->keys); }
uint64_t dht_node_rpc_count(const dht *d) { return d->rpcs; }
dht_clock *dht_node_clock(const dht *d) { return d->clock; }
dht_blacklist *dht_node_blacklist(dht *d) { return d->bl; }

void dht_node_maddr(const dht *d, char *buf, size_t cap)
{
    wire_maddr m;
    if (d->cfg.client_mode || dht_proto_addr_to_maddr(&d->self.addr, &d->self.id, &m) != 0) {
        snprintf(buf, cap, "(client mode)");
        return;
    }
    char text[WIRE_MADDR_TEXT];
    wire_maddr_format(&m, text, sizeof text);
    snprintf(buf, cap, "%s", text);
}
