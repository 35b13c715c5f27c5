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
 *           allocation, so a peer cannot make us reserve memory by announcing a length); else
 *           in_body, nothing allocated yet.
 *   BODY    in_body: grow the buffer to wire_frame_want(bytes offered) -- at least double, at least
 *           WIRE_FRAME_GROW_MIN, never past N, never past the caller's max_cap -- copy what fits
 *           (min(n, cap - have)); when have == need,
 *           hand the body out and go back to HEADER with the reader cleared.
 * Invariant: body != NULL implies in_body and have <= cap <= need. After an error the reader is left
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
    r->in_body = 0;
    r->need = 0;
    r->have = 0;
    r->cap = 0;
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

size_t wire_frame_want(const wire_frame_reader *r, size_t avail)
{
    if (!r->in_body) return 0;
    size_t take = r->need - r->have;
    if (take > avail) take = avail;
    if (r->have + take <= r->cap) return r->cap;
    size_t want = r->have + take;
    if (want < 2 * r->cap) want = 2 * r->cap;
    if (want < WIRE_FRAME_GROW_MIN) want = WIRE_FRAME_GROW_MIN;
    return want < r->need ? want : r->need;
}

int wire_frame_feed_upto(wire_frame_reader *r, const uint8_t *p, size_t n, size_t max_cap, size_t *used,
                         uint8_t **frame, size_t *len)
{
    size_t pos = 0;

    if (!r->in_body) {
        while (r->hdr_have < WIRE_FRAME_HDR && pos < n) r->hdr[r->hdr_have++] = p[pos++];
        *used = pos;
        if (r->hdr_have < WIRE_FRAME_HDR) return 0;
        uint32_t want = get_be32(r->hdr);
        if (want == 0) {
            reader_clear(r);
            return DMOE_EPROTO;
        }
        if ((size_t)want > r->max_frame) {
            reader_clear(r);
            return DMOE_ETOOBIG;
        }
        r->in_body = 1;
        r->need = want;
        r->have = 0;
    }

    int rc = wire_frame_reserve(r, n - pos, max_cap);
    if (rc < 0) {
        *used = pos;
        return rc;
    }
    size_t take = r->cap - r->have;
    if (take > n - pos) take = n - pos;
    if (take) memcpy(r->body + r->have, p + pos, take);
    pos += take;
    *used = pos;
    return wire_frame_commit(r, take, frame, len);
}

int wire_frame_reserve(wire_frame_reader *r, size_t avail, size_t max_cap)
{
    size_t cap = wire_frame_want(r, avail);
    if (cap > max_cap) cap = max_cap > r->cap ? max_cap : r->cap;
    if (cap <= r->cap) return 0;
    uint8_t *nb = realloc(r->body, cap);
    if (!nb) {
        reader_clear(r);
        return DMOE_ENOMEM;
    }
    r->body = nb;
    r->cap = cap;
    return 0;
}

int wire_frame_commit(wire_frame_reader *r, size_t n, uint8_t **frame, size_t *len)
{
    r->have += n;
    if (!r->in_body || r->have < r->need) return 0;
    *frame = r->body;
    *len = r->need;
    r->body = NULL;
    reader_clear(r);
    return 1;
}

size_t wire_frame_left(const wire_frame_reader *r) { return r->in_body ? r->need - r->have : 0; }

uint8_t *wire_frame_tail(wire_frame_reader *r) { return r->body ? r->body + r->have : NULL; }

int wire_frame_feed(wire_frame_reader *r, const uint8_t *p, size_t n, size_t *used, uint8_t **frame,
                    size_t *len)
{
    return wire_frame_feed_upto(r, p, n, SIZE_MAX, used, frame, len);
}

int wire_frame_pending(const wire_frame_reader *r)
{
    return r->hdr_have > 0 || r->in_body;
}

int wire_frame_in_body(const wire_frame_reader *r) { return r->in_body; }

size_t wire_frame_held(const wire_frame_reader *r) { return r->cap; }

size_t wire_frame_room(const wire_frame_reader *r) { return r->in_body ? r->cap - r->have : 0; }

void wire_frame_put_header(uint8_t hdr[WIRE_FRAME_HDR], uint32_t len)
{
    hdr[0] = (uint8_t)(len >> 24);
    hdr[1] = (uint8_t)(len >> 16);
    hdr[2] = (uint8_t)(len >> 8);
    hdr[3] = (uint8_t)len;
}
