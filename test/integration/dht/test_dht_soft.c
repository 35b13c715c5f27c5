/* test_dht_soft.c -- the lookups' soft timeout (actors/dht/dht_lookup.c, dht_rtt.h), on the in-memory
 * transport in virtual time (deterministic: the latencies asserted are virtual, not wall-clock).
 *
 * Dropped finds: the three peers nearest to a key drop every dht_find (as the simulator's hostile peers
 * drop half). A get from a node whose RTTs are 2 ms (soft timeout at its minimum) moves on to the next
 * candidates after the soft timeout and finds the value on the other replicas in well under the 3 s RPC
 * timeout; the droppers stay in its routing table until their RPCs reach the hard timeout, which alone
 * evicts them, after the lookup is over (its late completions meet a finished lookup safely).
 *
 * A slow peer: the only holder of a value answers in 600 ms on links of 200 ms RTT. Its find passes the
 * soft timeout (the lookup asks others meanwhile), its late answer is used (the value is found, at
 * 600 ms), and it stays in the routing table, not banned.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_lookup.h"
#include "actors/dht/dht_node.h"
#include "actors/dht/dht_rtt.h"
#include "actors/dht/io/dht_clock.h"
#include "actors/dht/io/dht_memnet.h"
#include "runtime/rt_err.h"
#include "test/integration/dht/dht_swarm.h"

#define NODES 30

typedef dht_test_op op;

static int never(dht_swarm *s, void *arg) { return 0; }

/* swarm_up builds NODES nodes at the default RPC timeout, each bootstrapping from a random earlier node. */
static void swarm_up(dht_swarm *s)
{
    dht_swarm_init(s, 0, DHT_RPC_TIMEOUT_MS);
    uint64_t rng = 777;
    for (size_t i = 0; i < NODES; i++) {
        dht *d = dht_swarm_add(s, 4001 + i * 97, -1, NULL);
        if (i == 0) continue;
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        dht_swarm_boot_from(s, d, (rng >> 33) % i);
        if (s->pending >= 8) cr_assert(dht_swarm_run_until(s, 20000), "bootstrap wave");
    }
    cr_assert(dht_swarm_run_until(s, 20000), "bootstrap");
}

/* rank_by_distance writes the swarm indices into order[], nearest to key first. */
static void rank_by_distance(const dht_swarm *s, const dht_id *key, size_t *order)
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

static int holds(dht *d, dht *peer)
{
    dht_node n;
    return dht_routing_get(dht_node_routing(d), dht_node_id(peer), &n) == 0;
}

/* ---- finds dropped near the key ---- */

typedef struct {
    int ep[3];
    int dropped;
} droppers;

/* drop_finds leaves every dht_find to the droppers' endpoints unanswered; the rest goes on. */
static void drop_finds(void *arg, int to, dht *d, wire_msg *m, const char *from, dht_respond_fn respond, void *ctx)
{
    droppers *x = arg;
    int drop = strcmp(m->method, "dht_find") == 0 && (to == x->ep[0] || to == x->ep[1] || to == x->ep[2]);
    if (!drop) {
        dht_node_deliver(d, m, from, respond, ctx);
        return;
    }
    x->dropped++;
    respond(ctx, NULL);
    wire_msg_free(m);
    free(m);
}

Test(dht_soft, finds_dropped_near_the_key_cost_a_soft_timeout_not_the_rpc_timeout, .timeout = 60)
{
    dht_swarm s;
    swarm_up(&s);
    dht_id key;
    cr_assert_eq(dht_id_from_str(&key, "soft.dropped", 12), 0);
    size_t order[NODES];
    rank_by_distance(&s, &key, order);
    /* the getter: the farthest node from the key whose table holds the three nearest */
    dht *getter = NULL, *storer = s.nodes[order[5]];
    for (size_t i = NODES - 1; i > 5 && !getter; i--)
        if (holds(s.nodes[order[i]], s.nodes[order[0]]) && holds(s.nodes[order[i]], s.nodes[order[1]]) &&
            holds(s.nodes[order[i]], s.nodes[order[2]]))
            getter = s.nodes[order[i]];
    cr_assert(getter, "a node knows the three nearest");
    cr_expect_eq(dht_node_soft_timeout_ms(getter), DHT_SOFT_TIMEOUT_MIN_MS, "2 ms round trips: the minimum");

    op st = DHT_TEST_OP(&s);
    s.pending++;
    cr_assert_eq(dht_store(storer, &key, NULL, 0, "v", 1, dht_clock_now(s.clock) + 600, dht_test_on_store, &st), 0);
    cr_assert(dht_swarm_run_until(&s, 10000));
    cr_assert_eq(st.err, 0);
    cr_assert_geq(st.n_stored, 4, "replicas beyond the three droppers hold it");

    droppers x = { { s.ep[order[0]], s.ep[order[1]], s.ep[order[2]] }, 0 };
    dht_memnet_set_intercept(s.net, drop_finds, &x);
    op g = DHT_TEST_OP(&s);
    uint64_t t0 = dht_clock_us(s.clock);
    s.pending++;
    cr_assert_eq(dht_get(getter, &key, 0, dht_test_on_get, &g), 0);
    cr_assert(dht_swarm_run_until(&s, 10000));
    uint64_t took_us = dht_clock_us(s.clock) - t0;
    cr_expect_eq(g.err, 0);
    cr_expect(g.found && g.vlen == 1 && g.value[0] == 'v', "the value is found on the other replicas");
    cr_expect_eq(x.dropped, 3, "the three nearest were asked first and dropped their finds");
    cr_expect_eq(g.slow, 3, "each dropped find passed the soft timeout");
    cr_expect_lt(took_us, (uint64_t)DHT_RPC_TIMEOUT_MS * 1000 / 6, "took %llu us: well under the 3 s RPC timeout",
                 (unsigned long long)took_us);
    for (int i = 0; i < 3; i++) cr_expect(holds(getter, s.nodes[order[i]]), "the soft timeout evicts nobody (%d)", i);

    /* The dropped finds reach their hard timeout after the lookup ended: that, and only that, evicts. */
    dht_swarm_run_cond(&s, never, NULL, DHT_RPC_TIMEOUT_MS + 1000);
    for (int i = 0; i < 3; i++) cr_expect(!holds(getter, s.nodes[order[i]]), "the hard timeout evicts dropper %d", i);
    dht_swarm_down(&s);
}

/* ---- a slow peer answers late ---- */

typedef struct {
    int slow_ep;                 /* -1: none yet */
} links;

/* link_ms: 100 ms each way (200 ms RTT); 300 ms on the slow peer's links (600 ms RTT). */
static uint32_t link_ms(void *arg, int from, int to)
{
    const links *k = arg;
    return k->slow_ep >= 0 && (from == k->slow_ep || to == k->slow_ep) ? 300 : 100;
}

static void on_nodes(void *arg, int err, const char *msg, const dht_node *nearest, size_t n, int hops)
{
    (*(int *)arg)--;
}

Test(dht_soft, a_slow_peer_is_not_evicted_and_its_late_answer_is_used, .timeout = 60)
{
    dht_swarm s;
    swarm_up(&s);
    links k = { -1 };
    dht_memnet_set_latency(s.net, link_ms, &k);
    dht *getter = s.nodes[NODES - 1], *slow = s.nodes[5];
    /* the getter measures the new links: its soft timeout follows them, below the slow peer's RTT */
    for (int i = 0; i < 3; i++) {
        dht_id target;
        cr_assert_eq(dht_id_from_str(&target, i == 0 ? "w0" : i == 1 ? "w1" : "w2", 2), 0);
        s.pending++;
        cr_assert_eq(dht_find_nodes(getter, &target, 0, on_nodes, &s.pending), 0);
        cr_assert(dht_swarm_run_until(&s, 10000));
    }
    dht_rtt rtt = dht_node_rtt(getter);
    uint64_t soft = dht_node_soft_timeout_ms(getter);
    cr_expect(rtt.srtt_ms > 150 && rtt.srtt_ms < 250, "SRTT %.1f ms near the 200 ms links", rtt.srtt_ms);
    cr_assert(soft >= DHT_SOFT_TIMEOUT_MIN_MS && soft < 500, "soft timeout %llu ms", (unsigned long long)soft);

    /* a key next to the slow peer's id, whose value only the slow peer holds */
    dht_id key = *dht_node_id(slow);
    key.b[DHT_ID_BYTES - 1] ^= 1;
    dht_store_item it = { key, NULL, 0, (const uint8_t *)"late", 4, dht_clock_now(s.clock) + 600 };
    cr_assert_eq(dht_node_store_local(slow, &it, 0), 1);
    cr_assert(holds(getter, slow), "the getter knows the slow peer");
    k.slow_ep = s.ep[5];

    op g = DHT_TEST_OP(&s);
    uint64_t t0 = dht_clock_us(s.clock);
    s.pending++;
    cr_assert_eq(dht_get(getter, &key, 0, dht_test_on_get, &g), 0);
    cr_assert(dht_swarm_run_until(&s, 10000));
    uint64_t took_us = dht_clock_us(s.clock) - t0;
    cr_expect_eq(g.err, 0);
    cr_expect(g.found && g.vlen == 4 && memcmp(g.value, "late", 4) == 0, "the late answer's value is used");
    cr_expect_geq(g.slow, 1, "the slow peer's find passed the soft timeout");
    cr_expect_gt(g.rpcs, 3, "others were asked while it was slow (%zu finds)", g.rpcs);
    cr_expect_eq(took_us, 600000, "found when the slow peer answered: %llu us", (unsigned long long)took_us);

    dht_swarm_run_cond(&s, never, NULL, DHT_RPC_TIMEOUT_MS + 1000);
    cr_expect(holds(getter, slow), "a slow peer stays in the routing table");
    cr_expect(!dht_blacklist_banned(dht_node_blacklist(getter), &dht_node_self(slow)->addr, dht_clock_now(s.clock)),
              "and is not banned");
    dht_swarm_down(&s);
}
