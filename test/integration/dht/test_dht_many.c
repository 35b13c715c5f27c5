/* test_dht_many.c -- the DHT end to end.
 *
 * 64 nodes on the in-memory transport in one process (actors/dht/io/dht_memnet.h), in virtual time
 * (dht_clock.h: no sleep; time jumps to the next due event): every key found from every node, replicas
 * on the 5 nearest nodes, a quarter of the nodes down, expiry, dictionary merge across replicas,
 * client-mode nodes kept out of routing tables, 256 nodes' gets all found within 4 hops (p99).
 * Then 8 nodes over real TCP on loopback (actors/dht/io/dht_net.c), on the real clock, each with its
 * own server and client on a port the OS picks: expert declarations found by uid and by prefix; a bad
 * bootstrap address fails fast with a message naming it; malformed dht_* requests are answered with
 * errors and leave the routing table as it was. Every wait is bounded by a deadline (virtual time for
 * the memnet); timings are printed, never asserted. */
#include <criterion/criterion.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_boot.h"
#include "actors/dht/dht_lookup.h"
#include "actors/dht/dht_node.h"
#include "actors/dht/io/dht_clock.h"
#include "actors/dht/io/dht_memnet.h"
#include "actors/dht/io/dht_net.h"
#include "actors/grid/dht_experts.h"
#include "actors/net/client.h"
#include "actors/serve/server.h"
#include "runtime/rt_err.h"

#define NET_N 64
#define MAX_NODES 80

typedef struct {
    rt_loop *l;
    dht_clock *clock;            /* virtual */
    dht_memnet *net;
    dht *nodes[MAX_NODES];
    int ep[MAX_NODES];
    size_t n;
    int pending;
} mesh;

static int nothing_pending(void *arg) { return ((mesh *)arg)->pending <= 0; }

/* run_until runs the mesh until m->pending drops to 0 or ms of virtual time pass; returns 1 if it did. */
static int run_until(mesh *m, int ms)
{
    dht_vclock_run(m->clock, nothing_pending, m, (uint64_t)ms);
    return m->pending <= 0;
}

/* run_for lets ms of virtual time pass with the mesh running. */
static void run_for(mesh *m, int ms) { dht_vclock_run(m->clock, NULL, NULL, (uint64_t)ms); }

static void on_boot(void *arg, int err, const char *msg)
{
    mesh *m = arg;
    cr_expect_eq(err, 0, "bootstrap: %s", msg);
    m->pending--;
}

static dht *add_node(mesh *m, int client_mode, uint64_t rpc_timeout_ms)
{
    dht_cfg c;
    dht_transport t;
    dht_cfg_default(&c);
    c.seed = 7777 + m->n * 31;
    dht_ident key;
    cr_assert_eq(dht_ident_for_test(&key, c.seed), 0);
    c.ident = &key;
    c.client_mode = client_mode;
    c.refresh_period_s = -1;
    c.rpc_timeout_ms = rpc_timeout_ms;
    c.lookup_timeout_ms = 10000;
    c.clock = m->clock;
    int ep = dht_memnet_add(m->net, &c.addr, &t);
    cr_assert(ep >= 0);
    dht *d;
    cr_assert_eq(dht_node_new(m->l, &c, &t, &d), 0);
    if (!client_mode) dht_memnet_bind(m->net, ep, d);
    m->ep[m->n] = ep;
    m->nodes[m->n++] = d;
    return d;
}

/* mesh_up builds n nodes, each bootstrapping from a random earlier node, 8 at a time. */
static void mesh_up(mesh *m, size_t n, uint64_t rpc_timeout_ms)
{
    memset(m, 0, sizeof *m);
    m->l = rt_loop_new();
    cr_assert(m->l);
    cr_assert_eq(dht_vclock_new(m->l, &m->clock), 0);
    cr_assert_eq(dht_memnet_new(m->l, m->clock, 1, &m->net), 0);
    uint64_t rng = 99;
    for (size_t i = 0; i < n; i++) {
        dht *d = add_node(m, 0, rpc_timeout_ms);
        if (i == 0) continue;
        char text[WIRE_MADDR_TEXT], err[256];
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        dht_node_maddr(m->nodes[(rng >> 33) % i], text, sizeof text);
        const char *peers[1] = { text };
        m->pending++;
        cr_assert_eq(dht_node_bootstrap(d, peers, 1, on_boot, m, err, sizeof err), 0);
        if (m->pending >= 8) cr_assert(run_until(m, 20000), "bootstrap wave");
    }
    cr_assert(run_until(m, 20000), "bootstrap");
}

static void mesh_down(mesh *m)
{
    for (size_t i = 0; i < m->n; i++) dht_node_stop(m->nodes[i]);
    dht_memnet_free(m->net);
    for (size_t i = 0; i < m->n; i++) dht_node_free(m->nodes[i]);
    rt_loop_free(m->l);
    dht_vclock_free(m->clock);
}

typedef struct {
    mesh *m;
    int err, found, is_dict;
    uint8_t value[64];
    size_t vlen;
    size_t n_stored;
    dht_subitem subs[8];
    uint8_t subvals[8][16];
    size_t nsubs;
} op;

static void on_store(void *arg, int err, const char *msg, size_t n_stored)
{
    op *o = arg;
    o->err = err;
    o->n_stored = n_stored;
    o->m->pending--;
}

static void on_get(void *arg, int err, const char *msg, const dht_get_result *r)
{
    op *o = arg;
    o->err = err;
    o->found = r->found;
    o->is_dict = r->is_dict;
    if (r->found && !r->is_dict && r->vlen <= sizeof o->value) {
        memcpy(o->value, r->value, r->vlen);
        o->vlen = r->vlen;
    }
    o->nsubs = 0;
    for (size_t i = 0; r->found && r->is_dict && i < r->nsubs && i < 8; i++) {
        o->subs[i] = r->subs[i];
        memcpy(o->subvals[i], r->subs[i].value, r->subs[i].vlen < 16 ? r->subs[i].vlen : 16);
        o->subs[i].value = o->subvals[i];
        o->subs[i].subkey = NULL;
        o->nsubs++;
    }
    o->m->pending--;
}

static dht_id key_of(int i)
{
    char name[32];
    int n = snprintf(name, sizeof name, "key.%d", i);
    dht_id k;
    dht_id_from_str(&k, name, (size_t)n);
    return k;
}

static void store_keys(mesh *m, int nkeys, double ttl)
{
    static op ops[64];
    for (int i = 0; i < nkeys; i++) {
        dht_id k = key_of(i);
        uint8_t v[2] = { 0xcc, (uint8_t)i };   /* msgpack uint8 i */
        ops[i] = (op){ .m = m };
        m->pending++;
        cr_assert_eq(dht_store(m->nodes[(i * 7) % m->n], &k, NULL, 0, v, 2, dht_node_now(m->nodes[0]) + ttl,
                               on_store, &ops[i]), 0);
    }
    cr_assert(run_until(m, 20000), "stores");
    for (int i = 0; i < nkeys; i++) cr_assert_eq(ops[i].err, 0, "store %d", i);
}

Test(dht_many, every_key_found_from_every_node, .timeout = 120)
{
    mesh m;
    uint64_t t0 = rt_clock_us();
    mesh_up(&m, NET_N, 2000);
    const int nkeys = 16;
    store_keys(&m, nkeys, 600);
    static op ops[NET_N * 16];
    for (size_t j = 0; j < m.n; j++)
        for (int i = 0; i < nkeys; i++) {
            dht_id k = key_of(i);
            op *o = &ops[j * nkeys + i];
            *o = (op){ .m = &m };
            m.pending++;
            cr_assert_eq(dht_get(m.nodes[j], &k, 0, on_get, o), 0);
        }
    cr_assert(run_until(&m, 60000), "gets");
    for (size_t j = 0; j < m.n; j++)
        for (int i = 0; i < nkeys; i++) {
            op *o = &ops[j * nkeys + i];
            cr_expect(o->found && o->err == 0, "key %d from node %zu", i, j);
            cr_expect(o->vlen == 2 && o->value[1] == (uint8_t)i, "value of key %d from node %zu", i, j);
        }
    printf("dht_many: %zu nodes, %d keys, %zu gets in %.2f s, %llu requests\n", m.n, nkeys, m.n * nkeys,
           (double)(rt_clock_us() - t0) / 1e6, (unsigned long long)dht_memnet_messages(m.net));
    mesh_down(&m);
}

static int cmp_by_distance(const void *a, const void *b, void *target)
{
    return dht_id_distance_cmp(target, a, b);
}

Test(dht_many, replicas_land_on_the_5_nearest, .timeout = 120)
{
    mesh m;
    mesh_up(&m, NET_N, 2000);
    const int nkeys = 16;
    store_keys(&m, nkeys, 600);
    for (int i = 0; i < nkeys; i++) {
        dht_id k = key_of(i), ids[NET_N];
        for (size_t j = 0; j < m.n; j++) ids[j] = *dht_node_id(m.nodes[j]);
        qsort_r(ids, m.n, sizeof ids[0], cmp_by_distance, &k);
        for (int r = 0; r < DHT_NUM_REPLICAS; r++) {
            dht *holder = NULL;
            for (size_t j = 0; j < m.n; j++)
                if (dht_id_eq(dht_node_id(m.nodes[j]), &ids[r])) holder = m.nodes[j];
            dht_stored st;
            cr_expect_eq(dht_storage_get(dht_node_storage(holder), &k, dht_node_now(holder), &st), 0,
                         "key %d missing on its replica #%d", i, r);
        }
    }
    mesh_down(&m);
}

Test(dht_many, a_quarter_of_the_nodes_down, .timeout = 120)
{
    mesh m;
    mesh_up(&m, NET_N, 300);
    const int nkeys = 16;
    store_keys(&m, nkeys, 600);
    for (size_t j = 0; j < m.n; j += 4) dht_memnet_set_down(m.net, m.ep[j], 1);
    static op ops[NET_N * 16];
    size_t ngets = 0;
    for (size_t j = 1; j < m.n; j += 2)   /* odd nodes: all of them up */
        for (int i = 0; i < nkeys; i++) {
            dht_id k = key_of(i);
            op *o = &ops[ngets++];
            *o = (op){ .m = &m };
            m.pending++;
            cr_assert_eq(dht_get(m.nodes[j], &k, 0, on_get, o), 0);
        }
    cr_assert(run_until(&m, 60000), "gets");
    for (size_t g = 0; g < ngets; g++) cr_expect(ops[g].found, "get %zu with a quarter of the nodes down", g);
    mesh_down(&m);
}

Test(dht_many, values_expire_on_time, .timeout = 60)
{
    mesh m;
    mesh_up(&m, 16, 1000);
    store_keys(&m, 4, 1.0);
    static op ops[4];
    for (int i = 0; i < 4; i++) {
        dht_id k = key_of(i);
        ops[i] = (op){ .m = &m };
        m.pending++;
        cr_assert_eq(dht_get(m.nodes[15 - i], &k, 1, on_get, &ops[i]), 0);
    }
    cr_assert(run_until(&m, 10000));
    for (int i = 0; i < 4; i++) cr_expect(ops[i].found, "key %d before expiry", i);
    run_for(&m, 1300);   /* nothing to wait for: let 1.3 s pass with the loop running */
    for (int i = 0; i < 4; i++) {
        dht_id k = key_of(i);
        ops[i] = (op){ .m = &m };
        m.pending++;
        cr_assert_eq(dht_get(m.nodes[(i * 5) % 16], &k, 1, on_get, &ops[i]), 0);
    }
    cr_assert(run_until(&m, 10000));
    for (int i = 0; i < 4; i++) cr_expect(!ops[i].found, "key %d after expiry", i);
    size_t held = 0;
    for (size_t j = 0; j < m.n; j++) held += dht_storage_count(dht_node_storage(m.nodes[j]));
    cr_expect_eq(held, 0, "the sweeps removed every expired key (%zu left)", held);
    mesh_down(&m);
}

Test(dht_many, dictionaries_merge_across_replicas, .timeout = 60)
{
    mesh m;
    mesh_up(&m, 32, 1000);
    dht_id k = key_of(1000), ids[32];
    for (size_t j = 0; j < m.n; j++) ids[j] = *dht_node_id(m.nodes[j]);
    qsort_r(ids, m.n, sizeof ids[0], cmp_by_distance, &k);
    dht *a = NULL, *b = NULL, *reader = NULL;
    for (size_t j = 0; j < m.n; j++) {
        if (dht_id_eq(dht_node_id(m.nodes[j]), &ids[0])) a = m.nodes[j];
        if (dht_id_eq(dht_node_id(m.nodes[j]), &ids[1])) b = m.nodes[j];
        if (dht_id_eq(dht_node_id(m.nodes[j]), &ids[31])) reader = m.nodes[j];
    }
    double now = dht_node_now(a);
    /* Replica a knows subkeys 1 and 3 (old), replica b knows 2 and 3 (newer). */
    const uint8_t s1 = 1, s2 = 2, s3 = 3, v1 = 0x11, v2 = 0x22, v3old = 0x30, v3new = 0x33;
    cr_assert_eq(dht_storage_store(dht_node_storage(a), &k, &s1, 1, &v1, 1, now + 60, now), 1);
    cr_assert_eq(dht_storage_store(dht_node_storage(a), &k, &s3, 1, &v3old, 1, now + 30, now), 1);
    cr_assert_eq(dht_storage_store(dht_node_storage(b), &k, &s2, 1, &v2, 1, now + 60, now), 1);
    cr_assert_eq(dht_storage_store(dht_node_storage(b), &k, &s3, 1, &v3new, 1, now + 90, now), 1);
    op o = { .m = &m };
    m.pending = 1;
    cr_assert_eq(dht_get(reader, &k, 1, on_get, &o), 0);
    cr_assert(run_until(&m, 10000));
    cr_assert(o.found && o.is_dict);
    cr_assert_eq(o.nsubs, 3);
    int seen = 0;
    for (size_t i = 0; i < o.nsubs; i++) {
        uint8_t v = o.subvals[i][0];
        if (v == v1 || v == v2) seen++;
        if (v == v3new) {
            seen++;
            cr_expect(o.subs[i].expiration > now + 89, "the newest entry of subkey 3 wins");
        }
        cr_expect(v != v3old, "the older entry of subkey 3 lost");
    }
    cr_expect_eq(seen, 3);
    mesh_down(&m);
}

Test(dht_many, client_mode_nodes_stay_out_of_routing_tables, .timeout = 120)
{
    mesh m;
    mesh_up(&m, 32, 1000);
    size_t first_client = m.n;
    for (int c = 0; c < 4; c++) {
        dht *d = add_node(&m, 1, 1000);
        char text[WIRE_MADDR_TEXT], err[256];
        dht_node_maddr(m.nodes[c * 3], text, sizeof text);
        const char *peers[1] = { text };
        m.pending++;
        cr_assert_eq(dht_node_bootstrap(d, peers, 1, on_boot, &m, err, sizeof err), 0);
    }
    cr_assert(run_until(&m, 20000));
    static op ops[8];
    for (int c = 0; c < 4; c++) {
        dht_id k = key_of(500 + c);
        uint8_t v[2] = { 0xcc, (uint8_t)c };
        ops[c] = (op){ .m = &m };
        ops[4 + c] = (op){ .m = &m };
        m.pending += 2;
        cr_assert_eq(dht_store(m.nodes[first_client + c], &k, NULL, 0, v, 2, dht_node_now(m.nodes[0]) + 60, on_store,
                               &ops[c]), 0);
        dht_id k2 = key_of(500 + (c + 3) % 4);
        cr_assert_eq(dht_get(m.nodes[first_client + (c + 1) % 4], &k2, 1, on_get, &ops[4 + c]), 0);
    }
    cr_assert(run_until(&m, 20000));
    for (int c = 0; c < 4; c++) {
        cr_expect_eq(ops[c].err, 0, "a client-mode node stores");
        cr_expect(dht_routing_size(dht_node_routing(m.nodes[first_client + c])) > 0, "a client-mode node knows peers");
    }
    for (size_t j = 0; j < m.n; j++)
        for (size_t c = first_client; c < m.n; c++) {
            dht_node e;
            cr_expect_neq(dht_routing_get(dht_node_routing(m.nodes[j]), dht_node_id(m.nodes[c]), &e), 0,
                          "client %zu in the table of node %zu", c, j);
        }
    mesh_down(&m);
}

/* 256 nodes: every get finds its key within 4 hops (p99). Hops are behaviour; the latencies are only
 * printed. The 1,024-node figures are `make bench`'s. */
Test(dht_many, lookups_256_all_found_p99_within_4_hops, .timeout = 120)
{
    dht_memnet_stats s;
    cr_assert_eq(dht_memnet_measure(256, 200, 1, 5, &s), 0);
    printf("dht lookups, %4zu nodes, 1 ms each way: hops mean %.2f p50 %d p99 %d max %d; latency p50 %.1f ms "
           "p99 %.1f ms; %.1f RPCs per get\n",
           s.nodes, s.hops_mean, s.hops_p50, s.hops_p99, s.hops_max, s.lat_p50_ms, s.lat_p99_ms, s.rpcs_per_lookup);
    cr_expect_eq(s.lookups, 200);
    cr_expect_eq(s.found, s.lookups, "success rate %.3f, want 1.0", s.lookups ? (double)s.found / s.lookups : 0.0);
    cr_expect_leq(s.hops_p99, 4, "p99 hops %d, want <= 4", s.hops_p99);
}

/* ---- over TCP on loopback ---- */

#define TCP_N 8

typedef struct {
    server *srv;
    client *cl;
    dht_net *net;
    dht *d;
    wire_maddr bound;
} tnode;

typedef struct {
    rt_loop *l;
    tnode n[TCP_N];
    int pending;
    uint64_t end_us;
    int err;
    char msg[1024];
} tnet;

static void t_on_tick(evutil_socket_t fd, short what, void *arg)
{
    tnet *t = arg;
    if (t->pending <= 0 || rt_clock_us() >= t->end_us) rt_loop_break(t->l);
}

static int t_run_until(tnet *t, int ms)
{
    struct event *tick = event_new(rt_loop_base(t->l), -1, EV_PERSIST, t_on_tick, t);
    struct timeval tv = { 0, 2000 };
    event_add(tick, &tv);
    t->end_us = rt_clock_us() + (uint64_t)ms * 1000;
    while (t->pending > 0 && rt_clock_us() < t->end_us) rt_loop_run(t->l);
    event_free(tick);
    return t->pending <= 0;
}

static void t_on_boot(void *arg, int err, const char *msg)
{
    tnet *t = arg;
    t->err = err;
    snprintf(t->msg, sizeof t->msg, "%s", msg);
    t->pending--;
}

static void start_node(tnet *t, int i)
{
    tnode *n = &t->n[i];
    server_cfg sc;
    memset(&sc, 0, sizeof sc);
    conn_default_limits(&sc.limits);
    sc.num_workers = 1;
    n->srv = server_new(t->l, &sc);
    n->cl = client_new(t->l, NULL);
    cr_assert(n->srv && n->cl);
    wire_maddr listen;
    char err[256];
    cr_assert_eq(wire_maddr_parse_listen("/ip4/127.0.0.1/tcp/0", &listen, err, sizeof err), 0);
    cr_assert_eq(server_listen(n->srv, &listen, &n->bound, err, sizeof err), 0, "%s", err);
    dht_transport tr;
    cr_assert_eq(dht_net_new(n->cl, &n->net, &tr), 0);
    dht_cfg c;
    dht_cfg_default(&c);
    c.seed = 4242 + (uint64_t)i;
    snprintf(c.addr.host, sizeof c.addr.host, "%s", n->bound.host);
    c.addr.port = n->bound.port;
    c.refresh_period_s = -1;
    c.rpc_timeout_ms = 1000;
    c.bootstrap_retry_ms = 100;
    cr_assert_eq(dht_node_new(t->l, &c, &tr, &n->d), 0);
    cr_assert_eq(dht_net_serve(n->net, n->srv, n->d), 0);
}

/* t_settle lets the loop run for ms: the challenge pings a node sends to peers it has just heard from
 * (to prove their ids) complete, and the routing tables stop changing. */
static void t_settle(tnet *t, int ms)
{
    t->pending = 1;
    t_run_until(t, ms);
    t->pending = 0;
}

static void tnet_up(tnet *t)
{
    memset(t, 0, sizeof *t);
    t->l = rt_loop_new();
    for (int i = 0; i < TCP_N; i++) {
        start_node(t, i);
        if (i == 0) continue;
        char a[WIRE_MADDR_TEXT], b[WIRE_MADDR_TEXT], err[256];
        dht_node_maddr(t->n[0].d, a, sizeof a);
        dht_node_maddr(t->n[i - 1].d, b, sizeof b);
        const char *peers[2] = { a, b };
        t->pending = 1;
        cr_assert_eq(dht_node_bootstrap(t->n[i].d, peers, 2, t_on_boot, t, err, sizeof err), 0);
        cr_assert(t_run_until(t, 10000), "bootstrap of node %d", i);
        cr_assert_eq(t->err, 0, "bootstrap of node %d: %s", i, t->msg);
    }
    t_settle(t, 200);
}

static void tnet_down(tnet *t)
{
    for (int i = 0; i < TCP_N; i++) {
        server_shutdown(t->n[i].srv);
        server_free(t->n[i].srv);
        dht_node_stop(t->n[i].d);
    }
    for (int i = 0; i < TCP_N; i++) {
        client_free(t->n[i].cl);
        dht_node_free(t->n[i].d);
        dht_net_free(t->n[i].net);
    }
    rt_loop_free(t->l);
}

typedef struct {
    tnet *t;
    int err;
    uint8_t ok[8];
    dht_expert_loc locs[8];
    size_t n;
    dht_successor succ[4][8];
    size_t nsucc[4];
} res;

static void t_on_declared(void *arg, int err, const char *msg, const uint8_t *ok, size_t n)
{
    res *r = arg;
    r->err = err;
    memcpy(r->ok, ok, n);
    r->t->pending--;
}

static void t_on_experts(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n)
{
    res *r = arg;
    r->err = err;
    memcpy(r->locs, locs, n * sizeof *locs);
    r->n = n;
    r->t->pending--;
}

static void t_on_succ(void *arg, int err, const char *msg, const dht_successors *per, size_t n)
{
    res *r = arg;
    r->err = err;
    for (size_t i = 0; i < n && i < 4; i++) {
        r->nsucc[i] = per[i].n < 8 ? per[i].n : 8;
        if (r->nsucc[i]) memcpy(r->succ[i], per[i].items, r->nsucc[i] * sizeof per[i].items[0]);
    }
    r->n = n;
    r->t->pending--;
}

Test(dht_tcp, experts_declared_and_found_over_loopback, .timeout = 60)
{
    tnet t;
    tnet_up(&t);
    const char *uids[3] = { "ffn.0.1", "ffn.0.2", "ffn.3.1" };
    char err[256];
    res r = { .t = &t };
    wire_maddr ep = t.n[2].bound;
    dht_id_to_hex(dht_node_id(t.n[2].d), ep.peer_id);
    t.pending = 1;
    cr_assert_eq(dht_declare_experts(t.n[2].d, uids, 3, &ep, dht_node_now(t.n[2].d) + 30, t_on_declared, &r, err,
                                     sizeof err), 0, "%s", err);
    cr_assert(t_run_until(&t, 10000));
    cr_assert_eq(r.err, 0);

    const char *ask[3] = { "ffn.0.2", "ffn.9.9", "ffn.3.1" };
    res g = { .t = &t };
    t.pending = 1;
    cr_assert_eq(dht_get_experts(t.n[7].d, ask, 3, t_on_experts, &g, err, sizeof err), 0);
    cr_assert(t_run_until(&t, 10000));
    cr_assert(g.locs[0].found && g.locs[2].found && !g.locs[1].found);
    cr_assert_eq(g.locs[0].addr.port, t.n[2].bound.port);

    const char *prefixes[3] = { "ffn.0.", "ffn.3.", "ffn.5." };
    res s = { .t = &t };
    t.pending = 1;
    cr_assert_eq(dht_get_active_successors(t.n[5].d, prefixes, 3, 5.0, t_on_succ, &s, err, sizeof err), 0);
    cr_assert(t_run_until(&t, 10000));
    cr_assert_eq(s.nsucc[0], 2);
    cr_assert_eq(s.nsucc[1], 1);
    cr_assert_eq(s.nsucc[2], 0);
    cr_assert_str_eq(s.succ[1][0].uid, "ffn.3.1");
    cr_assert_eq(s.succ[1][0].coord, 1);

    const char *bad[1] = { "ffn..1" };
    cr_assert_eq(dht_get_experts(t.n[1].d, bad, 1, t_on_experts, &g, err, sizeof err), DMOE_EINVAL);
    cr_assert(strstr(err, "ffn..1") != NULL, "%s", err);
    const char *badp[1] = { "ffn.1" };
    cr_assert_eq(dht_get_active_successors(t.n[1].d, badp, 1, 0, t_on_succ, &s, err, sizeof err), DMOE_EINVAL);
    tnet_down(&t);
}

Test(dht_tcp, bad_bootstrap_address_fails_fast_naming_it, .timeout = 30)
{
    tnet t;
    memset(&t, 0, sizeof t);
    t.l = rt_loop_new();
    start_node(&t, 0);
    /* A port nobody listens on: bind one, note it, close it. */
    server_cfg sc;
    memset(&sc, 0, sizeof sc);
    conn_default_limits(&sc.limits);
    server *tmp = server_new(t.l, &sc);
    wire_maddr listen, dead;
    char err[256];
    wire_maddr_parse_listen("/ip4/127.0.0.1/tcp/0", &listen, err, sizeof err);
    cr_assert_eq(server_listen(tmp, &listen, &dead, err, sizeof err), 0);
    server_free(tmp);
    char text[WIRE_MADDR_TEXT];
    wire_maddr_format(&dead, text, sizeof text);
    const char *peers[1] = { text };
    uint64_t t0 = rt_clock_us();
    t.pending = 1;
    cr_assert_eq(dht_node_bootstrap(t.n[0].d, peers, 1, t_on_boot, &t, err, sizeof err), 0);
    cr_assert(t_run_until(&t, 10000));
    cr_assert_eq(t.err, DMOE_ECONN);
    cr_assert(strstr(t.msg, text) != NULL, "the message names the address: %s", t.msg);
    cr_expect(rt_clock_us() - t0 < 3000000, "failed within 3 s");
    const char *garbage[1] = { "not-an-address" };
    cr_assert_eq(dht_node_bootstrap(t.n[0].d, garbage, 1, t_on_boot, &t, err, sizeof err), DMOE_EINVAL);
    cr_assert(strstr(err, "not-an-address") != NULL, "%s", err);
    server_free(t.n[0].srv);
    dht_node_stop(t.n[0].d);
    client_free(t.n[0].cl);
    dht_node_free(t.n[0].d);
    dht_net_free(t.n[0].net);
    rt_loop_free(t.l);
}

typedef struct {
    tnet *t;
    int err;
} raw_res;

static int t_on_raw(void *arg, int err, const char *msg, wire_msg *reply)
{
    raw_res *r = arg;
    r->err = err;
    r->t->pending--;
    return 0;
}

Test(dht_tcp, malformed_requests_get_errors_and_leave_the_table_alone, .timeout = 60)
{
    tnet t;
    tnet_up(&t);
    dht *target = t.n[3].d;
    size_t before = dht_routing_size(dht_node_routing(target));
    raw_res rr[6];
    for (int v = 0; v < 6; v++) {
        wire_out *o = wire_out_new();
        msgpack_packer *pk = wire_out_pk(o);
        uint64_t id = client_next_id(t.n[0].cl);
        static const char *methods[6] = { "dht_find", "dht_find", "dht_store", "dht_ping", "dht_nosuch", "dht_store" };
        wire_request_begin(o, id, methods[v], v == 4 ? 2 : 4);
        if (v != 4) {
            msgpack_pack_str_with_body(pk, "keys", 4);
            msgpack_pack_array(pk, 1);
            msgpack_pack_bin(pk, v == 0 ? 3 : 16);
            msgpack_pack_bin_body(pk, "0123456789abcdef", v == 0 ? 3 : 16);
            /* a sender that claims an id its address contradicts */
            msgpack_pack_str_with_body(pk, v == 3 ? "node" : "sender", v == 3 ? 4 : 6);
            msgpack_pack_map(pk, 2);
            msgpack_pack_str_with_body(pk, "id", 2);
            msgpack_pack_str_with_body(pk, "00112233445566778899aabbccddeeff", 32);
            msgpack_pack_str_with_body(pk, "addr", 4);
            const char *a = "/ip4/127.0.0.1/tcp/9/p2p/ffeeddccbbaa99887766554433221100";
            msgpack_pack_str_with_body(pk, a, strlen(a));
        }
        rr[v] = (raw_res){ &t, 0 };
        t.pending++;
        cr_assert_eq(client_call(t.n[0].cl, &t.n[3].bound, id, o, 3000, t_on_raw, &rr[v]), 0);
    }
    cr_assert(t_run_until(&t, 10000));
    for (int v = 0; v < 6; v++) cr_expect(rr[v].err < 0 && rr[v].err != DMOE_ETIMEDOUT, "variant %d: %d", v, rr[v].err);
    cr_expect_eq(rr[4].err, DMOE_ENOMETHOD);
    cr_expect_eq(dht_routing_size(dht_node_routing(target)), before, "the routing table did not change");
    dht_id bogus;
    dht_id_from_hex(&bogus, "00112233445566778899aabbccddeeff");
    dht_node e;
    cr_expect_neq(dht_routing_get(dht_node_routing(target), &bogus, &e), 0);
    tnet_down(&t);
}

/* ---- negative caching of empty prefixes (memnet) ---- */

typedef struct {
    mesh *m;
    size_t n0;
    int err;
} neg_res;

static void neg_on_succ(void *arg, int err, const char *msg, const dht_successors *per, size_t n)
{
    neg_res *r = arg;
    r->err = err;
    r->n0 = n ? per[0].n : 0;
    r->m->pending--;
}

static void neg_on_declared(void *arg, int err, const char *msg, const uint8_t *ok, size_t n)
{
    neg_res *r = arg;
    r->err = err;
    r->m->pending--;
}

Test(dht_many, empty_prefixes_are_negatively_cached, .timeout = 60)
{
    mesh m;
    mesh_up(&m, 16, 1000);
    dht *reader = m.nodes[9], *server_node = m.nodes[4];
    const char *prefixes[1] = { "ffn.7." };
    char err[256];
    neg_res r = { .m = &m };
    m.pending = 1;
    cr_assert_eq(dht_get_active_successors(reader, prefixes, 1, 30.0, neg_on_succ, &r, err, sizeof err), 0);
    cr_assert(run_until(&m, 10000));
    cr_assert_eq(r.n0, 0);
    cr_assert_eq(dht_storage_count(dht_node_negcache(reader)), 1, "the empty prefix is remembered");

    const char *uids[1] = { "ffn.7.3" };
    wire_maddr ep;
    dht_proto_addr_to_maddr(&dht_node_self(server_node)->addr, dht_node_id(server_node), &ep);
    m.pending = 1;
    cr_assert_eq(dht_declare_experts(server_node, uids, 1, &ep, dht_node_now(server_node) + 30, neg_on_declared, &r,
                                     err, sizeof err), 0);
    cr_assert(run_until(&m, 10000));
    cr_assert_eq(r.err, 0);

    m.pending = 1;
    cr_assert_eq(dht_get_active_successors(reader, prefixes, 1, 30.0, neg_on_succ, &r, err, sizeof err), 0);
    cr_assert(run_until(&m, 10000));
    cr_expect_eq(r.n0, 0, "still cached as empty");
    m.pending = 1;
    cr_assert_eq(dht_get_active_successors(m.nodes[11], prefixes, 1, 30.0, neg_on_succ, &r, err, sizeof err), 0);
    cr_assert(run_until(&m, 10000));
    cr_expect_eq(r.n0, 1, "another node, without the negative entry, sees the new expert");
    mesh_down(&m);
}
