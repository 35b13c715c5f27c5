/* test_declare_merge.c -- one declaration of several experts that share prefixes (issue 17), on the
 * in-memory swarm kit (dht_swarm.h) in virtual time: each prefix is stored once with all its subkeys
 * (dht_store_dict, uid_declaration_plan), every uid is reported declared, and every prefix lists all
 * its coordinates; dht_store_dict's argument checks. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_lookup.h"
#include "actors/grid/dht_experts.h"
#include "runtime/rt_err.h"
#include "test/integration/dht/dht_swarm.h"

#define NODES 12
#define SERVER 1
#define CLIENT 4

typedef struct {
    dht_swarm *s;
    int err;
    char msg[300];
    uint8_t ok[8];
    size_t n;
    int64_t coords[8];
    dht_expert_loc loc;
} res;

static void on_declared(void *arg, int err, const char *msg, const uint8_t *ok, size_t n)
{
    res *r = arg;
    r->err = err;
    snprintf(r->msg, sizeof r->msg, "%s", msg);
    memcpy(r->ok, ok, n < 8 ? n : 8);
    r->n = n;
    r->s->pending--;
}

static void on_succ(void *arg, int err, const char *msg, const dht_successors *per, size_t n)
{
    res *r = arg;
    r->err = err;
    r->n = per[0].n < 8 ? per[0].n : 8;
    for (size_t i = 0; i < r->n; i++) r->coords[i] = per[0].items[i].coord;
    r->s->pending--;
}

static void on_experts(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n)
{
    res *r = arg;
    r->err = err;
    r->loc = locs[0];
    r->s->pending--;
}

/* coords_of asks node i for the live successors of prefix; returns their coordinates, sorted, in r. */
static res coords_of(dht_swarm *s, size_t i, const char *prefix)
{
    res r = { .s = s };
    char err[256];
    s->pending++;
    cr_assert_eq(dht_get_active_successors(s->nodes[i], &prefix, 1, 0, on_succ, &r, err, sizeof err), 0, "%s", err);
    cr_assert(dht_swarm_run_until(s, 20000));
    cr_assert_eq(r.err, 0);
    for (size_t a = 0; a < r.n; a++)
        for (size_t b = a + 1; b < r.n; b++)
            if (r.coords[b] < r.coords[a]) {
                int64_t t = r.coords[a];
                r.coords[a] = r.coords[b];
                r.coords[b] = t;
            }
    return r;
}

Test(declare_merge, shared_prefixes_are_stored_once_with_all_subkeys, .timeout = 120)
{
    dht_swarm s;
    dht_swarm_init(&s, 0, 500);
    for (size_t i = 0; i < NODES; i++) {
        dht *d = dht_swarm_add(&s, 100 + i, -1, NULL);
        if (i) dht_swarm_boot_from(&s, d, 0);
        cr_assert(dht_swarm_run_until(&s, 5000));
    }
    static const char *const uids[] = {"e.1.2.3", "e.1.2.5", "e.1.7.0", "f.3", "f.4"};
    char text[160], hex[DHT_ID_HEX_LEN + 1], err[256];
    wire_maddr ep;
    dht_id_to_hex(dht_node_id(s.nodes[SERVER]), hex);
    snprintf(text, sizeof text, "/ip4/127.0.0.1/tcp/1001/p2p/%s", hex);
    cr_assert_eq(wire_maddr_parse(text, &ep, err, sizeof err), 0, "%s", err);
    res r = { .s = &s };
    s.pending++;
    cr_assert_eq(dht_declare_experts(s.nodes[SERVER], uids, 5, &ep, dht_node_now(s.nodes[SERVER]) + 60, on_declared,
                                     &r, err, sizeof err), 0, "%s", err);
    cr_assert(dht_swarm_run_until(&s, 20000));
    cr_expect_eq(r.err, 0, "%s", r.msg);
    cr_assert_eq(r.n, 5);
    for (size_t i = 0; i < 5; i++) cr_expect_eq(r.ok[i], 1, "%s not declared", uids[i]);

    res c = coords_of(&s, CLIENT, "e.1.2.");
    cr_expect(c.n == 2 && c.coords[0] == 3 && c.coords[1] == 5, "e.1.2. lists %zu coordinates", c.n);
    c = coords_of(&s, CLIENT, "e.1.");
    cr_expect(c.n == 2 && c.coords[0] == 2 && c.coords[1] == 7, "e.1. lists %zu coordinates", c.n);
    c = coords_of(&s, CLIENT, "e.1.7.");
    cr_expect(c.n == 1 && c.coords[0] == 0);
    c = coords_of(&s, CLIENT, "f.4.");
    cr_expect(c.n == 1 && c.coords[0] == UID_FLAT_EXPERT);
    for (size_t i = 0; i < 5; i++) {
        res f = { .s = &s };
        s.pending++;
        cr_assert_eq(dht_get_experts(s.nodes[CLIENT], &uids[i], 1, on_experts, &f, err, sizeof err), 0, "%s", err);
        cr_assert(dht_swarm_run_until(&s, 20000));
        cr_expect(f.loc.found && f.loc.addr.port == 1001, "%s not found", uids[i]);
    }

    /* dht_store_dict takes 1..DHT_PROTO_MAX_KEYS entries, each with a subkey */
    dht_id id;
    cr_assert_eq(dht_id_from_str(&id, "k", 1), 0);
    dht_dict_entry e[DHT_PROTO_MAX_KEYS + 1];
    for (size_t i = 0; i <= DHT_PROTO_MAX_KEYS; i++) e[i] = (dht_dict_entry){ "s", 1, "v", 1 };
    double exp = dht_node_now(s.nodes[0]) + 10;
    cr_expect_eq(dht_store_dict(s.nodes[0], &id, e, 0, exp, NULL, NULL), DMOE_EINVAL);
    cr_expect_eq(dht_store_dict(s.nodes[0], &id, e, DHT_PROTO_MAX_KEYS + 1, exp, NULL, NULL), DMOE_ETOOBIG);
    e[1].subkey = NULL;
    cr_expect_eq(dht_store_dict(s.nodes[0], &id, e, 2, exp, NULL, NULL), DMOE_EINVAL);
    dht_swarm_down(&s);
}
