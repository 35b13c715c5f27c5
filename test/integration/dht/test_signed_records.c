/* test_signed_records.c -- signed expert records against an attacker (issue 10, items 2 and 3), on the
 * in-memory swarm kit (dht_swarm.h) in virtual time.
 *
 * An honest node declares expert.0; an attacker node of the same swarm then stores an unsigned value
 * under expert.0 (plain and as a dictionary entry, living 24 h), the honest record with its endpoint
 * changed, with a later expiration, and moved to expert.1: every replica refuses each, saying why, and
 * the honest record stays. Replicas the attacker controls (their storage rewritten behind the policy's
 * back) answer with forged records: the client drops them and its lookup goes on to an honest replica.
 * Two servers declaring one uid both stay listed, and the client takes the latest expiration. A
 * declaration asked for 24 h is cut to the lifetime cap, and a record signed for longer is refused. In
 * a private swarm an impostor's records are neither stored by the nodes nor used by a client holding
 * the trusted keys, even when open nodes of another swarm store them. Every wait is bounded in virtual
 * time. */
#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_lookup.h"
#include "actors/dht/trust/dht_record.h"
#include "actors/dht/trust/dht_trust.h"
#include "actors/grid/dht_experts.h"
#include "runtime/rt_err.h"
#include "test/integration/dht/dht_swarm.h"

#define NODES 12
#define HONEST 1      /* node index of the honest server (test key 101) */
#define RIVAL 2       /* a second honest server of the same uid (test key 102) */
#define ATTACKER 3    /* test key 103 */
#define CLIENT 4

static void up(dht_swarm *s, const dht_trust *trusted, size_t n)
{
    dht_swarm_init(s, 0, 500);
    s->trusted = trusted;
    for (size_t i = 0; i < n; i++) {
        dht *d = dht_swarm_add(s, 100 + i, -1, NULL);
        if (i) dht_swarm_boot_from(s, d, 0);
        cr_assert(dht_swarm_run_until(s, 5000));
    }
}

typedef struct {
    dht_swarm *s;
    int err;
    size_t n_stored;
    char msg[300];
    dht_expert_loc loc[2];
    size_t nsucc;
    dht_successor succ[4];
} res;

static void on_declared(void *arg, int err, const char *msg, const uint8_t *ok, size_t n)
{
    res *r = arg;
    r->err = err;
    r->s->pending--;
}

static void on_experts(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n)
{
    res *r = arg;
    r->err = err;
    memcpy(r->loc, locs, (n < 2 ? n : 2) * sizeof *locs);
    r->s->pending--;
}

static void on_succ(void *arg, int err, const char *msg, const dht_successors *per, size_t n)
{
    res *r = arg;
    r->err = err;
    r->nsucc = per[0].n < 4 ? per[0].n : 4;
    memcpy(r->succ, per[0].items, r->nsucc * sizeof *r->succ);
    r->s->pending--;
}

static void on_store(void *arg, int err, const char *msg, size_t n_stored)
{
    res *r = arg;
    r->err = err;
    r->n_stored = n_stored;
    snprintf(r->msg, sizeof r->msg, "%s", msg);
    r->s->pending--;
}

/* declare has node i declare uid served at 127.0.0.1:port until exp; returns the callback's err. */
static int declare(dht_swarm *s, size_t i, const char *uid, int port, double exp)
{
    wire_maddr ep;
    char text[160], hex[DHT_ID_HEX_LEN + 1], err[256];
    dht_id_to_hex(dht_node_id(s->nodes[i]), hex);
    snprintf(text, sizeof text, "/ip4/127.0.0.1/tcp/%d/p2p/%s", port, hex);
    cr_assert_eq(wire_maddr_parse(text, &ep, err, sizeof err), 0, "%s", err);
    res r = { .s = s };
    s->pending++;
    cr_assert_eq(dht_declare_experts(s->nodes[i], &uid, 1, &ep, exp, on_declared, &r, err, sizeof err), 0, "%s", err);
    cr_assert(dht_swarm_run_until(s, 20000));
    return r.err;
}

/* find has node i look uid up (a fresh lookup: its caches are emptied first). */
static dht_expert_loc find(dht_swarm *s, size_t i, const char *uid)
{
    dht_id id;
    cr_assert_eq(dht_id_from_str(&id, uid, strlen(uid)), 0);
    dht_storage_remove(dht_node_cache(s->nodes[i]), &id);
    res r = { .s = s };
    char err[256];
    s->pending++;
    cr_assert_eq(dht_get_experts(s->nodes[i], &uid, 1, on_experts, &r, err, sizeof err), 0, "%s", err);
    cr_assert(dht_swarm_run_until(s, 20000));
    cr_assert_eq(r.err, 0);
    return r.loc[0];
}

/* store has node i store (key, subkey, value, exp) through a lookup; returns the result. */
static res store(dht_swarm *s, size_t i, const char *key, const uint8_t *sk, size_t sklen, const uint8_t *v, size_t vlen,
                 double exp)
{
    dht_id id;
    cr_assert_eq(dht_id_from_str(&id, key, strlen(key)), 0);
    res r = { .s = s };
    s->pending++;
    cr_assert_eq(dht_store(s->nodes[i], &id, sk, sklen, v, vlen, exp, on_store, &r), 0);
    cr_assert(dht_swarm_run_until(s, 20000));
    return r;
}

/* held finds key's record signed by node `who` in some replica's storage; copies it out. Returns 1 if
 * found. */
static int held(dht_swarm *s, const char *key, size_t who, uint8_t *sk, size_t *sklen, uint8_t **v, size_t *vlen,
                double *exp)
{
    dht_id id;
    cr_assert_eq(dht_id_from_str(&id, key, strlen(key)), 0);
    for (size_t i = 0; i < s->n; i++) {
        dht_stored st;
        if (dht_storage_get(dht_node_storage(s->nodes[i]), &id, dht_node_now(s->nodes[i]), &st) != 0) continue;
        for (size_t j = 0; st.is_dict && j < st.nsubs; j++) {
            dht_record rec;
            if (dht_record_parse(st.subs[j].subkey, st.subs[j].sklen, st.subs[j].value, st.subs[j].vlen, &rec) != 0 ||
                memcmp(rec.pk, dht_node_ident(s->nodes[who])->pk, 32) != 0)
                continue;
            memcpy(sk, st.subs[j].subkey, st.subs[j].sklen);
            *sklen = st.subs[j].sklen;
            *v = malloc(st.subs[j].vlen);
            memcpy(*v, st.subs[j].value, st.subs[j].vlen);
            *vlen = st.subs[j].vlen;
            *exp = st.subs[j].expiration;
            return 1;
        }
    }
    return 0;
}

/* replicas counts the nodes whose storage holds key, and how many entries the first one has. */
static size_t replicas(dht_swarm *s, const char *key, size_t *nsubs)
{
    dht_id id;
    cr_assert_eq(dht_id_from_str(&id, key, strlen(key)), 0);
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++) {
        dht_stored st;
        if (dht_storage_get(dht_node_storage(s->nodes[i]), &id, dht_node_now(s->nodes[i]), &st) != 0) continue;
        if (n++ == 0 && nsubs) *nsubs = st.is_dict && st.sealed ? st.nsubs : 0;
    }
    return n;
}

/* forge_port returns a copy of record v with the first occurrence of port text `from` changed to `to`
 * (same length), signature untouched. */
static uint8_t *forge_port(const uint8_t *v, size_t vlen, const char *from, const char *to)
{
    uint8_t *f = malloc(vlen);
    memcpy(f, v, vlen);
    size_t fl = strlen(from);
    for (size_t i = 0; i + fl <= vlen; i++)
        if (memcmp(f + i, from, fl) == 0) {
            memcpy(f + i, to, fl);
            return f;
        }
    cr_assert_fail("port %s not in the record", from);
    return NULL;
}

static int never(dht_swarm *s, void *arg) { return 0; }

/* outsider returns a node other than the honest one and the attacker that holds no copy of key, so that
 * its gets go to the network. */
static size_t outsider(dht_swarm *s, const char *key)
{
    dht_id id;
    cr_assert_eq(dht_id_from_str(&id, key, strlen(key)), 0);
    for (size_t i = 0; i < s->n; i++) {
        dht_stored st;
        if (i != HONEST && i != ATTACKER &&
            dht_storage_get(dht_node_storage(s->nodes[i]), &id, dht_node_now(s->nodes[i]), &st) != 0)
            return i;
    }
    cr_assert_fail("every node holds %s", key);
    return 0;
}

Test(signed_records, an_attacker_cannot_hijack_or_delete_a_declaration, .timeout = 120)
{
    dht_swarm s;
    up(&s, NULL, NODES);
    double now = dht_node_now(s.nodes[0]);
    cr_assert_eq(declare(&s, HONEST, "expert.0", 1001, now + 60), 0);
    size_t client = outsider(&s, "expert.0");
    dht_expert_loc loc = find(&s, client, "expert.0");
    cr_assert(loc.found && loc.addr.port == 1001);

    /* unsigned values, living 24 h: plain, and as an entry of the dictionary */
    res r = store(&s, ATTACKER, "expert.0", NULL, 0, (const uint8_t *)"\x92\xa3" "bad\xa3" "bad", 9, now + 23 * 3600);
    cr_expect_eq(r.n_stored, 0, "an unsigned value replaced the record on %zu replicas", r.n_stored);
    r = store(&s, ATTACKER, "expert.0", (const uint8_t *)"\x01", 1, (const uint8_t *)"\xa3" "bad", 4, now + 23 * 3600);
    cr_expect_eq(r.n_stored, 0, "an unsigned entry joined the record's dictionary");

    /* the honest record, forged: another endpoint, a later expiration, another key */
    uint8_t sk[DHT_RECORD_SUBKEY_MAX], *v;
    size_t sklen, vlen;
    double exp;
    cr_assert(held(&s, "expert.0", HONEST, sk, &sklen, &v, &vlen, &exp));
    uint8_t *f = forge_port(v, vlen, "1001", "6666");
    r = store(&s, ATTACKER, "expert.0", sk, sklen, f, vlen, exp + 1);
    cr_expect_eq(r.n_stored, 0);
    r = store(&s, ATTACKER, "expert.0", sk, sklen, f, vlen, exp);
    cr_expect_eq(r.n_stored, 0, "a changed endpoint was stored");
    cr_expect(strstr(r.msg, "bad signature"), "the replicas say why: %s", r.msg);
    r = store(&s, ATTACKER, "expert.0", sk, sklen, v, vlen, exp + 300);
    cr_expect_eq(r.n_stored, 0, "a replay with a later expiration was stored");
    cr_expect(strstr(r.msg, "bad signature"), "%s", r.msg);
    r = store(&s, ATTACKER, "expert.1", sk, sklen, v, vlen, exp);
    cr_expect_eq(r.n_stored, 0, "the record moved to another key was stored");
    cr_expect(!find(&s, client, "expert.1").found);

    size_t nsubs = 0, nrep = replicas(&s, "expert.0", &nsubs);
    cr_expect(nrep >= 3 && nsubs == 1, "the record is held intact (%zu replicas, %zu entries)", nrep, nsubs);
    loc = find(&s, client, "expert.0");
    cr_expect(loc.found && loc.addr.port == 1001 && loc.owners == 1, "the client still finds the honest expert");

    /* replicas the attacker controls answer with the forged record (their storage rewritten behind the
     * policy); one honest replica is left, and the client's lookup goes past the forgeries to it */
    dht_id id;
    cr_assert_eq(dht_id_from_str(&id, "expert.0", 8), 0);
    size_t corrupted = 0, left = 0;
    for (size_t i = 0; i < s.n; i++) {
        if (i == HONEST || i == client) continue;
        dht_storage *st = dht_node_storage(s.nodes[i]);
        dht_stored got;
        if (dht_storage_get(st, &id, now, &got) != 0) continue;
        if (left == 0) {
            left = i;
            continue;
        }
        cr_assert_eq(dht_storage_remove(st, &id), 0);
        cr_assert_eq(dht_storage_store_signed(st, NULL, &id, sk, sklen, f, vlen, exp + 5, now), 1);
        corrupted++;
    }
    dht_stored hs;   /* the honest node keeps its own copy only if it is a replica: leave one honest replica */
    if (dht_storage_get(dht_node_storage(s.nodes[HONEST]), &id, now, &hs) == 0 && left) {
        dht_storage *st = dht_node_storage(s.nodes[left]);
        cr_assert_eq(dht_storage_remove(st, &id), 0);
        cr_assert_eq(dht_storage_store_signed(st, NULL, &id, sk, sklen, f, vlen, exp + 5, now), 1);
        corrupted++;
    }
    cr_assert(corrupted >= 2, "%zu replicas corrupted", corrupted);
    loc = find(&s, client, "expert.0");
    cr_expect(loc.found && loc.addr.port == 1001, "forged answers are dropped and the honest one found (port %d)",
              loc.addr.port);
    free(f);
    free(v);
    dht_swarm_down(&s);
}

Test(signed_records, two_servers_of_one_uid_both_stay_listed, .timeout = 120)
{
    dht_swarm s;
    up(&s, NULL, NODES);
    double now = dht_node_now(s.nodes[0]);
    cr_assert_eq(declare(&s, HONEST, "expert.0", 1001, now + 60), 0);
    cr_assert_eq(declare(&s, RIVAL, "expert.0", 1002, now + 90), 0);
    size_t nsubs = 0;
    cr_assert(replicas(&s, "expert.0", &nsubs) >= 3);
    cr_expect_eq(nsubs, 2, "both declarations are held");
    dht_expert_loc loc = find(&s, CLIENT, "expert.0");
    cr_expect(loc.found && loc.owners == 2, "both listed (%zu)", loc.owners);
    cr_expect_eq(loc.addr.port, 1002, "the latest expiration is chosen");

    /* the prefix entries are multi-owner too ("expert.0." / UID_FLAT_EXPERT): one successor, the same
     * choice */
    const char *prefix = "expert.0.";
    res r = { .s = &s };
    char err[256];
    s.pending++;
    cr_assert_eq(dht_get_active_successors(s.nodes[CLIENT], &prefix, 1, 0, on_succ, &r, err, sizeof err), 0);
    cr_assert(dht_swarm_run_until(&s, 20000));
    cr_expect(r.nsucc == 1 && r.succ[0].coord == UID_FLAT_EXPERT && r.succ[0].addr.port == 1002, "%zu successors",
              r.nsucc);

    /* the rival's record outlives its server by at most its lifetime: when it expires, the other stays */
    cr_assert_eq(declare(&s, HONEST, "expert.0", 1001, now + 150), 0);
    loc = find(&s, CLIENT, "expert.0");
    cr_expect(loc.owners == 2 && loc.addr.port == 1001, "the owner heard from last is chosen");
    dht_swarm_run_cond(&s, never, NULL, 100000);
    loc = find(&s, CLIENT, "expert.0");
    cr_expect(loc.found && loc.owners == 1 && loc.addr.port == 1001);
    dht_swarm_down(&s);
}

Test(signed_records, lifetimes_are_capped, .timeout = 120)
{
    dht_swarm s;
    up(&s, NULL, 8);
    double now = dht_node_now(s.nodes[0]);
    cr_assert_eq(declare(&s, HONEST, "expert.0", 1001, now + 24 * 3600), 0, "a long declaration is cut, not refused");
    uint8_t sk[DHT_RECORD_SUBKEY_MAX], *v;
    size_t sklen, vlen;
    double exp;
    cr_assert(held(&s, "expert.0", HONEST, sk, &sklen, &v, &vlen, &exp));
    cr_expect(exp <= now + DHT_RECORD_MAX_LIFETIME_S, "held until %.0f s from now", exp - now);
    free(v);

    /* a record signed for an hour, stored as is */
    dht_id id;
    cr_assert_eq(dht_id_from_str(&id, "expert.5", 8), 0);
    const dht_ident *k = dht_node_ident(s.nodes[ATTACKER]);
    sklen = dht_record_subkey(k->pk, 0, 0, sk);
    cr_assert_eq(dht_record_seal(k, &id, sk, sklen, "p", 1, now + 3600, &v, &vlen), 0);
    res r = store(&s, ATTACKER, "expert.5", sk, sklen, v, vlen, now + 3600);
    cr_expect_eq(r.n_stored, 0, "a record living an hour was stored");
    cr_expect(strstr(r.msg, "lifetime cap"), "%s", r.msg);
    free(v);
    dht_swarm_down(&s);
}

Test(signed_records, an_impostor_outside_the_trusted_keys_is_neither_stored_nor_used, .timeout = 120)
{
    dht_ident honest, other;
    cr_assert_eq(dht_ident_for_test(&honest, 100 + HONEST), 0);
    cr_assert_eq(dht_ident_for_test(&other, 100 + RIVAL), 0);
    dht_trust *t;
    cr_assert_eq(dht_trust_new(&t), 0);
    cr_assert_eq(dht_trust_add(t, honest.pk), 0);
    cr_assert_eq(dht_trust_add(t, other.pk), 0);

    /* node side: a private swarm of trusting nodes; the impostor (test key 103) joins with the same code */
    dht_swarm s;
    up(&s, t, NODES);
    double now = dht_node_now(s.nodes[0]);
    cr_assert_eq(declare(&s, HONEST, "expert.0", 1001, now + 60), 0);
    cr_expect_eq(declare(&s, ATTACKER, "expert.0", 6666, now + 90), DMOE_ENOTFOUND, "the impostor's record is stored");
    cr_expect_eq(declare(&s, ATTACKER, "expert.1", 6666, now + 90), DMOE_ENOTFOUND);
    res r = store(&s, ATTACKER, "plain", NULL, 0, (const uint8_t *)"\xa1x", 2, now + 60);
    cr_expect_eq(r.n_stored, 0, "an unsigned value was stored in a private swarm");
    cr_expect(strstr(r.msg, "private"), "%s", r.msg);
    size_t nsubs = 0;
    cr_expect(replicas(&s, "expert.0", &nsubs) >= 3 && nsubs == 1);
    cr_expect_eq(replicas(&s, "expert.1", NULL), 0);
    dht_expert_loc loc = find(&s, CLIENT, "expert.0");
    cr_expect(loc.found && loc.addr.port == 1001 && loc.owners == 1);
    dht_swarm_down(&s);

    /* client side: open nodes store the impostor's record (the later one); a client holding the trusted
     * keys ignores it, an open client uses it */
    up(&s, NULL, NODES);
    now = dht_node_now(s.nodes[0]);
    cr_assert_eq(declare(&s, HONEST, "expert.0", 1001, now + 60), 0);
    cr_assert_eq(declare(&s, ATTACKER, "expert.0", 6666, now + 90), 0);
    loc = find(&s, CLIENT, "expert.0");
    cr_expect(loc.owners == 2 && loc.addr.port == 6666, "an open client sees both and takes the later");
    s.trusted = t;
    dht *trusting = dht_swarm_add(&s, 500, -1, NULL);
    dht_swarm_boot_from(&s, trusting, 0);
    cr_assert(dht_swarm_run_until(&s, 5000));
    loc = find(&s, s.n - 1, "expert.0");
    cr_expect(loc.found && loc.owners == 1 && loc.addr.port == 1001, "the trusting client uses the honest expert only");
    dht_swarm_down(&s);
    dht_trust_free(t);
}
