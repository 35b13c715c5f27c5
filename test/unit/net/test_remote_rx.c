/* test_remote_rx.c -- rx_tensor_from_wire (actors/net/remote.h): what a client makes of a tensor an
 * expert answered, before any check against the schema.
 *
 * Regression (found by test/fuzz/fuzz_msg through rx_result): a compressed tensor was allocated at the
 * size its shape claimed before its bytes were looked at, so a reply of a few bytes claiming
 * [65536, 65536] made the client reserve 16 GiB. Every scheme spends at least one byte per value: fewer
 * bytes are now refused first. */
#include <criterion/criterion.h>
#include <string.h>

#include "actors/net/remote.h"
#include "runtime/rt_err.h"
#include "wire/codec/wire_compress.h"

Test(remote_rx, compressed_claim_over_its_bytes_is_refused_before_allocating)
{
    static const uint8_t four[4] = {0, 0x3c, 0, 0x3c};   /* two float16 ones */
    wire_tensor w = {.dtype = WIRE_DT_F32, .compression = WIRE_SCHEME_FLOAT16, .ndim = 2,
                     .shape = {(int64_t)1 << 20, (int64_t)1 << 20}, .numel = (size_t)1 << 40, .data = four,
                     .nbytes = sizeof four};
    rx_tensor t;
    cr_assert_eq(rx_tensor_from_wire(&t, &w), DMOE_EPROTO);
}

Test(remote_rx, compressed_tensor_decodes)
{
    float x[6] = {1, -2, 0.5f, 3, -4, 0.25f}, back[6];
    uint8_t buf[64];
    size_t len;
    cr_assert_eq(wire_compress(WIRE_SCHEME_FLOAT16, x, 6, buf, &len), 0);
    wire_tensor w = {.dtype = WIRE_DT_F32, .compression = WIRE_SCHEME_FLOAT16, .ndim = 2, .shape = {2, 3},
                     .numel = 6, .data = buf, .nbytes = len};
    rx_tensor t;
    cr_assert_eq(rx_tensor_from_wire(&t, &w), 0);
    memcpy(back, rx_tensor_f32(&t), sizeof back);
    cr_assert_eq(memcmp(back, x, sizeof x), 0, "these values are exact in float16");
    rx_tensor_free(&t);
    /* a payload one value short is malformed, whichever check sees it */
    w.nbytes = len - 2;
    cr_assert_eq(rx_tensor_from_wire(&t, &w), DMOE_EPROTO);
}
