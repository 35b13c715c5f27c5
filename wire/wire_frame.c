/* wire_frame.c -- the frame reader and header writer of wire_frame.h.
 *
 * Owns nothing but the reader's partial frame. Bytes enter through wire_frame_feed (the connection
 * actor passes whatever recv/evbuffer gave it); whole frames leave as malloc'd buffers that the caller
 * owns from then on (usually handing them straight to wire_msg_decode). No I/O, no clock, no logging:
 * the reader is a pure function of the bytes fed so far, which is what lets the tests split a stream
 * at every byte boundary.
 *
 * State machine, per frame:
 *   HEADER  hdr_have < 4: collect the 4 length bytes (they may arrive one at a time).
 *           When complete: N == 0 -> DMOE_EPROTO; N > max_frame -> DMOE_ETOOBIG (before any
 *           allocation, so a peer cannot make us reserve memory by announcing a length);
 *           else malloc(N) once.
 *   BODY    body != NULL: copy min(n, need - have) bytes; when have == need, hand the body out and go
 *           back to HEADER with the reader cleared.
 * Invariant: body != NULL implies hdr_have == 4 and have < need. After an error the reader is left
 * cleared (no partial frame held) but the stream position is lost, so the caller must close.
 */
#include "wire/wire_frame.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"

void wire_frame_reader_init(wire_frame_reader *r, size_t max_frame)
{
    memset(r, 0, sizeof *r);
    /* 0 is taken to mean "the default", so a zeroed config field does not reject every frame. */
    if (max_frame == 0) max_frame = WIRE_MAX_FRAME_DEFAULT;
    if (max_frame > WIRE_MAX_FRAME_LIMIT) max_frame = WIRE_MAX_FRAME_LIMIT;
    r->max_frame = max_frame;
}

/* reader_clear drops the partial frame, keeping max_frame. */
static void reader_clear(wire_frame_reader *r)
{
    free(r->body);
    r->body = NULL;
    r->hdr_have = 0;
    r->need = 0;
    r->have = 0;
}

void wire_frame_reader_free(wire_frame_reader *r)
{
    if (!r) return;
    reader_clear(r);
}

static uint32_t get_be32(const uint8_t b[WIRE_FRAME_HDR])
{
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | (uint32_t)b[3];
}

int wire_frame_feed(wire_frame_reader *r, const uint8_t *p, size_t n, size_t *used, uint8_t **frame,
                    size_t *len)
{
    size_t pos = 0;

    if (r->body == NULL) {
        while (r->hdr_have < WIRE_FRAME_HDR && pos < n) r->hdr[r->hdr_have++] = p[pos++];
        if (r->hdr_have < WIRE_FRAME_HDR) {
            *used = pos;
            return 0;
        }
        uint32_t want = get_be32(r->hdr);
        if (want == 0) {
            reader_clear(r);
            *used = pos;
            return DMOE_EPROTO;
        }
        if ((size_t)want > r->max_frame) {
            reader_clear(r);
            *used = pos;
            return DMOE_ETOOBIG;
        }
        r->body = malloc(want);
        if (!r->body) {
            reader_clear(r);
            *used = pos;
            return DMOE_ENOMEM;
        }
        r->need = want;
        r->have = 0;
    }

    size_t take = r->need - r->have;
    if (take > n - pos) take = n - pos;
    if (take) memcpy(r->body + r->have, p + pos, take);
    r->have += take;
    pos += take;
    *used = pos;
    if (r->have < r->need) return 0;

    *frame = r->body;
    *len = r->need;
    r->body = NULL;
    reader_clear(r);
    return 1;
}

int wire_frame_pending(const wire_frame_reader *r)
{
    return r->hdr_have > 0 || r->body != NULL;
}

void wire_frame_put_header(uint8_t hdr[WIRE_FRAME_HDR], uint32_t len)
{
    hdr[0] = (uint8_t)(len >> 24);
    hdr[1] = (uint8_t)(len >> 16);
    hdr[2] = (uint8_t)(len >> 8);
    hdr[3] = (uint8_t)len;
}
