/* dht_net.c -- the DHT's TCP transport (see dht_net.h).
 *
 * Outgoing: each call carries a small record with the DHT's callback; client.h guarantees exactly one
 * completion, which is translated (the client frees the reply after the callback: DHT callbacks only
 * borrow it). Incoming: the server gives us the request and the connection; we hold a conn reference
 * and a backpressure slot (conn_hold) until the DHT node answers through net_respond.
 */
#include "actors/dht/io/dht_net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

struct dht_net {
    client *cl;
    dht *d;
};

typedef struct {
    dht_reply_fn cb;
    void *arg;
} out_call;

static uint64_t net_next_id(void *impl)
{
    dht_net *n = impl;
    return client_next_id(n->cl);
}

static int on_client_reply(void *arg, int err, const char *msg, wire_msg *reply)
{
    out_call *oc = arg;
    oc->cb(oc->arg, err, msg ? msg : "", reply);
    free(oc);
    return 0;
}

static int net_call(void *impl, const wire_maddr *to, uint64_t id, wire_out *req, uint64_t timeout_ms, dht_reply_fn cb,
                    void *arg)
{
    dht_net *n = impl;
    out_call *oc = malloc(sizeof *oc);
    if (!oc) {
        wire_out_free(req);
        return DMOE_ENOMEM;
    }
    oc->cb = cb;
    oc->arg = arg;
    int rc = client_call(n->cl, to, id, req, timeout_ms, on_client_reply, oc);
    if (rc) free(oc);
    return rc;
}

static void net_respond(void *ctx, wire_out *reply)
{
    conn *c = ctx;
    if (reply) conn_send(c, reply);
    conn_release(c);
    conn_unref(c);
}

static void on_dht_request(void *arg, conn *c, wire_msg *m)
{
    dht_net *n = arg;
    conn_ref(c);
    conn_hold(c);
    char host[DHT_OWNER_MAX_BYTES];   /* conn_peer is "ip:port" (a v6 ip without brackets) or "?" */
    snprintf(host, sizeof host, "%s", conn_peer(c));
    char *colon = strrchr(host, ':');
    if (colon) *colon = '\0';
    dht_node_deliver(n->d, m, host, net_respond, c);
}

int dht_net_new(client *cl, dht_net **out, dht_transport *t)
{
    dht_net *n = calloc(1, sizeof *n);
    if (!n) return DMOE_ENOMEM;
    n->cl = cl;
    t->impl = n;
    t->next_id = net_next_id;
    t->call = net_call;
    *out = n;
    return 0;
}

int dht_net_serve(dht_net *n, server *srv, dht *d)
{
    n->d = d;
    return server_add_handler(srv, "dht_", on_dht_request, n);
}

void dht_net_free(dht_net *n) { free(n); }
