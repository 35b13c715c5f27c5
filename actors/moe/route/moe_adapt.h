/* moe_adapt.h -- the MoE layer's two ports plugged into the network: the DHT as a successors provider
 * and the expert-call client as an expert caller.
 *
 * The layer (moe.h) and the beam search (moe_beam.h) only know the interfaces moe_caller and
 * moe_succ_provider, so tests can put tables and fake experts behind them; a program plugs in these
 * two (moe_net.h does it for every MoE program). Loop thread only, like the DHT node and the client.
 */
#ifndef DMOE_MOE_ADAPT_H
#define DMOE_MOE_ADAPT_H

#include "actors/moe/moe.h"
#include "actors/moe/route/moe_beam.h"
#include "actors/net/client.h"

/* The DHT as a provider: fill d and neg_cache_s (seconds an empty prefix is remembered as empty), then
 * moe_succ_dht gives the provider. */
typedef struct {
    dht *d;
    double neg_cache_s;
} moe_dht_succ;

/* moe_succ_dht fills *p with a provider over s: one dht_get_active_successors call per get. p points
 * at s, which must outlive every search using it. */
void moe_succ_dht(moe_dht_succ *s, moe_succ_provider *p);

/* moe_caller_client fills *out with a caller over cl (which must outlive every call): one client call
 * per expert call (and per info, whose schema rx_schema_parse reads); a forward's reply leaves the node's activation handle on the first input's buffer,
 * and the backward of the same rows sends it back once, so the node skips the recompute. */
void moe_caller_client(client *cl, moe_caller *out);

#endif
