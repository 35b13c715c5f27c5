/* api_impl.h -- what the files behind the public dmoe.h share: the context with its loop thread and
 * inbox, the posted operation, the shared DHT handle, and tensor conversion.
 *
 * An operation (api_op, embedded first in each call's own struct) is made on the caller's thread,
 * posted to the context's inbox (api_post) and run on the loop thread (op->run), which starts the
 * asynchronous work; when that ends, api_done writes nothing itself but calls the completion and
 * frees the op. A blocking call is api_sync: post, then wait on a condition variable for the
 * completion, which copies the message for the caller.
 *
 * Threads: api_post / api_sync from any thread; everything else on the loop thread.
 * The library's files include runtime/rt_err.h before dmoe.h (dmoe.h repeats its codes for outsiders).
 */
#ifndef DMOE_API_IMPL_H
#define DMOE_API_IMPL_H

#include <pthread.h>
#include <stddef.h>

#include "runtime/rt_err.h"
#include "actors/api/dmoe.h"
#include "actors/dht/dht_boot.h"
#include "actors/dht/dht_node.h"
#include "actors/dht/io/dht_net.h"
#include "actors/moe/moe.h"
#include "actors/moe/route/moe_adapt.h"
#include "actors/moe/route/moe_health.h"
#include "actors/net/client.h"
#include "actors/net/remote.h"
#include "actors/serve/server.h"
#include "runtime/rt_actor.h"

typedef struct api_op api_op;
struct api_op {
    api_op *next;
    void (*run)(api_op *op);       /* loop thread: start the work; end with api_done, now or later */
    void (*free)(api_op *op);      /* frees the enclosing struct (NULL: free(op)) */
    dmoe_ctx *ctx;
    dmoe_callback cb;
    void *arg;
};

/* api_post queues op for the loop thread of ctx. Returns 0 (op->run will run and the op is the
 * library's) or DMOE_ESHUTDOWN (the context is stopping; the caller still owns op). Any thread. */
int api_post(dmoe_ctx *ctx, api_op *op);
/* api_done completes op: calls op->cb(op->arg, err, msg) and frees op. Loop thread. */
void api_done(api_op *op, int err, const char *msg);
/* api_sync posts op, waits for its completion and copies its message into err. Returns its error, or
 * DMOE_EINVAL when called on the loop thread itself, DMOE_ESHUTDOWN (op freed in every case). */
int api_sync(dmoe_ctx *ctx, api_op *op, char *err, size_t errlen);
/* api_async posts op with completion cb. Returns 0 or DMOE_ESHUTDOWN (op freed). */
int api_async(dmoe_ctx *ctx, api_op *op, dmoe_callback cb, void *arg);
/* api_loop returns the context's loop (loop thread). */
rt_loop *api_loop(dmoe_ctx *ctx);

/* A DHT handle: the node, its client and (full mode) its server, the successors provider and the
 * expert caller the layers use. Reference-counted on the loop thread: the user's handle, each expert
 * and each layer hold one. */
struct dmoe_dht {
    dmoe_ctx *ctx;
    int refs;
    int stopped;                 /* dmoe_dht_free ran: new work fails with DMOE_ESHUTDOWN */
    client *cl;
    server *srv;                 /* full mode only */
    dht_net *net;
    dht *d;
    moe_dht_succ ds;
    moe_succ_provider succ;
    moe_caller caller;
    moe_health *health;
    dht_trust *trusted;          /* dmoe_dht_join_trusted's keys (NULL: an open swarm); freed after the node */
    char maddr[WIRE_MADDR_TEXT];
};

/* api_dht_unref drops one reference; the last frees the node's remains. Loop thread. */
void api_dht_unref(dmoe_dht *d);

/* api_tensor_copy copies a public tensor view into a fresh host tensor (float32 or uint8). Returns 0,
 * DMOE_EINVAL with err (bad dtype or shape), DMOE_ENOMEM. Any thread. */
int api_tensor_copy(const dmoe_tensor *in, rx_tensor *out, char *err, size_t errlen);
/* api_tensors_new wraps out[0..n) (taken over) as a result list. Returns NULL when out of memory (then
 * the tensors are freed). */
dmoe_tensors *api_tensors_new(rx_tensor *out, int n);

#endif
