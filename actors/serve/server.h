/* server.h -- the node's RPC front: TCP listeners, their connections, and the request router.
 *
 * The server accepts connections (each a conn actor), and routes every decoded request: ping and info
 * are answered at once from the experts' state (loop thread, read-only); forward and backward are
 * checked against the target expert's schema -- tensor count, dtype, row shape, batch size, finite
 * values -- and, if sound, handed to the expert's queue as an ex_req whose row pointers point into the
 * received frame (no copy until the batch is built). Anything wrong gets an error reply with the
 * request's id and the connection stays open; a malformed frame gets an error reply and the connection
 * is closed (wire/PROTOCOL.md).
 *
 * Order: server_new -> server_listen (once per address) -> server_set_experts -> ... -> server_shutdown (stop accepting, fail
 * new requests with DMOE_ESHUTDOWN) -> server_close_all -> server_free. Loop thread only.
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
    conn_limits limits;        /* per connection; limits.budget is the node's byte budget */
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
/* server_close_all closes every connection (after flushing what is queued for it). */
void server_close_all(server *s);
/* server_bytes adds up the bytes read and written on every connection, open or closed. */
void server_bytes(const server *s, uint64_t *in, uint64_t *out);
/* server_connections returns the number of open connections. */
int server_connections(const server *s);
/* server_free frees the listeners and the router; connections still open are closed now. */
void server_free(server *s);

#endif
