/* dht_experts.c -- expert declarations and lookups on the DHT (see dht_experts.h).
 *
 * Design notes. A batch is a small actor: it starts one dht_store or dht_get per record, uid or prefix,
 * counts them down as they complete, and when the count reaches zero raises its "done" signal; its
 * handler runs the caller's callback and stops the actor. So the callback never runs inside the call
 * that started the batch, even when nothing needed the network (every prefix negatively cached).
 * Every record is signed (dht_record.h): its payload is a small msgpack array of two strings, packed and
 * parsed here with msgpack-c, sealed with the node's key under a subkey naming that key, so each
 * declarer holds its own entry and none can replace another's. Lookups use dht_get_signed, which drops
 * unsigned and forged entries (and, in a private swarm, untrusted ones) before they reach us; anything
 * else malformed is ignored, never trusted: an expert record must name its signer's node id, a prefix
 * entry's uid must be valid and lie under the prefix and coordinate it was found at.
 *
 * Choosing among owners. A uid (or a prefix coordinate) may be declared by several keys. The client
 * takes the live record with the latest expiration, ties going to the smallest public key: every server
 * re-declares each update_period with the same lifetime, so the latest expiration is the owner heard
 * from most recently -- the likeliest alive -- and a server that died stops being chosen one update
 * period after its last declaration, long before its record expires; the tie-break makes every client
 * choose the same owner. A withdrawal is the same records with the payload msgpack nil and a later
 * expiration: per subkey it replaces the declaration on every replica, and a lookup skips it like any
 * payload that is not a declaration, so the signer's entry is gone while other owners' stay. On an open network a rival key declaring the same uid is a competing server
 * (as in hivemind, anyone may serve any uid): whether its outputs are honest is for the reply checks and
 * moe_health to judge; a lab that wants only its own servers runs a private swarm (--trusted_keys).
 */
#include "actors/grid/dht_experts.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_lookup.h"
#include "actors/dht/trust/dht_record.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

enum { B_DECLARE = 0, B_EXPERTS = 1, B_SUCC = 2 };
enum { MSG_DONE = 1 };

typedef struct batch batch;

typedef struct {
    batch *b;
    size_t i;
} sub;

struct batch {
    rt_actor actor;
    rt_signal done;
    dht *d;
    int kind;
    size_t n, pending;
    void *arg;
    sub *subs;
    uint8_t *ok;
    dht_declare_cb dcb;
    dht_expert_loc *locs;
    dht_experts_cb ecb;
    dht_successors *per;
    dht_successor **items;
    char **prefixes;
    double neg_s;
    dht_successors_cb scb;
    void *decl;              /* a declaration's stores (decl_store, below) */
    int err;
};

/* ---- lifetime ---- */

static void destroy(rt_actor *self)
{
    batch *b = (batch *)self;
    for (size_t i = 0; b->items && i < b->n; i++) free(b->items[i]);
    for (size_t i = 0; b->prefixes && i < b->n; i++) free(b->prefixes[i]);
    free(b->items);
    free(b->prefixes);
    free(b->per);
    free(b->locs);
    free(b->ok);
    free(b->subs);
    free(b->decl);
    free(b);
}

static void handle(rt_actor *self, rt_msg *m)
{
    batch *b = (batch *)self;
    rt_msg_drop(m);
    const char *msg = b->err ? dmoe_strerror(b->err) : "";
    if (b->kind == B_DECLARE) {
        int all = 1;
        for (size_t i = 0; i < b->n; i++) all &= b->ok[i];
        b->dcb(b->arg, b->err ? b->err : all ? 0 : DMOE_ENOTFOUND,
               b->err ? msg : all ? "" : "some experts could not be declared", b->ok, b->n);
    } else if (b->kind == B_EXPERTS) {
        b->ecb(b->arg, b->err, msg, b->locs, b->n);
    } else {
        b->scb(b->arg, b->err, msg, b->per, b->n);
    }
    rt_actor_stop(&b->actor);
}

static batch *batch_new(dht *d, int kind, size_t n, size_t nsubs, void *arg)
{
    batch *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->subs = calloc(nsubs ? nsubs : 1, sizeof *b->subs);
    if (!b->subs) {
        free(b);
        return NULL;
    }
    rt_actor_init(&b->actor, dht_node_loop(d), "dht_experts", handle, destroy);
    rt_signal_init(&b->done, &b->actor, MSG_DONE);
    b->d = d;
    b->kind = kind;
    b->n = n;
    b->arg = arg;
    b->pending = 1;   /* held until every sub-operation has been started */
    return b;
}

static void batch_release(batch *b)
{
    if (--b->pending == 0) rt_signal_raise(&b->done);
}

/* ---- value encoding ---- */

static int pack_pair(const char *a, const char *b, msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_str_with_body(&pk, a, strlen(a));
    msgpack_pack_str_with_body(&pk, b, strlen(b));
    return sb->data ? 0 : DMOE_ENOMEM;
}

/* unpack_pair reads msgpack [str, str] into a[acap], b[bcap]. Returns 0 or DMOE_EINVAL. */
static int unpack_pair(const uint8_t *p, size_t n, char *a, size_t acap, char *b, size_t bcap)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int rc = DMOE_EINVAL;
    if (msgpack_unpack_next(&u, (const char *)p, n, &off) == MSGPACK_UNPACK_SUCCESS && off == n &&
        u.data.type == MSGPACK_OBJECT_ARRAY && u.data.via.array.size == 2 &&
        wire_get_str(&u.data.via.array.ptr[0], a, acap) == 0 && wire_get_str(&u.data.via.array.ptr[1], b, bcap) == 0)
        rc = 0;
    msgpack_unpacked_destroy(&u);
    return rc;
}

static int key_id(const char *key, dht_id *out) { return dht_id_from_str(out, key, strlen(key)); }

/* ---- declare ---- */

/* A declaration's store: one plain record, or up to DHT_PROTO_MAX_KEYS entries of one prefix. uids[j] is
 * the uid whose value entry j holds. */
typedef struct {
    batch *b;
    size_t n;
    size_t uids[DHT_PROTO_MAX_KEYS];
} decl_store;

static void decl_failed(batch *b, const decl_store *st, const size_t *n_stored)
{
    for (size_t j = 0; j < st->n; j++)
        if (!n_stored || n_stored[j] == 0) b->ok[st->uids[j]] = 0;
}

static void on_declared(void *arg, int err, const char *msg, size_t n_stored)
{
    decl_store *st = arg;
    if (err) decl_failed(st->b, st, NULL);
    if (err == DMOE_ESHUTDOWN) st->b->err = err;
    batch_release(st->b);
}

static void on_declared_dict(void *arg, int err, const char *msg, const size_t *n_stored, size_t n)
{
    decl_store *st = arg;
    if (err) decl_failed(st->b, st, err == DMOE_ENOTFOUND ? n_stored : NULL);
    if (err == DMOE_ESHUTDOWN) st->b->err = err;
    batch_release(st->b);
}

/* seal_entry packs and signs entry e's record (value: [uid, endpoint], or [node id hex, endpoint] for
 * the uid's own key; maddr NULL: its withdrawal, payload DHT_EXPERTS_WITHDRAWN) into *rec and its subkey
 * into skbuf. Returns 0 or a negative code. */
static int seal_entry(dht *d, const uid_decl_entry *e, const char *uid, const char *hex, const char *maddr,
                      double expiration, uint8_t *skbuf, size_t *sklen, uint8_t **rec, size_t *rlen)
{
    const dht_ident *me = dht_node_ident(d);
    msgpack_sbuffer sb;
    dht_id id;
    *sklen = dht_record_subkey(me->pk, e->k.has_subkey, e->k.subkey, skbuf);
    int rc = key_id(e->k.key, &id);
    if (rc == 0 && !maddr) return dht_record_seal(me, &id, skbuf, *sklen, DHT_EXPERTS_WITHDRAWN, 1, expiration, rec, rlen);
    if (rc == 0) rc = e->k.has_subkey ? pack_pair(uid, maddr, &sb) : pack_pair(hex, maddr, &sb);
    if (rc == 0) {
        rc = dht_record_seal(me, &id, skbuf, *sklen, sb.data, sb.size, expiration, rec, rlen);
        msgpack_sbuffer_destroy(&sb);
    }
    return rc;
}

/* declare stores the records of uids[0..n): declarations at endpoint, or (withdraw: endpoint NULL) the
 * withdrawals of them. */
static int declare(dht *d, const char *const *uids, size_t n, const wire_maddr *endpoint, double expiration,
                   int withdraw, dht_declare_cb cb, void *arg, char *err, size_t errlen)
{
    if (dht_node_is_stopped(d)) return DMOE_ESHUTDOWN;
    if (n > DHT_EXPERTS_MAX_BATCH) {
        snprintf(err, errlen, "%zu uids in one declaration, at most %d", n, DHT_EXPERTS_MAX_BATCH);
        return DMOE_ETOOBIG;
    }
    uid_decl_entry *plan = NULL;
    size_t bad = 0;
    int total = uid_declaration_plan(uids, n, &plan, &bad);
    if (total < 0) {
        if (total != DMOE_ENOMEM)
            snprintf(err, errlen, "invalid expert uid '%.200s': %s", uids[bad], dmoe_strerror(total));
        return total;
    }
    char maddr[WIRE_MADDR_TEXT] = "", hex[DHT_ID_HEX_LEN + 1];
    if (!withdraw) wire_maddr_format(endpoint, maddr, sizeof maddr);
    dht_id_to_hex(dht_node_id(d), hex);
    double cap = dht_node_now(d) + dht_node_cfg(d)->max_record_lifetime_s;
    if (expiration > cap) expiration = cap;   /* replicas refuse records living longer (dht_trust.h) */
    batch *b = batch_new(d, B_DECLARE, n, 0, arg);
    decl_store *stores = calloc(total ? (size_t)total : 1, sizeof *stores);   /* at most one per entry */
    if (!b || !stores || !(b->ok = malloc(n ? n : 1))) {
        if (b) destroy(&b->actor);
        free(stores);
        free(plan);
        return DMOE_ENOMEM;
    }
    b->decl = stores;
    memset(b->ok, 1, n);
    b->dcb = cb;
    size_t ns = 0;
    for (size_t i = 0; i < (size_t)total;) {
        /* the entries of one key (a prefix), at most DHT_PROTO_MAX_KEYS to a store; a plain record alone */
        size_t j = i + 1;
        while (plan[i].k.has_subkey && j < (size_t)total && j - i < DHT_PROTO_MAX_KEYS && plan[j].k.has_subkey &&
               strcmp(plan[j].k.key, plan[i].k.key) == 0)
            j++;
        decl_store *st = &stores[ns++];
        st->b = b;
        uint8_t sk[DHT_PROTO_MAX_KEYS][DHT_RECORD_SUBKEY_MAX], *recs[DHT_PROTO_MAX_KEYS] = {0};
        size_t sklens[DHT_PROTO_MAX_KEYS], rlens[DHT_PROTO_MAX_KEYS];
        dht_dict_entry entries[DHT_PROTO_MAX_KEYS];
        int rc = 0;
        for (size_t e = i; e < j && rc == 0; e++) {
            size_t q = st->n++;
            st->uids[q] = plan[e].uid;
            rc = seal_entry(d, &plan[e], uids[plan[e].uid], hex, withdraw ? NULL : maddr, expiration, sk[q], &sklens[q],
                            &recs[q], &rlens[q]);
            entries[q] = (dht_dict_entry){ sk[q], sklens[q], recs[q], rlens[q] };
        }
        dht_id id;
        if (rc == 0) rc = key_id(plan[i].k.key, &id);
        if (rc == 0 && plan[i].k.has_subkey) rc = dht_store_dict(d, &id, entries, st->n, expiration, on_declared_dict, st);
        else if (rc == 0) rc = dht_store(d, &id, sk[0], sklens[0], recs[0], rlens[0], expiration, on_declared, st);
        if (rc == 0) b->pending++;
        else {
            decl_failed(b, st, NULL);
            if (rc == DMOE_ESHUTDOWN) b->err = rc;
        }
        for (size_t q = 0; q < st->n; q++) free(recs[q]);
        i = j;
    }
    free(plan);
    batch_release(b);
    return 0;
}

int dht_declare_experts(dht *d, const char *const *uids, size_t n, const wire_maddr *endpoint, double expiration,
                        dht_declare_cb cb, void *arg, char *err, size_t errlen)
{
    return declare(d, uids, n, endpoint, expiration, 0, cb, arg, err, errlen);
}

int dht_withdraw_experts(dht *d, const char *const *uids, size_t n, double expiration, dht_declare_cb cb, void *arg,
                         char *err, size_t errlen)
{
    return declare(d, uids, n, NULL, expiration, 1, cb, arg, err, errlen);
}

/* ---- get experts ---- */

/* better says whether a record expiring at exp signed by pk beats the best so far (found: whether there
 * is one): the latest expiration, then the smallest public key (see "Choosing among owners"). */
static int better(int found, double exp, const uint8_t *pk, double best_exp, const uint8_t *best_pk)
{
    if (!found || exp > best_exp) return 1;
    return exp == best_exp && memcmp(pk, best_pk, DHT_IDENT_PK_BYTES) < 0;
}

static void on_expert(void *arg, int err, const char *msg, const dht_get_result *r)
{
    sub *s = arg;
    batch *b = s->b;
    dht_expert_loc *loc = &b->locs[s->i];
    if (err == DMOE_ESHUTDOWN) b->err = err;
    double best_exp = 0;
    uint8_t best_pk[DHT_IDENT_PK_BYTES];
    for (size_t j = 0; r->found && r->is_dict && j < r->nsubs; j++) {
        const dht_subitem *it = &r->subs[j];
        dht_record rec;
        dht_id signer;
        char node[WIRE_MADDR_PEER], text[WIRE_MADDR_TEXT], hex[DHT_ID_HEX_LEN + 1];
        wire_maddr addr;
        if (dht_record_parse(it->subkey, it->sklen, it->value, it->vlen, &rec) != 0 || rec.has_coord ||
            unpack_pair(rec.payload, rec.plen, node, sizeof node, text, sizeof text) != 0 ||
            wire_maddr_parse(text, &addr, NULL, 0) != 0)
            continue;
        dht_ident_id_of(rec.pk, &signer);
        dht_id_to_hex(&signer, hex);
        if (strcmp(hex, node) != 0) continue;   /* a record names its signer's node */
        loc->owners++;
        if (!better(loc->found, it->expiration, rec.pk, best_exp, best_pk)) continue;
        loc->found = 1;
        loc->addr = addr;
        snprintf(loc->node_id, sizeof loc->node_id, "%s", node);
        best_exp = it->expiration;
        memcpy(best_pk, rec.pk, DHT_IDENT_PK_BYTES);
    }
    batch_release(b);
}

static int get_experts(dht *d, const char *const *uids, size_t n, int latest, dht_experts_cb cb, void *arg, char *err,
                       size_t errlen)
{
    if (dht_node_is_stopped(d)) return DMOE_ESHUTDOWN;
    if (n > DHT_EXPERTS_MAX_BATCH) {
        snprintf(err, errlen, "%zu uids in one batch, at most %d", n, DHT_EXPERTS_MAX_BATCH);
        return DMOE_ETOOBIG;
    }
    for (size_t i = 0; i < n; i++)
        if (!uid_is_valid(uids[i]) || strlen(uids[i]) > UID_MAX_LEN) {
            snprintf(err, errlen, "invalid expert uid '%.200s' (want name.coord[.coord...])", uids[i]);
            return DMOE_EINVAL;
        }
    batch *b = batch_new(d, B_EXPERTS, n, n, arg);
    if (!b || !(b->locs = calloc(n ? n : 1, sizeof *b->locs))) {
        if (b) destroy(&b->actor);
        return DMOE_ENOMEM;
    }
    b->ecb = cb;
    for (size_t i = 0; i < n; i++) {
        dht_id id;
        b->subs[i] = (sub){ b, i };
        if (key_id(uids[i], &id) == 0 && dht_get_signed(d, &id, latest, on_expert, &b->subs[i]) == 0) b->pending++;
    }
    batch_release(b);
    return 0;
}

/* ---- active successors ---- */

/* under_prefix checks that uid lies under prefix at coord (hivemind's UidEndpoint check). */
static int under_prefix(const char *uid, const char *prefix, int64_t coord)
{
    size_t pl = strlen(prefix), ul = strlen(uid);
    if (!uid_is_valid(uid)) return 0;
    if (coord == UID_FLAT_EXPERT) return ul + 1 == pl && strncmp(uid, prefix, ul) == 0;
    char c[24];
    int cl = snprintf(c, sizeof c, "%lld", (long long)coord);
    if (coord < 0 || ul < pl + (size_t)cl || strncmp(uid, prefix, pl) != 0 || strncmp(uid + pl, c, (size_t)cl) != 0)
        return 0;
    return uid[pl + (size_t)cl] == 0 || uid[pl + (size_t)cl] == UID_DELIMITER;
}

static void on_successors(void *arg, int err, const char *msg, const dht_get_result *r)
{
    sub *s = arg;
    batch *b = s->b;
    size_t i = s->i;
    if (err == DMOE_ESHUTDOWN) b->err = err;
    size_t cnt = 0;
    if (r->found && r->is_dict && r->nsubs) {
        b->items[i] = calloc(r->nsubs, sizeof *b->items[i]);
        double *exps = calloc(r->nsubs, sizeof *exps);
        uint8_t (*pks)[DHT_IDENT_PK_BYTES] = calloc(r->nsubs, sizeof *pks);
        for (size_t j = 0; b->items[i] && exps && pks && j < r->nsubs; j++) {
            dht_successor *o = &b->items[i][cnt];
            char text[WIRE_MADDR_TEXT];
            dht_record rec;
            if (dht_record_parse(r->subs[j].subkey, r->subs[j].sklen, r->subs[j].value, r->subs[j].vlen, &rec) != 0 ||
                !rec.has_coord ||
                unpack_pair(rec.payload, rec.plen, o->uid, sizeof o->uid, text, sizeof text) != 0 ||
                !under_prefix(o->uid, b->prefixes[i], rec.coord) || wire_maddr_parse(text, &o->addr, NULL, 0) != 0)
                continue;
            o->coord = rec.coord;
            size_t k = 0;   /* one successor per coordinate: the owner chosen as for experts */
            while (k < cnt && b->items[i][k].coord != o->coord) k++;
            if (k == cnt) {
                exps[cnt] = r->subs[j].expiration;
                memcpy(pks[cnt++], rec.pk, DHT_IDENT_PK_BYTES);
            } else if (better(1, r->subs[j].expiration, rec.pk, exps[k], pks[k])) {
                b->items[i][k] = *o;
                exps[k] = r->subs[j].expiration;
                memcpy(pks[k], rec.pk, DHT_IDENT_PK_BYTES);
            }
        }
        free(exps);
        free(pks);
        if (!exps || !pks) cnt = 0;
    }
    b->per[i].items = b->items[i];
    b->per[i].n = cnt;
    if (cnt == 0 && b->neg_s > 0 && err == 0 && !dht_node_is_stopped(b->d)) {
        dht_id id;
        double now = dht_node_now(b->d);
        if (key_id(b->prefixes[i], &id) == 0) dht_storage_store(dht_node_negcache(b->d), &id, NULL, 0, "", 0, now + b->neg_s, now);
    }
    batch_release(b);
}

static int get_successors(dht *d, const char *const *prefixes, size_t n, double neg_cache_s, int latest,
                          dht_successors_cb cb, void *arg, char *err, size_t errlen)
{
    if (dht_node_is_stopped(d)) return DMOE_ESHUTDOWN;
    if (n > DHT_EXPERTS_MAX_BATCH) {
        snprintf(err, errlen, "%zu prefixes in one batch, at most %d", n, DHT_EXPERTS_MAX_BATCH);
        return DMOE_ETOOBIG;
    }
    for (size_t i = 0; i < n; i++)
        if (!uid_is_valid_prefix(prefixes[i]) || strlen(prefixes[i]) > UID_MAX_LEN) {
            snprintf(err, errlen, "invalid expert prefix '%.200s' (want name.[coord.]...)", prefixes[i]);
            return DMOE_EINVAL;
        }
    batch *b = batch_new(d, B_SUCC, n, n, arg);
    if (!b || !(b->per = calloc(n ? n : 1, sizeof *b->per)) || !(b->items = calloc(n ? n : 1, sizeof *b->items)) ||
        !(b->prefixes = calloc(n ? n : 1, sizeof *b->prefixes))) {
        if (b) destroy(&b->actor);
        return DMOE_ENOMEM;
    }
    b->scb = cb;
    b->neg_s = neg_cache_s;
    double now = dht_node_now(d);
    for (size_t i = 0; i < n; i++) {
        dht_id id;
        dht_stored st;
        b->subs[i] = (sub){ b, i };
        b->prefixes[i] = strdup(prefixes[i]);
        if (!b->prefixes[i] || key_id(prefixes[i], &id) != 0) continue;
        if (neg_cache_s > 0 && dht_storage_get(dht_node_negcache(d), &id, now, &st) == 0) continue;
        if (dht_get_signed(d, &id, latest, on_successors, &b->subs[i]) == 0) b->pending++;
    }
    batch_release(b);
    return 0;
}

int dht_get_experts(dht *d, const char *const *uids, size_t n, dht_experts_cb cb, void *arg, char *err,
                    size_t errlen)
{
    return get_experts(d, uids, n, 0, cb, arg, err, errlen);
}

int dht_get_experts_latest(dht *d, const char *const *uids, size_t n, dht_experts_cb cb, void *arg, char *err,
                           size_t errlen)
{
    return get_experts(d, uids, n, 1, cb, arg, err, errlen);
}

int dht_get_active_successors(dht *d, const char *const *prefixes, size_t n, double neg_cache_s,
                              dht_successors_cb cb, void *arg, char *err, size_t errlen)
{
    return get_successors(d, prefixes, n, neg_cache_s, 0, cb, arg, err, errlen);
}

int dht_get_active_successors_latest(dht *d, const char *const *prefixes, size_t n, dht_successors_cb cb, void *arg,
                                     char *err, size_t errlen)
{
    return get_successors(d, prefixes, n, 0, 1, cb, arg, err, errlen);
}
