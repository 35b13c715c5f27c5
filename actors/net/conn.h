/* conn.h -- the connection actor: one per TCP connection, server side or client side.
 *
 * It owns a libevent bufferevent and a frame reader. Bytes that arrive are cut into frames and decoded
 * (wire_msg_decode) on the loop thread and handed to the owner's on_msg callback (the server's router,
 * or the client's reply matcher). Anything to send comes in as mail (conn_send), so any actor may answer
 * through a connection; the handler appends the frame to the socket's output without copying tensors.
 *
 * Backpressure: the owner counts requests it accepted on this connection (conn_hold / conn_release).
 * While more than max_inflight are open, or more than max_outbuf bytes wait to be written, the
 * connection stops reading: TCP pushes back on the peer and the node's memory stays bounded.
 *
 * Lifetime: a connection lives while it is open or referenced (conn_ref / conn_unref: requests waiting
 * for an answer hold a reference). Closing (peer EOF, error, protocol violation, conn_close) frees the
 * socket at once, calls on_close once, and makes later conn_send calls drop their message; the actor is
 * destroyed when the last reference goes.
 *
 * Loop thread only.
 */
#ifndef DMOE_CONN_H
#define DMOE_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/rt_actor.h"
#include "runtime/rt_budget.h"
#include "wire/wire_msg.h"

struct bufferevent;
typedef struct conn conn;

typedef struct {
    size_t max_frame;      /* frames over this are a protocol error */
    int max_inflight;      /* requests accepted and not answered before reading pauses */
    size_t max_outbuf;     /* bytes waiting to be written before reading pauses */
    int frame_timeout_s;   /* close a connection that leaves a frame half-sent this long (0: never) */
    rt_budget *budget;     /* node-wide bytes of received frames not yet released (NULL: none) */
} conn_limits;

typedef struct {
    /* A decoded message arrived; the callee owns m (wire_msg_free it, possibly later) and the charge
     * of `charge` bytes on the budget (rt_budget_release it when the frame is freed). */
    void (*on_msg)(conn *c, wire_msg *m, size_t charge, void *arg);
    /* The connection closed; err is 0 for an orderly close, else a DMOE_* code. Called once. */
    void (*on_close)(conn *c, int err, void *arg);
    /* A frame or message was malformed (code, message): the server answers with an error reply before
     * closing; NULL means just close. */
    void (*on_bad_frame)(conn *c, uint64_t id, int code, const char *msg, void *arg);
} conn_ops;

/* conn_default_limits fills lim with the defaults (1 GiB frames, 256 in flight, 64 MiB outbuf,
 * 60 s to finish a frame, no budget). */
void conn_default_limits(conn_limits *lim);

/* conn_new wraps an open bufferevent (conn takes it). Returns NULL on failure (bev is freed). */
conn *conn_new(rt_loop *l, struct bufferevent *bev, const conn_ops *ops, void *arg, const conn_limits *lim);
/* conn_connect starts a client connection to host:port; on_msg/on_close as above; frames queued with
 * conn_send before the connection is up are sent when it is. Returns NULL when the socket cannot be
 * created or host is not an IP literal. */
conn *conn_connect(rt_loop *l, const char *host, uint16_t port, const conn_ops *ops, void *arg,
                   const conn_limits *lim, int connect_timeout_ms);
/* conn_send queues o to be written; consumes o in every case. Returns 0, DMOE_ECONN when closed, or
 * DMOE_ENOMEM (then the connection closes after what is already queued: a message is never lost in
 * silence, the peer sees the close). */
int conn_send(conn *c, wire_out *o);
/* conn_close closes now (pending output is discarded) unless after_flush, in which case reading stops
 * and the socket closes once the output is written (bounded by a few seconds). */
void conn_close(conn *c, int after_flush);
/* conn_ref / conn_unref: references that keep the actor alive after closing. */
void conn_ref(conn *c);
void conn_unref(conn *c);
/* conn_hold / conn_release count accepted requests for backpressure. */
void conn_hold(conn *c);
void conn_release(conn *c);
/* conn_is_open returns whether the socket is still usable. */
int conn_is_open(const conn *c);
/* conn_peer returns a printable "ip:port" of the peer. */
const char *conn_peer(const conn *c);
/* conn_bytes_in / conn_bytes_out return the bytes read and written so far. */
uint64_t conn_bytes_in(const conn *c);
uint64_t conn_bytes_out(const conn *c);

#endif
