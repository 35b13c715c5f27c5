/* test_conn.c -- the connection actor's backpressure, in process over a socketpair: with max_inflight
 * requests held it stops reading and a release resumes it; with more than max_outbuf bytes waiting to
 * be written it stops reading and resumes once the peer has read them; with a quota it charges the
 * bytes received, not the length announced, and a frame under the minimum rate is dropped. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test/unit/serve/serve_kit.h"
#include "wire/wire_frame.h"

static rt_loop *l;

static void setup(void) { l = rt_loop_new(); }
static void teardown(void)
{
    sk_spin(l, 5);
    rt_loop_free(l);
}

TestSuite(conn, .init = setup, .fini = teardown, .timeout = 20);

/* An owner that holds every request it gets (conn_hold) until the test releases it. */
typedef struct {
    wire_msg *held[16];
    size_t charge[16];   /* what on_msg handed over with each (with a quota) */
    int n;
} holder;

static void hold_msg(conn *c, wire_msg *m, size_t charge, void *arg)
{
    holder *h = arg;
    conn_hold(c);
    h->charge[h->n] = charge;
    h->held[h->n++] = m;
}

static const conn_ops hold_ops = {hold_msg, NULL, NULL};

static void release_all(conn *c, holder *h)
{
    for (int i = 0; i < h->n; i++) {
        if (!h->held[i]) continue;
        wire_msg_free(h->held[i]);
        free(h->held[i]);
        h->held[i] = NULL;
        conn_release(c);
    }
}

static void send_ping(int fd, uint64_t id)
{
    wire_out *o = wire_out_new();
    wire_request_begin(o, id, "ping", 2);
    cr_assert_eq(sk_send_out(fd, o), 0);
}

Test(conn, max_inflight_stops_reading_and_a_release_resumes_it)
{
    holder h = {0};
    conn_limits lim;
    conn_default_limits(&lim);
    lim.max_inflight = 2;
    int fd;
    conn *c = sk_conn_pair(l, &hold_ops, &h, &lim, &fd);
    for (uint64_t id = 1; id <= 4; id++) send_ping(fd, id);
    sk_spin(l, 50);
    cr_assert_eq(h.n, 2, "%d requests read with max_inflight 2", h.n);
    /* one answered: room for one more */
    wire_msg_free(h.held[0]);
    free(h.held[0]);
    h.held[0] = NULL;
    conn_release(c);
    sk_spin(l, 50);
    cr_assert_eq(h.n, 3);
    cr_assert_eq(h.held[2]->id, 3, "in order");
    release_all(c, &h);
    sk_spin(l, 50);
    cr_assert_eq(h.n, 4);
    release_all(c, &h);
    conn_close(c, 0);
    close(fd);
}

Test(conn, output_over_max_outbuf_stops_reading_until_the_peer_reads)
{
    holder h = {0};
    conn_limits lim;
    conn_default_limits(&lim);
    lim.max_outbuf = 64 << 10;
    int fd;
    conn *c = sk_conn_pair(l, &hold_ops, &h, &lim, &fd);
    /* 8 MiB the peer does not read yet: far more than the socket buffers take */
    size_t big = (size_t)8 << 20;
    uint8_t *blob = calloc(1, big);
    wire_out *o = wire_out_new();
    wire_reply_begin(o, 1);
    msgpack_pack_bin(wire_out_pk(o), big);
    msgpack_pack_bin_body(wire_out_pk(o), blob, big);
    free(blob);
    cr_assert_eq(conn_send(c, o), 0);
    sk_spin(l, 20);
    send_ping(fd, 7);
    sk_spin(l, 50);
    cr_assert_eq(h.n, 0, "read a request while %zu bytes wait to be written", big);
    /* the peer reads everything: output drains, reading resumes */
    size_t got = 0;
    uint8_t buf[1 << 16];
    for (int spins = 0; got < big && spins < 5000; spins++) {
        ssize_t n;
        while ((n = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) got += (size_t)n;
        sk_spin(l, 1);
    }
    cr_assert_geq(got, big, "the reply was not delivered");
    sk_spin(l, 20);
    cr_assert_eq(h.n, 1, "reading did not resume after the output drained");
    cr_assert_eq(h.held[0]->id, 7);
    release_all(c, &h);
    conn_close(c, 0);
    close(fd);
}

static void count_close(conn *c, int err, void *arg) { ++*(int *)arg; }

Test(conn, peer_close_calls_on_close_once_and_sends_are_refused)
{
    int closed = 0;
    int fd;
    conn_ops ops = sk_noop_ops;
    ops.on_close = count_close;
    conn *c = sk_conn_pair(l, &ops, &closed, NULL, &fd);
    conn_ref(c);   /* like a request waiting for its answer */
    close(fd);
    sk_spin(l, 20);
    cr_assert_not(conn_is_open(c));
    cr_assert_eq(closed, 1);
    conn_close(c, 0);
    cr_assert_eq(closed, 1, "on_close runs once");
    wire_out *o = wire_out_new();
    wire_reply_begin(o, 1);
    msgpack_pack_nil(wire_out_pk(o));
    cr_assert_neq(conn_send(c, o), 0, "a send on a closed connection is refused (and o freed)");
    conn_unref(c);
}

Test(conn, charged_as_received_and_dropped_under_the_minimum_rate)
{
    netq q;
    netq_init(&q, (size_t)64 << 20, 0);
    int closed = 0;
    conn_ops ops = sk_noop_ops;
    ops.on_close = count_close;
    conn_limits lim;
    conn_default_limits(&lim);
    lim.quota = &q;
    lim.min_rate = 1 << 20;
    lim.rate_grace_ms = 100;
    int fd;
    conn *c = sk_conn_pair(l, &ops, &closed, &lim, &fd);
    conn_ref(c);
    /* 60 MiB announced, 10 bytes sent: the node holds (and charges) one first allocation */
    const uint8_t bytes[14] = {0x03, 0xc0, 0, 0, 0x82};
    cr_assert_eq(send(fd, bytes, sizeof bytes, 0), (ssize_t)sizeof bytes);
    sk_spin(l, 20);
    cr_assert_gt(q.pending.used, 0);
    cr_assert_leq(q.pending.used, WIRE_FRAME_GROW_MIN, "%zu bytes charged for 10 received", q.pending.used);
    cr_assert_not(conn_tick(c, rt_loop_now_ms(l)), "within the grace period");
    sk_spin(l, 150);
    cr_assert(conn_tick(c, rt_loop_now_ms(l)), "10 bytes in 150 ms is under 1 MiB/s");
    cr_assert_eq(closed, 1);
    cr_assert_eq(q.pending.used, 0, "closing returns the charge");
    conn_unref(c);
    close(fd);
    sk_spin(l, 5);
    netq_deinit(&q);
}

/* pattern_byte is byte k of the test's big payload. */
static uint8_t pattern_byte(size_t k) { return (uint8_t)(k * 7 % 251); }

Test(conn, a_big_frame_is_read_straight_into_its_buffer_and_charged_as_it_arrives)
{
    netq q;
    netq_init(&q, (size_t)64 << 20, 0);
    holder h = {0};
    conn_limits lim;
    conn_default_limits(&lim);
    lim.quota = &q;
    int fd;
    conn *c = sk_conn_pair(l, &hold_ops, &h, &lim, &fd);
    /* a request carrying 3 MiB: its body comes in pieces, as over a real link */
    size_t big = (size_t)3 << 20;
    uint8_t *blob = malloc(big);
    for (size_t k = 0; k < big; k++) blob[k] = pattern_byte(k);
    wire_out *o = wire_out_new();
    wire_request_begin(o, 9, "ping", 3);
    msgpack_pack_str_with_body(wire_out_pk(o), "blob", 4);
    msgpack_pack_bin(wire_out_pk(o), big);
    msgpack_pack_bin_body(wire_out_pk(o), blob, big);
    uint8_t *body;
    size_t blen;
    cr_assert_eq(wire_out_flatten(o, &body, &blen), 0);
    uint8_t *frame = malloc(WIRE_FRAME_HDR + blen);
    wire_frame_put_header(frame, (uint32_t)blen);
    memcpy(frame + WIRE_FRAME_HDR, body, blen);
    free(body);
    size_t total = WIRE_FRAME_HDR + blen, sent = 0;
    /* the first 200 KiB: what is charged follows what arrived, not the 3 MiB announced */
    while (sent < ((size_t)200 << 10)) {
        ssize_t n = send(fd, frame + sent, ((size_t)200 << 10) - sent, MSG_DONTWAIT);
        if (n > 0) sent += (size_t)n;
        sk_spin(l, 2);
    }
    sk_spin(l, 10);
    cr_assert_eq(h.n, 0);
    cr_assert_leq(q.pending.used, 2 * sent + WIRE_FRAME_GROW_MIN, "%zu bytes charged for %zu received", q.pending.used,
                  sent);
    for (int spins = 0; sent < total && spins < 5000; spins++) {
        ssize_t n = send(fd, frame + sent, total - sent < (64u << 10) ? total - sent : (64u << 10), MSG_DONTWAIT);
        if (n > 0) sent += (size_t)n;
        sk_spin(l, 1);
    }
    cr_assert_eq(sent, total);
    for (int spins = 0; h.n == 0 && spins < 1000; spins++) sk_spin(l, 1);
    cr_assert_eq(h.n, 1, "the frame did not arrive whole");
    const msgpack_object *got = wire_map_get(&h.held[0]->root, "blob");
    cr_assert(got && got->type == MSGPACK_OBJECT_BIN);
    cr_assert_eq(got->via.bin.size, big);
    cr_assert(memcmp(got->via.bin.ptr, blob, big) == 0, "the payload changed on the way");
    cr_assert_geq(h.charge[0], total - WIRE_FRAME_HDR, "the frame's buffer is charged");
    conn_uncharge(c, h.charge[0]);
    release_all(c, &h);
    cr_assert_eq(q.pending.used, 0, "every charge is returned");
    conn_close(c, 0);
    close(fd);
    sk_spin(l, 5);
    free(frame);
    free(blob);
    netq_deinit(&q);
}
