/* test_dht_limits.c -- the limits that keep one host from taking over the DHT (issue 10, item 4), as
 * attacks on the in-memory transport (actors/dht/io/dht_memnet.h) in virtual time (no sleep).
 *
 * One-address Sybil: an attacker grinds key pairs until it has ids nearer to a target key than any
 * honest node, and runs them all on one IP address (colocated memnet endpoints, one port each); its
 * nodes prove their ids as honest ones do, but swallow every store. The honest routing tables must
 * hold at most DHT_MAX_PER_HOST entries from that address, and a value stored by an honest node under
 * the target key must still be found by the other honest nodes.
 *
 * Store flood: a client-mode node sends one node far more long-lived values than its store holds
 * (small bounds here). What honest nodes stored there before must stay, and their new stores must
 * still be taken: the flood fills its sender's share (DHT_OWNER_SHARE) and is refused beyond.
 * In both, no node's handler keeps the loop longer than DHT_SWARM_MAX_STALL_US (dht_swarm.h; each test
 * prints its worst). Every wait is bounded in virtual time.
 */
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
#include "runtime/rt_err.h"

typedef dht_swarm swarm;

static int run_until(swarm *s, int ms) { return dht_swarm_run_until(s, ms); }
#define add_node dht_swarm_add
#define boot_from dht_swarm_boot_from
#define swarm_down dht_swarm_down

/* swarm_init: the limits tests' nodes use the default buckets and a 1 s RPC timeout. */
static void swarm_init(swarm *s) { dht_swarm_init(s, 0, 1000); }

typedef dht_test_op op;

/* ---- one-address Sybil ---- */

#define SY_HONEST 24
#define SY_SYBILS 40
#define SY_GRIND 4000

typedef struct {
    uint64_t seed;
    dht_id id;
} ground;

static const dht_id *sort_target;
static int by_distance(const void *a, const void *b)
{
    return dht_id_distance_cmp(sort_target, &((const ground *)a)->id, &((const ground *)b)->id);
}

Test(dht_limits, ids_ground_on_one_address_cannot_own_a_keys_neighbourhood, .timeout = 120)
{
    swarm s;
    swarm_init(&s);
    dht_id target;
    cr_assert_eq(dht_id_from_str(&target, "expert.0", 8), 0);

    for (size_t i = 0; i < SY_HONEST; i++) {
        dht *d = add_node(&s, 7001 + i * 131, -1, NULL);
        if (i > 0) boot_from(&s, d, (i * 7) % i);
        if (s.pending >= 8) cr_assert(run_until(&s, 20000), "bootstrap wave");
    }
    cr_assert(run_until(&s, 20000), "bootstrap");

    /* The attacker grinds SY_GRIND key pairs and keeps the SY_SYBILS ids nearest to the target. */
    ground *g = malloc(SY_GRIND * sizeof *g);
    cr_assert(g);
    for (size_t i = 0; i < SY_GRIND; i++) {
        dht_ident k;
        g[i].seed = 900000 + i;
        cr_assert_eq(dht_ident_for_test(&k, g[i].seed), 0);
        dht_ident_id(&k, &g[i].id);
    }
    sort_target = &target;
    qsort(g, SY_GRIND, sizeof *g, by_distance);
    for (size_t h = 0; h < SY_HONEST; h++)   /* they are all nearer than any honest node */
        cr_assert(dht_id_distance_cmp(&target, &g[SY_SYBILS - 1].id, dht_node_id(s.nodes[h])) < 0);

    /* Its nodes take no value (a value of 1 byte at most: msgpack values are longer). */
    dht_storage_limits swallow;
    memset(&swallow, 0, sizeof swallow);
    swallow.max_value_bytes = 1;
    int host = -1;
    for (size_t i = 0; i < SY_SYBILS; i++) {
        dht *d = add_node(&s, g[i].seed, host, &swallow);
        if (host < 0) host = s.ep[s.n - 1];
        boot_from(&s, d, i % SY_HONEST);
        if (s.pending >= 8) cr_assert(run_until(&s, 20000), "sybil wave");
    }
    cr_assert(run_until(&s, 20000), "sybils up");
    free(g);
    const char *attacker = dht_node_cfg(s.nodes[SY_HONEST])->addr.host;
    cr_assert_str_eq(dht_node_cfg(s.nodes[SY_HONEST + 1])->addr.host, attacker);

    /* An honest node stores under the target; the others look for it. */
    op st = DHT_TEST_OP(&s);
    uint8_t v[2] = { 0xcc, 0x5a };
    s.pending++;
    cr_assert_eq(dht_store(s.nodes[3], &target, NULL, 0, v, 2, dht_node_now(s.nodes[3]) + 600, dht_test_on_store, &st), 0);
    cr_assert(run_until(&s, 15000), "store");
    cr_assert_eq(st.err, 0, "store: %d", st.err);
    cr_assert_geq(st.n_stored, 2, "only %zu honest replicas took the value", st.n_stored);

    size_t found = 0;
    for (size_t h = 0; h < SY_HONEST; h++) {
        if (h == 3) continue;
        op o = DHT_TEST_OP(&s);
        s.pending++;
        cr_assert_eq(dht_get(s.nodes[h], &target, 0, dht_test_on_get, &o), 0);
        cr_assert(run_until(&s, 15000), "get");
        found += o.err == 0 && o.found && o.vlen == 2 && o.value[1] == 0x5a;
    }
    cr_expect_eq(found, SY_HONEST - 1, "%zu of %d honest gets found the value", found, SY_HONEST - 1);

    for (size_t h = 0; h < SY_HONEST; h++) {
        size_t held = dht_routing_host_count(dht_node_routing(s.nodes[h]), attacker);
        cr_expect_leq(held, DHT_MAX_PER_HOST, "honest node %zu holds %zu entries at the attacker's address", h, held);
    }
    dht_swarm_expect_no_stall(&s, "dht_limits: one-address Sybil");
    swarm_down(&s);
}

/* ---- store flood ---- */

#define FL_HONEST 6
#define FL_FLOOD 600

typedef struct {
    swarm *s;
    size_t taken, answered;
} flood;

static void on_flood(void *arg, int err, const char *msg, const dht_store_rep *rep)
{
    flood *f = arg;
    if (err == 0) {
        f->answered++;
        for (size_t i = 0; i < rep->n; i++) f->taken += rep->stored[i] != 0;
    }
    f->s->pending--;
}

static dht_store_item item(const dht_id *key, const uint8_t *v, size_t vlen, double exp)
{
    return (dht_store_item){ .key = *key, .value = v, .vlen = vlen, .expiration = exp };
}

Test(dht_limits, one_sender_cannot_flood_others_records_out_of_a_store, .timeout = 60)
{
    swarm s;
    swarm_init(&s);
    dht_storage_limits small;
    memset(&small, 0, sizeof small);
    small.max_keys = 256;                       /* 16 entries per address with the default share */
    small.max_bytes = 64 * 1024;
    for (size_t i = 0; i < FL_HONEST; i++) {
        dht *d = add_node(&s, 5001 + i * 17, -1, &small);
        if (i > 0) boot_from(&s, d, 0);
    }
    cr_assert(run_until(&s, 20000), "bootstrap");
    dht *target = s.nodes[0];
    dht_node at = { .id = *dht_node_id(target), .addr = dht_node_cfg(target)->addr };
    double now = dht_node_now(target);

    /* Honest nodes 1.. store three values each on the target, directly, living 10 minutes. */
    uint8_t hv[2] = { 0xcc, 0x11 };
    flood honest = { .s = &s };
    for (size_t i = 1; i < FL_HONEST; i++) {
        dht_store_item it[3];
        dht_id k[3];
        for (int j = 0; j < 3; j++) {
            char name[32];
            int n = snprintf(name, sizeof name, "honest.%zu.%d", i, j);
            cr_assert_eq(dht_id_from_str(&k[j], name, (size_t)n), 0);
            it[j] = item(&k[j], hv, 2, now + 600);
        }
        s.pending++;
        cr_assert_eq(dht_node_store_rpc(s.nodes[i], &at, it, 3, 0, on_flood, &honest), 0);
    }
    cr_assert(run_until(&s, 10000), "honest stores");
    cr_assert_eq(honest.taken, 3 * (FL_HONEST - 1));

    /* A client floods it with values that outlive them (the store keeps the later expirations). */
    dht_cfg c;
    dht_transport t;
    dht_cfg_default(&c);
    c.client_mode = 1;
    c.clock = s.clock;
    c.rpc_timeout_ms = 1000;
    dht_addr caddr;
    cr_assert(dht_memnet_add(s.net, &caddr, &t) >= 0);
    dht *attacker;
    cr_assert_eq(dht_node_new(s.l, &c, &t, &attacker), 0);
    s.nodes[s.n++] = attacker;                  /* swarm_down stops and frees it in order */
    uint8_t big[202] = { 0xc4, 200 };           /* msgpack bin 8 of 200 bytes */
    flood fl = { .s = &s };
    for (size_t b = 0; b < FL_FLOOD / 20; b++) {
        dht_store_item it[20];
        dht_id k[20];
        for (size_t j = 0; j < 20; j++) {
            dht_id_from_int(&k[j], (int)(1000000 + b * 20 + j));
            it[j] = item(&k[j], big, sizeof big, now + 3600);
        }
        s.pending++;
        cr_assert_eq(dht_node_store_rpc(attacker, &at, it, 20, 0, on_flood, &fl), 0);
        cr_assert(run_until(&s, 5000), "flood batch");
    }
    cr_expect_eq(fl.answered, FL_FLOOD / 20);
    cr_expect_leq(fl.taken, small.max_keys / DHT_OWNER_SHARE, "the flood placed %zu values", fl.taken);
    cr_expect_gt(fl.taken, 0);

    /* Every honest value is still there, and a new honest store is still taken. */
    for (size_t i = 1; i < FL_HONEST; i++)
        for (int j = 0; j < 3; j++) {
            char name[32];
            int n = snprintf(name, sizeof name, "honest.%zu.%d", i, j);
            dht_id k;
            cr_assert_eq(dht_id_from_str(&k, name, (size_t)n), 0);
            dht_stored st;
            cr_expect_eq(dht_storage_get(dht_node_storage(target), &k, dht_node_now(target), &st), 0,
                         "%s was pushed out by the flood", name);
        }
    dht_id later;
    cr_assert_eq(dht_id_from_str(&later, "honest.later", 12), 0);
    dht_store_item it = item(&later, hv, 2, dht_node_now(target) + 600);
    flood after = { .s = &s };
    s.pending++;
    cr_assert_eq(dht_node_store_rpc(s.nodes[1], &at, &it, 1, 0, on_flood, &after), 0);
    cr_assert(run_until(&s, 5000), "store after the flood");
    cr_expect_eq(after.taken, 1);

    dht_swarm_expect_no_stall(&s, "dht_limits: store flood");
    swarm_down(&s);
}
