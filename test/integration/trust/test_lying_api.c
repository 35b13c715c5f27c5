/* test_lying_api.c -- libdmoe's expert calls (actors/api/dmoe.h) against a lying node (fake_node.h): an
 * answer of another dtype (float16 data a caller would read as float32, past its end), of other rows,
 * or an error reply with code 0 is an error at once, never a tensor list. Only the public header is
 * used. The fake node is stopped here. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "actors/api/dmoe.h"
#include "test/integration/trust/fake_node.h"
#include "test/integration/harness.h"

#define H 32

Test(lying_expert, api_expert_call_refuses_other_dtypes_and_rows, .timeout = 60)
{
    static const fake_expert ex[] = {
        { "expert.0", FAKE_HONEST, 1.0f },
        { "expert.4", FAKE_F16, 1.0f },
        { "expert.5", FAKE_ROWS, 1.0f },
        { "expert.6", FAKE_ERR0, 1.0f },
    };
    fake_node *f = fake_node_start(ex, 4, H);
    cr_assert(f);
    dmoe_ctx *ctx;
    char err[512], addr[64];
    cr_assert_eq(dmoe_ctx_new(&ctx, err, sizeof err), 0, "%s", err);
    dmoe_dht *d = NULL;
    cr_assert_eq(dmoe_dht_join(ctx, NULL, 0, 0, NULL, &d, err, sizeof err), 0, "%s", err);
    snprintf(addr, sizeof addr, "/ip4/127.0.0.1/tcp/%d", fake_node_port(f));
    float x[3 * H];
    th_fill_normal(x, 3 * H, 3);
    dmoe_tensor in = { .dtype = DMOE_FLOAT32, .ndim = 2, .shape = { 3, H }, .data = x };
    static const struct { const char *uid; int rc; const char *want; } cases[] = {
        { "expert.0", 0, "" },
        { "expert.4", DMOE_ESHAPE, "dtype float16" },   /* would be read as float32: past the data's end */
        { "expert.5", DMOE_ESHAPE, "shape [4, 32]" },
        { "expert.6", DMOE_EPROTO, "malformed reply" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dmoe_expert *e = NULL;
        cr_assert_eq(dmoe_expert_new(d, cases[i].uid, addr, &e, err, sizeof err), 0, "%s", err);
        dmoe_tensors *out = NULL;
        err[0] = 0;
        int rc = dmoe_expert_forward(e, &in, 1, 20, &out, err, sizeof err);
        cr_assert_eq(rc, cases[i].rc, "%s: rc %d: %s", cases[i].uid, rc, err);
        cr_assert(strstr(err, cases[i].want), "%s: %s", cases[i].uid, err);
        cr_assert_eq(out != NULL, rc == 0);
        dmoe_tensors_free(out);
        dmoe_expert_free(e);
    }
    dmoe_dht_free(d);
    dmoe_ctx_free(ctx);
    fake_node_stop(f, NULL);
}
