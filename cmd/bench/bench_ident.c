/* bench_ident.c -- what node identities cost (actors/dht/trust/dht_ident.h): Ed25519 signatures and
 * verifications per second on one thread, over the 81-byte message a DHT proof signs (tag, 32-byte
 * challenge, 16-byte id, a multiaddr). A peer is verified once, when it first enters a routing table,
 * so a lookup verifies at most one proof per RPC it makes: the report multiplies the verification time
 * by the DHT figure's RPCs per lookup for the most a lookup can spend on them.
 */
#include "cmd/bench/bench.h"

#include <string.h>

#include "actors/dht/trust/dht_ident.h"
#include "runtime/rt_actor.h"

#define IDENT_MSG_BYTES 81        /* the size of a proof's signed bytes with a short /ip4 address */
#define IDENT_RUN_US 300000       /* each series runs this long (a third of a second) */

void bench_ident_figures(bench *b)
{
    dht_ident k;
    uint8_t msg[IDENT_MSG_BYTES], sig[DHT_IDENT_SIG_BYTES];
    if (dht_ident_init() != 0 || dht_ident_generate(&k) != 0) { b->failures++; return; }
    dht_ident_random(msg, sizeof msg);
    uint64_t n = 0, t0 = rt_clock_us(), t = t0;
    for (; t - t0 < IDENT_RUN_US; n++) {
        dht_ident_sign(&k, msg, sizeof msg, sig);
        if ((n & 63) == 63) t = rt_clock_us();
    }
    b->sign_per_s = (double)n / ((double)(rt_clock_us() - t0) / 1e6);
    int ok = 1;
    n = 0;
    t0 = t = rt_clock_us();
    for (; t - t0 < IDENT_RUN_US; n++) {
        ok &= dht_ident_verify(k.pk, msg, sizeof msg, sig);
        if ((n & 63) == 63) t = rt_clock_us();
    }
    b->verify_per_s = (double)n / ((double)(rt_clock_us() - t0) / 1e6);
    if (!ok) { b->failures++; return; }   /* a valid signature must verify every time */
    b->have_ident = 1;
}
