/* dht_swarm.c -- the in-memory DHT tests' swarm and op callbacks (see dht_swarm.h). */
#include "test/integration/dht/dht_swarm.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "actors/dht/dht_boot.h"
#include "actors/dht/trust/dht_ident.h"

void dht_swarm_init(dht_swarm *s, size_t bucket_size, uint64_t rpc_timeout_ms)
{
    memset(s, 0, sizeof *s);
    s->l = rt_loop_new();
    cr_assert(s->l);
    s->bucket_size = bucket_size;
    s->rpc_timeout_ms = rpc_timeout_ms;
    cr_assert_eq(dht_vclock_new(s->l, &s->clock), 0);
    cr_assert_eq(dht_memnet_new(s->l, s->clock, 1, &s->net), 0);
}

dht *dht_swarm_add(dht_swarm *s, uint64_t seed, int colocate_with, const dht_storage_limits *limits)
{
    cr_assert(s->n < DHT_SWARM_MAX);
    dht_cfg c;
    dht_transport t;
    dht_ident key;
    dht_cfg_default(&c);
    c.seed = seed;
    cr_assert_eq(dht_ident_for_test(&key, seed), 0);
    c.ident = &key;
    c.refresh_period_s = -1;
    c.bucket_size = s->bucket_size;
    c.rpc_timeout_ms = s->rpc_timeout_ms;
    c.lookup_timeout_ms = 10000;
    c.limits = limits;
    c.clock = s->clock;
    c.trusted_keys = s->trusted;
    int ep = colocate_with < 0 ? dht_memnet_add(s->net, &c.addr, &t)
                               : dht_memnet_add_colocated(s->net, colocate_with, &c.addr, &t);
    cr_assert(ep >= 0);
    dht *d;
    cr_assert_eq(dht_node_new(s->l, &c, &t, &d), 0);
    dht_memnet_bind(s->net, ep, d);
    s->ep[s->n] = ep;
    s->nodes[s->n++] = d;
    return d;
}

static void on_boot(void *arg, int err, const char *msg)
{
    dht_swarm *s = arg;
    cr_expect_eq(err, 0, "bootstrap: %s", msg);
    s->pending--;
}

void dht_swarm_boot_from(dht_swarm *s, dht *d, size_t from)
{
    char text[WIRE_MADDR_TEXT], err[256];
    dht_node_maddr(s->nodes[from], text, sizeof text);
    const char *peers[1] = { text };
    s->pending++;
    cr_assert_eq(dht_node_bootstrap(d, peers, 1, on_boot, s, err, sizeof err), 0, "%s", err);
}

static int goal_met(void *arg)
{
    dht_swarm *s = arg;
    return s->pred ? s->pred(s, s->pred_arg) : s->pending <= 0;
}

int dht_swarm_run_cond(dht_swarm *s, dht_swarm_pred pred, void *arg, int ms)
{
    s->pred = pred;
    s->pred_arg = arg;
    dht_vclock_run(s->clock, goal_met, s, (uint64_t)ms);
    int done = goal_met(s);
    s->pred = NULL;
    return done;
}

int dht_swarm_run_until(dht_swarm *s, int ms) { return dht_swarm_run_cond(s, NULL, NULL, ms); }

void dht_swarm_stall(const dht_swarm *s, uint64_t *cpu_us, uint64_t *wall_us)
{
    *cpu_us = *wall_us = 0;
    for (size_t i = 0; i < s->n; i++) {
        const rt_lag *m = dht_node_lag(s->nodes[i]);
        if (m->max_cpu_us > *cpu_us) *cpu_us = m->max_cpu_us;
        if (m->max_wall_us > *wall_us) *wall_us = m->max_wall_us;
    }
}

void dht_swarm_expect_no_stall(const dht_swarm *s, const char *what)
{
    uint64_t cpu, wall;
    dht_swarm_stall(s, &cpu, &wall);
    if (what) printf("%s: worst handler stall %.2f ms CPU, %.2f ms wall\n", what, cpu / 1e3, wall / 1e3);
    cr_expect(cpu <= DHT_SWARM_MAX_STALL_US, "a node's handler kept the loop %.1f ms (CPU; %.1f ms wall), over %d ms",
              cpu / 1e3, wall / 1e3, DHT_SWARM_MAX_STALL_US / 1000);
}

void dht_swarm_down(dht_swarm *s)
{
    dht_swarm_expect_no_stall(s, NULL);
    for (size_t i = 0; i < s->n; i++) dht_node_stop(s->nodes[i]);
    dht_memnet_free(s->net);
    for (size_t i = 0; i < s->n; i++) dht_node_free(s->nodes[i]);
    rt_loop_free(s->l);
    dht_vclock_free(s->clock);
}

void dht_test_on_store(void *arg, int err, const char *msg, size_t n_stored)
{
    dht_test_op *o = arg;
    o->called++;
    o->err = err;
    o->n_stored = n_stored;
    (*o->pending)--;
}

void dht_test_on_get(void *arg, int err, const char *msg, const dht_get_result *r)
{
    dht_test_op *o = arg;
    o->called++;
    o->err = err;
    o->found = r->found;
    o->is_dict = r->is_dict;
    o->hops = r->hops;
    o->rpcs = r->rpcs;
    o->slow = r->slow;
    o->expiration = r->expiration;
    o->nsubs = r->nsubs;
    o->vlen = 0;
    if (r->found && !r->is_dict && r->vlen <= sizeof o->value) {
        memcpy(o->value, r->value, r->vlen);
        o->vlen = r->vlen;
    }
    (*o->pending)--;
}
