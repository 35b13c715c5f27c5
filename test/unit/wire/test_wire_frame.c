/* test_wire_frame.c -- the frame reader (wire/wire_frame.c): arbitrary splits, several frames per
 * feed, limits checked before allocation, zero length, a frame of exactly max_frame. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "wire/wire_frame.h"

/* wf_stream builds header+body for each of n bodies (body i: len[i] bytes of value i+1). */
static uint8_t *wf_stream(const size_t *lens, int n, size_t *total)
{
    size_t t = 0;
    for (int i = 0; i < n; i++) t += WIRE_FRAME_HDR + lens[i];
    uint8_t *s = malloc(t);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        wire_frame_put_header(s + at, (uint32_t)lens[i]);
        at += WIRE_FRAME_HDR;
        memset(s + at, i + 1, lens[i]);
        at += lens[i];
    }
    *total = t;
    return s;
}

/* wf_check_frame asserts that frame f of len l is body number i of lens. */
static void wf_check_frame(const uint8_t *f, size_t l, const size_t *lens, int i)
{
    cr_assert_eq(l, lens[i]);
    for (size_t k = 0; k < l; k++) cr_assert_eq(f[k], (uint8_t)(i + 1));
}

Test(wire_frame, header_is_big_endian, .timeout = 30)
{
    uint8_t h[4];
    wire_frame_put_header(h, 0x01020304u);
    cr_assert(h[0] == 1 && h[1] == 2 && h[2] == 3 && h[3] == 4);
    wire_frame_put_header(h, 0xFFFFFFFFu);
    cr_assert(h[0] == 0xFF && h[3] == 0xFF);
}

Test(wire_frame, split_at_every_boundary, .timeout = 30)
{
    const size_t lens[] = { 1, 7, 300, 2 };
    size_t total;
    uint8_t *s = wf_stream(lens, 4, &total);
    for (size_t cut = 0; cut <= total; cut++) {
        wire_frame_reader r;
        wire_frame_reader_init(&r, 1024);
        int got = 0;
        const uint8_t *parts[2] = { s, s + cut };
        size_t plen[2] = { cut, total - cut };
        for (int p = 0; p < 2; p++) {
            size_t off = 0;
            while (off < plen[p]) {
                size_t used = 0, len = 0;
                uint8_t *f = NULL;
                int rc = wire_frame_feed(&r, parts[p] + off, plen[p] - off, &used, &f, &len);
                cr_assert(rc >= 0, "cut %zu rc %d", cut, rc);
                off += used;
                if (rc == 1) {
                    wf_check_frame(f, len, lens, got++);
                    free(f);
                } else {
                    cr_assert_eq(off, plen[p]);
                }
            }
        }
        cr_assert_eq(got, 4, "cut %zu: %d frames", cut, got);
        cr_assert_not(wire_frame_pending(&r));
        wire_frame_reader_free(&r);
    }
    free(s);
}

Test(wire_frame, byte_by_byte, .timeout = 30)
{
    const size_t lens[] = { 5, 1, 64 };
    size_t total;
    uint8_t *s = wf_stream(lens, 3, &total);
    wire_frame_reader r;
    wire_frame_reader_init(&r, 64);
    int got = 0;
    for (size_t i = 0; i < total; i++) {
        size_t used = 0, len = 0;
        uint8_t *f = NULL;
        int rc = wire_frame_feed(&r, s + i, 1, &used, &f, &len);
        cr_assert_eq(used, 1);
        if (rc == 1) {
            wf_check_frame(f, len, lens, got++);
            free(f);
        } else {
            cr_assert_eq(rc, 0);
            cr_assert(wire_frame_pending(&r));
        }
    }
    cr_assert_eq(got, 3);
    wire_frame_reader_free(&r);
    free(s);
}

Test(wire_frame, several_frames_in_one_feed, .timeout = 30)
{
    const size_t lens[] = { 3, 3, 10, 1, 2 };
    size_t total;
    uint8_t *s = wf_stream(lens, 5, &total);
    wire_frame_reader r;
    wire_frame_reader_init(&r, 100);
    size_t off = 0;
    int got = 0;
    while (off < total) {
        size_t used = 0, len = 0;
        uint8_t *f = NULL;
        int rc = wire_frame_feed(&r, s + off, total - off, &used, &f, &len);
        cr_assert_eq(rc, 1, "each call stops after one frame");
        cr_assert_eq(used, WIRE_FRAME_HDR + lens[got]);
        wf_check_frame(f, len, lens, got++);
        free(f);
        off += used;
    }
    cr_assert_eq(got, 5);
    wire_frame_reader_free(&r);
    free(s);
}

Test(wire_frame, over_limit_rejected_before_allocation, .timeout = 30)
{
    wire_frame_reader r;
    wire_frame_reader_init(&r, 1000);
    uint8_t h[4];
    wire_frame_put_header(h, 1001);
    size_t used = 0, len = 0;
    uint8_t *f = NULL;
    cr_assert_eq(wire_frame_feed(&r, h, 4, &used, &f, &len), DMOE_ETOOBIG);
    cr_assert_null(r.body, "no body allocated");
    cr_assert_null(f);
    cr_assert_not(wire_frame_pending(&r));
    wire_frame_reader_free(&r);

    /* A 4 GiB announcement with the default limit: refused with nothing allocated. */
    wire_frame_reader_init(&r, WIRE_MAX_FRAME_DEFAULT);
    wire_frame_put_header(h, 0xFFFFFFFFu);
    cr_assert_eq(wire_frame_feed(&r, h, 4, &used, &f, &len), DMOE_ETOOBIG);
    cr_assert_null(r.body);
    wire_frame_reader_free(&r);
}

Test(wire_frame, zero_length_is_protocol_error, .timeout = 30)
{
    wire_frame_reader r;
    wire_frame_reader_init(&r, 1000);
    const uint8_t z[6] = { 0, 0, 0, 0, 0x80, 0 };
    size_t used = 0, len = 0;
    uint8_t *f = NULL;
    cr_assert_eq(wire_frame_feed(&r, z, sizeof z, &used, &f, &len), DMOE_EPROTO);
    cr_assert_eq(used, 4);
    wire_frame_reader_free(&r);
}

Test(wire_frame, exactly_max_frame, .timeout = 30)
{
    const size_t lens[] = { 4096 };
    size_t total;
    uint8_t *s = wf_stream(lens, 1, &total);
    wire_frame_reader r;
    wire_frame_reader_init(&r, 4096);
    size_t used = 0, len = 0;
    uint8_t *f = NULL;
    cr_assert_eq(wire_frame_feed(&r, s, total, &used, &f, &len), 1);
    wf_check_frame(f, len, lens, 0);
    free(f);
    wire_frame_reader_free(&r);
    free(s);
}

Test(wire_frame, init_clamps_and_defaults, .timeout = 30)
{
    wire_frame_reader r;
    wire_frame_reader_init(&r, 0);
    cr_assert_eq(r.max_frame, WIRE_MAX_FRAME_DEFAULT);
    wire_frame_reader_init(&r, (size_t)-1);
    cr_assert_eq(r.max_frame, WIRE_MAX_FRAME_LIMIT);
}

Test(wire_frame, free_drops_partial_frame, .timeout = 30)
{
    const size_t lens[] = { 100 };
    size_t total;
    uint8_t *s = wf_stream(lens, 1, &total);
    wire_frame_reader r;
    wire_frame_reader_init(&r, 1000);
    size_t used = 0, len = 0;
    uint8_t *f = NULL;
    cr_assert_eq(wire_frame_feed(&r, s, 50, &used, &f, &len), 0);
    cr_assert(wire_frame_pending(&r));
    wire_frame_reader_free(&r); /* ASan would report the body otherwise */
    cr_assert_not(wire_frame_pending(&r));
    free(s);
}

Test(wire_frame, body_grows_with_what_arrives, .timeout = 30)
{
    /* 1 GiB announced, 8 bytes sent: the reader holds one first allocation, not the announcement */
    wire_frame_reader r;
    wire_frame_reader_init(&r, WIRE_MAX_FRAME_DEFAULT);
    uint8_t s[4 + 8] = {0x40, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
    size_t used = 0, len = 0;
    uint8_t *f = NULL;
    cr_assert_eq(wire_frame_feed(&r, s, sizeof s, &used, &f, &len), 0);
    cr_assert_eq(used, sizeof s);
    cr_assert_leq(wire_frame_held(&r), WIRE_FRAME_GROW_MIN);
    cr_assert_eq(wire_frame_room(&r), wire_frame_held(&r) - 8);
    wire_frame_reader_free(&r);

    /* 200 KiB arriving 1 KiB at a time: the buffer doubles, never past the frame */
    const size_t lens[] = { 200 << 10 };
    size_t total;
    uint8_t *st = wf_stream(lens, 1, &total);
    wire_frame_reader_init(&r, 1 << 20);
    size_t off = 0, last = 0;
    int got = 0;
    while (off < total) {
        size_t n = total - off < 1024 ? total - off : 1024;
        int rc = wire_frame_feed(&r, st + off, n, &used, &f, &len);
        off += used;
        if (rc == 1) { wf_check_frame(f, len, lens, 0); free(f); got = 1; break; }
        size_t held = wire_frame_held(&r);
        cr_assert(held == last || held >= 2 * last || held == lens[0], "held %zu after %zu", held, last);
        cr_assert_leq(held, lens[0]);
        cr_assert_geq(held, r.have);
        last = held;
    }
    cr_assert(got);
    wire_frame_reader_free(&r);
    free(st);
}

Test(wire_frame, feed_upto_stops_at_the_allowance, .timeout = 30)
{
    const size_t lens[] = { 100 << 10 };
    size_t total;
    uint8_t *s = wf_stream(lens, 1, &total);
    wire_frame_reader r;
    wire_frame_reader_init(&r, 1 << 20);
    size_t used = 0, len = 0;
    uint8_t *f = NULL;
    /* max_cap 0: the header alone is taken, nothing is allocated */
    cr_assert_eq(wire_frame_feed_upto(&r, s, total, 0, &used, &f, &len), 0);
    cr_assert_eq(used, WIRE_FRAME_HDR);
    cr_assert(wire_frame_in_body(&r));
    cr_assert_null(r.body);
    cr_assert_eq(wire_frame_want(&r, 100), WIRE_FRAME_GROW_MIN, "the first allocation");
    cr_assert_eq(wire_frame_want(&r, total - used), lens[0], "never past the frame");
    /* an allowance of 1000 bytes takes 1000 */
    size_t off = used;
    cr_assert_eq(wire_frame_feed_upto(&r, s + off, total - off, 1000, &used, &f, &len), 0);
    cr_assert_eq(used, 1000);
    cr_assert_eq(wire_frame_held(&r), 1000);
    cr_assert_eq(wire_frame_room(&r), 0);
    off += used;
    /* no more allowance: nothing taken */
    cr_assert_eq(wire_frame_feed_upto(&r, s + off, total - off, 1000, &used, &f, &len), 0);
    cr_assert_eq(used, 0);
    /* the rest */
    cr_assert_eq(wire_frame_feed_upto(&r, s + off, total - off, lens[0], &used, &f, &len), 1);
    wf_check_frame(f, len, lens, 0);
    free(f);
    wire_frame_reader_free(&r);
    free(s);
}

/* wire_frame_want_after is the growth rule restated: the capacity after reserving avail more body bytes
 * from capacity held with have bytes in (at least double, at least WIRE_FRAME_GROW_MIN, at most need). */
static size_t wire_frame_want_after(size_t held, size_t have, size_t avail, size_t need)
{
    size_t take = need - have < avail ? need - have : avail;
    if (have + take <= held) return held;
    size_t want = have + take;
    if (want < 2 * held) want = 2 * held;
    if (want < WIRE_FRAME_GROW_MIN) want = WIRE_FRAME_GROW_MIN;
    return want < need ? want : need;
}

Test(wire_frame, a_body_written_in_place_completes_like_a_fed_one, .timeout = 30)
{
    const size_t lens[2] = {300000, 5};
    size_t total;
    uint8_t *s = wf_stream(lens, 2, &total);
    wire_frame_reader r;
    wire_frame_reader_init(&r, 1 << 20);
    size_t used = 0, len = 0, off = 0;
    uint8_t *f = NULL;
    cr_assert_eq(wire_frame_feed(&r, s, WIRE_FRAME_HDR + 10, &used, &f, &len), 0);
    off = used;
    cr_assert_eq(wire_frame_left(&r), lens[0] - 10);
    /* in place, as a reader of the socket would: grow to what arrived, write at the tail, commit */
    size_t pieces[] = {1, 70000, 4096, 150000};
    for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
        size_t held = wire_frame_held(&r);
        cr_assert_eq(wire_frame_reserve(&r, pieces[i], SIZE_MAX), 0);
        cr_assert_eq(wire_frame_held(&r), wire_frame_want_after(held, r.have, pieces[i], lens[0]));
        cr_assert_geq(wire_frame_room(&r), pieces[i]);
        memcpy(wire_frame_tail(&r), s + off, pieces[i]);
        cr_assert_eq(wire_frame_commit(&r, pieces[i], &f, &len), 0);
        off += pieces[i];
    }
    /* an allowance below what the body would grow to caps the buffer */
    size_t held = wire_frame_held(&r);
    cr_assert_eq(wire_frame_reserve(&r, wire_frame_left(&r), held), 0);
    cr_assert_eq(wire_frame_held(&r), held);
    size_t rest = wire_frame_left(&r);
    cr_assert_eq(wire_frame_reserve(&r, rest, SIZE_MAX), 0);
    memcpy(wire_frame_tail(&r), s + off, rest);
    cr_assert_eq(wire_frame_commit(&r, rest, &f, &len), 1);
    off += rest;
    wf_check_frame(f, len, lens, 0);
    free(f);
    cr_assert_not(wire_frame_pending(&r), "back to the header state");
    cr_assert_eq(wire_frame_left(&r), 0);
    cr_assert_null(wire_frame_tail(&r));
    /* the next frame comes through a feed as before */
    cr_assert_eq(wire_frame_feed(&r, s + off, total - off, &used, &f, &len), 1);
    wf_check_frame(f, len, lens, 1);
    free(f);
    wire_frame_reader_free(&r);
    free(s);
}
