/* dht_node.c -- the DHT node actor: configuration, outgoing RPCs, who enters the routing table, the
 * timers and the parts (see dht_node.h; the state is in dht_node_impl.h).
 *
 * Design notes. Identity first: learn() is the only way into the routing table, and it takes a peer only
 * when it is already held at that id and address or has just proven itself: a reply that signed our
 * challenge (rpc.chal) from the address it claims. An incoming request from a sender not held goes to
 * probe(): a challenge ping to the claimed address, at most one in flight per id (the probing map), at
 * most DHT_PROBES_MAX in all; its failure changes nothing (an attacker could otherwise get an honest
 * address banned by naming it). Only an address on the IP the request came from is probed: a request
 * naming a third host makes the node send nothing there (no reflection); such a peer still enters the
 * table when the node calls it (a lookup meets it) and its proof comes back. A peer learn() admits for the first time is announced to the parts'
 * `joined` hooks (the hand-over, dht_handover.c).
 *
 * Outgoing RPCs are rpc records handed to the transport; their completion (on_reply) applies the
 * liveness rules -- learn the peer on success, evict and blacklist it on timeout or connection failure --
 * before the caller's callback runs. A remote error reply proves the peer alive, so it neither evicts
 * nor learns -- except DMOE_ESHUTDOWN, which says the peer is leaving: that evicts it as a timeout would.
 * Each rpc records when it left; a successful reply is one sample of the node's round-trip estimator
 * (dht_rtt.h), which gives the lookups their soft timeout (dht_node_soft_timeout_ms). Only the hard
 * timeout (cfg.rpc_timeout_ms, the transport's) fails an RPC and evicts.
 *
 * The actor's mail: jobs (dht_node_impl.h: the incoming requests of dht_serve.c and the work of the
 * parts, each running its own function) and the timers, both on the node's clock (dht_clock.h): the
 * sweep (one-shot, armed at the earliest expiration held; each sweep drops at most DHT_EXPIRE_BUDGET
 * keys per storage and re-arms 1 ms on while expired keys are left, so a node holding many expired
 * records frees them over several loop turns) and the refresh (periodic: expired keys swept,
 * stale buckets handed to the parts' refresh hooks -- the lookups look them up). The node calls nothing
 * above it: the files above queue jobs and attach parts, and dht_node_stop and the refresh reach them
 * through their hooks.
 */
#include "actors/dht/dht_node.h"
#include "actors/dht/dht_node_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/rt_map.h"

enum { MSG_JOB = 1, MSG_REFRESH = 2, MSG_SWEEP = 3 };
enum { RPC_PING = 0, RPC_FIND = 1, RPC_STORE = 2 };

/* Stale buckets refreshed per refresh tick: bounds the lookups one tick can start. */
#define DHT_REFRESH_MAX_BUCKETS 8

typedef struct {
    dht *d;
    int kind;
    dht_node peer;
    int has_id;
    int has_chal;                /* the request carried chal: the reply must prove the peer's id */
    int probe;                   /* a challenge ping to an unproven sender: no failure rules */
    uint8_t chal[DHT_CHALLENGE_BYTES];
    int retried;                 /* a find sent again with the token of a cut reply */
    uint64_t sent_us;            /* when it left, on the node's clock: its reply's RTT sample is the time
                                  * its caller waited (the second send of a cut reply included) */
    size_t n;
    dht_id keys[DHT_PROTO_MAX_KEYS];   /* a find's keys, for that second send */
    dht_find_done find_cb;
    dht_store_done store_cb;
    dht_ping_done ping_cb;
    void *arg;
} rpc;

char dht_present;

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
    if (!(c->max_record_lifetime_s > 0)) c->max_record_lifetime_s = DHT_RECORD_MAX_LIFETIME_S;
}

/* ---- outgoing RPCs ---- */

static void learn(dht *d, const dht_peer_info *p, int proven);

/* clear_proven empties the set of proven hosts, freeing the copies. */
static void clear_proven(dht *d)
{
    rt_map_iter it = RT_MAP_ITER_INIT;
    void *v;
    while ((v = rt_map_next(&d->proven_hosts, &it, NULL, NULL))) free(v);
    rt_map_clear(&d->proven_hosts);
}

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

static void on_reply(void *arg, int err, const char *msg, const wire_msg *reply);
static const uint8_t *chal_of(const rpc *r);

/* resend_find sends find r again with the token its cut reply carried: the token shows the peer that
 * our address is real, and it answers in full. Returns 0 (on_reply runs again later) or a negative code
 * (r stays the caller's). Counts as the same RPC. */
static int resend_find(dht *d, rpc *r, const uint8_t *token)
{
    wire_maddr to;
    if (dht_proto_addr_to_maddr(&r->peer.addr, r->has_id ? &r->peer.id : NULL, &to) != 0) return DMOE_EINVAL;
    uint64_t id = d->t.next_id(d->t.impl);
    wire_out *req = dht_proto_find_req_token(id, &d->self, r->keys, r->n, chal_of(r), token);
    if (!req) return DMOE_ENOMEM;
    r->retried = 1;
    return d->t.call(d->t.impl, &to, id, req, d->cfg.rpc_timeout_ms, on_reply, r);
}

static void reply_work(rpc *r, int err, const char *msg, const wire_msg *reply)
{
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
            if (rc == 0) dht_node_prove_host(d, r->peer.addr.host);   /* a round trip to that address */
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
        dht_rtt_sample(&d->rtt, (double)(dht_clock_us(d->clock) - r->sent_us) / 1000.0);
    }
    if (r->probe) rt_map_del(&d->probing, r->peer.id.b, sizeof r->peer.id.b);
    if (err == 0 && r->kind == RPC_FIND && frep.truncated && !r->retried && !d->stopped &&
        resend_find(d, r, frep.token) == 0) {
        dht_proto_find_rep_free(&frep);
        return;   /* the full reply completes the call */
    }
    if (r->kind == RPC_FIND) r->find_cb(r->arg, err, msg, err ? NULL : &frep);
    else if (r->kind == RPC_STORE) r->store_cb(r->arg, err, msg, err ? NULL : &srep);
    else r->ping_cb(r->arg, err, msg, err ? NULL : &who);
    dht_proto_find_rep_free(&frep);
    free(r);
}

/* on_reply completes an outgoing RPC, metered as one of the node's handlers (the callbacks it runs
 * included). */
static void on_reply(void *arg, int err, const char *msg, const wire_msg *reply)
{
    rpc *r = arg;
    dht *d = r->d;
    rt_lag_mark t0 = rt_lag_begin(&d->lag);
    reply_work(r, err, msg, reply);
    rt_lag_end(&d->lag, t0);
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
    r->sent_us = dht_clock_us(d->clock);
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
    if (n == 0 || n > DHT_PROTO_MAX_KEYS) return DMOE_EINVAL;
    rpc *r = rpc_new(d, RPC_FIND, peer, 1, n, arg);
    if (!r) return DMOE_ENOMEM;
    r->find_cb = cb;
    memcpy(r->keys, keys, n * sizeof *keys);
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
    if (rt_map_put(&d->probing, p->id.b, sizeof p->id.b, &dht_present) != 0) {
        free(r);
        return;
    }
    d->istats.probes++;
    uint64_t id = d->t.next_id(d->t.impl);
    if (send_rpc(d, r, id, dht_proto_ping_req(id, &d->self, chal_of(r))) != 0)
        rt_map_del(&d->probing, p->id.b, sizeof p->id.b);
}

/* ---- storage sweep, who enters the table ---- */

void dht_node_arm_sweep(dht *d)
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

/* learn refreshes peer p in the routing table when it is proven (just now, or held at that id and
 * address already); nothing for nil senders, ourselves or unproven claims. */
static void learn(dht *d, const dht_peer_info *p, int proven)
{
    if (d->stopped || !p->present || dht_id_eq(&p->id, &d->self.id)) return;
    if (!proven && !dht_routing_knows(d->rt, &p->id, &p->addr)) return;
    if (!dht_routing_admits(d->rt, &p->id, &p->addr)) return;   /* its host holds its share of the table */
    dht_node known, to_ping;
    int is_new = dht_routing_get(d->rt, &p->id, &known) != 0;
    for (dht_part *q = d->parts, *next; is_new && !d->cfg.client_mode && q; q = next) {
        next = q->next;
        if (q->joined) q->joined(q, p);
    }
    int rc = dht_routing_add_or_update(d->rt, &p->id, &p->addr, dht_node_now(d), &to_ping);
    if (rc == DHT_RT_PING) dht_node_ping(d, &to_ping, 1, ignore_ping, NULL);
}

void dht_node_prove_host(dht *d, const char *host)
{
    size_t len = strlen(host);
    if (len == 0 || rt_map_get(&d->proven_hosts, host, len)) return;
    if (rt_map_count(&d->proven_hosts) >= DHT_PROVEN_HOSTS) clear_proven(d);
    char *copy = strdup(host);
    if (copy && rt_map_put(&d->proven_hosts, copy, len, copy) != 0) free(copy);
}

int dht_node_host_proven(const dht *d, const char *host)
{
    return host && *host && rt_map_get(&d->proven_hosts, host, strlen(host)) != NULL;
}

/* same_host returns 1 when host (an address a sender claims) is src, the IP its request came from; an
 * IPv4-mapped IPv6 source counts as its IPv4 address. An unknown source matches nothing. */
static int same_host(const char *host, const char *src)
{
    if (!src || !*src || strcmp(src, "?") == 0) return 0;
    if (strncasecmp(src, "::ffff:", 7) == 0 && strchr(src + 7, '.')) src += 7;
    return strcmp(host, src) == 0;
}

void dht_node_heard(dht *d, const dht_peer_info *p, const char *src)
{
    if (d->stopped || !p->present || dht_id_eq(&p->id, &d->self.id)) return;
    if (dht_routing_knows(d->rt, &p->id, &p->addr)) learn(d, p, 1);
    else if (same_host(p->addr.host, src)) probe(d, p);
}

/* ---- parts, jobs ---- */

int dht_node_job(dht *d, dht_job *j)
{
    j->msg.type = MSG_JOB;
    return rt_send(&d->actor, &j->msg);
}

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
    dht_node_arm_sweep(d);   /* what the budgets left is the sweep's */
    dht_id ids[DHT_REFRESH_MAX_BUCKETS];
    size_t n = dht_routing_stale(d->rt, now, d->cfg.refresh_period_s, ids, DHT_REFRESH_MAX_BUCKETS);
    for (size_t i = 0; i < n; i++) dht_routing_touch(d->rt, &ids[i], now);
    for (dht_part *p = d->parts, *next; n > 0 && p; p = next) {
        next = p->next;
        if (p->refresh) p->refresh(p, ids, n);
    }
}

static void handle_work(dht *d, rt_msg *m)
{
    switch (m->type) {
    case MSG_JOB: {   /* the job's run owns the message */
        dht_job *j = (dht_job *)m;
        j->run(d, j);
        return;
    }
    case MSG_REFRESH:
        if (!d->stopped) refresh_tick(d);
        break;
    case MSG_SWEEP: {
        double now = dht_node_now(d);
        dht_storage_expire(d->store, now);
        dht_storage_expire(d->cache, now);
        d->sweep_at = 0;
        dht_node_arm_sweep(d);
        break;
    }
    }
    rt_msg_drop(m);
}

/* handle runs the node's mail, each message metered as a stall of the loop (dht_node_lag). */
static void handle(rt_actor *self, rt_msg *m)
{
    dht *d = (dht *)self;
    rt_lag_mark t0 = rt_lag_begin(&d->lag);
    handle_work(d, m);
    rt_lag_end(&d->lag, t0);
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
    rt_map_clear(&d->probing);
    clear_proven(d);
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
    dht_rtt_init(&d->rtt);
    uint64_t rng = c->seed;
    if (c->ident) d->ident = *c->ident;
    if ((!c->ident && dht_ident_generate(&d->ident) != 0) || dht_ident_init() != 0) {
        free(d);
        return DMOE_EINTERNAL;
    }
    dht_ident_id(&d->ident, &d->self.id);
    dht_ident_random(d->token_key, sizeof d->token_key);
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
const rt_lag *dht_node_lag(const dht *d) { return &d->lag; }
rt_loop *dht_node_loop(const dht *d) { return d->loop; }
dht_routing *dht_node_routing(dht *d) { return d->rt; }
dht_storage *dht_node_storage(dht *d) { return d->store; }
dht_storage *dht_node_cache(dht *d) { return d->cache; }
dht_storage *dht_node_negcache(dht *d) { return d->neg; }
int dht_node_is_stopped(const dht *d) { return d->stopped; }
uint64_t dht_node_rpc_count(const dht *d) { return d->rpcs; }
dht_rtt dht_node_rtt(const dht *d) { return d->rtt; }

uint64_t dht_node_soft_timeout_ms(const dht *d)
{
    uint64_t fixed = d->cfg.soft_timeout_ms, hard = d->cfg.rpc_timeout_ms;
    if (fixed) return fixed < hard ? fixed : hard;
    return dht_rtt_timeout_ms(&d->rtt, d->cfg.rpc_timeout_ms);
}
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
