/* server.h -- the node's RPC front: TCP listeners, their connections, and the request router.
 *
 * The server accepts connections (each a conn actor), and routes every decoded request: ping and info
 * are answered at once from the experts' state (loop thread, read-only); forward and backward are
 * checked against the target expert's schema -- tensor count, dtype, row shape, batch size, finite
 * values -- and, if sound, handed to the expert as an ex_req whose row pointers point into the
 * received frame (no copy until the batch is built). Anything wrong gets an error reply with the
 * request's id and the connection stays open; a malformed frame gets an error reply and the connection
 * is closed (wire/PROTOCOL.md).
 *
 * A forward request, from the socket to the kernel and back ([mail] marks a mailbox hop):
 *   1. actors/net/conn.c      the bufferevent read callback (process_input) charges the frame's bytes as
 *                             they arrive to the node's quota (actors/net/netq.c), cuts the frame
 *                             (wire/wire_frame.c) and decodes it without copying (wire/wire_msg.c), then
 *                             calls the owner's on_msg: this server's.
 *   2. actors/serve/server.c  route_compute finds the expert by uid and builds the ex_req (batch.h), which
 *                             from now on owns the frame, the budget charge and a hold on the connection
 *                             (max_inflight). req_check_run (req_check.c) checks the tensors inline, or for a
 *                             payload over 64 KiB on a worker (runtime/rt_pool.c) [mail: SRV_CHECKED back];
 *                             checked() then hands the request over with expert_submit [mail: EX_MSG_REQ].
 *   3. actors/serve/expert.c  queues it in its forward batchq (batchq.c) and raises its own
 *                             EX_MSG_SCHEDULE [mail], which runs after every request that arrived in the
 *                             same burst. schedule() takes a batch (batchq_take: whole requests, one
 *                             matrix per input to fill) and submits it to the pool.
 *   4. a worker thread        job_run copies the rows in from the frames (batchq_fill), calls the class's
 *                             forward (kernels/kern_expert.h, e.g. kernels/experts/kern_ffn.c) on the
 *                             batch's buffers and, for a batch of several requests, copies each its rows
 *                             of the results (compressed, for a backward with a compression:
 *                             batchq_pack_replies) [mail: EX_MSG_JOB_DONE]. A backward's optimizer step
 *                             (kernels/kern_optim.c) follows its reply, in jobs of its own.
 *   5. actors/serve/expert.c  finish_batch counts it and gives it back to the queue (nop_delay first holds
 *                             it on a timer [mail: EX_MSG_DELAY_DONE]); batchq_answer builds one reply per
 *                             request that references its rows (wire/wire_out.c),
 *                             keeps the forward's activations for the backward (actcache.c), and
 *                             conn_send's it [mail: CONN_SEND].
 *   6. actors/net/conn.c      conn_handle moves the reply onto the socket's output by reference; freeing
 *                             the request released its hold, so a paused connection resumes reading.
 * That is four mailbox hops for a small request (five when checked on a worker), all on the loop
 * thread except step 4 and a big request's check.
 *
 * Order: server_new -> server_listen (once per address) -> server_set_experts -> ... -> server_shutdown
 * (stop accepting, fail new requests with DMOE_ESHUTDOWN) -> server_close_all -> server_free. Loop thread
 * only; the experts (and the pool in their expert_cfg) outlive the server.
 */
#ifndef DMOE_SERVER_H
#define DMOE_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "actors/net/conn.h"
#include "actors/serve/expert.h"
#include "runtime/rt_actor.h"
#include "wire/wire_maddr.h"

typedef struct server server;

typedef struct {
    conn_limits limits;        /* per connection; limits.quota is the node's (netq.h) */
    int max_connections;       /* when full, the quietest connection is closed for a new one (0: no limit) */
    int num_workers;           /* reported by info */
    struct met_std_s *met;     /* the node's metrics (NULL: none) */
} server_cfg;

/* server_new creates a server with no experts yet. Returns NULL when out of memory. */
server *server_new(rt_loop *l, const server_cfg *cfg);
/* server_set_experts routes to experts[0..n) from now on (the array is copied; the experts stay the
 * caller's). Returns 0 or DMOE_ENOMEM. */
int server_set_experts(server *s, expert **experts, int n);
/* server_listen binds and listens on addr (port 0: the OS picks). Returns 0 and writes the bound
 * address to *bound, or a negative code with err filled. */
int server_listen(server *s, const wire_maddr *addr, wire_maddr *bound, char *err, size_t errlen);
/* A handler for methods outside the expert RPCs (e.g. the DHT's "dht_*"): it gets every request whose
 * method starts with its prefix, owns m (wire_msg_free + free) and answers through conn_send, possibly
 * later (then it holds a conn_ref until it has answered). */
typedef void (*server_method_fn)(void *arg, conn *c, wire_msg *m);
/* server_add_handler routes methods starting with prefix to fn. Returns 0 or DMOE_ETOOBIG (at most 4). */
int server_add_handler(server *s, const char *prefix, server_method_fn fn, void *arg);
/* server_find returns the expert with that uid, or NULL. */
expert *server_find(const server *s, const char *uid);
/* server_shutdown stops accepting connections and answers new requests with DMOE_ESHUTDOWN. */
void server_shutdown(server *s);
/* server_refuse_forwards answers new forward requests with DMOE_ESHUTDOWN and keeps serving everything
 * else: the backwards of forwards already answered, and what is queued (a node leaving; node.c). */
void server_refuse_forwards(server *s);
/* server_last_accepted_ms returns the loop time (rt_loop_now_ms) of the last forward or backward request
 * accepted for an expert, 0 if none. */
uint64_t server_last_accepted_ms(const server *s);
/* server_close_all closes every connection (after flushing what is queued for it). */
void server_close_all(server *s);
/* server_bytes adds up the bytes read and written on every connection, open or closed. */
void server_bytes(const server *s, uint64_t *in, uint64_t *out);
/* server_connections returns the number of open connections. Connections are closed by the server
 * when they are too slow or idle (conn_tick, every SERVER_SWEEP_MS) and, the quietest first, to make
 * room past cfg->max_connections; running out of descriptors at accept closes the newcomers. */
int server_connections(const server *s);
/* server_free frees the listeners and the router; connections still open are closed now. Checks still
 * on the pool fail their requests with DMOE_ESHUTDOWN; the server's memory goes when the loop reaps its
 * actor (after them). NULL is a no-op. */
void server_free(server *s);

#endif
