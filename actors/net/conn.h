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
 * Memory (with a quota, netq.h): what arrives is charged as it is allocated -- the frame's buffer as
 * it grows, then the decoded tree (wire_msg_decode_cost of its object count, refused past max_objects
 * before decoding), then what the owner says it will allocate for the message (ops->cost, e.g. the
 * decompressed tensors) -- and reading pauses while a charge does not fit. The sum goes to on_msg as
 * `charge`, which the owner returns with conn_uncharge. When every pending byte of the node belongs to
 * connections waiting for room, the oldest may pass its shares; if that is not enough, the one holding
 * most is closed (it cannot complete within the budget).
 * A frame must arrive at min_rate bytes/s once rate_grace_ms have passed (else the connection closes);
 * an unwritten output past out_hard bytes, or one that would take the node's replies past the quota's
 * out_max, closes the connection too (a slow reader, Redis's client-output-buffer-limit). conn_tick,
 * called periodically by the owner, applies the rate and the idle timeout.
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

#include "actors/net/netq.h"
#include "runtime/rt_actor.h"
#include "wire/wire_msg.h"

struct bufferevent;
typedef struct conn conn;

#define CONN_FIRST_BYTES 48   /* the peer's first bytes kept for messages: a status line such as HTTP's */

typedef struct {
    size_t max_frame;      /* frames over this are a protocol error */
    int max_inflight;      /* requests accepted and not answered before reading pauses */
    size_t max_outbuf;     /* bytes waiting to be written before reading pauses (the soft limit) */
    size_t out_hard;       /* close when more than this waits to be written (0: never) */
    int frame_timeout_s;   /* close a connection that leaves a frame half-sent this long (0: never) */
    size_t min_rate;       /* bytes/s a frame must arrive at, checked by conn_tick (0: any rate) */
    int rate_grace_ms;     /* how long a frame may go slower than min_rate */
    int idle_timeout_s;    /* conn_tick closes a connection idle this long (0: never); only the server ticks
                            * its (inbound) connections: a client's pooled ones are never closed for idling */
    size_t max_objects;    /* msgpack objects per message (0: WIRE_MAX_OBJECTS) */
    netq *quota;           /* the node's pending budget, shares and reply bound (NULL: none) */
} conn_limits;

typedef struct {
    /* A decoded message arrived; the callee owns m (wire_msg_free it, possibly later) and the charge
     * of `charge` bytes on the quota (conn_uncharge it when the message is freed). */
    void (*on_msg)(conn *c, wire_msg *m, size_t charge, void *arg);
    /* The connection closed; err is 0 for an orderly close, else a DMOE_* code. Called once. */
    void (*on_close)(conn *c, int err, void *arg);
    /* A frame or message was malformed (code, message): the server answers with an error reply before
     * closing; NULL means just close. */
    void (*on_bad_frame)(conn *c, uint64_t id, int code, const char *msg, void *arg);
    /* The bytes the owner will allocate because of m beyond its frame and tree (decompressed tensors),
     * charged before on_msg; NULL means none. May be called more than once for one message. */
    size_t (*cost)(conn *c, const wire_msg *m, void *arg);
} conn_ops;

/* conn_default_limits fills lim with the defaults (1 GiB frames, 256 in flight, 64 MiB outbuf, no
 * hard output limit, 60 s to finish a frame, no minimum rate, no idle timeout, no quota). */
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
/* conn_uncharge returns n bytes of a charge on_msg handed over (to the connection's, its address's
 * and the node's accounts); valid while the caller holds a reference, also after closing. */
void conn_uncharge(conn *c, size_t n);
/* conn_tick closes c when its current frame is slower than min_rate past the grace period, or when it
 * has been idle (nothing pending, nothing in flight, nothing to write) idle_timeout_s. Returns 1 when
 * it closed c. */
int conn_tick(conn *c, uint64_t now_ms);
/* conn_last_active_ms returns the loop time of the last byte read or written (or of the connect). */
uint64_t conn_last_active_ms(const conn *c);
/* conn_hold / conn_release count accepted requests for backpressure. */
void conn_hold(conn *c);
void conn_release(conn *c);
/* conn_is_open returns whether the socket is still usable. */
int conn_is_open(const conn *c);
/* conn_peer returns a printable "ip:port" of the peer. */
const char *conn_peer(const conn *c);
/* conn_first_bytes points *p at the first bytes the peer sent (up to CONN_FIRST_BYTES, kept as they
 * arrived, before any check) and returns how many there are: what to quote when a peer turns out to
 * speak another protocol. Valid while the caller holds a reference. */
size_t conn_first_bytes(const conn *c, const uint8_t **p);
/* conn_bytes_in / conn_bytes_out return the bytes read and written so far. */
uint64_t conn_bytes_in(const conn *c);
uint64_t conn_bytes_out(const conn *c);

#endif
