/* dht_sim_hostile.c -- what the simulator's hostile peers do (see dht_sim.h, "hostile peers").
 *
 * A hostile peer runs a real DHT node (so it answers pings, proves its own id and enters routing
 * tables), but every request delivered to its endpoint comes here first (a memnet intercept):
 *  - dht_ping goes on to its node;
 *  - dht_find: half are dropped unanswered (the caller waits for its RPC timeout); the others are
 *    answered, for each key, with the copy its node holds (frozen: see stores) or else a forged record
 *    (a record-shaped value whose signature verifies for nothing), and as the nearest peers only fellow
 *    hostile peers, the k of them nearest to the key (colluders steering the lookup among themselves);
 *  - dht_store: a store of keys its node does not hold goes on to it (so it keeps a first copy);
 *    a store touching a key it holds is answered "stored" for every item and dropped (updates lost,
 *    what it serves goes stale).
 * It answers with its own key's proof when challenged -- it cannot sign for anyone else.
 * Sybils are hostile peers whose ids were ground next to a hot uid (sim_grind_seed).
 * Single-threaded, on the simulation's loop.
 */
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_node.h"
#include "actors/dht/sim/dht_sim.h"
#include "actors/dht/sim/dht_sim_impl.h"
#include "actors/dht/trust/dht_record.h"
#include "runtime/rt_err.h"

/* The share of finds a hostile peer leaves unanswered. */
#define SIM_HOSTILE_DROP 0.5
/* Seconds ahead a forged record claims to expire: within the lifetime cap, so only its signature fails. */
#define SIM_FORGED_LIFETIME_S 50.0

uint64_t sim_grind_seed(const dht_id *target, int bits, uint64_t start)
{
    for (uint64_t seed = start;; seed++) {   /* ends: one id in 2^bits shares the prefix (bits <= 24) */
        dht_ident k;
        dht_id id;
        if (dht_ident_for_test(&k, seed) != 0) continue;
        dht_ident_id(&k, &id);
        dht_ident_wipe(&k);
        if (dht_id_common_prefix(&id, target) >= bits) return seed;
    }
}

int sim_hostile_prepare(sim *s, size_t i)
{
    sim_peer *p = &s->peers[i];
    const dht_ident *k = dht_node_ident(p->d);
    uint8_t sk[DHT_RECORD_SUBKEY_MAX];
    size_t sklen = dht_record_subkey(k->pk, 0, 0, sk);
    dht_id nowhere;
    memset(&nowhere, 0, sizeof nowhere);
    static const uint8_t payload[] = { 0x92, 0xa1, 'x', 0xa1, 'y' };   /* ["x", "y"] */
    /* Sealed for another key and expiration than it will be served with: it verifies for nothing. */
    return dht_record_seal(k, &nowhere, sk, sklen, payload, sizeof payload, 0.0, &p->forged, &p->forged_len);
}

static const sim *cmp_ctx;

static int by_id(const void *a, const void *b)
{
    return dht_id_cmp(&cmp_ctx->peers[*(const size_t *)a].id, &cmp_ctx->peers[*(const size_t *)b].id);
}

void sim_hostile_reindex(sim *s)
{
    if (!s->hostile_dirty) return;
    s->hostile_dirty = 0;
    size_t n = 0;
    for (size_t i = 0; i < s->nup; i++) n += s->peers[s->up[i]].hostile;
    size_t *h = realloc(s->hostile_sorted, (n ? n : 1) * sizeof *h);
    if (!h) return;
    s->hostile_sorted = h;
    s->nhostile = 0;
    for (size_t i = 0; i < s->nup; i++)
        if (s->peers[s->up[i]].hostile) h[s->nhostile++] = s->up[i];
    cmp_ctx = s;
    qsort(h, s->nhostile, sizeof *h, by_id);
}

/* colluders writes up to k live hostile peers near key into out[] (nearest first); returns how many. */
static size_t colluders(const sim *s, const dht_id *key, size_t k, dht_node *out)
{
    size_t n = s->nhostile, lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (dht_id_cmp(&s->peers[s->hostile_sorted[mid]].id, key) < 0) lo = mid + 1;
        else hi = mid;
    }
    /* The XOR-nearest lie in a window around key's place in id order. */
    size_t a = lo > 2 * k ? lo - 2 * k : 0, b = lo + 2 * k < n ? lo + 2 * k : n, m = 0;
    dht_node win[4 * DHT_PROTO_MAX_NEAREST];
    for (size_t i = a; i < b && m < sizeof win / sizeof win[0]; i++) {
        const sim_peer *p = &s->peers[s->hostile_sorted[i]];
        if (!p->alive) continue;
        win[m].id = p->id;
        sim_peer_addr(s, p, &win[m].addr);
        win[m].last_seen = 0;
        win[m].ping_pending = 0;
        m++;
    }
    /* selection by XOR distance: m is at most 4k */
    size_t w = 0;
    for (; w < k && w < m; w++) {
        size_t best = w;
        for (size_t j = w + 1; j < m; j++)
            if (dht_id_distance_cmp(key, &win[j].id, &win[best].id) < 0) best = j;
        dht_node t = win[w];
        win[w] = win[best];
        win[best] = t;
        out[w] = win[w];
    }
    return w;
}

static void release(wire_msg *m)
{
    wire_msg_free(m);
    free(m);
}

static const dht_proof *proof_for(dht *d, const uint8_t *chal, dht_proof *out)
{
    if (!chal || dht_proto_proof_make(dht_node_ident(d), chal, dht_node_self(d), out) != 0) return NULL;
    return out;
}

static void hostile_find(sim *s, const sim_peer *p, dht *d, wire_msg *m, const uint8_t *chal, dht_respond_fn respond,
                         void *ctx)
{
    dht_find_req req;
    char err[256];
    int rc = dht_proto_find_decode(&m->root, &req, err, sizeof err);
    if (rc || sim_uniform(s) < SIM_HOSTILE_DROP) {
        respond(ctx, rc ? wire_error_reply(m->id, rc, err) : NULL);
        release(m);
        return;
    }
    double now = dht_node_now(d);
    size_t k = dht_node_cfg(d)->bucket_size < DHT_PROTO_MAX_NEAREST ? dht_node_cfg(d)->bucket_size : DHT_PROTO_MAX_NEAREST;
    uint8_t sk[DHT_RECORD_SUBKEY_MAX];
    dht_subitem forged_sub = { sk, dht_record_subkey(dht_node_ident(d)->pk, 0, 0, sk), p->forged, p->forged_len,
                               now + SIM_FORGED_LIFETIME_S };
    dht_stored forged = { 1, NULL, 0, &forged_sub, 1, forged_sub.expiration, 1 };
    dht_find_entry e[DHT_PROTO_MAX_KEYS];
    dht_stored st[DHT_PROTO_MAX_KEYS];
    dht_node *near = malloc(req.n * k * sizeof *near);
    if (!near) {
        respond(ctx, wire_error_reply(m->id, DMOE_ENOMEM, "out of memory"));
        release(m);
        return;
    }
    dht_storage_expire(dht_node_storage(d), now);
    for (size_t i = 0; i < req.n; i++) {
        e[i].found = dht_storage_get(dht_node_storage(d), &req.keys[i], now, &st[i]) == 0 ? &st[i] : &forged;
        e[i].nearest = near + i * k;
        e[i].n_nearest = colluders(s, &req.keys[i], k, near + i * k);
    }
    dht_proof proof;
    respond(ctx, dht_proto_find_reply(m->id, dht_node_self(d), e, req.n, proof_for(d, chal, &proof)));
    free(near);
    release(m);
}

static void hostile_store(sim *s, dht *d, wire_msg *m, const uint8_t *chal, const char *from, dht_respond_fn respond,
                          void *ctx)
{
    static dht_store_req req;   /* large; single-threaded */
    char err[256];
    double now = dht_node_now(d);
    if (dht_proto_store_decode(&m->root, now, &req, err, sizeof err) != 0) {
        dht_node_deliver(d, m, from, respond, ctx);   /* its node refuses it as any would */
        return;
    }
    int held = 0;
    dht_stored st;
    for (size_t i = 0; i < req.n && !held; i++) held = dht_storage_get(dht_node_storage(d), &req.items[i].key, now, &st) == 0;
    if (!held) {
        dht_node_deliver(d, m, from, respond, ctx);
        return;
    }
    uint8_t stored[DHT_PROTO_MAX_KEYS];
    memset(stored, 1, sizeof stored);
    dht_proof proof;
    respond(ctx, dht_proto_store_reply(m->id, dht_node_self(d), stored, req.n, proof_for(d, chal, &proof)));
    release(m);
}

static void intercept(void *arg, int to, dht *d, wire_msg *m, const char *from, dht_respond_fn respond, void *ctx)
{
    sim *s = arg;
    /* endpoints are numbered as peers are made: peer i has endpoint i (dht_sim.c, new_peer) */
    const sim_peer *p = to >= 0 && (size_t)to < s->np ? &s->peers[to] : NULL;
    if (!p || !p->hostile || !p->alive || p->d != d || dht_node_is_stopped(d)) {
        dht_node_deliver(d, m, from, respond, ctx);
        return;
    }
    uint8_t chal[DHT_CHALLENGE_BYTES];
    int has = 0;
    char err[128];
    if (dht_proto_challenge_decode(&m->root, chal, &has, err, sizeof err) != 0) {
        dht_node_deliver(d, m, from, respond, ctx);
        return;
    }
    if (strcmp(m->method, "dht_find") == 0) hostile_find(s, p, d, m, has ? chal : NULL, respond, ctx);
    else if (strcmp(m->method, "dht_store") == 0) hostile_store(s, d, m, has ? chal : NULL, from, respond, ctx);
    else dht_node_deliver(d, m, from, respond, ctx);
}

void sim_hostile_install(sim *s) { dht_memnet_set_intercept(s->net, intercept, s); }
