/* wire_frame.h -- length-prefixed frames: the byte layer of the protocol (wire/PROTOCOL.md).
 *
 * A frame is a 4-byte big-endian unsigned length N (1 <= N <= the reader's max_frame) followed by N
 * bytes holding exactly one msgpack object. The reader is a pure state machine: the caller feeds it
 * whatever bytes arrived (any split: byte by byte, or many frames at once) and gets whole frames back.
 * It checks N against max_frame BEFORE allocating, and then grows the body buffer only as bytes
 * arrive (doubling, never past N): a peer that announces 1 GiB and sends 8 bytes holds 64 KiB, not
 * 1 GiB. The capacity a feed would grow to is known beforehand (wire_frame_want), so the caller can
 * charge it to a budget first and feed fewer bytes when it does not fit. No I/O here: the connection
 * actor owns the socket.
 */
#ifndef DMOE_WIRE_FRAME_H
#define DMOE_WIRE_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define WIRE_FRAME_HDR 4
#define WIRE_MAX_FRAME_DEFAULT ((size_t)1 << 30)   /* 1 GiB: far above hivemind's 4 MiB cap */
#define WIRE_MAX_FRAME_LIMIT   ((size_t)0xFFFFFFFFu) /* what 4 length bytes can say */
/* The body's first allocation (or the whole frame when smaller): small enough that a trickle of
 * announcements costs little, big enough that a large frame grows in few steps. */
#define WIRE_FRAME_GROW_MIN    ((size_t)64 << 10)

typedef struct {
    size_t max_frame;
    uint8_t hdr[WIRE_FRAME_HDR];
    size_t hdr_have;      /* header bytes seen for the current frame */
    int in_body;          /* the header is complete: need is the body's length */
    uint8_t *body;        /* cap bytes, allocated as body bytes arrive */
    size_t need, have, cap;  /* body length, bytes received, bytes allocated (have <= cap <= need) */
} wire_frame_reader;

/* wire_frame_reader_init prepares r for frames of at most max_frame bytes (clamped to
 * WIRE_MAX_FRAME_LIMIT). */
void wire_frame_reader_init(wire_frame_reader *r, size_t max_frame);
/* wire_frame_reader_free drops a partial frame; r may be reused after init. */
void wire_frame_reader_free(wire_frame_reader *r);
/* wire_frame_feed consumes bytes from p[n], stopping after the first complete frame.
 * *used is set to the number of bytes consumed. Returns 1 with *frame (malloc'd, caller frees) and
 * *len set when a frame completed, 0 when more bytes are needed (all n consumed), or a negative code:
 * DMOE_ETOOBIG (length over max_frame), DMOE_EPROTO (zero length), DMOE_ENOMEM. After an error the
 * stream is unusable: close the connection. */
int wire_frame_feed(wire_frame_reader *r, const uint8_t *p, size_t n, size_t *used, uint8_t **frame,
                    size_t *len);
/* wire_frame_feed_upto is wire_frame_feed that never grows the body past max_cap bytes (the capacity
 * the caller has charged; wire_frame_held is kept when larger): it returns 0 with *used < n when the
 * body is full to max_cap, and after a header that completes with max_cap below the first allocation
 * (then nothing is allocated). */
int wire_frame_feed_upto(wire_frame_reader *r, const uint8_t *p, size_t n, size_t max_cap, size_t *used,
                         uint8_t **frame, size_t *len);
/* wire_frame_pending returns whether a frame is partly received (header or body bytes held). */
int wire_frame_pending(const wire_frame_reader *r);
/* wire_frame_in_body returns whether the current frame's header is complete (its body is arriving). */
int wire_frame_in_body(const wire_frame_reader *r);
/* wire_frame_held returns the bytes the reader has allocated for the current frame's body. */
size_t wire_frame_held(const wire_frame_reader *r);
/* wire_frame_room returns how many body bytes fit without growing (0 in the header state). */
size_t wire_frame_room(const wire_frame_reader *r);
/* wire_frame_want returns the capacity the body will have after feeding avail more bytes of it
 * (>= wire_frame_held; in the header state, 0: feed the header alone first, it allocates nothing). */
size_t wire_frame_want(const wire_frame_reader *r, size_t avail);
/* For a caller that reads a body straight into the reader's buffer (one read per big chunk instead of
 * a copy through another buffer): wire_frame_left is the body bytes still to come (0 in the header
 * state); wire_frame_reserve grows the buffer to wire_frame_want(r, avail) bytes, capped at max_cap
 * (0 or DMOE_ENOMEM, which leaves the reader cleared like a failed feed); wire_frame_tail points at the
 * first free byte, wire_frame_room of them; wire_frame_commit counts n <= wire_frame_room bytes written
 * there and returns as wire_frame_feed does (1 with *frame and *len when the frame completed, else 0). */
size_t wire_frame_left(const wire_frame_reader *r);
int wire_frame_reserve(wire_frame_reader *r, size_t avail, size_t max_cap);
uint8_t *wire_frame_tail(wire_frame_reader *r);
int wire_frame_commit(wire_frame_reader *r, size_t n, uint8_t **frame, size_t *len);
/* wire_frame_put_header writes the 4-byte big-endian length of a body of len bytes into hdr. */
void wire_frame_put_header(uint8_t hdr[WIRE_FRAME_HDR], uint32_t len);

#endif
