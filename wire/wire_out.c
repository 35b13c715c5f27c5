/* wire_out.c -- the segmented outgoing message of wire_out.h.
 *
 * Owns a list of segments that together form one frame. A segment is either
 *   OWNED       a malloc'd buffer filled by the msgpack packer's write callback (buf != NULL), or
 *   REFERENCED  the caller's bytes from wire_out_bin_ref, with the caller's cleanup and arg.
 * The packer always appends to the last segment when it is owned, growing it geometrically with
 * realloc (nothing points into an owned buffer until wire_out_send, so moving it is safe); after a
 * referenced segment it opens a new owned segment. The very first owned segment starts with
 * WIRE_FRAME_HDR reserved bytes where wire_out_send writes the length, so a message without tensors
 * goes out as ONE evbuffer_add_reference of header and body together.
 *
 * Leaving: wire_out_send hands every segment to the evbuffer with evbuffer_add_reference; owned
 * buffers get a cleanup that frees them, referenced ones carry the caller's cleanup, whose signature is
 * exactly libevent's evbuffer_ref_cleanup_cb. Several segments are first gathered on a private
 * evbuffer and then moved onto dst with evbuffer_add_buffer (which moves chains, copies nothing), so a
 * failure half way never leaves half a frame on the connection. wire_out_send_fd first writes what
 * the socket takes at once (one sendmsg over the segments), releases what went out whole and hands
 * the rest over the same way, the first segment left starting where the socket stopped (if that
 * hand-over fails, the frame is cut on the socket: conn.c then closes the connection).
 * wire_out_flatten copies into one buffer (tests, small messages). wire_out_free releases everything.
 *
 * Invariant: every segment's release (free or caller's cleanup) runs exactly once, whichever of
 * send / flatten / free ends the message, and also when an append fails. Errors are sticky: after the
 * first failed append, packing does nothing more and send/flatten report the error.
 * Single thread only; no locks.
 */
#include "wire/wire_out.h"

#include <errno.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "runtime/rt_err.h"
#include "wire/wire_frame.h"

/* First owned buffer: big enough for any reply without tensors (ping, error, small info). */
#define OUT_FIRST_CAP 256
/* Inline segment slots: a forward reply with a few tensors needs no extra allocation. */
#define OUT_INLINE_SEGS 8
/* The most segments one direct write (wire_out_send_fd) gathers; the rest go through the evbuffer. */
#define OUT_IOV_MAX 64

typedef struct {
    uint8_t *buf;              /* OWNED: the malloc'd buffer; NULL for REFERENCED */
    const uint8_t *data;       /* start of the bytes (buf for OWNED) */
    size_t len;                /* bytes used */
    size_t cap;                /* OWNED: bytes allocated */
    wire_ref_cleanup cleanup;  /* REFERENCED: the caller's release, may be NULL */
    void *arg;
} out_seg;

struct wire_out {
    msgpack_packer pk;
    out_seg *segs;
    size_t nseg, capseg;
    size_t body_len;           /* bytes packed, frame header excluded */
    int err;                   /* sticky: first failure, 0 while fine */
    out_seg inline_segs[OUT_INLINE_SEGS];
};

/* seg_release frees or hands back one segment's bytes. Called exactly once per segment. */
static void seg_release(out_seg *s)
{
    if (s->buf) {
        free(s->buf);
    } else if (s->cleanup) {
        s->cleanup(s->data, s->len, s->arg);
    }
    memset(s, 0, sizeof *s);
}

/* release_all releases every segment of o and forgets them. */
static void release_all(wire_out *o)
{
    for (size_t i = 0; i < o->nseg; i++) seg_release(&o->segs[i]);
    o->nseg = 0;
}

/* seg_slot returns a new, zeroed segment slot at the end of o, or NULL when out of memory. */
static out_seg *seg_slot(wire_out *o)
{
    if (o->nseg == o->capseg) {
        size_t ncap = o->capseg * 2;
        out_seg *n;
        if (o->segs == o->inline_segs) {
            n = malloc(ncap * sizeof *n);
            if (n) memcpy(n, o->segs, o->nseg * sizeof *n);
        } else {
            n = realloc(o->segs, ncap * sizeof *n);
        }
        if (!n) return NULL;
        o->segs = n;
        o->capseg = ncap;
    }
    out_seg *s = &o->segs[o->nseg++];
    memset(s, 0, sizeof *s);
    return s;
}

/* out_append copies len bytes onto the last owned segment, growing it or opening a new one. */
static int out_append(wire_out *o, const void *p, size_t len)
{
    if (o->err) return o->err;
    if (len == 0) return 0;
    out_seg *s = o->nseg ? &o->segs[o->nseg - 1] : NULL;
    if (!s || !s->buf) {
        s = seg_slot(o);
        if (!s) return o->err = DMOE_ENOMEM;
        size_t cap = len > OUT_FIRST_CAP ? len : OUT_FIRST_CAP;
        s->buf = malloc(cap);
        if (!s->buf) {
            o->nseg--;
            return o->err = DMOE_ENOMEM;
        }
        s->data = s->buf;
        s->cap = cap;
    }
    if (s->cap - s->len < len) {
        size_t ncap = s->cap * 2;
        if (ncap < s->len + len) ncap = s->len + len;
        if (ncap < s->cap) return o->err = DMOE_ENOMEM; /* size_t overflow */
        uint8_t *nb = realloc(s->buf, ncap);
        if (!nb) return o->err = DMOE_ENOMEM;
        s->buf = nb;
        s->data = nb;
        s->cap = ncap;
    }
    memcpy(s->buf + s->len, p, len);
    s->len += len;
    o->body_len += len;
    return 0;
}

/* pk_write is the msgpack packer's write callback: appends to o, non-zero on failure. */
static int pk_write(void *data, const char *buf, size_t len)
{
    return out_append((wire_out *)data, buf, len) ? -1 : 0;
}

wire_out *wire_out_new(void)
{
    wire_out *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    o->segs = o->inline_segs;
    o->capseg = OUT_INLINE_SEGS;
    out_seg *s = seg_slot(o);
    s->buf = malloc(OUT_FIRST_CAP);
    if (!s->buf) {
        free(o);
        return NULL;
    }
    s->data = s->buf;
    s->cap = OUT_FIRST_CAP;
    s->len = WIRE_FRAME_HDR; /* reserved for the length, written by wire_out_send */
    msgpack_packer_init(&o->pk, o, pk_write);
    return o;
}

msgpack_packer *wire_out_pk(wire_out *o)
{
    return &o->pk;
}

int wire_out_bin_ref(wire_out *o, const void *data, size_t len, wire_ref_cleanup cleanup, void *arg)
{
    if (!o->err && len > UINT32_MAX) o->err = DMOE_ETOOBIG;
    if (!o->err && msgpack_pack_bin(&o->pk, len) != 0 && !o->err) o->err = DMOE_ENOMEM;
    if (o->err || len == 0) {
        if (cleanup) cleanup(data, len, arg);
        return o->err;
    }
    out_seg *s = seg_slot(o);
    if (!s) {
        if (cleanup) cleanup(data, len, arg);
        return o->err = DMOE_ENOMEM;
    }
    s->data = data;
    s->len = len;
    s->cleanup = cleanup;
    s->arg = arg;
    o->body_len += len;
    return 0;
}

size_t wire_out_len(const wire_out *o)
{
    return o->body_len;
}

void wire_out_free(wire_out *o)
{
    if (!o) return;
    release_all(o);
    if (o->segs != o->inline_segs) free(o->segs);
    free(o);
}

/* free_owned is the evbuffer cleanup of an owned segment. */
static void free_owned(const void *data, size_t len, void *arg)
{
    free(arg);
}

/* seg_to_evbuffer moves segment s onto b; on success the evbuffer owns its release and s is cleared.
 * On failure s is untouched (still ours to release). Returns 0 or DMOE_ENOMEM. */
static int seg_to_evbuffer(out_seg *s, struct evbuffer *b)
{
    int rc;
    if (s->buf)
        rc = evbuffer_add_reference(b, s->data, s->len, free_owned, s->buf);
    else
        rc = evbuffer_add_reference(b, s->data, s->len, s->cleanup, s->arg);
    if (rc != 0) return DMOE_ENOMEM;
    memset(s, 0, sizeof *s);
    return 0;
}

/* frame_ready checks that o may leave as a frame and writes its header. Returns 0 or the error. */
static int frame_ready(wire_out *o)
{
    int rc = o->err;
    if (!rc && o->body_len > WIRE_MAX_FRAME_LIMIT) rc = DMOE_ETOOBIG;
    if (!rc && o->body_len == 0) rc = DMOE_EINTERNAL; /* nothing packed: a frame may not be empty */
    if (!rc) wire_frame_put_header(o->segs[0].buf, (uint32_t)o->body_len);
    return rc;
}

/* hand_over moves segments first.. onto dst and frees o (always). Returns 0 or DMOE_ENOMEM. */
static int hand_over(wire_out *o, size_t first, struct evbuffer *dst)
{
    int rc = 0;
    if (o->nseg - first <= 1) {
        if (first < o->nseg) rc = seg_to_evbuffer(&o->segs[first], dst);
        wire_out_free(o); /* releases the segment only if it was not handed over */
        return rc;
    }
    struct evbuffer *tmp = evbuffer_new();
    if (!tmp) {
        wire_out_free(o);
        return DMOE_ENOMEM;
    }
    for (size_t i = first; i < o->nseg && !rc; i++) rc = seg_to_evbuffer(&o->segs[i], tmp);
    if (!rc && evbuffer_add_buffer(dst, tmp) != 0) rc = DMOE_ENOMEM;
    /* On failure tmp still holds the handed-over segments: freeing it runs their cleanups; the rest
     * are released by wire_out_free. On success tmp is empty. */
    evbuffer_free(tmp);
    wire_out_free(o);
    return rc;
}

int wire_out_send(wire_out *o, struct evbuffer *dst)
{
    int rc = frame_ready(o);
    if (rc) {
        wire_out_free(o);
        return rc;
    }
    return hand_over(o, 0, dst);
}

int wire_out_send_fd(wire_out *o, int fd, size_t max, struct evbuffer *dst, size_t *written)
{
    *written = 0;
    int rc = frame_ready(o);
    if (rc) {
        wire_out_free(o);
        return rc;
    }
    struct iovec iov[OUT_IOV_MAX];
    size_t n = 0, total = 0;
    for (size_t i = 0; i < o->nseg && n < OUT_IOV_MAX && total < max; i++) {
        size_t len = o->segs[i].len < max - total ? o->segs[i].len : max - total;
        if (len == 0) continue;
        iov[n].iov_base = (void *)o->segs[i].data;
        iov[n++].iov_len = len;
        total += len;
    }
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = n};
    ssize_t w;
    do w = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    size_t left = w > 0 ? (size_t)w : 0; /* a failure is met again, and reported, by dst's writer */
    *written = left;
    size_t first = 0;
    for (; first < o->nseg && left >= o->segs[first].len; first++) {
        left -= o->segs[first].len;
        seg_release(&o->segs[first]);
    }
    if (left) { /* the first segment not written whole goes on from where the socket stopped */
        o->segs[first].data += left;
        o->segs[first].len -= left;
    }
    return hand_over(o, first, dst);
}

int wire_out_flatten(wire_out *o, uint8_t **buf, size_t *len)
{
    int rc = o->err;
    if (rc) {
        wire_out_free(o);
        return rc;
    }
    uint8_t *b = malloc(o->body_len ? o->body_len : 1);
    if (!b) {
        wire_out_free(o);
        return DMOE_ENOMEM;
    }
    size_t at = 0;
    for (size_t i = 0; i < o->nseg; i++) {
        const out_seg *s = &o->segs[i];
        size_t skip = i == 0 ? WIRE_FRAME_HDR : 0;
        if (s->len > skip) memcpy(b + at, s->data + skip, s->len - skip);
        at += s->len - skip;
    }
    wire_out_free(o);
    *buf = b;
    *len = at;
    return 0;
}
