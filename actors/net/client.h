/* client.h -- outgoing calls: one call actor per request, over one pooled connection per peer.
 *
 * client_call sends a request (built by the caller with wire_request_begin and an id from
 * client_next_id) to a peer and arranges for exactly one callback: the reply, an error reply, a
 * timeout, or a connection failure. Each call is an actor with its own timer; the connection actor of
 * the peer matches replies to calls by id. Connections are opened on first use, reused by later calls
 * (requests are pipelined), and dropped when they fail; the next call opens a fresh one.
 *
 * Peers are IP literals (IPv4 or IPv6) or "localhost"; the loop never blocks on a name lookup.
 * Loop thread only.
 */
#ifndef DMOE_CLIENT_H
#define DMOE_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "actors/net/conn.h"
#include "runtime/rt_actor.h"
#include "wire/wire_maddr.h"
#include "wire/wire_msg.h"

typedef struct client client;

/* Called once per call on the loop thread. err is 0 with reply->kind == WIRE_REPLY_OK, or a DMOE_*
 * code: the remote error's code (with reply set and msg its message), DMOE_ETIMEDOUT, DMOE_ECONN,
 * DMOE_ESHUTDOWN (client freed), DMOE_EPROTO (a reply that does not decode) with reply NULL and msg a
 * human description. Return 1 to keep reply (then wire_msg_free and free() it yourself), 0 to let the
 * client free it. */
typedef int (*client_cb)(void *arg, int err, const char *msg, wire_msg *reply);

/* client_new creates a client on loop l; lim may be NULL (defaults). Returns NULL when out of memory. */
client *client_new(rt_loop *l, const conn_limits *lim);
/* client_next_id returns a fresh request id (never 0). */
uint64_t client_next_id(client *c);
/* client_call sends req (consumed in every case) with id to peer. The callback runs later, never from
 * inside client_call. Returns 0, or a negative code (then cb is not called): DMOE_EINVAL for a peer that
 * is not an IP literal (or an id already in flight to that peer), DMOE_ENOMEM. */
int client_call(client *c, const wire_maddr *peer, uint64_t id, wire_out *req, uint64_t timeout_ms,
                client_cb cb, void *arg);
/* client_bytes adds up the bytes read and written on the client's connections, open or closed. */
void client_bytes(const client *c, uint64_t *in, uint64_t *out);
/* client_free fails every pending call with DMOE_ESHUTDOWN (callbacks run inside), closes the
 * connections and frees the client. NULL is a no-op. */
void client_free(client *c);

#endif
