/* test_dht_upkeep.c -- how the DHT keeps itself in shape, on the in-memory transport
 * (actors/dht/io/dht_memnet.h) in virtual time (dht_clock.h: no sleep; time jumps to the next event).
 *
 * The behaviours test_dht_many.c does not reach: a joining node is handed the keys it is now nearest
 * to (Kademlia's hand-over); a get caches its result locally and on the nearest asked node that lacked
 * it; concurrent gets of one key from one node share one lookup; a failed RPC evicts the peer and the
 * freshest replacement takes its place, the failed address is banned and the ban doubles when it keeps
 * failing; crashed and stopped nodes vanish from the tables of the nodes that try them; a get with
 * `latest` asks past the first value and returns the newest; a node stopped while bootstrapping
 * reports it once; per-link latencies set each RPC's time exactly; a peer that claims another node's
 * id (in a ping, a find or a store) cannot repoint that id's routing entry, and lookups go on finding
 * values; a sender that claims a new id at someone else's address gets no hand-over sent there. In
 * every test no node's handler keeps the loop longer than DHT_SWARM_MAX_STALL_US (dht_swarm_down; the
 * two attack tests print their worst). Every
 * wait is bounded by a deadline of virtual time; durations asserted are virtual (the ban lengths, with
 * seconds of margin, and the exact round trips of the latency test), so none depends on the machine's
 * speed. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_boot.h"
#include "actors/dht/dht_lookup.h"
#include "actors/dht/dht_node.h"
#include "actors/dht/io/dht_clock.h"
#include "actors/dht/io/dht_memnet.h"
#include "test/integration/dht/dht_swarm.h"
#include "actors/dht/io/dht_proto.h"
#include "runtime/rt_err.h"

typedef dht_swarm swarm;
typedef dht_swarm_pred sw_pred;

static int run_cond(swarm *s, sw_pred pred, void *arg, int ms) { return dht_swarm_run_cond(s, pred, arg, ms); }
static int run_until(swarm *s, int ms) { return dht_swarm_run_until(s, ms); }

/* run_for lets ms pass with the loop running. */
static int never(swarm *s, void *arg) { return 0; }
static void run_for(swarm *s, int ms) { run_cond(s, never, NULL, ms); }

/* add_node adds a node (its key, hence its id, drawn from its index) to the swarm. */
static dht *add_node(swarm *s) { return dht_swarm_add(s, 9001 + s->n * 131, -1, NULL); }
#define boot_from dht_swarm_boot_from

/* swarm_up builds n nodes, each bootstrapping from a random earlier node, 8 at a time. */
static void swarm_up(swarm *s, size_t n, size_t bucket_size, uint64_t rpc_timeout_ms)
{
    dht_swarm_init(s, bucket_size, rpc_timeout_ms);
    uint64_t rng = 12345;
    for (size_t i = 0; i < n; i++) {
        dht *d = add_node(s);
        if (i == 0) continue;
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        boot_from(s, d, (rng >> 33) % i);
        if (s->pending >= 8) cr_assert(run_until(s, 20000), "bootstrap wave");
    }
    cr_assert(run_until(s, 20000), "bootstrap");
}

#define swarm_down dht_swarm_down

/* index_of returns the swarm index of the node with id, or -1. */
static int index_of(const swarm *s, const dht_id *id)
{
    for (size_t i = 0; i < s->n; i++)
        if (dht_id_eq(dht_node_id(s->nodes[i]), id)) return (int)i;
    return -1;
}

/* rank_by_distance writes the swarm indices into order[], nearest to key first. */
static void rank_by_distance(const swarm *s, const dht_id *key, size_t *order)
{
    for (size_t i = 0; i < s->n; i++) {
        size_t j = i;
        while (j > 0 && dht_id_distance_cmp(key, dht_node_id(s->nodes[i]), dht_node_id(s->nodes[order[j - 1]])) < 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

static dht_id key_of(const char *prefix, int i)
{
    char name[64];
    int n = snprintf(name, sizeof name, "%s.%d", prefix, i);
    dht_id k;
    cr_assert_eq(dht_id_from_str(&k, name, (size_t)n), 0);
    return k;
}

/* has_key returns 1 if storage st holds something live under key. */
static int has_key(dht *d, dht_storage *st, const dht_id *key)
{
    dht_stored v;
    return dht_storage_get(st, key, dht_node_now(d), &v) == 0;
}

/* ---- operations and their completions ---- */

typedef dht_test_op op;

static void on_store_rpc(void *arg, int err, const char *msg, const dht_store_rep *rep)
{
    op *o = arg;
    o->called++;
    o->err = err;
    o->n_stored = err == 0 && rep->stored[0];
    (*o->pending)--;
}

static void on_find_rpc(void *arg, int err, const char *msg, const dht_find_rep *rep)
{
    op *o = arg;
    o->called++;
    o->err = err;
    (*o->pending)--;
}

static void on_nodes(void *arg, int err, const char *msg, const dht_node *nearest, size_t n, int hops)
{
    op *o = arg;
    o->called++;
    o->err = err;
    o->n_stored = n;
    (*o->pending)--;
}

/* store_plain stores value {0xcc, tag} (msgpack uint8 tag) under key from node `from`, until exp. */
static void store_plain(swarm *s, size_t from, const dht_id *key, uint8_t tag, double exp)
{
    op o = DHT_TEST_OP(s);
    uint8_t v[2] = { 0xcc, tag };
    s->pending++;
    cr_assert_eq(dht_store(s->nodes[from], key, NULL, 0, v, 2, exp, dht_test_on_store, &o), 0);
    cr_assert(run_until(s, 10000), "store");
    cr_assert_eq(o.err, 0, "store: %d", o.err);
    cr_assert(o.n_stored >= 1);
}

/* get_one runs one get of key from node `from` to completion into *o. */
static void get_one(swarm *s, size_t from, const dht_id *key, int latest, op *o)
{
    *o = DHT_TEST_OP(s);
    s->pending++;
    cr_assert_eq(dht_get(s->nodes[from], key, latest, dht_test_on_get, o), 0);
    cr_assert(run_until(s, 15000), "get");
    cr_assert_eq(o->called, 1);
}

/* ---- 1. hand-over ---- */

#define HO_NEW 4

typedef struct {
    dht *newcomer[HO_NEW + 1];
    dht_id key[HO_NEW + 1];
    size_t n;
    uint8_t subkeys[2];
} handover_goal;

static int dict_complete(dht *d, const dht_id *key)
{
    dht_stored v;
    return dht_storage_get(dht_node_storage(d), key, dht_node_now(d), &v) == 0 && v.is_dict && v.nsubs == 2;
}

static int handed_over(swarm *s, void *arg)
{
    handover_goal *g = arg;
    for (size_t i = 0; i < g->n; i++) {
        if (i == HO_NEW) {
            if (!dict_complete(g->newcomer[i], &g->key[i])) return 0;
        } else if (!has_key(g->newcomer[i], dht_node_storage(g->newcomer[i]), &g->key[i])) {
            return 0;
        }
    }
    return 1;
}

Test(dht_upkeep, a_joining_node_is_handed_the_keys_it_is_nearest_to, .timeout = 60)
{
    swarm s;
    swarm_up(&s, 32, 0, 1000);
    double exp = dht_node_now(s.nodes[0]) + 600;
    handover_goal g = { .n = HO_NEW + 1 };
    size_t old_n = s.n;
    /* Newcomers (not joined yet: nobody knows them) and keys that differ from a newcomer's id in the last
     * bit only: each newcomer will be nearer to its key than any replica. Ids come from keys, so the keys
     * are chosen after the ids. */
    for (size_t i = 0; i < g.n; i++) {
        g.newcomer[i] = add_node(&s);
        g.key[i] = *dht_node_id(g.newcomer[i]);
        g.key[i].b[DHT_ID_BYTES - 1] ^= 1;
    }
    for (int i = 0; i < HO_NEW; i++) store_plain(&s, (size_t)(i * 5) % old_n, &g.key[i], (uint8_t)(40 + i), exp);
    /* and a dictionary of two subkeys, each stored from a different node */
    for (int j = 0; j < 2; j++) {
        op o = DHT_TEST_OP(&s);
        uint8_t sk = (uint8_t)(j + 1), v[2] = { 0xcc, (uint8_t)(50 + j) };
        s.pending++;
        cr_assert_eq(dht_store(s.nodes[3 + (size_t)j * 7], &g.key[HO_NEW], &sk, 1, v, 2, exp, dht_test_on_store, &o), 0);
        cr_assert(run_until(&s, 10000));
        cr_assert_eq(o.err, 0);
    }
    for (size_t i = 0; i < g.n; i++) {
        cr_assert(!has_key(g.newcomer[i], dht_node_storage(g.newcomer[i]), &g.key[i]));
        boot_from(&s, g.newcomer[i], (i * 11) % old_n);
    }
    cr_assert(run_until(&s, 20000), "the newcomers bootstrap");
    cr_assert(run_cond(&s, handed_over, &g, 10000), "every newcomer was handed its key within 10 s");
    for (size_t i = 0; i < HO_NEW; i++) {
        dht_stored v;
        cr_assert_eq(dht_storage_get(dht_node_storage(g.newcomer[i]), &g.key[i], dht_node_now(g.newcomer[i]), &v), 0);
        cr_expect(!v.is_dict && v.vlen == 2 && v.value[1] == 40 + i, "newcomer %zu got the value itself", i);
        cr_expect(v.expiration > exp - 1 && v.expiration < exp + 1, "with its expiration");
        cr_expect(dht_node_stored_keys(g.newcomer[i]) >= 1, "indexed for its own hand-overs");
    }
    cr_expect(dict_complete(g.newcomer[HO_NEW], &g.key[HO_NEW]), "both subkeys of the dictionary handed over");
    /* The newcomer is now the nearest node: a get from anywhere finds the value, the newcomer answering. */
    op o;
    get_one(&s, 1, &g.key[0], 1, &o);
    cr_expect(o.found && o.vlen == 2 && o.value[1] == 40, "the key is still found after the hand-over");
    swarm_down(&s);
}

/* ---- 2. caching ---- */

typedef struct {
    dht *d;
    dht_id key;
} cached_on;

static int cached(swarm *s, void *arg)
{
    cached_on *c = arg;
    return has_key(c->d, dht_node_cache(c->d), &c->key);
}

Test(dht_upkeep, a_get_caches_locally_and_on_the_nearest_node_that_lacked_the_value, .timeout = 60)
{
    swarm s;
    swarm_up(&s, 48, 0, 1000);
    size_t order[DHT_SWARM_MAX];
    double exp = dht_node_now(s.nodes[0]) + 600;

    /* A plain get: the getter caches the result and then answers the next get locally. */
    dht_id k = key_of("cache", 0);
    store_plain(&s, 0, &k, 7, exp);
    rank_by_distance(&s, &k, order);
    size_t getter = order[s.n - 1];
    cr_assert(!has_key(s.nodes[getter], dht_node_storage(s.nodes[getter]), &k));
    op o;
    get_one(&s, getter, &k, 0, &o);
    cr_assert(o.found && o.vlen == 2 && o.value[1] == 7);
    cr_expect(o.hops >= 1 && o.rpcs >= 1, "the first get went to the network");
    cr_expect(has_key(s.nodes[getter], dht_node_cache(s.nodes[getter]), &k), "the getter cached the result");
    cr_expect(!has_key(s.nodes[getter], dht_node_storage(s.nodes[getter]), &k), "in its cache, not as a replica");
    uint64_t before = dht_node_rpc_count(s.nodes[getter]);
    get_one(&s, getter, &k, 0, &o);
    cr_expect(o.found && o.vlen == 2 && o.value[1] == 7);
    cr_expect_eq(o.hops, 0, "the second get is answered from the cache");
    cr_expect_eq(o.rpcs, 0);
    cr_expect_eq(dht_node_rpc_count(s.nodes[getter]), before, "without a single RPC");

    /* A latest get asks the 20 nearest: the 5 replicas have the value, the 6th nearest is the nearest
     * asked node that lacked it and must be given a cached copy; no farther node is. */
    dht_id k2 = key_of("cache", 1);
    store_plain(&s, 1, &k2, 8, exp);
    rank_by_distance(&s, &k2, order);
    for (size_t r = 0; r < DHT_NUM_REPLICAS; r++)
        cr_assert(has_key(s.nodes[order[r]], dht_node_storage(s.nodes[order[r]]), &k2), "replica %zu", r);
    size_t sixth = order[DHT_NUM_REPLICAS];
    cr_assert(!has_key(s.nodes[sixth], dht_node_storage(s.nodes[sixth]), &k2));
    getter = order[s.n - 1];
    get_one(&s, getter, &k2, 1, &o);
    cr_assert(o.found && o.vlen == 2 && o.value[1] == 8);
    cr_expect(has_key(s.nodes[getter], dht_node_cache(s.nodes[getter]), &k2), "the getter cached the result");
    /* the cache store is one more RPC: wait (bounded) for it to land */
    cached_on cw = { s.nodes[sixth], k2 };
    cr_expect(run_cond(&s, cached, &cw, 3000), "the nearest asked node that lacked the value caches it");
    size_t cached_elsewhere = 0;
    for (size_t i = 0; i < s.n; i++)
        if (i != getter && i != sixth && has_key(s.nodes[i], dht_node_cache(s.nodes[i]), &k2)) cached_elsewhere++;
    cr_expect_eq(cached_elsewhere, 0, "one cached copy on the path, not more");
    swarm_down(&s);
}

/* ---- 3. concurrent gets share one lookup ---- */

#define CONC_GETS 32

Test(dht_upkeep, concurrent_gets_of_one_key_share_one_lookup, .timeout = 60)
{
    swarm s;
    swarm_up(&s, 48, 0, 1000);
    size_t order[DHT_SWARM_MAX];
    dht_id k = key_of("shared", 0);
    store_plain(&s, 2, &k, 99, dht_node_now(s.nodes[0]) + 600);
    rank_by_distance(&s, &k, order);
    dht *g = s.nodes[order[s.n - 1]];

    /* For comparison: one get of another key, from a node as far from it. */
    dht_id k1 = key_of("shared", 1);
    store_plain(&s, 2, &k1, 98, dht_node_now(s.nodes[0]) + 600);
    size_t order1[DHT_SWARM_MAX];
    rank_by_distance(&s, &k1, order1);
    op single;
    uint64_t b1 = dht_node_rpc_count(s.nodes[order1[s.n - 1]]);
    get_one(&s, order1[s.n - 1], &k1, 1, &single);
    uint64_t one_lookup = dht_node_rpc_count(s.nodes[order1[s.n - 1]]) - b1;
    cr_assert(single.found && one_lookup >= 1);

    static op ops[2 * CONC_GETS];
    uint64_t before = dht_node_rpc_count(g);
    for (int i = 0; i < 2 * CONC_GETS; i++) {
        ops[i] = DHT_TEST_OP(&s);
        s.pending++;
        cr_assert_eq(dht_get(g, &k, i >= CONC_GETS, dht_test_on_get, &ops[i]), 0);   /* half plain, half latest */
    }
    cr_assert(run_until(&s, 15000), "every get completes");
    uint64_t used = dht_node_rpc_count(g) - before;
    for (int i = 0; i < 2 * CONC_GETS; i++) {
        cr_expect_eq(ops[i].called, 1, "get %d: one callback", i);
        cr_expect(ops[i].err == 0 && ops[i].found && ops[i].vlen == 2 && ops[i].value[1] == 99, "get %d: the value", i);
        cr_expect_eq(ops[i].rpcs, ops[i < CONC_GETS ? 0 : CONC_GETS].rpcs, "get %d: the same lookup", i);
    }
    /* Two lookups (plain and latest), each with at most one cache store. */
    uint64_t lookups_rpcs = ops[0].rpcs + ops[CONC_GETS].rpcs;
    cr_expect(used <= lookups_rpcs + 2, "%llu RPCs for %d gets sharing 2 lookups of %zu + %zu finds",
              (unsigned long long)used, 2 * CONC_GETS, ops[0].rpcs, ops[CONC_GETS].rpcs);
    cr_expect(used <= 2 * one_lookup + 2 * DHT_BUCKET_SIZE, "%llu RPCs; one latest lookup takes %llu",
              (unsigned long long)used, (unsigned long long)one_lookup);
    printf("dht_upkeep: %d concurrent gets of one key: %llu RPCs (one latest lookup alone: %llu)\n", 2 * CONC_GETS,
           (unsigned long long)used, (unsigned long long)one_lookup);
    swarm_down(&s);
}

/* ---- 4. failures: eviction, replacement, ban, back-off ---- */

Test(dht_upkeep, a_failed_rpc_evicts_the_peer_and_promotes_a_replacement, .timeout = 60)
{
    swarm s;
    swarm_up(&s, 48, 2, 300);   /* k = 2: buckets fill and keep replacements */
    /* Find a node with a full bucket that has replacements. */
    size_t x = DHT_SWARM_MAX, bi = 0;
    dht_bucket_view bv;
    for (size_t i = 0; i < s.n && x == DHT_SWARM_MAX; i++) {
        dht_routing *rt = dht_node_routing(s.nodes[i]);
        for (size_t b = 0; b < dht_routing_num_buckets(rt); b++) {
            cr_assert_eq(dht_routing_bucket(rt, b, &bv), 0);
            if (bv.n == 2 && bv.nrepl > 0) {
                x = i;
                bi = b;
                break;
            }
        }
    }
    cr_assert(x < DHT_SWARM_MAX, "some node has a full bucket with replacements");
    dht *d = s.nodes[x];
    dht_routing *rt = dht_node_routing(d);
    cr_assert_eq(dht_routing_bucket(rt, bi, &bv), 0);
    dht_node victim = bv.nodes[0], fresh = bv.repl[bv.nrepl - 1];
    int vi = index_of(&s, &victim.id);
    cr_assert(vi >= 0);
    dht_memnet_set_down(s.net, s.ep[vi], 1);

    op o = DHT_TEST_OP(&s);
    uint64_t before = dht_node_rpc_count(d);
    s.pending++;
    cr_assert_eq(dht_node_find(d, &victim, &victim.id, 1, on_find_rpc, &o), 0);
    cr_assert(run_until(&s, 5000));
    cr_assert_eq(o.err, DMOE_ETIMEDOUT, "the crashed peer does not answer: %d", o.err);
    dht_node e;
    cr_expect_neq(dht_routing_get(rt, &victim.id, &e), 0, "the failed peer left the table");
    cr_expect_eq(dht_routing_get(rt, &fresh.id, &e), 0, "the freshest replacement took its place");
    dht_bucket_view after;
    cr_assert_eq(dht_routing_bucket(rt, dht_routing_bucket_of(rt, &fresh.id), &after), 0);
    cr_expect_eq(after.n, 2, "the bucket is still full");
    for (size_t r = 0; r < after.nrepl; r++) cr_expect(!dht_id_eq(&after.repl[r].id, &fresh.id));

    /* The failed address is banned: the next call is refused at once, nothing is sent. */
    cr_expect_eq(dht_node_rpc_count(d), before + 1);
    cr_expect_eq(dht_node_find(d, &victim, &victim.id, 1, on_find_rpc, &o), DMOE_ECONN);
    static const uint8_t nil = 0xc0;
    dht_store_item it = { victim.id, NULL, 0, &nil, 1, dht_node_now(d) + 10 };
    cr_expect_eq(dht_node_store_rpc(d, &victim, &it, 1, 0, on_store_rpc, &o), DMOE_ECONN);
    cr_expect_eq(dht_node_rpc_count(d), before + 1, "a banned peer is not called");
    swarm_down(&s);
}

typedef struct {
    op o;
    uint64_t failed_at;
} timed_op;

static void on_find_timed(void *arg, int err, const char *msg, const dht_find_rep *rep)
{
    timed_op *t = arg;
    t->failed_at = dht_clock_us(t->o.clock);
    on_find_rpc(&t->o, err, msg, rep);
}

/* wait_until lets the swarm run until its clock reaches t_us (bounded: at most ms_cap). */
static void wait_until(swarm *s, uint64_t t_us, int ms_cap)
{
    uint64_t now = dht_clock_us(s->clock);
    if (t_us > now) run_for(s, (int)((t_us - now) / 1000) < ms_cap ? (int)((t_us - now) / 1000) + 1 : ms_cap);
}

Test(dht_upkeep, a_peer_that_keeps_failing_is_banned_longer_each_time, .timeout = 60)
{
    swarm s;
    swarm_up(&s, 8, 0, 200);
    dht *d = s.nodes[1];
    dht_node victim = { .id = *dht_node_id(s.nodes[5]), .addr = dht_node_self(s.nodes[5])->addr };
    dht_memnet_set_down(s.net, s.ep[5], 1);

    /* First failure: a ban of DHT_BAN_BASE (5 s). */
    timed_op t = { .o = DHT_TEST_OP(&s) };
    s.pending++;
    cr_assert_eq(dht_node_find(d, &victim, &victim.id, 1, on_find_timed, &t), 0);
    cr_assert(run_until(&s, 5000));
    cr_assert_eq(t.o.err, DMOE_ETIMEDOUT);
    uint64_t first = t.failed_at;
    cr_expect_eq(dht_node_find(d, &victim, &victim.id, 1, on_find_timed, &t), DMOE_ECONN, "banned after a failure");

    /* Once the first ban is over the peer is tried again; it fails again: the ban doubles (10 s). */
    wait_until(&s, first + (uint64_t)((DHT_BAN_BASE + 1.0) * 1e6), 8000);
    t = (timed_op){ .o = DHT_TEST_OP(&s) };
    s.pending++;
    cr_assert_eq(dht_node_find(d, &victim, &victim.id, 1, on_find_timed, &t), 0, "the first ban has ended");
    cr_assert(run_until(&s, 5000));
    cr_assert_eq(t.o.err, DMOE_ETIMEDOUT);
    uint64_t second = t.failed_at;
    /* DHT_BAN_BASE + 1 s after the second failure: a ban of DHT_BAN_BASE would be over, the doubled one
     * (DHT_BAN_BASE * DHT_BAN_RATE) still runs for DHT_BAN_BASE - 1 s more. */
    wait_until(&s, second + (uint64_t)((DHT_BAN_BASE + 1.0) * 1e6), 8000);
    uint64_t before = dht_node_rpc_count(d);
    cr_expect_eq(dht_node_find(d, &victim, &victim.id, 1, on_find_timed, &t), DMOE_ECONN,
                 "the second ban is longer than the first");
    cr_expect_eq(dht_node_rpc_count(d), before);
    swarm_down(&s);
}

typedef struct {
    size_t n;
    op ops[DHT_SWARM_MAX * 16];
} many_ops;

Test(dht_upkeep, crashed_and_stopped_nodes_vanish_from_the_tables_that_try_them, .timeout = 90)
{
    swarm s;
    swarm_up(&s, 48, 0, 300);
    int dead[DHT_SWARM_MAX] = { 0 };
    size_t ndead = 0;
    for (size_t i = 3; i < s.n; i += 6) {   /* 8 nodes: half crash, half stop but keep answering errors */
        dead[i] = 1;
        ndead++;
        if ((i / 6) % 2) dht_memnet_set_down(s.net, s.ep[i], 1);
        else dht_node_stop(s.nodes[i]);
    }
    size_t known_before = 0;
    for (size_t j = 0; j < s.n; j++) {
        if (dead[j]) continue;
        for (size_t i = 0; i < s.n; i++) {
            dht_node e;
            if (dead[i] && dht_routing_get(dht_node_routing(s.nodes[j]), dht_node_id(s.nodes[i]), &e) == 0)
                known_before++;
        }
    }
    cr_assert(known_before > 0, "the dead nodes were known");

    /* Every live node looks up the id of every dead one: the dead node is the nearest candidate of each
     * lookup, so every live node that knows it tries it. */
    static many_ops m;
    m.n = 0;
    for (size_t j = 0; j < s.n; j++) {
        if (dead[j]) continue;
        for (size_t i = 0; i < s.n; i++) {
            if (!dead[i]) continue;
            op *o = &m.ops[m.n++];
            *o = DHT_TEST_OP(&s);
            s.pending++;
            cr_assert_eq(dht_find_nodes(s.nodes[j], dht_node_id(s.nodes[i]), 0, on_nodes, o), 0);
        }
    }
    cr_assert(run_until(&s, 30000), "every lookup ends");
    for (size_t g = 0; g < m.n; g++) {
        cr_expect_eq(m.ops[g].err, 0, "lookup %zu", g);
        cr_expect(m.ops[g].n_stored > 0, "lookup %zu found live nodes", g);
    }
    size_t known_after = 0;
    for (size_t j = 0; j < s.n; j++) {
        if (dead[j]) continue;
        for (size_t i = 0; i < s.n; i++) {
            dht_node e;
            if (dead[i] && dht_routing_get(dht_node_routing(s.nodes[j]), dht_node_id(s.nodes[i]), &e) == 0) {
                known_after++;
                cr_expect(0, "node %zu still lists %s node %zu", j, (i / 6) % 2 ? "crashed" : "stopped", i);
            }
        }
    }
    printf("dht_upkeep: %zu dead nodes listed %zu times in live tables before the lookups, %zu after\n", ndead,
           known_before, known_after);
    /* and gets still work around them */
    dht_id k = key_of("survive", 0);
    store_plain(&s, 1, &k, 5, dht_node_now(s.nodes[0]) + 600);
    op o;
    get_one(&s, 2, &k, 1, &o);
    cr_expect(o.found && o.vlen == 2 && o.value[1] == 5);
    swarm_down(&s);
}

/* ---- 5. latest ---- */

Test(dht_upkeep, a_latest_get_asks_past_the_first_value_and_returns_the_newest, .timeout = 60)
{
    swarm s;
    swarm_up(&s, 32, 0, 1000);
    size_t order[DHT_SWARM_MAX];
    dht_id k = key_of("latest", 0);
    double now = dht_node_now(s.nodes[0]);
    store_plain(&s, 0, &k, 1, now + 60);   /* the old value, on all 5 replicas */
    rank_by_distance(&s, &k, order);
    for (size_t r = 0; r < DHT_NUM_REPLICAS; r++)
        cr_assert(has_key(s.nodes[order[r]], dht_node_storage(s.nodes[order[r]]), &k), "replica %zu", r);

    /* The newer value reaches only the two farthest replicas, stored there directly. */
    const uint8_t v2[2] = { 0xcc, 2 };
    dht_store_item it = { k, NULL, 0, v2, 2, now + 120 };
    dht *writer = s.nodes[order[s.n - 1]];
    op w[2];
    for (int r = 0; r < 2; r++) {
        size_t idx = order[DHT_NUM_REPLICAS - 2 + (size_t)r];
        dht_node peer = { .id = *dht_node_id(s.nodes[idx]), .addr = dht_node_self(s.nodes[idx])->addr };
        w[r] = DHT_TEST_OP(&s);
        s.pending++;
        cr_assert_eq(dht_node_store_rpc(writer, &peer, &it, 1, 0, on_store_rpc, &w[r]), 0);
    }
    cr_assert(run_until(&s, 5000));
    cr_assert(w[0].n_stored && w[1].n_stored, "the newer value replaced the old one on 2 replicas");

    /* A plain get may stop at either value. */
    op o;
    get_one(&s, order[s.n - 2], &k, 0, &o);
    cr_assert(o.found && o.vlen == 2);
    cr_expect(o.value[1] == 1 || o.value[1] == 2, "a plain get returns one of the values: %d", o.value[1]);

    /* A latest get returns the newest, from a far node and from the nearest replica, which holds the
     * old value itself. */
    size_t readers[2] = { order[s.n - 3], order[0] };
    for (int r = 0; r < 2; r++) {
        get_one(&s, readers[r], &k, 1, &o);
        cr_assert(o.found && o.vlen == 2, "latest get %d", r);
        cr_expect_eq(o.value[1], 2, "latest get %d returns the newest value", r);
        cr_expect(o.expiration > now + 119 && o.expiration < now + 121, "with its expiration");
        cr_expect(o.rpcs >= DHT_NUM_REPLICAS, "latest get %d asked past the first value (%zu finds)", r, o.rpcs);
    }
    swarm_down(&s);
}

/* ---- 6. a bootstrap cut short ---- */

typedef struct {
    int calls, err;
} boot_res;

static void on_boot_res(void *arg, int err, const char *msg)
{
    boot_res *b = arg;
    b->calls++;
    b->err = err;
}

Test(dht_upkeep, a_node_stopped_while_bootstrapping_reports_shutdown_once, .timeout = 60)
{
    swarm s;
    swarm_up(&s, 4, 0, 1000);
    dht_memnet_set_down(s.net, s.ep[1], 1);
    dht *d = add_node(&s);
    char text[WIRE_MADDR_TEXT], err[256];
    dht_node_maddr(s.nodes[1], text, sizeof text);
    const char *peers[1] = { text };
    boot_res b = { 0, 0 };
    cr_assert_eq(dht_node_bootstrap(d, peers, 1, on_boot_res, &b, err, sizeof err), 0, "%s", err);
    cr_expect_eq(dht_node_bootstrap(d, peers, 1, on_boot_res, &b, err, sizeof err), DMOE_EINVAL,
                 "one bootstrap at a time");
    run_for(&s, 100);   /* the ping is out; it times out after 1 s */
    cr_expect_eq(b.calls, 0, "no answer yet");
    dht_node_stop(d);
    cr_expect_eq(b.calls, 1, "stopping ends the bootstrap");
    cr_expect_eq(b.err, DMOE_ESHUTDOWN);
    run_for(&s, 2000);   /* the ping's timeout comes back to the ended bootstrap */
    cr_expect_eq(b.calls, 1, "its callback ran once");
    swarm_down(&s);
}

/* ---- 7. per-link latency, in exact virtual time ---- */

typedef struct {
    op o;
    uint64_t done_at;
} clocked_op;

static void on_find_clocked(void *arg, int err, const char *msg, const dht_find_rep *rep)
{
    clocked_op *t = arg;
    t->done_at = dht_clock_us(t->o.clock);
    on_find_rpc(&t->o, err, msg, rep);
}

/* slow_link: 7 ms each way on links that touch endpoint 2, 1 ms elsewhere. */
static uint32_t slow_link(void *arg, int from, int to)
{
    const int *slow = arg;
    return from == *slow || to == *slow ? 7 : 1;
}

Test(dht_upkeep, per_link_latencies_set_each_rpc_time_exactly, .timeout = 30)
{
    swarm s;
    swarm_up(&s, 4, 0, 1000);
    int slow = s.ep[2];
    dht_memnet_set_latency(s.net, slow_link, &slow);
    dht *d = s.nodes[1];
    for (size_t to = 2; to <= 3; to++) {
        dht_node peer = { .id = *dht_node_id(s.nodes[to]), .addr = dht_node_self(s.nodes[to])->addr };
        clocked_op t = { .o = DHT_TEST_OP(&s) };
        uint64_t t0 = dht_clock_us(s.clock);
        s.pending++;
        cr_assert_eq(dht_node_find(d, &peer, &peer.id, 1, on_find_clocked, &t), 0);
        cr_assert(run_until(&s, 5000));
        cr_assert_eq(t.o.err, 0);
        cr_expect_eq(t.done_at - t0, to == 2 ? 14000u : 2000u, "node %zu answered after %llu us", to,
                     (unsigned long long)(t.done_at - t0));
    }
    swarm_down(&s);
}

/* ---- 7. identity: a claim the claimant cannot prove changes nothing ---- */

typedef struct {
    swarm *s;
    int err;
} raw_call;

static void on_raw(void *arg, int err, const char *msg, const wire_msg *reply)
{
    raw_call *r = arg;
    r->err = err;
    r->s->pending--;
}

/* send_forged sends, from a spare endpoint of the swarm, a dht_ping whose sender is *claim, to node to;
 * runs until it is answered and expects an answer. */
static void send_forged(swarm *s, dht *to, const dht_peer_info *claim)
{
    dht_addr spare;
    dht_transport t;
    cr_assert(dht_memnet_add(s->net, &spare, &t) >= 0);
    wire_maddr dst;
    cr_assert_eq(dht_proto_addr_to_maddr(&dht_node_self(to)->addr, dht_node_id(to), &dst), 0);
    uint64_t id = t.next_id(t.impl);
    raw_call r = { s, -1 };
    s->pending++;
    cr_assert_eq(t.call(t.impl, &dst, id, dht_proto_ping_req(id, claim, NULL), 2000, on_raw, &r), 0);
    cr_assert(run_until(s, 5000));
    cr_expect_eq(r.err, 0, "the forged ping is answered");
}

Test(dht_upkeep, no_hand_over_to_an_address_a_sender_only_claims, .timeout = 60)
{
    swarm s;
    swarm_up(&s, 24, 0, 1000);
    dht *holder = s.nodes[4];
    /* A key next to the holder's id: the holder is nearest to it, and a newcomer with an id nearer still
     * would be handed it. */
    dht_id key = *dht_node_id(holder);
    key.b[DHT_ID_BYTES - 1] ^= 1;
    store_plain(&s, 9, &key, 55, dht_node_now(holder) + 600);
    cr_assert(has_key(holder, dht_node_storage(holder), &key), "the holder is a replica");
    /* The bystander: a real node that joined nobody; the claim: a new id, nearer to the key than the
     * holder, at the bystander's address. */
    dht *bystander = add_node(&s);
    dht_peer_info claim = { .present = 1, .id = key, .addr = dht_node_self(bystander)->addr };
    claim.id.b[DHT_ID_BYTES - 1] ^= 2;
    send_forged(&s, holder, &claim);
    run_for(&s, 3000);
    cr_expect(!has_key(bystander, dht_node_storage(bystander), &key), "nothing was handed over to the bystander");
    cr_expect_eq(dht_node_stored_keys(bystander), 0);
    dht_node e;
    cr_expect_neq(dht_routing_get(dht_node_routing(holder), &claim.id, &e), 0, "the claimed id is not in the table");
    dht_swarm_expect_no_stall(&s, "dht_upkeep: claimed address");
    swarm_down(&s);
}

Test(dht_upkeep, a_peer_claiming_another_nodes_id_does_not_repoint_its_entry, .timeout = 60)
{
    swarm s;
    swarm_up(&s, 24, 0, 1000);
    run_for(&s, 2000);   /* the last challenge pings of the joins complete */
    dht *target = s.nodes[0];
    dht_routing *rt = dht_node_routing(target);
    /* The victim: a node the target holds; the attacker: a node of the swarm with its own key. */
    size_t v = 0;
    dht_node before;
    for (size_t i = 1; i < s.n && !v; i++)
        if (dht_routing_get(rt, dht_node_id(s.nodes[i]), &before) == 0) v = i;
    cr_assert(v > 0, "the target knows some node");
    dht *attacker = s.nodes[v == s.n - 1 ? 1 : s.n - 1];
    const dht_id victim = *dht_node_id(s.nodes[v]);
    cr_assert(dht_addr_eq(&before.addr, &dht_node_self(s.nodes[v])->addr));

    /* From a spare endpoint, requests whose sender claims the victim's id at the attacker's address. */
    dht_addr spare;
    dht_transport t;
    cr_assert(dht_memnet_add(s.net, &spare, &t) >= 0);
    dht_peer_info forged = { .present = 1, .id = victim, .addr = dht_node_self(attacker)->addr };
    wire_maddr to;
    cr_assert_eq(dht_proto_addr_to_maddr(&dht_node_self(target)->addr, dht_node_id(target), &to), 0);
    dht_store_item it = { .key = key_of("forged", 0), .value = (const uint8_t *)"\xc3", .vlen = 1,
                          .expiration = dht_node_now(target) + 600 };
    dht_id k = key_of("forged", 1);
    raw_call rc[3];
    for (int i = 0; i < 3; i++) {
        uint64_t id = t.next_id(t.impl);
        wire_out *req = i == 0 ? dht_proto_ping_req(id, &forged, NULL)
                      : i == 1 ? dht_proto_find_req(id, &forged, &k, 1, NULL)
                               : dht_proto_store_req(id, &forged, &it, 1, 0, NULL);
        rc[i] = (raw_call){ &s, -1 };
        s.pending++;
        cr_assert_eq(t.call(t.impl, &to, id, req, 2000, on_raw, &rc[i]), 0);
    }
    cr_assert(run_until(&s, 5000));
    run_for(&s, 3000);   /* the target's challenge pings to the claimed address are answered (or not) */
    for (int i = 0; i < 3; i++) cr_expect_eq(rc[i].err, 0, "request %d is answered", i);

    dht_node after;
    cr_assert_eq(dht_routing_get(rt, &victim, &after), 0, "the victim's entry is still there");
    cr_expect(dht_addr_eq(&after.addr, &before.addr), "the victim's entry still points at the victim, not at %s:%u",
              after.addr.host, (unsigned)after.addr.port);
    dht_ident_stats st = dht_node_ident_stats(target);
    cr_expect(st.probes >= 1, "the target challenged the claimed address");
    cr_expect(st.refused_proofs + st.probes >= 1);

    /* Honest lookups still find values, from nodes on either side. */
    dht_id key = key_of("honest", 0);
    store_plain(&s, 3, &key, 77, dht_node_now(s.nodes[0]) + 600);
    for (size_t from = 1; from < s.n; from += 5) {
        op o;
        get_one(&s, from, &key, 0, &o);
        cr_expect(o.found && o.vlen == 2 && o.value[1] == 77, "node %zu finds the honest value", from);
    }
    dht_swarm_expect_no_stall(&s, "dht_upkeep: claimed id");
    swarm_down(&s);
}
