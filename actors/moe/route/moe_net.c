/* moe_net.c -- joining the DHT for MoE programs (see moe_net.h).
 *
 * moe_net_open is the blocking set-up every MoE program shares: client, client-mode DHT node through
 * dht_join_start, then the loop runs until the join callback; then the provider and the caller
 * (moe_adapt.h), wrapped by moe_health. moe_parse_grid reads the programs' --grid_size words.
 * Loop thread only (the programs' only thread besides the pools).
 */
#include "actors/moe/route/moe_net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/io/dht_join.h"
#include "actors/moe/route/moe_adapt.h"
#include "actors/moe/route/moe_health.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

struct moe_net {
    rt_loop *l;
    client *cl;
    dht_join *dc;
    moe_dht_succ ds;
    moe_succ_provider succ;
    moe_caller caller;
    moe_health *health;     /* wraps succ and caller: peers that refuse calls are left out */
    int joined, err;
    char msg[512];
};

static void on_joined(void *arg, int err, const char *msg)
{
    moe_net *net = arg;
    net->joined = 1;
    net->err = err;
    snprintf(net->msg, sizeof net->msg, "%s", msg ? msg : "");
    rt_loop_break(net->l);
}

moe_net *moe_net_open(rt_loop *l, const char *const *peers, size_t n, double neg_cache_s, char *err, size_t errlen)
{
    return moe_net_open_trusted(l, peers, n, neg_cache_s, NULL, err, errlen);
}

moe_net *moe_net_open_trusted(rt_loop *l, const char *const *peers, size_t n, double neg_cache_s,
                              const dht_trust *trusted, char *err, size_t errlen)
{
    if (n == 0) { snprintf(err, errlen, "--initial_peers is required (the address of any node of the DHT)"); return NULL; }
    moe_net *net = calloc(1, sizeof *net);
    if (!net) { snprintf(err, errlen, "out of memory"); return NULL; }
    net->l = l;
    net->cl = client_new(l, NULL);
    if (!net->cl) { free(net); snprintf(err, errlen, "out of memory"); return NULL; }
    net->dc = dht_join_start(l, net->cl, peers, n, trusted, on_joined, net, err, errlen);
    if (!net->dc) { client_free(net->cl); free(net); return NULL; }
    while (!net->joined) rt_loop_run(l);   /* the bootstrap's own timers bound this */
    if (net->err) {
        snprintf(err, errlen, "cannot join the DHT: %s", net->msg[0] ? net->msg : dmoe_strerror(net->err));
        moe_net_close(net);
        return NULL;
    }
    net->ds.d = dht_join_node(net->dc);
    net->ds.neg_cache_s = neg_cache_s;
    moe_succ_dht(&net->ds, &net->succ);
    moe_caller_client(net->cl, &net->caller);
    net->health = moe_health_new(&net->succ, &net->caller, MOE_HEALTH_DEAD_S);
    if (!net->health) {
        snprintf(err, errlen, "out of memory");
        moe_net_close(net);
        return NULL;
    }
    return net;
}

const moe_succ_provider *moe_net_succ(moe_net *net) { return moe_health_succ(net->health); }
const moe_caller *moe_net_caller(moe_net *net) { return moe_health_caller(net->health); }
dht *moe_net_dht(moe_net *net) { return dht_join_node(net->dc); }
client *moe_net_client(moe_net *net) { return net->cl; }

void moe_net_close(moe_net *net)
{
    if (!net) return;
    if (net->dc) dht_node_stop(dht_join_node(net->dc));
    client_free(net->cl);
    dht_join_free(net->dc);
    moe_health_free(net->health);   /* last: the calls and gets failed above report through it */
    free(net);   /* the actors stopped above are reaped by the loop's next round or by rt_loop_free */
}

int moe_parse_grid(char *const *words, int *grid, int *ndim, char *err, size_t errlen)
{
    int n = 0;
    for (int i = 0; words && words[i]; i++) {
        const char *p = words[i];
        while (*p) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 1 || v > (1 << 20) || (*end && *end != 'x')) {
                snprintf(err, errlen, "--grid_size %s: expected positive sizes like 15, \"32 32\" or 32x32", words[i]);
                return DMOE_EINVAL;
            }
            if (n == MOE_MAX_DIMS) { snprintf(err, errlen, "--grid_size: at most %d dimensions", MOE_MAX_DIMS); return DMOE_EINVAL; }
            grid[n++] = (int)v;
            p = *end ? end + 1 : end;
        }
    }
    if (n == 0) { snprintf(err, errlen, "--grid_size needs at least one size"); return DMOE_EINVAL; }
    *ndim = n;
    return 0;
}
