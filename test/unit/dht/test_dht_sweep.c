/* test_dht_sweep.c -- the DHT node's storage sweep in virtual time (actors/dht/dht_node.c, arm_sweep).
 *
 * Regression (found by test/fuzz/fuzz_dht_apply): a record expires only once the time is past its
 * expiration, and a sweep that came due exactly at it -- a record stored with expiration == now, or a
 * wait truncated to whole milliseconds -- found the record live and re-armed itself at 0 ms, for ever:
 * under the virtual clock, time never moved again and dht_vclock_run never returned.
 *
 * Bounded sweeps: a node holding many expired records drops DHT_EXPIRE_BUDGET of them per sweep and
 * sweeps again on a later turn until none is left. */
#include <criterion/criterion.h>
#include <math.h>

#include "actors/dht/dht_node.h"
#include "actors/dht/io/dht_clock.h"
#include "actors/dht/io/dht_memnet.h"
#include "actors/dht/trust/dht_ident.h"

typedef struct {
    rt_loop *l;
    dht_clock *clock;
    dht_memnet *net;
    dht *d;
} world;

static void world_up(world *w)
{
    w->l = rt_loop_new();
    cr_assert(w->l);
    cr_assert_eq(dht_vclock_new(w->l, &w->clock), 0);
    cr_assert_eq(dht_memnet_new(w->l, w->clock, 1, &w->net), 0);
    dht_cfg c;
    dht_transport t;
    dht_ident key;
    dht_cfg_default(&c);
    cr_assert_eq(dht_ident_for_test(&key, 1), 0);
    c.ident = &key;
    c.refresh_period_s = -1;
    c.clock = w->clock;
    int ep = dht_memnet_add(w->net, &c.addr, &t);
    cr_assert(ep >= 0);
    cr_assert_eq(dht_node_new(w->l, &c, &t, &w->d), 0);
    dht_memnet_bind(w->net, ep, w->d);
}

static void world_down(world *w)
{
    dht_node_stop(w->d);
    dht_memnet_free(w->net);
    dht_node_free(w->d);
    rt_loop_free(w->l);
    dht_vclock_free(w->clock);
}

/* store_until stores key n expiring at exp, then runs ms of virtual time: the sweep must drop it. */
static void store_and_sweep(world *w, int n, double exp, int ms)
{
    dht_store_item it = {.value = (const uint8_t *)"v", .vlen = 1, .expiration = exp};
    dht_id_from_int(&it.key, n);
    cr_assert_eq(dht_node_store_local(w->d, &it, 0), 1);
    cr_assert(isfinite(dht_storage_next_expiration(dht_node_storage(w->d))));
    cr_assert_eq(dht_vclock_run(w->clock, NULL, NULL, (uint64_t)ms), 0);
    cr_assert(isinf(dht_storage_next_expiration(dht_node_storage(w->d))), "the expired record was not swept");
}

Test(dht_sweep, expiration_equal_to_now, .timeout = 10)
{
    world w;
    world_up(&w);
    store_and_sweep(&w, 1, dht_node_now(w.d), 1000);
    world_down(&w);
}

Test(dht_sweep, wait_truncated_to_the_expiration, .timeout = 10)
{
    world w;
    world_up(&w);
    /* 3 ms in, a record expiring 60 s after the epoch: 59.997 s of wait truncate to a sweep due at 60 s */
    cr_assert_eq(dht_vclock_run(w.clock, NULL, NULL, 3), 0);
    store_and_sweep(&w, 2, DHT_VCLOCK_EPOCH_S + 60, 61000);
    world_down(&w);
}

Test(dht_sweep, many_expired_records_go_over_several_sweeps, .timeout = 30)
{
    world w;
    world_up(&w);
    const int n = 3 * DHT_EXPIRE_BUDGET + 5;
    double exp = dht_node_now(w.d) + 1.0;
    dht_storage *st = dht_node_storage(w.d);
    for (int i = 0; i < n; i++) {
        dht_store_item it = {.value = (const uint8_t *)"v", .vlen = 1, .expiration = exp};
        dht_id_from_int(&it.key, 1000 + i);
        cr_assert_eq(dht_node_store_local(w.d, &it, 0), 1);
    }
    cr_assert_eq(dht_storage_count(st), (size_t)n);
    /* the first sweep comes due 1 ms after the expiration: it drops one budget's worth, no more */
    cr_assert_eq(dht_vclock_run(w.clock, NULL, NULL, 1002), 0);
    size_t left = dht_storage_count(st);
    cr_expect(left >= (size_t)n - 2 * DHT_EXPIRE_BUDGET && left < (size_t)n, "%zu of %d left after the first sweep",
              left, n);
    cr_assert_eq(dht_vclock_run(w.clock, NULL, NULL, 100), 0);
    cr_expect_eq(dht_storage_count(st), 0, "the later sweeps dropped the rest");
    cr_expect(isinf(dht_storage_next_expiration(st)));
    world_down(&w);
}
