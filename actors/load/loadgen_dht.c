/* loadgen_dht.c -- the load generator's DHT mode: each user is a client-mode DHT peer that stores fresh
 * keys and gets stored ones (`dmoe-call --initial_peers MADDR load --dht`).
 *
 * Set-up (dht_start, before the run): every user gets a client and a client-mode DHT node without
 * caching (so every get is a real lookup); all bootstrap at once through the initial peers and the loop
 * runs until every join has ended. One failed join fails the run.
 *
 * Keys and values. Keys are "loadgen.NONCE.KEY" with a per-run nonce; KEY packs the user (12 bits), the
 * value length (24 bits) and the user's counter (28 bits), and the value (a msgpack string of that
 * length) is derived from (nonce, KEY), so a get can check what it found without remembering values.
 * Keys whose store succeeded go into the run's pool (bounded by LG_DHT_POOL: a full pool replaces a
 * random entry); gets draw from it, so a get may read another user's key.
 *
 * Requests. dht_send sends a store of a fresh key (the engine's "forward", value of u->rows bytes)
 * or a get of a pooled key (its "backward"). on_dht_stored pools the key; on_dht_got counts a get that
 * found nothing, or another value, as an error. Both end in lg_user_done; each counts one row.
 *
 * At the end dht_close stops the nodes (their lookups end now: lost when in flight) and frees them
 * with their clients; dht_free drops the key pool. The engine calls all of these through lg_dht_ops.
 * Loop thread only.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/dht/dht_boot.h"
#include "actors/dht/dht_lookup.h"
#include "actors/load/loadgen_engine.h"
#include "runtime/rt_err.h"

_Static_assert(LOADGEN_MAX_CLIENTS <= 4096, "DHT keys keep the user index in 12 bits");

static void dht_key_text(const lg *g, uint64_t key, char *buf, size_t cap)
{
    snprintf(buf, cap, "loadgen.%016llx.%016llx", (unsigned long long)g->nonce, (unsigned long long)key);
}

/* The value stored under key: a msgpack string of the length packed in key, derived from (nonce, key). */
static int dht_value(const lg *g, uint64_t key, msgpack_sbuffer *sb)
{
    size_t len = (size_t)((key >> 28) & 0xFFFFFF);
    char *body = malloc(len ? len : 1);
    if (!body) return DMOE_ENOMEM;
    uint64_t x = (g->nonce ^ key) * 0x9E3779B97F4A7C15ull | 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body[i] = (char)('a' + x % 26);
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_str(&pk, len);
    msgpack_pack_str_body(&pk, body, len);
    free(body);
    return 0;
}

static void on_dht_stored(void *arg, int err, const char *msg, size_t n_stored)
{
    lg_user *u = arg;
    lg *g = u->g;
    if (err == 0 && g->phase != PH_DONE) {
        if (g->n_keys < LG_DHT_POOL) g->keys[g->n_keys++] = u->key;
        else g->keys[kern_rng_below(&u->rng, LG_DHT_POOL)] = u->key;
    }
    lg_user_done(u, err, msg);
}

static void on_dht_got(void *arg, int err, const char *msg, const dht_get_result *r)
{
    lg_user *u = arg;
    lg *g = u->g;
    char e[256], key[64];
    if (err == 0 && g->phase != PH_DONE) {
        dht_key_text(g, u->key, key, sizeof key);
        msgpack_sbuffer want;
        msgpack_sbuffer_init(&want);
        if (!r->found) {
            snprintf(e, sizeof e, "get %s: not found, though this run stored it", key);
            err = DMOE_ENOTFOUND;
        } else if (dht_value(g, u->key, &want) != 0) {
            snprintf(e, sizeof e, "out of memory");
            err = DMOE_ENOMEM;
        } else if (r->is_dict || r->vlen != want.size || memcmp(r->value, want.data, want.size) != 0) {
            snprintf(e, sizeof e, "get %s: found another value than this run stored", key);
            err = DMOE_EPROTO;
        }
        msgpack_sbuffer_destroy(&want);
        if (err) msg = e;
    }
    lg_user_done(u, err, msg);
}

static int dht_send(lg_user *u)
{
    lg *g = u->g;
    char key[64];
    dht_id id;
    if (u->dir) {
        u->key = g->keys[kern_rng_below(&u->rng, g->n_keys)];
    } else {
        u->key = (uint64_t)(u - g->users) << 52 | (uint64_t)u->rows << 28 | (u->n_keys++ & 0xFFFFFFF);
    }
    dht_key_text(g, u->key, key, sizeof key);
    if (dht_id_from_str(&id, key, strlen(key)) != 0) return DMOE_ENOMEM;
    if (u->dir) return dht_get(u->d, &id, 0, on_dht_got, u);
    msgpack_sbuffer v;
    msgpack_sbuffer_init(&v);
    int rc = dht_value(g, u->key, &v);
    if (rc == 0)
        rc = dht_store(u->d, &id, NULL, 0, v.data, v.size, dht_node_now(u->d) + LG_DHT_EXPIRATION_S, on_dht_stored, u);
    msgpack_sbuffer_destroy(&v);
    return rc;
}

static void on_dht_joined(void *arg, int err, const char *msg)
{
    lg_user *u = arg;
    lg *g = u->g;
    g->joined++;
    if (err && !g->join_err) {
        g->join_err = err;
        snprintf(g->join_msg, sizeof g->join_msg, "%s", msg ? msg : dmoe_strerror(err));
    }
    if (g->joined == g->n_users) rt_loop_break(g->loop);
}

/* Every user becomes a client-mode DHT node; all join at once, the loop runs until every join ended;
 * then the run starts. */
static int dht_start(lg *g)
{
    const loadgen_cfg *c = g->cfg;
    size_t np = 0;
    while (c->initial_peers[np]) np++;
    g->keys = malloc(LG_DHT_POOL * sizeof *g->keys);
    g->users = calloc((size_t)c->clients, sizeof *g->users);
    if (!g->keys || !g->users) { snprintf(g->err, g->errlen, "out of memory"); return DMOE_ENOMEM; }
    g->nonce = rt_clock_us() ^ ((uint64_t)getpid() << 40) ^ (c->seed * 0x9E3779B97F4A7C15ull);
    int started = 0, rc = 0;
    for (int i = 0; i < c->clients && rc == 0; i++) {
        lg_user *u = &g->users[i];
        g->n_users = i + 1;
        u->g = g;
        kern_rng_seed(&u->rng, c->seed * 0x9E3779B97F4A7C15ull + (uint64_t)i + 1);
        dht_transport tr;
        dht_cfg dc;
        dht_cfg_default(&dc);
        dc.client_mode = 1;
        dc.no_cache = 1;   /* every get is a lookup, not a read of what this node saw before */
        dc.seed = g->nonce + (uint64_t)i;
        u->cl = client_new(g->loop, NULL);
        if (!u->cl || dht_net_new(u->cl, &u->dn, &tr) != 0 || dht_node_new(g->loop, &dc, &tr, &u->d) != 0) {
            snprintf(g->err, g->errlen, "out of memory");
            rc = DMOE_ENOMEM;
        } else if ((rc = dht_node_bootstrap(u->d, c->initial_peers, np, on_dht_joined, u, g->err, g->errlen)) == 0) {
            started++;
        }
    }
    g->n_users = c->clients;
    int want = g->n_users;
    g->n_users = started;   /* on_dht_joined breaks the loop when every started join has ended */
    while (g->joined < started) rt_loop_run(g->loop);   /* the bootstraps' own timers bound this */
    g->n_users = want;
    if (rc) return rc;
    if (g->join_err) {
        snprintf(g->err, g->errlen, "cannot join the DHT: %s", g->join_msg);
        return g->join_err;
    }
    g->r->row_elems = c->batch_max;
    lg_start_run(g);
    return 0;
}

static void dht_close(lg *g)
{
    for (int i = 0; i < g->n_users; i++) {
        lg_user *u = &g->users[i];
        if (u->d) dht_node_stop(u->d);   /* its lookups end now: lost when in flight */
        client_free(u->cl);
        dht_node_free(u->d);
        dht_net_free(u->dn);
        u->cl = NULL;
        u->d = NULL;
        u->dn = NULL;
    }
}

static void dht_free(lg *g)
{
    free(g->keys);
    g->keys = NULL;
}

static int dht_can_backward(const lg_user *u) { return u->g->n_keys > 0; }

const lg_mode_ops lg_dht_ops = {
    .name = "dht",
    .start = dht_start,
    .send = dht_send,
    .can_backward = dht_can_backward,
    .close = dht_close,
    .free = dht_free,
    .one_row_per_request = 1,
};
