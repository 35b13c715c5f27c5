/* dht_join.c -- a client-mode DHT node joining over TCP (see dht_join.h). */
#include "actors/dht/io/dht_join.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "actors/dht/dht_boot.h"
#include "actors/dht/io/dht_net.h"
#include "runtime/rt_err.h"

struct dht_join {
    dht_net *net;
    dht *d;
    dht_join_cb cb;
    void *arg;
};

static void on_joined(void *arg, int err, const char *msg)
{
    dht_join *j = arg;
    j->cb(j->arg, err, msg);
}

dht_join *dht_join_start(rt_loop *l, client *cl, const char *const *peers, size_t n, const dht_trust *trusted,
                         dht_join_cb cb, void *arg, char *err, size_t errlen)
{
    dht_join *j = calloc(1, sizeof *j);
    if (!j) { snprintf(err, errlen, "out of memory"); return NULL; }
    j->cb = cb;
    j->arg = arg;
    dht_transport tr;
    dht_cfg dc;
    dht_cfg_default(&dc);
    dc.client_mode = 1;
    dc.trusted_keys = trusted;
    dc.seed = (uint64_t)getpid() ^ rt_clock_us();
    if (dht_net_new(cl, &j->net, &tr) != 0 || dht_node_new(l, &dc, &tr, &j->d) != 0) {
        snprintf(err, errlen, "cannot create a DHT node");
        dht_join_free(j);
        return NULL;
    }
    if (dht_node_bootstrap(j->d, peers, n, on_joined, j, err, errlen) != 0) {
        dht_join_free(j);
        return NULL;
    }
    return j;
}

dht *dht_join_node(dht_join *j) { return j->d; }

void dht_join_free(dht_join *j)
{
    if (!j) return;
    if (j->d) dht_node_stop(j->d);
    dht_node_free(j->d);
    dht_net_free(j->net);
    free(j);
}
