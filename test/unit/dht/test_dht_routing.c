/* test_dht_routing.c -- k-buckets, nearest neighbours, replacements, refresh, blacklist
 * (actors/dht_routing.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_routing.h"
#include "runtime/rt_err.h"

static dht_addr addr_n(int n)
{
    dht_addr a;
    snprintf(a.host, sizeof a.host, "10.0.%d.%d", (n >> 8) & 255, n & 255);
    a.port = (uint16_t)(1000 + n % 60000);
    return a;
}

/* add_pow2 adds 2^(128 - depth) to a big-endian 128-bit number; returns the carry out. */
static int add_pow2(dht_id *x, int depth)
{
    if (depth == 0) return 1;
    int bit = depth - 1;                         /* the lowest bit of the prefix */
    int carry = 0;
    int byte = bit >> 3;
    unsigned v = x->b[byte] + (0x80u >> (bit & 7));
    x->b[byte] = (uint8_t)v;
    carry = v > 255;
    for (int i = byte - 1; i >= 0 && carry; i--) {
        v = x->b[i] + 1u;
        x->b[i] = (uint8_t)v;
        carry = v > 255;
    }
    return carry;
}

/* check_table asserts the buckets partition the id space and hold only ids in range, at most k each. */
static void check_table(const dht_routing *t, size_t k)
{
    dht_id expect_lower;
    memset(&expect_lower, 0, sizeof expect_lower);
    size_t nb = dht_routing_num_buckets(t);
    int self_seen = 0;
    for (size_t i = 0; i < nb; i++) {
        dht_bucket_view v;
        cr_assert_eq(dht_routing_bucket(t, i, &v), 0);
        cr_assert(dht_id_eq(&v.prefix, &expect_lower), "bucket %zu does not start where %zu ended", i, i - 1);
        cr_assert_leq(v.n, k);
        cr_assert_leq(v.nrepl, k);
        for (size_t j = 0; j < v.n; j++) {
            cr_assert_geq(dht_id_common_prefix(&v.prefix, &v.nodes[j].id), v.depth);
            cr_assert_eq(dht_routing_bucket_of(t, &v.nodes[j].id), i);
        }
        for (size_t j = 0; j < v.nrepl; j++) cr_assert_geq(dht_id_common_prefix(&v.prefix, &v.repl[j].id), v.depth);
        self_seen += dht_id_common_prefix(&v.prefix, dht_routing_self(t)) >= v.depth;
        int carry = add_pow2(&expect_lower, v.depth);
        cr_assert_eq(carry, i + 1 == nb, "buckets must end exactly at 2^128");
    }
    cr_assert_eq(self_seen, 1);
    cr_assert_eq(dht_routing_bucket(t, nb, &(dht_bucket_view){0}), DMOE_EINVAL);
}

Test(dht_routing, splitting_keeps_bounds, .timeout = 30)
{
    uint64_t rng = 42;
    dht_id self;
    dht_id_random(&self, &rng);
    dht_routing *t;
    cr_assert_eq(dht_routing_new(&t, &self, 0, 0, 1, 0.0), 0);
    cr_assert_eq(dht_routing_add_or_update(t, &self, &(dht_addr){"me", 1}, 0, NULL), DMOE_EINVAL);
    for (int i = 0; i < 5000; i++) {
        dht_id id;
        dht_id_random(&id, &rng);
        dht_addr a = addr_n(i);
        int rc = dht_routing_add_or_update(t, &id, &a, i, NULL);
        cr_assert(rc >= DHT_RT_ADDED && rc <= DHT_RT_PING);
    }
    check_table(t, DHT_BUCKET_SIZE);
    cr_expect_gt(dht_routing_num_buckets(t), 10);
    cr_expect_gt(dht_routing_size(t), 100);
    cr_expect_lt(dht_routing_size(t), 5000);
    /* Close to self, buckets are full; the table is deepest there. */
    dht_bucket_view v;
    dht_routing_bucket(t, dht_routing_bucket_of(t, &self), &v);
    cr_expect_gt(v.depth, 5);
    dht_routing_free(t);
    dht_routing_free(NULL);
}

static const dht_id *g_target;

static int by_distance(const void *a, const void *b)
{
    return dht_id_distance_cmp(g_target, (const dht_id *)a, (const dht_id *)b);
}

/* nearest_vs_brute compares dht_routing_nearest with a sort of ids[0..n). */
static void nearest_vs_brute(const dht_routing *t, dht_id *ids, size_t n, const dht_id *target, size_t k,
                             const dht_id *exclude)
{
    dht_id *sorted = malloc(n * sizeof *sorted);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!exclude || !dht_id_eq(&ids[i], exclude)) sorted[m++] = ids[i];
    g_target = target;
    qsort(sorted, m, sizeof *sorted, by_distance);
    dht_node *out = malloc((k + 1) * sizeof *out);
    size_t got = dht_routing_nearest(t, target, k, exclude, out);
    cr_assert_eq(got, m < k ? m : k);
    for (size_t i = 0; i < got; i++) cr_assert(dht_id_eq(&out[i].id, &sorted[i]), "rank %zu differs", i);
    free(out);
    free(sorted);
}

Test(dht_routing, nearest_matches_brute_force, .timeout = 30)
{
    uint64_t rng = 7;
    dht_id self;
    dht_id_random(&self, &rng);
    enum { N = 1000 };
    dht_id *ids = malloc(N * sizeof *ids);

    /* Buckets big enough to hold everyone: nearest must equal the brute-force k nearest of all 1000. */
    dht_routing *t;
    cr_assert_eq(dht_routing_new(&t, &self, N, 0, 1, 0.0), 0);
    for (int i = 0; i < N; i++) {
        dht_id_random(&ids[i], &rng);
        dht_addr a = addr_n(i);
        cr_assert_eq(dht_routing_add_or_update(t, &ids[i], &a, 1.0, NULL), DHT_RT_ADDED);
    }
    cr_assert_eq(dht_routing_size(t), N);
    for (int q = 0; q < 50; q++) {
        dht_id target;
        dht_id_random(&target, &rng);
        nearest_vs_brute(t, ids, N, &target, 20, NULL);
        nearest_vs_brute(t, ids, N, &ids[q], 20, &ids[q]);   /* exclude the target itself */
        nearest_vs_brute(t, ids, N, &target, 1, NULL);
    }
    nearest_vs_brute(t, ids, N, &self, N + 5, NULL);        /* more asked than held: all, sorted */
    dht_node one;
    cr_assert_eq(dht_routing_nearest(t, &self, 0, NULL, &one), 0);
    dht_routing_free(t);

    /* Standard k = 20 table: the answer is the k nearest among the nodes it kept. */
    cr_assert_eq(dht_routing_new(&t, &self, 0, 0, 1, 0.0), 0);
    for (int i = 0; i < N; i++) {
        dht_addr a = addr_n(i);
        dht_routing_add_or_update(t, &ids[i], &a, 1.0, NULL);
    }
    size_t kept = 0;
    for (size_t b = 0; b < dht_routing_num_buckets(t); b++) {
        dht_bucket_view v;
        dht_routing_bucket(t, b, &v);
        for (size_t j = 0; j < v.n; j++) ids[kept++] = v.nodes[j].id;
    }
    cr_assert_eq(kept, dht_routing_size(t));
    for (int q = 0; q < 50; q++) {
        dht_id target;
        dht_id_random(&target, &rng);
        nearest_vs_brute(t, ids, kept, &target, 20, NULL);
    }
    dht_routing_free(t);
    free(ids);
}

Test(dht_routing, replacements_and_ping, .timeout = 30)
{
    dht_id self, id[8];
    memset(&self, 0, sizeof self);
    for (int i = 0; i < 8; i++) {
        memset(&id[i], 0, sizeof id[i]);
        id[i].b[0] = 0x80;                       /* all in the far half */
        id[i].b[15] = (uint8_t)(i + 1);
    }
    dht_routing *t;
    cr_assert_eq(dht_routing_new(&t, &self, 2, 1, 1, 0.0), 0);   /* k = 2, modulo 1: no relaxed split */
    dht_addr a0 = addr_n(0), a1 = addr_n(1);
    cr_assert_eq(dht_routing_add_or_update(t, &id[0], &a0, 1, NULL), DHT_RT_ADDED);
    cr_assert_eq(dht_routing_add_or_update(t, &id[1], &a1, 2, NULL), DHT_RT_ADDED);
    dht_node ping;
    dht_addr a = addr_n(2);
    cr_assert_eq(dht_routing_add_or_update(t, &id[2], &a, 3, &ping), DHT_RT_PING);   /* split, then full */
    cr_expect_eq(dht_routing_num_buckets(t), 2);
    cr_expect(dht_id_eq(&ping.id, &id[0]), "the least recently seen node is pinged first");
    cr_expect(dht_addr_eq(&ping.addr, &a0));
    a = addr_n(3);
    cr_assert_eq(dht_routing_add_or_update(t, &id[3], &a, 4, &ping), DHT_RT_PING);
    cr_expect(dht_id_eq(&ping.id, &id[1]));
    a = addr_n(4);
    cr_assert_eq(dht_routing_add_or_update(t, &id[4], &a, 5, &ping), DHT_RT_CACHED);  /* both pending */

    /* id[0] failed its ping: the freshest replacement (id[4]) takes its place. */
    cr_assert_eq(dht_routing_remove(t, &id[0]), 0);
    dht_bucket_view v;
    dht_routing_bucket(t, dht_routing_bucket_of(t, &id[0]), &v);
    cr_assert_eq(v.n, 2);
    cr_expect(dht_id_eq(&v.nodes[0].id, &id[1]));
    cr_expect(dht_id_eq(&v.nodes[1].id, &id[4]));
    cr_assert_eq(v.nrepl, 1);                    /* the cache (k = 2) had dropped its stalest, id[2] */
    cr_expect(dht_id_eq(&v.repl[0].id, &id[3]));
    dht_node got;
    cr_expect_eq(dht_routing_get(t, &id[0], &got), DMOE_ENOTFOUND);
    cr_expect_eq(dht_routing_remove(t, &id[0]), DMOE_ENOTFOUND);

    /* id[1] answered: updated, no longer pending, now most recent, new address kept. */
    dht_addr moved = {"moved.example", 4242};
    cr_assert_eq(dht_routing_add_or_update(t, &id[1], &moved, 6, NULL), DHT_RT_UPDATED);
    cr_assert_eq(dht_routing_get(t, &id[1], &got), 0);
    cr_expect_eq(got.ping_pending, 0);
    cr_expect(dht_addr_eq(&got.addr, &moved));
    cr_expect_eq(got.last_seen, 6);
    dht_routing_bucket(t, dht_routing_bucket_of(t, &id[1]), &v);
    cr_expect(dht_id_eq(&v.nodes[1].id, &id[1]));

    /* The replacement cache keeps the k freshest. */
    for (int i = 5; i < 8; i++) {
        a = addr_n(i);
        int rc = dht_routing_add_or_update(t, &id[i], &a, 7 + i, NULL);
        cr_assert(rc == DHT_RT_CACHED || rc == DHT_RT_PING);
    }
    dht_routing_bucket(t, dht_routing_bucket_of(t, &id[1]), &v);
    cr_assert_eq(v.nrepl, 2);
    cr_expect(dht_id_eq(&v.repl[0].id, &id[6]));
    cr_expect(dht_id_eq(&v.repl[1].id, &id[7]));
    /* Removing a replacement does not touch the bucket. */
    cr_assert_eq(dht_routing_remove(t, &id[6]), 0);
    dht_routing_bucket(t, dht_routing_bucket_of(t, &id[1]), &v);
    cr_expect_eq(v.n, 2);
    cr_expect_eq(v.nrepl, 1);
    check_table(t, 2);
    dht_routing_free(t);
}

Test(dht_routing, relaxed_split_depth_modulo, .timeout = 30)
{
    /* With self = 0 and the far half filled, the far bucket splits while depth % 5 != 0. */
    dht_id self;
    memset(&self, 0, sizeof self);
    dht_routing *t;
    cr_assert_eq(dht_routing_new(&t, &self, 2, 5, 1, 0.0), 0);
    uint64_t rng = 3;
    for (int i = 0; i < 200; i++) {
        dht_id id;
        dht_id_random(&id, &rng);
        id.b[0] |= 0x80;
        dht_addr a = addr_n(i);
        dht_routing_add_or_update(t, &id, &a, i, NULL);
    }
    check_table(t, 2);
    for (size_t i = 0; i < dht_routing_num_buckets(t); i++) {
        dht_bucket_view v;
        dht_routing_bucket(t, i, &v);
        if (dht_id_bit(&v.prefix, 0)) cr_expect_eq(v.depth, 5, "far buckets stop at depth 5");
    }
    dht_routing_free(t);
}

Test(dht_routing, stale_buckets, .timeout = 30)
{
    uint64_t rng = 11;
    dht_id self;
    dht_id_random(&self, &rng);
    dht_routing *t;
    cr_assert_eq(dht_routing_new(&t, &self, 4, 0, 9, 0.0), 0);
    for (int i = 0; i < 300; i++) {
        dht_id id;
        dht_id_random(&id, &rng);
        dht_addr a = addr_n(i);
        dht_routing_add_or_update(t, &id, &a, 10.0, NULL);
    }
    size_t nb = dht_routing_num_buckets(t);
    dht_id *out = malloc(nb * sizeof *out);
    cr_expect_eq(dht_routing_stale(t, 20.0, 60.0, out, nb), 0);
    size_t n = dht_routing_stale(t, 100.0, 60.0, out, nb);
    cr_expect_gt(n, 0);
    cr_expect_leq(n, nb);
    for (size_t i = 0; i < n; i++) {
        dht_bucket_view v;
        dht_routing_bucket(t, dht_routing_bucket_of(t, &out[i]), &v);
        cr_expect_lt(v.last_updated, 40.0);
    }
    for (size_t i = 0; i < n; i++) dht_routing_touch(t, &out[i], 100.0);
    cr_expect_eq(dht_routing_stale(t, 100.0, 60.0, out, nb), 0);
    cr_expect_eq(dht_routing_stale(t, 200.0, 60.0, out, 1), 1);  /* cap respected */
    free(out);
    dht_routing_free(t);
}

Test(dht_routing, blacklist_backoff, .timeout = 30)
{
    dht_blacklist *bl;
    cr_assert_eq(dht_blacklist_new(&bl, 0, 0, 60.0), 0);
    dht_addr a = {"10.1.1.1", 31337}, b = {"10.1.1.1", 31338};
    cr_expect_eq(dht_blacklist_banned(bl, &a, 0), 0);
    cr_expect_eq(dht_blacklist_fail(bl, &a, 100.0), 5.0);
    cr_expect(dht_blacklist_banned(bl, &a, 104.9));
    cr_expect_not(dht_blacklist_banned(bl, &b, 104.9));
    cr_expect_eq(dht_blacklist_fail(bl, &a, 103.0), 0.0, "failures during a ban do not extend it");
    cr_expect_not(dht_blacklist_banned(bl, &a, 105.0));
    double now = 105.0, want = 10.0;
    for (int i = 0; i < 6; i++) {
        double len = dht_blacklist_fail(bl, &a, now);
        cr_expect_eq(len, want > 60.0 ? 60.0 : want, "failure %d", i + 2);
        cr_expect(dht_blacklist_banned(bl, &a, now + len - 0.01));
        now += len;
        cr_expect_not(dht_blacklist_banned(bl, &a, now));
        want *= 2;
    }
    dht_blacklist_ok(bl, &a);
    cr_expect_eq(dht_blacklist_size(bl), 0);
    cr_expect_eq(dht_blacklist_fail(bl, &a, now), 5.0, "success resets the back-off");
    /* Many addresses: bounded memory, the earliest-ending bans are forgotten first. */
    for (int i = 0; i < DHT_BLACKLIST_MAX + 100; i++) {
        dht_addr x = addr_n(i + 1);
        dht_blacklist_fail(bl, &x, 1000.0 + i);
    }
    cr_expect_eq(dht_blacklist_size(bl), DHT_BLACKLIST_MAX);
    dht_addr last = addr_n(DHT_BLACKLIST_MAX + 100);
    cr_expect(dht_blacklist_banned(bl, &last, 1000.0 + DHT_BLACKLIST_MAX + 100));
    dht_blacklist_free(bl);
    dht_blacklist_free(NULL);
}

Test(dht_routing, addr_parse_format, .timeout = 30)
{
    dht_addr a;
    char buf[96];
    cr_assert_eq(dht_addr_parse(&a, "127.0.0.1:31337"), 0);
    cr_expect_str_eq(a.host, "127.0.0.1");
    cr_expect_eq(a.port, 31337);
    cr_expect_str_eq(dht_addr_format(&a, buf, sizeof buf), "127.0.0.1:31337");
    cr_assert_eq(dht_addr_parse(&a, "[::1]:8080"), 0);
    cr_expect_str_eq(a.host, "::1");
    cr_expect_str_eq(dht_addr_format(&a, buf, sizeof buf), "[::1]:8080");
    cr_assert_eq(dht_addr_parse(&a, "node-3.example:1"), 0);
    static const char *bad[] = {"", "host", "host:", ":80", "host:0", "host:65536", "host:8x", "::1:80",
                                "host:123456", "[]:80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_eq(dht_addr_parse(&a, bad[i]), DMOE_EINVAL, "%s", bad[i]);
    cr_expect_eq(dht_addr_parse(&a, NULL), DMOE_EINVAL);
}

Test(dht_routing, one_ip_address_holds_at_most_max_per_host_entries)
{
    dht_id self, id[6];
    memset(&self, 0, sizeof self);
    for (int i = 0; i < 6; i++) {
        memset(&id[i], 0, sizeof id[i]);
        id[i].b[0] = 0x80;
        id[i].b[15] = (uint8_t)(i + 1);
    }
    dht_routing *t;
    cr_assert_eq(dht_routing_new(&t, &self, 0, 0, 1, 0.0), 0);
    dht_addr a = {"203.0.113.7", 4000};
    for (int i = 0; i < DHT_MAX_PER_HOST; i++) {
        a.port = (uint16_t)(4000 + i);                 /* other ports of one host count together */
        cr_expect(dht_routing_admits(t, &id[i], &a));
        cr_assert_eq(dht_routing_add_or_update(t, &id[i], &a, 1, NULL), DHT_RT_ADDED);
    }
    a.port = 4100;
    cr_expect_not(dht_routing_admits(t, &id[DHT_MAX_PER_HOST], &a));
    cr_expect_eq(dht_routing_add_or_update(t, &id[DHT_MAX_PER_HOST], &a, 2, NULL), DHT_RT_REFUSED);
    cr_expect_eq(dht_routing_host_count(t, "203.0.113.7"), DHT_MAX_PER_HOST);
    cr_expect_eq(dht_routing_add_or_update(t, &id[0], &(dht_addr){"203.0.113.7", 4000}, 3, NULL), DHT_RT_UPDATED);

    /* A known id cannot move onto a full host; it keeps its old address. */
    dht_addr other = {"198.51.100.1", 5000};
    cr_assert_eq(dht_routing_add_or_update(t, &id[4], &other, 4, NULL), DHT_RT_ADDED);
    cr_expect_eq(dht_routing_add_or_update(t, &id[4], &a, 5, NULL), DHT_RT_REFUSED);
    dht_node got;
    cr_assert_eq(dht_routing_get(t, &id[4], &got), 0);
    cr_expect(dht_addr_eq(&got.addr, &other));

    /* Loopback is exempt unless asked; the limit is tunable. */
    dht_addr lo = {"127.0.0.1", 6000};
    for (int i = 0; i < 4; i++) {
        lo.port = (uint16_t)(6000 + i);
        cr_expect(dht_routing_admits(t, &id[i], &lo));
    }
    dht_routing_set_host_limit(t, 0, 1);
    cr_expect_eq(dht_routing_add_or_update(t, &id[2], &(dht_addr){"127.0.0.1", 6000}, 6, NULL), DHT_RT_ADDED);
    cr_expect_eq(dht_routing_add_or_update(t, &id[3], &(dht_addr){"127.0.0.1", 6001}, 6, NULL), DHT_RT_ADDED);
    cr_expect_eq(dht_routing_add_or_update(t, &id[5], &(dht_addr){"127.0.0.1", 6002}, 6, NULL), DHT_RT_REFUSED);
    dht_routing_set_host_limit(t, 3, 1);
    cr_expect_eq(dht_routing_add_or_update(t, &id[5], &(dht_addr){"127.0.0.1", 6002}, 7, NULL), DHT_RT_ADDED);
    dht_routing_free(t);
}
