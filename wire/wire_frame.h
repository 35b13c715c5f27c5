/* wire_frame.h -- length-prefixed frames: the byte layer of the protocol (wire/PROTOCOL.md).
 *
 * A frame is a 4-byte big-endian unsigned length N (1 <= N <= the reader's max_frame) followed by N
 * bytes holding exactly one msgpack object. The reader is a pure state machine: the caller feeds it
 * whatever bytes arrived (any split: byte by byte, or many frames at once) and gets whole frames back.
 * It checks N against max_frame BEFORE allocating, then allocates exactly N bytes once and copies the
 * body into it as it arrives, so a frame of hundreds of MiB costs one allocation of its own size and
 * nothing more. No I/O here: the connection actor owns the socket.
 */
#ifndef DMOE_WIRE_FRAME_H
#define DMOE_WIRE_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define WIRE_FRAME_HDR 4
#define WIRE_MAX_FRAME_DEFAULT ((size_t)1 << 30)   /* 1 GiB: far above hivemind's 4 MiB cap */
#define WIRE_MAX_FRAME_LIMIT   ((size_t)0xFFFFFFFFu) /* what 4 length bytes can say */

typedef struct {
    size_t max_frame;
    uint8_t hdr[WIRE_FRAME_HDR];
    size_t hdr_have;      /* header bytes seen for the current frame */
    uint8_t *body;        /* allocated once the header is complete */
    size_t need, have;    /* body length and bytes received */
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
/* wire_frame_pending returns whether a frame is partly received (header or body bytes held). */
int wire_frame_pending(const wire_frame_reader *r);
/* wire_frame_put_header writes the 4-byte big-endian length of a body of len bytes into hdr. */
void wire_frame_put_header(uint8_t hdr[WIRE_FRAME_HDR], uint32_t len);

#endif
