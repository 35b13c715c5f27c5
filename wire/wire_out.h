/* wire_out.h -- an outgoing message, built as a chain of segments so that big tensors are sent
 * without being copied (scatter-gather).
 *
 * A wire_out has a msgpack packer that appends to owned segments; wire_out_bin_ref packs a bin header
 * and then appends the caller's bytes BY REFERENCE (with a cleanup callback called once those bytes are
 * no longer needed, i.e. after they are written to the socket, or when the wire_out is dropped).
 * wire_out_send moves the whole message, with its 4-byte frame header, onto an evbuffer using
 * evbuffer_add_reference, so nothing is concatenated.
 *
 * Loop thread only (or any single thread). Order: wire_out_new -> pack with wire_out_pk and
 * wire_out_bin_ref -> one of wire_out_send, wire_out_send_fd, wire_out_flatten (each consumes it)
 * or wire_out_free.
 */
#ifndef DMOE_WIRE_OUT_H
#define DMOE_WIRE_OUT_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;
typedef struct wire_out wire_out;

/* Called once with (data, len, arg) when referenced bytes are released (data and len are the bytes
 * still held then: see wire_out_send_fd). */
typedef void (*wire_ref_cleanup)(const void *data, size_t len, void *arg);

/* wire_out_new returns an empty message, or NULL when out of memory. */
wire_out *wire_out_new(void);
/* wire_out_pk returns the packer that appends to o; use msgpack_pack_* on it. */
msgpack_packer *wire_out_pk(wire_out *o);
/* wire_out_bin_ref packs a msgpack bin of len bytes whose body is data, referenced, not copied. cleanup
 * (may be NULL) is called with arg when the bytes are released, even on failure. Returns 0 or
 * DMOE_ENOMEM. */
int wire_out_bin_ref(wire_out *o, const void *data, size_t len, wire_ref_cleanup cleanup, void *arg);
/* wire_out_len returns the body length packed so far (without the frame header). */
size_t wire_out_len(const wire_out *o);
/* wire_out_send appends the frame header and every segment to dst and frees o (always, also on
 * failure). Returns 0, DMOE_ETOOBIG (body over 4 GiB - 1) or DMOE_ENOMEM. */
int wire_out_send(wire_out *o, struct evbuffer *dst);
/* wire_out_send_fd writes as much of the frame as socket fd takes at once (one sendmsg, without
 * blocking or SIGPIPE, at most max bytes), releases the segments written whole and appends the rest
 * to dst as wire_out_send does; *written gets the bytes written, frame header included. A segment
 * written in part goes on from where the socket stopped: its cleanup then gets the unwritten tail's
 * data and len (arg is the caller's as always). A failed sendmsg is no error here: everything goes to
 * dst, whose writer meets the failure. Frees o; returns as wire_out_send. For an output with nothing
 * queued before it (else the frame would overtake what is queued). Unlike wire_out_send, a failure to
 * queue the rest (DMOE_ENOMEM) may leave part of the frame written: the caller closes the connection. */
int wire_out_send_fd(wire_out *o, int fd, size_t max, struct evbuffer *dst, size_t *written);
/* wire_out_flatten copies the body (no frame header) into one malloc'd buffer and frees o. For tests
 * and small messages. Returns 0 or DMOE_ENOMEM. */
int wire_out_flatten(wire_out *o, uint8_t **buf, size_t *len);
/* wire_out_free drops o, releasing referenced bytes; NULL is a no-op. */
void wire_out_free(wire_out *o);

#endif
