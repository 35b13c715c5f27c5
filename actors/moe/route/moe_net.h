/* moe_net.h -- what every Mixture-of-Experts program sets up: joining the DHT as a client, and reading
 * the grid from the command line.
 *
 * moe_net_open makes what a program needs to run MoE layers on its loop: a client for expert calls, a
 * client-mode DHT node bootstrapped from the initial peers (blocking until it has joined, bounded by
 * the DHT's own timeouts), a successors provider over that node (with negative caching) and a caller
 * over the client (moe_adapt.h), both wrapped by moe_health so that gone peers are left out. Used by
 * dmoe-train, dmoe-bench, `dmoe-call moe` (cmd/call/moe_cmd.c) and the load generator.
 * Loop thread only.
 */
#ifndef DMOE_MOE_NET_H
#define DMOE_MOE_NET_H

#include <stddef.h>

#include "actors/net/client.h"
#include "actors/dht/trust/dht_trust.h"
#include "actors/moe/moe.h"

typedef struct moe_net moe_net;

/* moe_net_open joins the DHT through peers[0..n) on loop l (running it until joined). Returns the handle
 * or NULL with err filled (bad address, nobody answered, out of memory). */
moe_net *moe_net_open(rt_loop *l, const char *const *peers, size_t n, double neg_cache_s, char *err, size_t errlen);
/* moe_net_open_trusted is moe_net_open for a private swarm: only experts declared in records signed by
 * the trusted keys (NULL: any) are used (dht_trust.h; trusted must outlive net). */
moe_net *moe_net_open_trusted(rt_loop *l, const char *const *peers, size_t n, double neg_cache_s,
                              const dht_trust *trusted, char *err, size_t errlen);
/* moe_net_succ / moe_net_caller return the provider and the caller to give moe_layer_new (owned by net). */
const moe_succ_provider *moe_net_succ(moe_net *net);
const moe_caller *moe_net_caller(moe_net *net);
/* moe_net_dht returns the client-mode DHT node; moe_net_client the expert-call client. */
dht *moe_net_dht(moe_net *net);
client *moe_net_client(moe_net *net);
/* moe_net_close stops the DHT node, fails pending calls and frees everything; the loop reaps the stopped
 * actors in its next round or in rt_loop_free. No layer may still use net. NULL is a no-op. */
void moe_net_close(moe_net *net);

/* moe_parse_grid reads grid sizes from words (a NULL-terminated list: "15" or "32 32"; "32x32" too)
 * into grid[0..*ndim). Returns 0 or DMOE_EINVAL with err. */
int moe_parse_grid(char *const *words, int *grid, int *ndim, char *err, size_t errlen);

#endif
