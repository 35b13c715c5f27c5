/* dht_rtt.h -- a smoothed round-trip time, the RFC 6298 way, and the soft timeout it gives a lookup.
 *
 * The DHT node (dht_node.c) feeds it one sample per successful reply (find, store or ping: the time from
 * the send to the reply, on the node's clock); the lookups (dht_lookup.c) ask it, through
 * dht_node_soft_timeout_ms, how long a find may take before it stops holding one of the lookup's alpha
 * slots (libtorrent's DHT does the same). The RPC itself still runs to its hard timeout
 * (dht_cfg.rpc_timeout_ms), which alone evicts and blacklists a peer. Pure arithmetic: no clock, no I/O.
 *
 * Order: dht_rtt_init -> dht_rtt_sample ... / dht_rtt_timeout_ms at any time. Loop thread only (it
 * lives in the node).
 */
#ifndef DMOE_DHT_RTT_H
#define DMOE_DHT_RTT_H

#include <stdint.h>

/* The shortest soft timeout: a find slower than twice the longest RTT between continents (~150 ms) is
 * worth a second candidate, a faster one is not -- below this, a burst of quick samples would make
 * every ordinary reply from a far peer "slow" and double the lookup's traffic for nothing. */
#define DHT_SOFT_TIMEOUT_MIN_MS 250

typedef struct {
    double srtt_ms;      /* smoothed RTT (RFC 6298's SRTT) */
    double rttvar_ms;    /* its mean deviation (RTTVAR) */
    uint64_t samples;    /* replies measured so far */
} dht_rtt;

/* dht_rtt_init clears r: no sample yet. */
void dht_rtt_init(dht_rtt *r);

/* dht_rtt_sample adds one measured round trip of rtt_ms (negative counts as 0): the first sets SRTT to it
 * and RTTVAR to half of it, later ones move RTTVAR by 1/4 of |SRTT - rtt| and SRTT by 1/8 of rtt (RFC 6298,
 * 2.2 and 2.3). */
void dht_rtt_sample(dht_rtt *r, double rtt_ms);

/* dht_rtt_timeout_ms returns the soft timeout: SRTT + 4 * RTTVAR rounded up, clamped to
 * [DHT_SOFT_TIMEOUT_MIN_MS, hard_ms] (hard_ms alone when it is below the minimum); before any sample,
 * hard_ms / 3 within the same bounds (a third of the RPC timeout: 1 s at the default 3 s, where a lookup
 * started cold still gets a second candidate long before a dropped find times out). */
uint64_t dht_rtt_timeout_ms(const dht_rtt *r, uint64_t hard_ms);

#endif
