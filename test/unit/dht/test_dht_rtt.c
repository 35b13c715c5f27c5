/* test_dht_rtt.c -- the round-trip estimator and the soft timeout it gives (actors/dht/dht_rtt.h).
 *
 * Before any sample the soft timeout is a third of the hard one; the first sample sets SRTT to it and
 * RTTVAR to half of it (RFC 6298 2.2); steady samples converge SRTT to their value and RTTVAR to 0, so
 * the timeout clamps to DHT_SOFT_TIMEOUT_MIN_MS for fast peers; a jittery or slow network raises it, and
 * it never passes the hard timeout. */
#include <criterion/criterion.h>
#include <math.h>

#include "actors/dht/dht_rtt.h"

Test(dht_rtt, before_any_sample_a_third_of_the_hard_timeout)
{
    dht_rtt r;
    dht_rtt_init(&r);
    cr_assert_eq(r.samples, 0);
    cr_assert_eq(dht_rtt_timeout_ms(&r, 3000), 1000);
    cr_assert_eq(dht_rtt_timeout_ms(&r, 600), DHT_SOFT_TIMEOUT_MIN_MS, "a third below the minimum: the minimum");
    cr_assert_eq(dht_rtt_timeout_ms(&r, 100), 100, "a hard timeout below the minimum wins");
}

Test(dht_rtt, the_first_sample_sets_srtt_and_half_of_it_as_rttvar)
{
    dht_rtt r;
    dht_rtt_init(&r);
    dht_rtt_sample(&r, 200);
    cr_assert_eq(r.samples, 1);
    cr_assert_float_eq(r.srtt_ms, 200, 1e-9);
    cr_assert_float_eq(r.rttvar_ms, 100, 1e-9);
    cr_assert_eq(dht_rtt_timeout_ms(&r, 3000), 600);   /* 200 + 4 * 100 */
    dht_rtt_sample(&r, 280);                            /* RTTVAR first, from the old SRTT: 75 + 20 */
    cr_assert_float_eq(r.rttvar_ms, 95, 1e-9);
    cr_assert_float_eq(r.srtt_ms, 210, 1e-9);           /* 175 + 35 */
    cr_assert_eq(dht_rtt_timeout_ms(&r, 3000), 590);
}

Test(dht_rtt, steady_samples_converge_and_clamp_to_the_minimum)
{
    dht_rtt r;
    dht_rtt_init(&r);
    for (int i = 0; i < 200; i++) dht_rtt_sample(&r, 40);
    cr_assert_float_eq(r.srtt_ms, 40, 1e-6);
    cr_assert_lt(r.rttvar_ms, 1e-6);
    cr_assert_eq(dht_rtt_timeout_ms(&r, 3000), DHT_SOFT_TIMEOUT_MIN_MS);
    /* the network slows down: the estimate follows */
    for (int i = 0; i < 200; i++) dht_rtt_sample(&r, 400);
    cr_assert_float_eq(r.srtt_ms, 400, 1e-3);
    uint64_t t = dht_rtt_timeout_ms(&r, 3000);
    cr_assert(t >= 400 && t <= 401, "%llu", (unsigned long long)t);   /* RTTVAR near 0, rounded up */
}

Test(dht_rtt, jitter_raises_it_and_the_hard_timeout_caps_it)
{
    dht_rtt r;
    dht_rtt_init(&r);
    for (int i = 0; i < 100; i++) dht_rtt_sample(&r, i % 2 ? 20 : 300);   /* the simulator's RTT range */
    uint64_t t = dht_rtt_timeout_ms(&r, 3000);
    cr_assert(t > 300 && t < 3000, "between the slowest RTT and the hard timeout: %llu", (unsigned long long)t);
    for (int i = 0; i < 50; i++) dht_rtt_sample(&r, 4000);   /* replies later than the hard timeout allows */
    cr_assert_eq(dht_rtt_timeout_ms(&r, 3000), 3000, "never past the hard timeout");
    dht_rtt_sample(&r, -5);                              /* a clock that went back counts as 0 */
    dht_rtt_sample(&r, NAN);
    cr_assert(isfinite(r.srtt_ms) && r.srtt_ms >= 0);
}
