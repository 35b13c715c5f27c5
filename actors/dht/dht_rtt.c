/* dht_rtt.c -- the RFC 6298 estimator of a node's round-trip time and the soft timeout it gives (see
 * dht_rtt.h). */
#include "actors/dht/dht_rtt.h"

#include <math.h>
#include <string.h>

void dht_rtt_init(dht_rtt *r) { memset(r, 0, sizeof *r); }

void dht_rtt_sample(dht_rtt *r, double rtt_ms)
{
    if (!(rtt_ms > 0)) rtt_ms = 0;   /* NaN too */
    if (r->samples++ == 0) {
        r->srtt_ms = rtt_ms;
        r->rttvar_ms = rtt_ms / 2;
        return;
    }
    r->rttvar_ms = 0.75 * r->rttvar_ms + 0.25 * fabs(r->srtt_ms - rtt_ms);   /* before SRTT moves (2.3) */
    r->srtt_ms = 0.875 * r->srtt_ms + 0.125 * rtt_ms;
}

uint64_t dht_rtt_timeout_ms(const dht_rtt *r, uint64_t hard_ms)
{
    double t = r->samples ? ceil(r->srtt_ms + 4 * r->rttvar_ms) : (double)(hard_ms / 3);
    if (t < DHT_SOFT_TIMEOUT_MIN_MS) t = DHT_SOFT_TIMEOUT_MIN_MS;
    if (t > (double)hard_ms) t = (double)hard_ms;
    return (uint64_t)t;
}
