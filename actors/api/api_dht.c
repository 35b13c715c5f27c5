/* api_dht.c -- the public DHT handle: joining (client mode or full), store, get, declaring experts,
 * and the handle's life.
 *
 * dmoe_dht_join (dmoe_dht_join_trusted with no keys) posts a join operation; on the loop thread it
 * builds what dmoe-node builds for its DHT -- a client for outgoing RPCs, in full mode a server listening
 * for the DHT's requests, the TCP transport (dht_net) and the node -- and bootstraps it; the completion
 * comes from the bootstrap. The joined handle also carries the successors provider and the expert caller
 * (wrapped by moe_health) that beam searches and layers use.
 *
 * A private swarm (dmoe_dht_join_trusted): the trusted-keys file is read on the caller's thread and the
 * set given to the node's dht_cfg, so the node stores, returns and uses only records signed by those keys,
 * and so do the expert lookups, beam searches and layers built on the handle (they ask through the node).
 * The handle owns the set and frees it after the node.
 *
 * A stable identity (dmoe_dht_join_identity): the Ed25519 key file is read (or created) on the caller's
 * thread, as dmoe-node --identity_path reads it; the node copies the key pair, so its id -- the /p2p/ part
 * of its address -- and the signatures on its records stay the same across restarts. The join operation
 * wipes its copy when it ends.
 *
 * Life: the handle is reference-counted on the loop thread (the user, each expert, each layer).
 * dmoe_dht_free shuts the network side down at once -- server, node, client, in the order dht_net.h
 * asks, so pending lookups and calls fail with DMOE_ESHUTDOWN -- and drops the user's reference; the
 * remains are freed with the last reference. Loop-thread state only, reached through posted ops.
 */
#include "actors/api/api_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "actors/dht/dht_lookup.h"
#include "actors/grid/dht_experts.h"
#include "actors/net/resolve.h"
#include "actors/node/node_addrs.h"

double dmoe_dht_time(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Stop the network side (idempotent). Loop thread. */
static void dht_shutdown(dmoe_dht *d)
{
    if (d->stopped) return;
    d->stopped = 1;
    if (d->srv) server_shutdown(d->srv);   /* dmoe-node's order: stop accepting, stop the node, close */
    if (d->d) dht_node_stop(d->d);
    server_free(d->srv);
    d->srv = NULL;
    client_free(d->cl);
    d->cl = NULL;
}

void api_dht_unref(dmoe_dht *d)
{
    if (--d->refs > 0) return;
    dht_shutdown(d);
    moe_health_free(d->health);
    dht_node_free(d->d);
    dht_net_free(d->net);
    dht_trust_free(d->trusted);   /* the node, its lookups and the layers' successors used it: all gone */
    free(d);
}

/* ---- free ---- */

typedef struct {
    api_op op;
    dmoe_dht *d;
} unref_op;

static void run_dht_free(api_op *op)
{
    dmoe_dht *d = ((unref_op *)op)->d;
    dht_shutdown(d);
    api_dht_unref(d);
    api_done(op, 0, "");
}

/* ---- join ---- */

typedef struct {
    api_op op;
    char **peers;
    size_t n;
    int client_mode;
    wire_maddr listen;
    dht_trust *trusted;   /* loaded on the caller's thread; handed to the handle on the loop thread */
    dht_ident ident;      /* loaded on the caller's thread when has_ident; the node copies it */
    int has_ident;
    dmoe_dht *d;
    dmoe_dht **out;
} join_op;

static void join_free(api_op *op)
{
    join_op *j = (join_op *)op;
    for (size_t i = 0; i < j->n; i++) free(j->peers[i]);
    free(j->peers);
    dht_trust_free(j->trusted);
    dht_ident_wipe(&j->ident);
    if (j->d) api_dht_unref(j->d);
    free(j);
}

static void on_bootstrap(void *arg, int err, const char *msg)
{
    join_op *j = arg;
    dmoe_dht *d = j->d;
    char m[600];
    if (err) {
        /* the node is freed by a later op: never inside its own bootstrap callback */
        unref_op *u = calloc(1, sizeof *u);
        if (u) {
            u->op.run = run_dht_free;
            u->d = d;
            j->d = NULL;
            api_async(j->op.ctx, &u->op, NULL, NULL);   /* fails only while the context stops: then d leaks */
        }
        snprintf(m, sizeof m, "cannot join the DHT: %s", msg && msg[0] ? msg : dmoe_strerror(err));
        api_done(&j->op, err, m);
        return;
    }
    d->ds.d = d->d;
    d->ds.neg_cache_s = DHT_NEG_CACHE_S;
    moe_succ_dht(&d->ds, &d->succ);
    moe_caller_client(d->cl, &d->caller);
    d->health = moe_health_new(&d->succ, &d->caller, MOE_HEALTH_DEAD_S);
    if (!d->health) { api_done(&j->op, DMOE_ENOMEM, "out of memory"); return; }
    *j->out = d;
    j->d = NULL;   /* the user's reference now */
    api_done(&j->op, 0, "");
}

static void run_join(api_op *op)
{
    join_op *j = (join_op *)op;
    rt_loop *l = api_loop(op->ctx);
    char err[512] = "out of memory";
    int rc = DMOE_ENOMEM;
    dmoe_dht *d = calloc(1, sizeof *d);
    if (!d) goto fail;
    d->ctx = op->ctx;
    d->refs = 1;
    d->trusted = j->trusted;   /* the handle owns the set from here: it outlives the node */
    j->trusted = NULL;
    j->d = d;
    if (!(d->cl = client_new(l, NULL))) goto fail;
    dht_cfg dc;
    dht_cfg_default(&dc);
    dc.client_mode = j->client_mode;
    dc.trusted_keys = d->trusted;
    if (j->has_ident) dc.ident = &j->ident;
    dc.seed = (uint64_t)getpid() ^ rt_clock_us() ^ (uint64_t)(uintptr_t)d;
    if (!j->client_mode) {
        server_cfg scfg = {.num_workers = 0};
        conn_default_limits(&scfg.limits);
        if (!(d->srv = server_new(l, &scfg))) goto fail;
        wire_maddr bound, ifs[32], announced;
        if ((rc = server_listen(d->srv, &j->listen, &bound, err, sizeof err)) != 0) goto fail;
        /* a wildcard is never announced (node_addrs.h) */
        node_addrs_choose(&bound, 1, ifs, node_addrs_interfaces(ifs, 32), &announced, 1);
        snprintf(dc.addr.host, sizeof dc.addr.host, "%s", announced.host);
        dc.addr.port = announced.port;
    }
    dht_transport tr;
    rc = DMOE_ENOMEM;
    snprintf(err, sizeof err, "out of memory");
    if (dht_net_new(d->cl, &d->net, &tr) != 0) goto fail;
    if ((rc = dht_node_new(l, &dc, &tr, &d->d)) != 0) { snprintf(err, sizeof err, "cannot create the DHT node"); goto fail; }
    if (!j->client_mode && (rc = dht_net_serve(d->net, d->srv, d->d)) != 0) {
        snprintf(err, sizeof err, "cannot serve the DHT: %s", dmoe_strerror(rc));
        goto fail;
    }
    if (!j->client_mode) dht_node_maddr(d->d, d->maddr, sizeof d->maddr);
    rc = dht_node_bootstrap(d->d, (const char *const *)j->peers, j->n, on_bootstrap, j, err, sizeof err);
    if (rc == 0) return;
fail:
    api_done(op, rc, err);
}

int dmoe_dht_join(dmoe_ctx *ctx, const char *const *peers, size_t n, int client_mode, const char *listen_maddr,
                  dmoe_dht **out, char *err, size_t errlen)
{
    return dmoe_dht_join_trusted(ctx, peers, n, client_mode, listen_maddr, NULL, out, err, errlen);
}

int dmoe_dht_join_trusted(dmoe_ctx *ctx, const char *const *peers, size_t n, int client_mode,
                          const char *listen_maddr, const char *trusted_keys_path, dmoe_dht **out, char *err,
                          size_t errlen)
{
    return dmoe_dht_join_identity(ctx, peers, n, client_mode, listen_maddr, trusted_keys_path, NULL, out, err,
                                  errlen);
}

int dmoe_dht_join_identity(dmoe_ctx *ctx, const char *const *peers, size_t n, int client_mode,
                           const char *listen_maddr, const char *trusted_keys_path, const char *identity_path,
                           dmoe_dht **out, char *err, size_t errlen)
{
    if (!ctx || !out || (n && !peers)) { dmoe_set_err(err, errlen, "dmoe_dht_join: NULL argument"); return DMOE_EINVAL; }
    if (client_mode && n == 0) {
        dmoe_set_err(err, errlen, "a client-mode DHT node needs initial peers (the address of any node of the DHT)");
        return DMOE_EINVAL;
    }
    join_op *j = calloc(1, sizeof *j);
    if (!j) { dmoe_set_err(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    j->op.run = run_join;
    j->op.free = join_free;
    j->client_mode = client_mode;
    j->out = out;
    int rc = wire_maddr_parse_listen(listen_maddr ? listen_maddr : "/ip4/127.0.0.1/tcp/0", &j->listen, err, errlen);
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (!peers[i]) { dmoe_set_err(err, errlen, "dmoe_dht_join: peer %zu is NULL", i); rc = DMOE_EINVAL; }
    /* the keys file is read here, on the caller's thread, as dmoe-node reads it before its loop runs */
    if (rc == 0 && trusted_keys_path) {
        char why[600];
        if ((rc = dht_trust_load(trusted_keys_path, &j->trusted, why, sizeof why)) != 0)
            dmoe_set_err(err, errlen, "%s", why);
    }
    /* so is the identity key file, as dmoe-node --identity_path (created 0600 when absent) */
    if (rc == 0 && identity_path) {
        char why[600];
        int created = 0;
        if ((rc = dht_ident_load_or_create(identity_path, &j->ident, &created, why, sizeof why)) != 0)
            dmoe_set_err(err, errlen, "%s", why);
        else
            j->has_ident = 1;
    }
    /* HOST:PORT and /dns names become IP multiaddrs here, on the caller's thread (it waits for the join
     * anyway): the loop thread never blocks on a name */
    if (rc == 0 && n && (rc = resolve_now(peers, n, &j->peers, err, errlen)) == 0) j->n = n;
    if (rc) {
        join_free(&j->op);
        return rc;
    }
    return api_sync(ctx, &j->op, err, errlen);
}

int dmoe_dht_maddr(dmoe_dht *d, char *buf, size_t cap)
{
    if (cap) snprintf(buf, cap, "%s", d->maddr);   /* written once, before the handle was handed out */
    return 0;
}

void dmoe_dht_free(dmoe_dht *d)
{
    if (!d) return;
    unref_op *u = calloc(1, sizeof *u);
    if (!u) return;
    u->op.run = run_dht_free;
    u->d = d;
    api_sync(d->ctx, &u->op, NULL, 0);
}

/* ---- store ---- */

typedef struct {
    api_op op;
    dmoe_dht *d;
    dht_id key;
    uint8_t *subkey, *value;
    size_t sklen, vlen;
    double expiration;
} store_op;

static void store_free(api_op *op)
{
    store_op *s = (store_op *)op;
    free(s->subkey);
    free(s->value);
    free(s);
}

static void on_stored(void *arg, int err, const char *msg, size_t n_stored)
{
    store_op *s = arg;
    api_done(&s->op, err, err ? msg : "");
}

static void run_store(api_op *op)
{
    store_op *s = (store_op *)op;
    if (s->d->stopped) { api_done(op, DMOE_ESHUTDOWN, "the DHT was shut down"); return; }
    int rc = dht_store(s->d->d, &s->key, s->subkey, s->sklen, s->value, s->vlen, s->expiration, on_stored, s);
    if (rc) api_done(op, rc, rc == DMOE_ETOOBIG ? "value or subkey too big for the DHT" : dmoe_strerror(rc));
}

static uint8_t *dup_bytes(const void *p, size_t n)
{
    uint8_t *b = malloc(n ? n : 1);
    if (b && n) memcpy(b, p, n);
    return b;
}

int dmoe_dht_store(dmoe_dht *d, const void *key, size_t klen, const void *subkey, size_t sklen, const void *value,
                   size_t vlen, double expiration, char *err, size_t errlen)
{
    if (!d || !key || !klen || (!value && vlen)) { dmoe_set_err(err, errlen, "dmoe_dht_store: bad argument"); return DMOE_EINVAL; }
    store_op *s = calloc(1, sizeof *s);
    if (!s) { dmoe_set_err(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    s->op.run = run_store;
    s->op.free = store_free;
    s->d = d;
    dht_id_from_bytes(&s->key, key, klen);
    s->value = dup_bytes(value, vlen);
    s->vlen = vlen;
    if (subkey) s->subkey = dup_bytes(subkey, sklen), s->sklen = sklen;
    s->expiration = expiration;
    if (!s->value || (subkey && !s->subkey)) {
        store_free(&s->op);
        dmoe_set_err(err, errlen, "out of memory");
        return DMOE_ENOMEM;
    }
    return api_sync(d->ctx, &s->op, err, errlen);
}

/* ---- get ---- */

struct dmoe_value {
    int kind;
    double expiration;
    uint8_t *value;
    size_t vlen;
    size_t nsubs;
    dht_subitem *subs;   /* subkey and value point into their own allocations */
};

typedef struct {
    api_op op;
    dmoe_dht *d;
    dht_id key;
    int latest;
    dmoe_value **out;
} get_op;

void dmoe_value_free(dmoe_value *v)
{
    if (!v) return;
    for (size_t i = 0; i < v->nsubs; i++) {
        free((void *)v->subs[i].subkey);
        free((void *)v->subs[i].value);
    }
    free(v->subs);
    free(v->value);
    free(v);
}

static dmoe_value *copy_result(const dht_get_result *r)
{
    dmoe_value *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    if (!r->found) return v;
    v->kind = r->is_dict ? 2 : 1;
    v->expiration = r->expiration;
    if (!r->is_dict) {
        v->vlen = r->vlen;
        if (!(v->value = dup_bytes(r->value, r->vlen))) goto fail;
        return v;
    }
    if (r->nsubs && !(v->subs = calloc(r->nsubs, sizeof *v->subs))) goto fail;
    for (size_t i = 0; i < r->nsubs; i++, v->nsubs++) {
        dht_subitem *s = &v->subs[i];
        *s = r->subs[i];
        s->subkey = dup_bytes(r->subs[i].subkey, r->subs[i].sklen);
        s->value = dup_bytes(r->subs[i].value, r->subs[i].vlen);
        if (!s->subkey || !s->value) { v->nsubs++; goto fail; }
    }
    return v;
fail:
    dmoe_value_free(v);
    return NULL;
}

static void on_got(void *arg, int err, const char *msg, const dht_get_result *r)
{
    get_op *g = arg;
    if (err == DMOE_ETIMEDOUT) err = 0;   /* nothing found before the deadline: an empty answer */
    if (err) { api_done(&g->op, err, msg); return; }
    dmoe_value *v = copy_result(r);
    if (!v) { api_done(&g->op, DMOE_ENOMEM, "out of memory"); return; }
    *g->out = v;
    api_done(&g->op, 0, "");
}

static void run_get(api_op *op)
{
    get_op *g = (get_op *)op;
    if (g->d->stopped) { api_done(op, DMOE_ESHUTDOWN, "the DHT was shut down"); return; }
    int rc = dht_get(g->d->d, &g->key, g->latest, on_got, g);
    if (rc) api_done(op, rc, NULL);
}

int dmoe_dht_get(dmoe_dht *d, const void *key, size_t klen, int latest, dmoe_value **out, char *err, size_t errlen)
{
    if (!d || !key || !klen || !out) { dmoe_set_err(err, errlen, "dmoe_dht_get: bad argument"); return DMOE_EINVAL; }
    get_op *g = calloc(1, sizeof *g);
    if (!g) { dmoe_set_err(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    g->op.run = run_get;
    g->d = d;
    dht_id_from_bytes(&g->key, key, klen);
    g->latest = latest;
    g->out = out;
    return api_sync(d->ctx, &g->op, err, errlen);
}

int dmoe_value_kind(const dmoe_value *v) { return v ? v->kind : 0; }
double dmoe_value_expiration(const dmoe_value *v) { return v ? v->expiration : 0; }

const void *dmoe_value_bytes(const dmoe_value *v, size_t *len)
{
    *len = v && v->kind == 1 ? v->vlen : 0;
    return v && v->kind == 1 ? v->value : NULL;
}

size_t dmoe_value_nsubs(const dmoe_value *v) { return v ? v->nsubs : 0; }

int dmoe_value_sub(const dmoe_value *v, size_t i, const void **subkey, size_t *sklen, const void **value,
                   size_t *vlen, double *expiration)
{
    if (!v || i >= v->nsubs) return DMOE_EINVAL;
    const dht_subitem *s = &v->subs[i];
    if (subkey) *subkey = s->subkey;
    if (sklen) *sklen = s->sklen;
    if (value) *value = s->value;
    if (vlen) *vlen = s->vlen;
    if (expiration) *expiration = s->expiration;
    return 0;
}

/* ---- declaring experts ---- */

typedef struct {
    api_op op;
    dmoe_dht *d;
    char **uids;
    size_t n;
    wire_maddr endpoint;
    double expiration;
} declare_op;

static void declare_free(api_op *op)
{
    declare_op *c = (declare_op *)op;
    for (size_t i = 0; i < c->n; i++) free(c->uids[i]);
    free(c->uids);
    free(c);
}

static void on_declared(void *arg, int err, const char *msg, const uint8_t *ok, size_t n)
{
    declare_op *c = arg;
    api_done(&c->op, err, err ? msg : "");
}

static void run_declare(api_op *op)
{
    declare_op *c = (declare_op *)op;
    char err[512];
    if (c->d->stopped) { api_done(op, DMOE_ESHUTDOWN, "the DHT was shut down"); return; }
    int rc = dht_declare_experts(c->d->d, (const char *const *)c->uids, c->n, &c->endpoint, c->expiration, on_declared,
                                 c, err, sizeof err);
    if (rc) api_done(op, rc, err);
}

int dmoe_dht_declare_experts(dmoe_dht *d, const char *const *uids, size_t n, const char *maddr, double expiration,
                             char *err, size_t errlen)
{
    if (!d || !maddr || (n && !uids)) { dmoe_set_err(err, errlen, "dmoe_dht_declare_experts: bad argument"); return DMOE_EINVAL; }
    declare_op *c = calloc(1, sizeof *c);
    if (!c || (n && !(c->uids = calloc(n, sizeof *c->uids)))) {
        free(c);
        dmoe_set_err(err, errlen, "out of memory");
        return DMOE_ENOMEM;
    }
    c->op.run = run_declare;
    c->op.free = declare_free;
    c->d = d;
    c->expiration = expiration;
    int rc = wire_maddr_parse(maddr, &c->endpoint, err, errlen);
    for (size_t i = 0; rc == 0 && i < n; i++, c->n++)
        if (!uids[i] || !(c->uids[i] = strdup(uids[i]))) {
            rc = uids[i] ? DMOE_ENOMEM : DMOE_EINVAL;
            dmoe_set_err(err, errlen, "%s", uids[i] ? "out of memory" : "NULL uid");
        }
    if (rc) { declare_free(&c->op); return rc; }
    return api_sync(d->ctx, &c->op, err, errlen);
}
