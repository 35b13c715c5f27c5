/* test_wire_out.c -- the segmented outgoing message (wire/wire_out.c): send equals header + flatten,
 * referenced bytes are not copied, cleanups run exactly once on send, free and every failure; a direct
 * write (send_fd) and what it queues make the same bytes, wherever the socket stops. */
#include <criterion/criterion.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runtime/rt_err.h"
#include "wire/wire_frame.h"
#include "wire/wire_msg.h"
#include "wire/wire_out.h"

static int wo_calls[8];

/* wo_cleanup counts releases per slot (arg is the slot number). */
static void wo_cleanup(const void *data, size_t len, void *arg)
{
    wo_calls[(intptr_t)arg]++;
}

static uint8_t wo_blob_a[1000], wo_blob_b[37];

/* wo_build packs a message with owned parts between two referenced blobs. */
static wire_out *wo_build(void)
{
    for (size_t i = 0; i < sizeof wo_blob_a; i++) wo_blob_a[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < sizeof wo_blob_b; i++) wo_blob_b[i] = (uint8_t)(255 - i);
    wire_out *o = wire_out_new();
    cr_assert_not_null(o);
    msgpack_packer *pk = wire_out_pk(o);
    msgpack_pack_map(pk, 3);
    wire_pack_str(pk, "a");
    cr_assert_eq(wire_out_bin_ref(o, wo_blob_a, sizeof wo_blob_a, wo_cleanup, (void *)(intptr_t)1), 0);
    wire_pack_str(pk, "b");
    cr_assert_eq(wire_out_bin_ref(o, wo_blob_b, sizeof wo_blob_b, wo_cleanup, (void *)(intptr_t)2), 0);
    wire_pack_str(pk, "tail");
    msgpack_pack_array(pk, 500);
    for (int i = 0; i < 500; i++) msgpack_pack_int(pk, i * 1000);
    return o;
}

Test(wire_out, send_equals_header_plus_flatten, .timeout = 30)
{
    memset(wo_calls, 0, sizeof wo_calls);
    uint8_t *flat;
    size_t flen;
    wire_out *o = wo_build();
    size_t body = wire_out_len(o);
    cr_assert_eq(wire_out_flatten(o, &flat, &flen), 0);
    cr_assert_eq(flen, body);
    cr_assert_eq(wo_calls[1], 1);
    cr_assert_eq(wo_calls[2], 1);

    memset(wo_calls, 0, sizeof wo_calls);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, "x", 1); /* something already queued stays in front */
    o = wo_build();
    cr_assert_eq(wire_out_send(o, b), 0);
    cr_assert_eq(wo_calls[1], 0, "referenced bytes are still queued");
    cr_assert_eq(evbuffer_get_length(b), 1 + WIRE_FRAME_HDR + flen);
    uint8_t *all = evbuffer_pullup(b, -1);
    cr_assert_eq(all[0], 'x');
    uint8_t h[4];
    wire_frame_put_header(h, (uint32_t)flen);
    cr_assert_arr_eq(all + 1, h, 4);
    cr_assert_arr_eq(all + 5, flat, flen);
    evbuffer_free(b);
    cr_assert_eq(wo_calls[1], 1);
    cr_assert_eq(wo_calls[2], 1);
    free(flat);
}

Test(wire_out, referenced_bytes_are_not_copied, .timeout = 30)
{
    memset(wo_calls, 0, sizeof wo_calls);
    struct evbuffer *b = evbuffer_new();
    wire_out *o = wo_build();
    cr_assert_eq(wire_out_send(o, b), 0);
    struct evbuffer_iovec v[16];
    int n = evbuffer_peek(b, -1, NULL, v, 16);
    cr_assert(n >= 4 && n <= 16);
    int seen_a = 0;
    for (int i = 0; i < n; i++)
        if (v[i].iov_base == (void *)wo_blob_a && v[i].iov_len == sizeof wo_blob_a) seen_a = 1;
    cr_assert(seen_a, "blob a is referenced in place");
    evbuffer_drain(b, evbuffer_get_length(b));
    cr_assert_eq(wo_calls[1], 1);
    cr_assert_eq(wo_calls[2], 1);
    evbuffer_free(b);
    cr_assert_eq(wo_calls[1], 1);
}

Test(wire_out, small_reply_is_one_segment, .timeout = 30)
{
    wire_out *o = wire_error_reply(7, DMOE_ENOEXPERT, "no expert \"x\"");
    cr_assert_not_null(o);
    struct evbuffer *b = evbuffer_new();
    cr_assert_eq(wire_out_send(o, b), 0);
    cr_assert_eq(evbuffer_peek(b, -1, NULL, NULL, 0), 1);
    evbuffer_free(b);
}

Test(wire_out, free_runs_cleanups_once, .timeout = 30)
{
    memset(wo_calls, 0, sizeof wo_calls);
    wire_out *o = wo_build();
    wire_out_free(o);
    cr_assert_eq(wo_calls[1], 1);
    cr_assert_eq(wo_calls[2], 1);
    wire_out_free(NULL);
}

Test(wire_out, failed_send_runs_cleanups_once, .timeout = 30)
{
    /* A frozen tail makes every append to dst fail: multi-segment path. */
    memset(wo_calls, 0, sizeof wo_calls);
    struct evbuffer *b = evbuffer_new();
    evbuffer_freeze(b, 0);
    wire_out *o = wo_build();
    cr_assert_eq(wire_out_send(o, b), DMOE_ENOMEM);
    cr_assert_eq(wo_calls[1], 1);
    cr_assert_eq(wo_calls[2], 1);
    cr_assert_eq(evbuffer_get_length(b), 0, "no half frame left behind");

    /* Single-segment path. */
    o = wire_error_reply(1, DMOE_EPROTO, "x");
    cr_assert_eq(wire_out_send(o, b), DMOE_ENOMEM);
    cr_assert_eq(evbuffer_get_length(b), 0);
    evbuffer_unfreeze(b, 0);
    evbuffer_free(b);
}

Test(wire_out, oversized_bin_is_sticky_error, .timeout = 30)
{
    memset(wo_calls, 0, sizeof wo_calls);
    static uint8_t dummy;
    wire_out *o = wire_out_new();
    msgpack_pack_map(wire_out_pk(o), 2);
    wire_pack_str(wire_out_pk(o), "big");
    /* Never dereferenced: the length is refused before anything is queued. */
    cr_assert_eq(wire_out_bin_ref(o, &dummy, (size_t)UINT32_MAX + 1, wo_cleanup, (void *)(intptr_t)3),
                 DMOE_ETOOBIG);
    cr_assert_eq(wo_calls[3], 1, "released at once");
    cr_assert_eq(wire_out_bin_ref(o, &dummy, 1, wo_cleanup, (void *)(intptr_t)4), DMOE_ETOOBIG);
    cr_assert_eq(wo_calls[4], 1, "later refs are released at once too");
    struct evbuffer *b = evbuffer_new();
    cr_assert_eq(wire_out_send(o, b), DMOE_ETOOBIG);
    cr_assert_eq(evbuffer_get_length(b), 0);
    cr_assert_eq(wo_calls[3], 1);
    cr_assert_eq(wo_calls[4], 1);
    evbuffer_free(b);
}

Test(wire_out, body_over_4gib_refused, .timeout = 30)
{
    memset(wo_calls, 0, sizeof wo_calls);
    static uint8_t dummy;
    wire_out *o = wire_out_new();
    msgpack_pack_array(wire_out_pk(o), 2);
    size_t three_gib = (size_t)3 << 30;
    cr_assert_eq(wire_out_bin_ref(o, &dummy, three_gib, wo_cleanup, (void *)(intptr_t)5), 0);
    cr_assert_eq(wire_out_bin_ref(o, &dummy, three_gib, wo_cleanup, (void *)(intptr_t)6), 0);
    cr_assert_gt(wire_out_len(o), (size_t)WIRE_MAX_FRAME_LIMIT);
    struct evbuffer *b = evbuffer_new();
    cr_assert_eq(wire_out_send(o, b), DMOE_ETOOBIG);
    cr_assert_eq(wo_calls[5], 1);
    cr_assert_eq(wo_calls[6], 1);
    evbuffer_free(b);
}

Test(wire_out, zero_length_ref_released_at_once, .timeout = 30)
{
    memset(wo_calls, 0, sizeof wo_calls);
    wire_out *o = wire_out_new();
    cr_assert_eq(wire_out_bin_ref(o, NULL, 0, wo_cleanup, (void *)(intptr_t)7), 0);
    cr_assert_eq(wo_calls[7], 1);
    uint8_t *flat;
    size_t flen;
    cr_assert_eq(wire_out_flatten(o, &flat, &flen), 0);
    cr_assert_eq(flen, 2);
    cr_assert(flat[0] == 0xc4 && flat[1] == 0, "bin8 of length 0");
    free(flat);
    cr_assert_eq(wo_calls[7], 1);
}

Test(wire_out, growth_matches_plain_packer, .timeout = 30)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer ref;
    msgpack_packer_init(&ref, &sb, msgpack_sbuffer_write);
    wire_out *o = wire_out_new();
    msgpack_packer *pk = wire_out_pk(o);
    msgpack_pack_array(&ref, 20000);
    msgpack_pack_array(pk, 20000);
    for (int i = 0; i < 20000; i++) {
        msgpack_pack_double(&ref, i * 0.5);
        msgpack_pack_double(pk, i * 0.5);
    }
    cr_assert_eq(wire_out_len(o), sb.size);
    uint8_t *flat;
    size_t flen;
    cr_assert_eq(wire_out_flatten(o, &flat, &flen), 0);
    cr_assert_eq(flen, sb.size);
    cr_assert_arr_eq(flat, sb.data, flen);
    free(flat);
    msgpack_sbuffer_destroy(&sb);
}

Test(wire_out, empty_message_not_sent, .timeout = 30)
{
    wire_out *o = wire_out_new();
    struct evbuffer *b = evbuffer_new();
    cr_assert_eq(wire_out_send(o, b), DMOE_EINTERNAL);
    cr_assert_eq(evbuffer_get_length(b), 0);
    evbuffer_free(b);
}

/* wo_frame returns wo_build's frame as bytes (header + body), through wire_out_send. */
static uint8_t *wo_frame(size_t *len)
{
    struct evbuffer *b = evbuffer_new();
    cr_assert_eq(wire_out_send(wo_build(), b), 0);
    *len = evbuffer_get_length(b);
    uint8_t *f = malloc(*len);
    cr_assert_eq(evbuffer_remove(b, f, *len), (int)*len);
    evbuffer_free(b);
    return f;
}

/* wo_read reads what fd has now (non-blocking) onto got at *at. */
static void wo_read(int fd, uint8_t *got, size_t cap, size_t *at)
{
    ssize_t r;
    while (*at < cap && (r = recv(fd, got + *at, cap - *at, MSG_DONTWAIT)) > 0) *at += (size_t)r;
}

/* wo_drain reads what fd sv[0] already sent on to sv[1], then writes what rest holds and reads it too,
 * in a bounded number of rounds; the bytes land on got at *at. */
static void wo_drain(struct evbuffer *rest, const int sv[2], uint8_t *got, size_t cap, size_t *at)
{
    wo_read(sv[1], got, cap, at);
    for (int rounds = 0; evbuffer_get_length(rest) > 0 && rounds < 100000; rounds++) {
        evbuffer_write(rest, sv[0]);
        wo_read(sv[1], got, cap, at);
    }
    cr_assert_eq(evbuffer_get_length(rest), 0);
}

Test(wire_out, send_fd_writes_what_the_socket_takes_and_queues_the_rest, .timeout = 30)
{
    size_t flen;
    uint8_t *frame = wo_frame(&flen);
    uint8_t *got = malloc(flen);
    /* cut inside the header, at its end, inside blob a, at a's end, inside the tail, and past the end */
    size_t cuts[] = {1, WIRE_FRAME_HDR, 300, 0, flen - 9, flen, flen + 100};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        size_t at = 0, written = 0, max = cuts[k];
        if (max == 0) {   /* the end of blob a: the bytes before it, then a itself */
            const uint8_t *p = memmem(frame, flen, wo_blob_a, sizeof wo_blob_a);
            cr_assert_not_null(p);
            max = (size_t)(p - frame) + sizeof wo_blob_a;
        }
        int sv[2];
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        memset(wo_calls, 0, sizeof wo_calls);
        struct evbuffer *rest = evbuffer_new();
        evbuffer_add(rest, "", 0);
        cr_assert_eq(wire_out_send_fd(wo_build(), sv[0], max, rest, &written), 0);
        size_t expect = max < flen ? max : flen;
        cr_assert_eq(written, expect, "cut %zu: %zu bytes written", max, written);
        cr_assert_eq(written + evbuffer_get_length(rest), flen, "nothing lost, nothing twice");
        const uint8_t *a_end = memmem(frame, flen, wo_blob_a, sizeof wo_blob_a) + sizeof wo_blob_a;
        cr_assert_eq(wo_calls[1], written >= (size_t)(a_end - frame) ? 1 : 0, "blob a released once written whole");
        wo_read(sv[1], got, flen, &at);
        cr_assert_eq(at, written);
        wo_drain(rest, sv, got, flen, &at);
        cr_assert_eq(at, flen);
        cr_assert_arr_eq(got, frame, flen, "cut %zu: the bytes arrive whole and in order", max);
        evbuffer_free(rest);
        cr_assert_eq(wo_calls[1], 1);
        cr_assert_eq(wo_calls[2], 1);
        close(sv[0]);
        close(sv[1]);
    }
    free(got);
    free(frame);
}

Test(wire_out, send_fd_stops_where_the_socket_is_full, .timeout = 30)
{
    /* a 4 MiB referenced body into a small socket buffer: the kernel takes part, the rest is queued */
    size_t n = (size_t)4 << 20;
    uint8_t *big = malloc(n);
    for (size_t i = 0; i < n; i++) big[i] = (uint8_t)(i * 131 + (i >> 12));
    int sv[2], small = 16384;
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);   /* evbuffer_write must not wait for the reader */
    memset(wo_calls, 0, sizeof wo_calls);
    wire_out *o = wire_out_new();
    msgpack_pack_array(wire_out_pk(o), 1);
    cr_assert_eq(wire_out_bin_ref(o, big, n, wo_cleanup, (void *)(intptr_t)3), 0);
    size_t flen = WIRE_FRAME_HDR + wire_out_len(o), written = 0, at = 0;
    struct evbuffer *rest = evbuffer_new();
    cr_assert_eq(wire_out_send_fd(o, sv[0], flen, rest, &written), 0);
    cr_assert(written > 0 && written < flen, "%zu of %zu written", written, flen);
    cr_assert_eq(wo_calls[3], 0, "the body is still referenced by what is queued");
    uint8_t *got = malloc(flen);
    wo_drain(rest, sv, got, flen, &at);
    cr_assert_eq(at, flen);
    cr_assert_arr_eq(got + flen - n, big, n);
    evbuffer_free(rest);
    cr_assert_eq(wo_calls[3], 1);
    close(sv[0]);
    close(sv[1]);
    free(got);
    free(big);
}

Test(wire_out, send_fd_to_a_closed_peer_queues_everything, .timeout = 30)
{
    /* no SIGPIPE (the test would die of it), no error: the queue's writer meets the failure */
    size_t flen, written = 99;
    uint8_t *frame = wo_frame(&flen);
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    close(sv[1]);
    memset(wo_calls, 0, sizeof wo_calls);
    struct evbuffer *rest = evbuffer_new();
    cr_assert_eq(wire_out_send_fd(wo_build(), sv[0], flen, rest, &written), 0);
    cr_assert_eq(written, 0);
    cr_assert_eq(evbuffer_get_length(rest), flen);
    cr_assert_eq(wo_calls[1], 0);
    cr_assert_arr_eq(evbuffer_pullup(rest, -1), frame, flen);   /* (pulling up copies, and releases) */
    evbuffer_free(rest);
    cr_assert_eq(wo_calls[1], 1);
    cr_assert_eq(wo_calls[2], 1);
    close(sv[0]);
    free(frame);
}

Test(wire_out, send_fd_refuses_what_send_refuses, .timeout = 30)
{
    int sv[2];
    size_t written = 5;
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct evbuffer *rest = evbuffer_new();
    cr_assert_eq(wire_out_send_fd(wire_out_new(), sv[0], 100, rest, &written), DMOE_EINTERNAL);
    cr_assert_eq(written, 0);
    cr_assert_eq(evbuffer_get_length(rest), 0);
    uint8_t b;
    cr_assert_eq(recv(sv[1], &b, 1, MSG_DONTWAIT), -1, "nothing was written");
    evbuffer_free(rest);
    close(sv[0]);
    close(sv[1]);
}
