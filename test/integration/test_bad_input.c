/* test_bad_input.c -- hostile and broken clients against a real dmoe-node: each gets a clear error
 * reply or a closed connection, the node keeps serving everyone else, and exits 0 at the end (under
 * `make test SAN=1` the node is the sanitizer build, so a leak or overflow fails the exit status). */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

Test(bad_input, client_leaves_while_its_batch_computes)
{
    float *x = malloc(64 * H * sizeof(float));
    th_fill_normal(x, 64 * H, 2);
    for (int round = 0; round < 20; round++) {
        int fd = th_connect(node.port);
        th_send_out(fd, th_request(1, "expert.0", x, 64, H, round % 2 ? x : NULL));
        if (round % 3 == 0) {   /* half a request, then gone */
            uint8_t hdr[4] = {0, 0, 16, 0};
            th_send_all(fd, hdr, 4);
        }
        close(fd);
    }
    free(x);
    cr_assert_eq(th_ping(node.port), 0);
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
