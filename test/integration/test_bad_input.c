/* test_bad_input.c -- hostile and broken clients against a real dmoe-node: each gets a clear error
 * reply or a closed connection, the node keeps serving everyone else, and exits 0 at the end (under
 * `make test SAN=1` the node is the sanitizer build, so a leak or overflow fails the exit status). */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/rt_actor.h"
#include "runtime/rt_err.h"
#include "test/integration/harness.h"

#define H 32

static th_node node;

static void start_node(void)
{
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "32", "--expert_uids", "expert.0",
                          "--max_frame_mb", "1", "--max_batch_size", "64", NULL};
    cr_assert_eq(th_node_start(&node, args), 0);
}

static void stop_node(void)
{
    cr_expect(th_node_alive(&node), "the node died");
    cr_expect_eq(th_ping(node.port), 0, "the node stopped answering");
    int rc = th_node_stop(&node, SIGTERM);
    cr_expect_eq(rc, 0, "dmoe-node exited with %d", rc);
}

TestSuite(bad_input, .init = start_node, .fini = stop_node, .timeout = 60);

/* Send body as a frame, expect an error reply with code (and id), then whether the connection closes. */
static void expect_error(int fd, uint64_t id, int code, int closes)
{
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0, "no reply");
    cr_assert_eq(m.kind, WIRE_REPLY_ERR, "expected an error reply");
    cr_assert_eq(m.id, id);
    cr_assert_eq(m.err_code, code, "code %d (%s), expected %d; message: %s", m.err_code, dmoe_strerror(m.err_code),
                 code, m.err_msg);
    cr_assert_gt(strlen(m.err_msg), 0);
    wire_msg_free(&m);
    if (closes) cr_assert(th_peer_closed(fd, 3000), "the connection should be closed");
}

static void expect_alive_on(int fd)
{
    wire_out *o = wire_out_new();
    wire_request_begin(o, 4242, "ping", 2);
    cr_assert_eq(th_send_out(fd, o), 0);
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK);
    cr_assert_eq(m.id, 4242);
    wire_msg_free(&m);
}

Test(bad_input, truncated_frame_then_disconnect)
{
    int fd = th_connect(node.port);
    uint8_t hdr[4] = {0, 0, 0, 100};
    th_send_all(fd, hdr, 4);
    th_send_all(fd, "\x82\xa2id\x01", 5);
    close(fd);
    cr_assert_eq(th_ping(node.port), 0);
}

Test(bad_input, length_over_the_limit)
{
    int fd = th_connect(node.port);
    uint8_t hdr[4] = {0, 0x20, 0, 0};   /* 2 MiB > --max_frame_mb 1 */
    th_send_all(fd, hdr, 4);
    expect_error(fd, 0, DMOE_ETOOBIG, 1);
    close(fd);
}

Test(bad_input, bytes_that_are_not_msgpack)
{
    int fd = th_connect(node.port);
    th_send_frame(fd, "\xc1\xc1\xc1\xc1hello", 9);
    expect_error(fd, 0, DMOE_EPROTO, 1);
    close(fd);
}

Test(bad_input, huge_array_count_in_a_tiny_frame)
{
    int fd = th_connect(node.port);
    /* {"id": 1, "x": array32 of 2^31 elements} in 17 bytes */
    const uint8_t body[] = {0x82, 0xa2, 'i', 'd', 0x01, 0xa1, 'x', 0xdd, 0x80, 0, 0, 0, 1, 2, 3};
    th_send_frame(fd, body, sizeof body);
    expect_error(fd, 0, DMOE_EPROTO, 1);
    close(fd);
}

Test(bad_input, wrong_types_keep_the_connection)
{
    int fd = th_connect(node.port);
    /* {"id": "x", "method": 5} */
    const uint8_t b1[] = {0x82, 0xa2, 'i', 'd', 0xa1, 'x', 0xa6, 'm', 'e', 't', 'h', 'o', 'd', 0x05};
    th_send_frame(fd, b1, sizeof b1);
    expect_error(fd, 0, DMOE_EINVAL, 0);
    /* {"id": 3, "method": 5} */
    const uint8_t b2[] = {0x82, 0xa2, 'i', 'd', 0x03, 0xa6, 'm', 'e', 't', 'h', 'o', 'd', 0x05};
    th_send_frame(fd, b2, sizeof b2);
    expect_error(fd, 3, DMOE_EINVAL, 0);
    /* forward whose inputs is a string */
    wire_out *o = wire_out_new();
    wire_request_begin(o, 5, "forward", 4);
    wire_pack_str(wire_out_pk(o), "uid");
    wire_pack_str(wire_out_pk(o), "expert.0");
    wire_pack_str(wire_out_pk(o), "inputs");
    wire_pack_str(wire_out_pk(o), "oops");
    th_send_out(fd, o);
    expect_error(fd, 5, DMOE_EINVAL, 0);
    expect_alive_on(fd);
    close(fd);
}

static wire_out *tensor_request(uint64_t id, const char *method, const char *uid, const char *dtype, int64_t rows,
                                int64_t cols, const void *data, size_t nbytes)
{
    wire_out *o = wire_out_new();
    msgpack_packer *pk = wire_out_pk(o);
    wire_request_begin(o, id, method, 4);
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, uid);
    wire_pack_str(pk, "inputs");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 3);
    wire_pack_str(pk, "dtype");
    wire_pack_str(pk, dtype);
    wire_pack_str(pk, "shape");
    msgpack_pack_array(pk, 2);
    msgpack_pack_int64(pk, rows);
    msgpack_pack_int64(pk, cols);
    wire_pack_str(pk, "data");
    msgpack_pack_bin(pk, nbytes);
    msgpack_pack_bin_body(pk, data, nbytes);
    return o;
}

Test(bad_input, tensor_checks_each_with_its_code)
{
    int fd = th_connect(node.port);
    float x[4 * H];
    th_fill_normal(x, 4 * H, 1);
    /* data length does not match the shape */
    th_send_out(fd, tensor_request(1, "forward", "expert.0", "float32", 4, H, x, 4 * H * 4 - 4));
    expect_error(fd, 1, DMOE_ESHAPE, 0);
    /* wrong hidden size */
    th_send_out(fd, tensor_request(2, "forward", "expert.0", "float32", 2, 2 * H, x, 4 * H * 4));
    expect_error(fd, 2, DMOE_ESHAPE, 0);
    /* zero rows */
    th_send_out(fd, tensor_request(3, "forward", "expert.0", "float32", 0, H, x, 0));
    expect_error(fd, 3, DMOE_ESHAPE, 0);
    /* wrong dtype */
    th_send_out(fd, tensor_request(4, "forward", "expert.0", "uint8", 4, H, x, 4 * H));
    expect_error(fd, 4, DMOE_ESHAPE, 0);
    /* unknown dtype */
    th_send_out(fd, tensor_request(5, "forward", "expert.0", "complex64", 4, H, x, 4 * H * 4));
    expect_error(fd, 5, DMOE_EINVAL, 0);
    /* NaN and Inf */
    x[7] = NAN;
    th_send_out(fd, tensor_request(6, "forward", "expert.0", "float32", 4, H, x, 4 * H * 4));
    expect_error(fd, 6, DMOE_ENONFINITE, 0);
    x[7] = INFINITY;
    th_send_out(fd, tensor_request(7, "backward", "expert.0", "float32", 4, H, x, 4 * H * 4));
    /* inputs are checked before grad_outputs: the Inf is what gets reported */
    expect_error(fd, 7, DMOE_ENONFINITE, 0);
    x[7] = 0;
    /* more rows than --max_batch_size 64 */
    float *big = calloc(65 * H, sizeof(float));
    th_send_out(fd, tensor_request(8, "forward", "expert.0", "float32", 65, H, big, 65 * H * 4));
    expect_error(fd, 8, DMOE_ETOOBIG, 0);
    free(big);
    /* unknown expert, unknown method */
    th_send_out(fd, tensor_request(9, "forward", "expert.7", "float32", 4, H, x, 4 * H * 4));
    expect_error(fd, 9, DMOE_ENOEXPERT, 0);
    th_send_out(fd, tensor_request(10, "explode", "expert.0", "float32", 4, H, x, 4 * H * 4));
    expect_error(fd, 10, DMOE_ENOMETHOD, 0);
    /* and after all that, a good request on the same connection works */
    th_send_out(fd, tensor_request(11, "forward", "expert.0", "float32", 4, H, x, 4 * H * 4));
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    wire_msg_free(&m);
    close(fd);
}

/* The expert's stats counter key of info for uid, read on a fresh connection (-1 when unreadable). */
static int64_t info_stat(int port, const char *uid, const char *key)
{
    int fd = th_connect(port);
    wire_out *o = wire_out_new();
    wire_request_begin(o, 77, "info", 3);
    wire_pack_str(wire_out_pk(o), "uid");
    wire_pack_str(wire_out_pk(o), uid);
    th_send_out(fd, o);
    wire_msg m;
    int64_t v = -1;
    if (th_recv_msg(fd, &m) == 0) {
        const msgpack_object *st = m.kind == WIRE_REPLY_OK ? wire_map_get(m.result, "stats") : NULL;
        const msgpack_object *x = st ? wire_map_get(st, key) : NULL;
        if (x && x->type == MSGPACK_OBJECT_POSITIVE_INTEGER) v = (int64_t)x->via.u64;
        wire_msg_free(&m);
    }
    close(fd);
    return v;
}

/* A nop_delay node holds every computed batch for --delay_ms before answering: clients that leave in
 * that window leave while their batch is in the node, which must answer everyone else, free what the
 * leavers held (the sanitizer build's exit status reports a leak) and go on serving. */
Test(bad_input, client_leaves_while_its_batch_computes)
{
    th_node slow;
    const char *args[] = {"--expert_cls", "nop_delay", "--delay_ms", "400", "--hidden_dim", "32", "--expert_uids",
                          "expert.0", "--max_batch_size", "64", NULL};
    cr_assert_eq(th_node_start(&slow, args), 0);
    float *x = malloc(64 * H * sizeof(float));
    th_fill_normal(x, 64 * H, 2);
    int stay = th_connect(slow.port);
    int leavers[6];
    for (int i = 0; i < 6; i++) {
        leavers[i] = th_connect(slow.port);
        th_send_out(leavers[i], th_request(1, "expert.0", x, 8, H, NULL));
    }
    uint64_t t0 = rt_clock_us();
    th_send_out(stay, th_request(2, "expert.0", x, 8, H, NULL));
    usleep(150 * 1000);   /* the batches are computed (microseconds) and held (400 ms) */
    cr_assert_eq(info_stat(slow.port, "expert.0", "forward_rows"), 56, "the batches should be computed by now");
    for (int i = 0; i < 6; i++) {
        if (i % 2 == 0) {   /* half of a next request, then gone */
            uint8_t hdr[4] = {0, 0, 16, 0};
            th_send_all(leavers[i], hdr, 4);
        }
        close(leavers[i]);
    }
    /* the one that stayed gets its own rows back, once the hold is over */
    wire_msg m;
    cr_assert_eq(th_recv_msg(stay, &m), 0, "no reply for the client that stayed");
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    cr_assert_eq(m.id, 2);
    cr_assert_geq(rt_clock_us() - t0, 300 * 1000, "the reply came before the batch was held: not the path under test");
    float *y = malloc(8 * H * sizeof(float));
    cr_assert_eq(th_result_f32(&m, "outputs", 8, H, y), 0);
    cr_assert_eq(th_max_abs_diff(x, y, 8 * H), 0.0f, "nop returns its input");
    wire_msg_free(&m);
    /* the next clients get answers; nothing is left queued or in flight for the ones that left */
    for (int i = 0; i < 3; i++) {
        th_send_out(stay, th_request(10 + i, "expert.0", x, 4, H, NULL));
        cr_assert_eq(th_recv_msg(stay, &m), 0);
        cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
        cr_assert_eq(m.id, 10 + (uint64_t)i);
        wire_msg_free(&m);
    }
    cr_assert_eq(info_stat(slow.port, "expert.0", "queue_depth"), 0);
    cr_assert_eq(info_stat(slow.port, "expert.0", "errors"), 0);
    cr_assert_eq(info_stat(slow.port, "expert.0", "forward_calls"), 10);
    close(stay);
    free(x);
    free(y);
    cr_assert_eq(th_ping(slow.port), 0);
    int rc = th_node_stop(&slow, SIGTERM);
    cr_assert_eq(rc, 0, "the nop_delay node exited with %d (a leak fails a sanitizer build)", rc);
}

/* Tensors over the inline limit are checked on a worker: the same codes and messages come back. */
Test(bad_input, big_tensors_checked_on_the_workers)
{
    th_node big;
    const char *args[] = {"--expert_cls", "nop", "--hidden_dim", "1024", "--expert_uids", "expert.0",
                          "--max_batch_size", "256", "--max_frame_mb", "8", NULL};
    cr_assert_eq(th_node_start(&big, args), 0);
    const int64_t B = 128, W = 1024;   /* 512 KiB per tensor */
    float *x = malloc((size_t)B * W * sizeof(float));
    th_fill_normal(x, (size_t)B * W, 5);
    int fd = th_connect(big.port);
    x[B * W - 1] = INFINITY;
    th_send_out(fd, th_request(1, "expert.0", x, B, W, NULL));
    expect_error(fd, 1, DMOE_ENONFINITE, 0);
    x[B * W - 1] = 0.5f;
    th_send_out(fd, tensor_request(2, "forward", "expert.0", "float32", B, W, x, (size_t)B * W * 4 - 4));
    expect_error(fd, 2, DMOE_ESHAPE, 0);
    float *g = malloc((size_t)B * W * sizeof(float));
    th_fill_normal(g, (size_t)B * W, 6);
    g[17] = NAN;
    th_send_out(fd, th_request(3, "expert.0", x, B, W, g));
    expect_error(fd, 3, DMOE_ENONFINITE, 0);
    g[17] = 0;
    th_send_out(fd, th_request(4, "expert.0", x, B, W, NULL));
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    cr_assert_eq(m.id, 4);
    float *y = malloc((size_t)B * W * sizeof(float));
    cr_assert_eq(th_result_f32(&m, "outputs", B, W, y), 0);
    cr_assert_eq(th_max_abs_diff(x, y, (size_t)B * W), 0.0f);
    wire_msg_free(&m);
    th_send_out(fd, th_request(5, "expert.0", x, B, W, g));
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    wire_msg_free(&m);
    close(fd);
    free(x);
    free(g);
    free(y);
    int rc = th_node_stop(&big, SIGTERM);
    cr_assert_eq(rc, 0, "the node exited with %d", rc);
}

Test(bad_input, a_reply_sent_to_the_node)
{
    int fd = th_connect(node.port);
    wire_out *o = wire_error_reply(12, DMOE_EINTERNAL, "not a request");
    th_send_out(fd, o);
    expect_error(fd, 12, DMOE_EINVAL, 0);
    expect_alive_on(fd);
    close(fd);
}

/* The node's refusal of a wrong width names both shapes (hivemind's tests look for the bad size). */
Test(bad_input, a_wrong_width_names_both_shapes)
{
    int fd = th_connect(node.port);
    float x[2 * 2 * H] = {0};
    th_send_out(fd, tensor_request(1, "forward", "expert.0", "float32", 2, 2 * H, x, sizeof x));
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0, "no reply");
    cr_assert_eq(m.kind, WIRE_REPLY_ERR);
    cr_assert_eq(m.err_code, DMOE_ESHAPE);
    cr_assert_str_eq(m.err_msg, "expert.0 takes input of shape [B, 32]; got [2, 64]");
    wire_msg_free(&m);
    close(fd);
}

/* A det_dropout request as hivemind sends it (the mask as int64) gets the answer of the float32 mask;
 * a mask value other than 0 and 1 is refused for that request alone. */
Test(bad_input, det_dropout_takes_an_int64_mask)
{
    th_node dd;
    const char *args[] = {"--expert_cls", "det_dropout", "--hidden_dim", "16", "--expert_uids", "expert.0", NULL};
    cr_assert_eq(th_node_start(&dd, args), 0);
    enum { B = 3, W = 16 };
    float x[B * W], mf[B * W];
    int64_t mi[B * W];
    th_fill_normal(x, B * W, 9);
    for (int i = 0; i < B * W; i++) {
        mi[i] = i % 3 != 0;
        mf[i] = (float)mi[i];
    }
    float y[2][B * W];
    int fd = th_connect(dd.port);
    for (int k = 0; k < 3; k++) {
        wire_out *o = wire_out_new();
        msgpack_packer *pk = wire_out_pk(o);
        wire_request_begin(o, 10 + (uint64_t)k, "forward", 4);
        wire_pack_str(pk, "uid");
        wire_pack_str(pk, "expert.0");
        wire_pack_str(pk, "inputs");
        msgpack_pack_array(pk, 2);
        for (int t = 0; t < 2; t++) {
            msgpack_pack_map(pk, 3);
            wire_pack_str(pk, "dtype");
            wire_pack_str(pk, t == 0 || k == 0 ? "float32" : "int64");
            wire_pack_str(pk, "shape");
            msgpack_pack_array(pk, 2);
            msgpack_pack_int64(pk, B);
            msgpack_pack_int64(pk, W);
            wire_pack_str(pk, "data");
            const void *d = t == 0 ? (const void *)x : k == 0 ? (const void *)mf : (const void *)mi;
            size_t n = t == 0 || k == 0 ? sizeof x : sizeof mi;
            msgpack_pack_bin(pk, n);
            msgpack_pack_bin_body(pk, d, n);
        }
        cr_assert_eq(th_send_out(fd, o), 0);
        wire_msg m;
        cr_assert_eq(th_recv_msg(fd, &m), 0, "no reply");
        if (k < 2) {
            cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
            cr_assert_eq(th_result_f32(&m, "outputs", B, W, y[k]), 0);
        } else {
            cr_assert_eq(m.kind, WIRE_REPLY_ERR);
            cr_assert_eq(m.err_code, DMOE_EINVAL);
            cr_assert(strstr(m.err_msg, "inputs[1] (mask)") && strstr(m.err_msg, "element 5"), "%s", m.err_msg);
        }
        wire_msg_free(&m);
        if (k == 1) mi[5] = 2;   /* the third request's mask is not 0/1 */
    }
    cr_assert_eq(th_max_abs_diff(y[0], y[1], B * W), 0.0f, "an int64 mask gives the float32 mask's answer");
    close(fd);
    int rc = th_node_stop(&dd, SIGTERM);
    cr_assert_eq(rc, 0, "the det_dropout node exited with %d", rc);
}
