/* test_dht_sim.c -- the DHT simulator (actors/dht/sim/dht_sim.h) at 1,000 peers for 60 s of virtual time
 * with churn and 10% hostile peers, its repeatability, and the bootstrap fault it found (a bootstrap
 * whose lookup was lost reported success with an empty routing table). */
#include <criterion/criterion.h>
#include <string.h>

#include "actors/dht/dht_boot.h"
#include "actors/dht/sim/dht_sim.h"
#include "runtime/rt_err.h"
#include "test/integration/dht/dht_swarm.h"

/* Under ASan+UBSan the same run is 2-3 times slower: a smaller network keeps the suite's time. */
#ifdef DHT_SWARM_SANITIZED
#define SIM_PEERS 300
#define SIM_UPTIME_S 900.0    /* so that peers still leave within the 2 minutes */
#else
#define SIM_PEERS 1000
#define SIM_UPTIME_S 3600.0   /* the median uptime: about 8 peers leave in 2 minutes */
#endif

Test(dht_sim, thousand_peers_churn_hostile, .timeout = 240)
{
    dht_sim_cfg c;
    dht_sim_defaults(&c);
    c.peers = SIM_PEERS;
    c.median_uptime_s = SIM_UPTIME_S;
    c.hostile_share = 0.1;
    dht_sim_result r;
    char err[256] = "";
    cr_assert_eq(dht_sim_run(&c, &r, err, sizeof err), 0, "%s", err);
    /* 20 beam steps a second for 60 s, each one uid lookup */
    cr_expect_geq(r.lookups, 1000, "%zu uid lookups", r.lookups);
    cr_expect_geq(r.success, 0.98, "success %.4f (%zu ok, %zu stale, %zu missing of %zu)", r.success, r.ok, r.stale,
                  r.missing, r.lookups);
    cr_expect_leq(r.stale_rate, 0.02, "stale %.4f", r.stale_rate);
    cr_expect_geq(r.prefix_ok * 100, r.prefix_lookups * 95, "%zu of %zu prefix lookups", r.prefix_ok, r.prefix_lookups);
    cr_expect_eq(r.hostile, SIM_PEERS / 10);
    size_t sybils = 8 * 4 < SIM_PEERS / 10 ? 8 * 4 : SIM_PEERS / 10;   /* 8 hot uids, 4 each, within the share */
    cr_expect_eq(r.sybils, sybils);
    cr_expect_gt(r.joins, 0, "a median uptime of 1 h makes some peers leave within 2 minutes");
    cr_expect_eq(r.joins, r.leaves, "every peer that leaves is replaced");
    cr_expect_gt(r.declarations, 0);
    cr_expect_geq(r.declarations_ok * 100, r.declarations * 95, "%zu of %zu declarations", r.declarations_ok,
                  r.declarations);
    cr_expect(r.hops_p50 >= 1 && r.hops_p99 >= r.hops_p50 && r.hops_p99 <= 8, "hops p50 %d p99 %d", r.hops_p50,
              r.hops_p99);
    cr_expect(r.lat_p50_ms >= 10 && r.lat_p99_ms >= r.lat_p50_ms, "latency p50 %.0f p99 %.0f ms", r.lat_p50_ms,
              r.lat_p99_ms);
    cr_expect_gt(r.bytes_per_lookup, 0);
    cr_expect_gt(r.messages, 0);
}

Test(dht_sim, same_seed_same_run, .timeout = 120)
{
    dht_sim_cfg c;
    dht_sim_defaults(&c);
    c.peers = 200;
    c.hostile_share = 0.1;
    c.warmup_s = 20;
    c.duration_s = 20;
    c.median_uptime_s = 300;
    dht_sim_result a, b;
    char err[256] = "";
    cr_assert_eq(dht_sim_run(&c, &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(dht_sim_run(&c, &b, err, sizeof err), 0, "%s", err);
    cr_expect_gt(a.lookups, 0);
    cr_expect_eq(a.lookups, b.lookups);
    cr_expect_eq(a.ok, b.ok);
    cr_expect_eq(a.joins, b.joins);
    cr_expect_eq(a.messages, b.messages);
    cr_expect_eq(a.hops_p99, b.hops_p99);
    cr_expect(a.bytes_per_lookup == b.bytes_per_lookup);
}

Test(dht_sim, bad_config_refused)
{
    dht_sim_cfg c;
    dht_sim_defaults(&c);
    c.hostile_share = 0.95;
    dht_sim_result r;
    char err[256] = "";
    cr_expect_eq(dht_sim_run(&c, &r, err, sizeof err), DMOE_EINVAL);
    cr_expect(strstr(err, "hostile"), "%s", err);
}

/* ---- the bootstrap whose lookup is lost ---- */

typedef struct {
    int finds_dropped;
} drop_first_find;

/* An intercept that leaves the first dht_find unanswered (as if lost), and hands everything else on. */
static void drop_one_find(void *arg, int to, dht *d, wire_msg *m, const char *from, dht_respond_fn respond, void *ctx)
{
    drop_first_find *x = arg;
    if (strcmp(m->method, "dht_find") == 0 && x->finds_dropped == 0) {
        x->finds_dropped++;
        respond(ctx, NULL);
        wire_msg_free(m);
        free(m);
        return;
    }
    dht_node_deliver(d, m, from, respond, ctx);
}

Test(dht_sim, bootstrap_lookup_lost_is_not_a_join, .timeout = 60)
{
    dht_swarm s;
    dht_swarm_init(&s, 0, 1000);
    dht *a = dht_swarm_add(&s, 1, -1, NULL);
    dht *b = dht_swarm_add(&s, 2, -1, NULL);
    drop_first_find x = { 0 };
    dht_memnet_set_intercept(s.net, drop_one_find, &x);
    dht_swarm_boot_from(&s, b, 0);   /* expects err 0 */
    cr_assert(dht_swarm_run_until(&s, 20000));
    cr_expect_eq(x.finds_dropped, 1, "the first lookup's find was lost");
    cr_expect_geq(dht_routing_size(dht_node_routing(b)), 1, "a bootstrap that succeeds leaves a peer in the table");
    (void)a;
    dht_swarm_down(&s);
}
