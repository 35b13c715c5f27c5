/* test_req_check.c -- the request checks of actors/serve/req_check.c, in-process: every refusal names
 * the expert, the tensor, what its schema wants and what came (hivemind's tests look for the bad size
 * in the message); masks arrive as float32, uint8, int64 or bool and leave as the declared dtype. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "actors/serve/req_check.h"
#include "runtime/rt_err.h"

typedef struct {
    const char *dtype;
    int ndim;
    int64_t shape[3];
    const void *data;
    size_t nbytes;
} tspec;

/* A forward request for expert.0 with the tensors t[0..n) under "inputs", decoded into *m. */
static void make_request(wire_msg *m, const tspec *t, int n)
{
    wire_out *o = wire_out_new();
    msgpack_packer *pk = wire_out_pk(o);
    wire_request_begin(o, 1, "forward", 4);
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, "expert.0");
    wire_pack_str(pk, "inputs");
    msgpack_pack_array(pk, (size_t)n);
    for (int i = 0; i < n; i++) {
        msgpack_pack_map(pk, 3);
        wire_pack_str(pk, "dtype");
        wire_pack_str(pk, t[i].dtype);
        wire_pack_str(pk, "shape");
        msgpack_pack_array(pk, (size_t)t[i].ndim);
        for (int d = 0; d < t[i].ndim; d++) msgpack_pack_int64(pk, t[i].shape[d]);
        wire_pack_str(pk, "data");
        msgpack_pack_bin(pk, t[i].nbytes);
        msgpack_pack_bin_body(pk, t[i].data, t[i].nbytes);
    }
    uint8_t *f;
    size_t len;
    cr_assert_eq(wire_out_flatten(o, &f, &len), 0);
    cr_assert_eq(wire_msg_decode(f, len, m, NULL, 0), 0);
}

/* Run the check of m's inputs against io[0..n); returns its code, the message in err. */
static int check(const wire_msg *m, const kern_io_info *io, int n, const uint8_t **rows, void **owned, char *err,
                 size_t errlen)
{
    int64_t B = -1;
    for (int i = 0; i < KERN_MAX_IO; i++) owned[i] = NULL;
    return req_check_tensors(m, "inputs", "expert.0", io, n, 64, &B, rows, owned, err, errlen);
}

static void free_owned(void **owned)
{
    for (int i = 0; i < KERN_MAX_IO; i++) free(owned[i]);
}

static float x[3 * 16];

Test(req_check, a_wrong_width_names_both_shapes)
{
    kern_io_info io[1];
    kern_io_set(&io[0], "x", KERN_F32, 16, 0);
    tspec t = {"float32", 2, {3, 11}, x, 3 * 11 * 4};
    wire_msg m;
    make_request(&m, &t, 1);
    const uint8_t *rows[KERN_MAX_IO];
    void *owned[KERN_MAX_IO];
    char err[384];
    cr_assert_eq(check(&m, io, 1, rows, owned, err, sizeof err), DMOE_ESHAPE);
    cr_assert_str_eq(err, "expert.0 takes input of shape [B, 16]; got [3, 11]");
    free_owned(owned);
    wire_msg_free(&m);
}

Test(req_check, a_wrong_rank_and_a_second_input_are_named)
{
    kern_io_info io[2];
    kern_io_set(&io[0], "x", KERN_F32, 5, 16);
    kern_io_set(&io[1], "mask", KERN_U8, 5, 0);
    io[1].mask = 1;
    uint8_t mask[3 * 7] = {0};
    tspec t[2] = {{"float32", 3, {3, 5, 16}, x, 0}, {"uint8", 2, {3, 7}, mask, sizeof mask}};
    float *big = calloc(3 * 5 * 16, sizeof(float));
    t[0].data = big;
    t[0].nbytes = 3 * 5 * 16 * 4;
    wire_msg m;
    make_request(&m, t, 2);
    const uint8_t *rows[KERN_MAX_IO];
    void *owned[KERN_MAX_IO];
    char err[384];
    cr_assert_eq(check(&m, io, 2, rows, owned, err, sizeof err), DMOE_ESHAPE);
    cr_assert_str_eq(err, "expert.0 takes inputs[1] (mask) of shape [B, 5]; got [3, 7]");
    free_owned(owned);
    wire_msg_free(&m);
    /* x with a missing dim */
    tspec flat = {"float32", 2, {3, 80}, big, 3 * 80 * 4};
    make_request(&m, &flat, 1);
    cr_assert_eq(check(&m, io, 1, rows, owned, err, sizeof err), DMOE_ESHAPE);
    cr_assert_str_eq(err, "expert.0 takes input of shape [B, 5, 16]; got [3, 80]");
    free_owned(owned);
    wire_msg_free(&m);
    free(big);
}

Test(req_check, a_wrong_count_and_a_wrong_dtype_are_named)
{
    kern_io_info io[2];
    kern_io_set(&io[0], "x", KERN_F32, 16, 0);
    kern_io_set(&io[1], "mask", KERN_F32, 16, 0);
    io[1].mask = 1;
    tspec t = {"float32", 2, {3, 16}, x, sizeof x};
    wire_msg m;
    make_request(&m, &t, 1);
    const uint8_t *rows[KERN_MAX_IO];
    void *owned[KERN_MAX_IO];
    char err[384];
    cr_assert_eq(check(&m, io, 2, rows, owned, err, sizeof err), DMOE_ESHAPE);
    cr_assert_str_eq(err, "expert.0 takes 2 tensors in inputs (x, mask); got 1");
    free_owned(owned);
    wire_msg_free(&m);
    uint8_t bytes[3 * 16] = {0};
    tspec u8 = {"uint8", 2, {3, 16}, bytes, sizeof bytes};
    make_request(&m, &u8, 1);
    cr_assert_eq(check(&m, io, 1, rows, owned, err, sizeof err), DMOE_ESHAPE);
    cr_assert_str_eq(err, "expert.0 takes input as float32; got uint8");
    free_owned(owned);
    wire_msg_free(&m);
}

/* det_dropout's float32 mask as hivemind sends it (int64), and as uint8 and bool: converted to float32. */
Test(req_check, masks_arrive_in_any_integer_dtype_and_leave_as_declared)
{
    kern_io_info io[2];
    kern_io_set(&io[0], "x", KERN_F32, 4, 0);
    kern_io_set(&io[1], "mask", KERN_F32, 4, 0);
    io[1].mask = 1;
    float xs[2 * 4] = {1, 2, 3, 4, 5, 6, 7, 8};
    int64_t m64[8] = {1, 0, 1, 1, 0, 0, 1, 0};
    uint8_t m8[8] = {1, 0, 1, 1, 0, 0, 1, 0};
    const char *dtypes[3] = {"int64", "uint8", "bool"};
    const void *datas[3] = {m64, m8, m8};
    size_t sizes[3] = {sizeof m64, sizeof m8, sizeof m8};
    for (int k = 0; k < 3; k++) {
        tspec t[2] = {{"float32", 2, {2, 4}, xs, sizeof xs}, {dtypes[k], 2, {2, 4}, datas[k], sizes[k]}};
        wire_msg m;
        make_request(&m, t, 2);
        const uint8_t *rows[KERN_MAX_IO];
        void *owned[KERN_MAX_IO];
        char err[384] = "";
        cr_assert_eq(check(&m, io, 2, rows, owned, err, sizeof err), 0, "%s: %s", dtypes[k], err);
        float got[8];
        memcpy(got, rows[1], sizeof got);
        for (int i = 0; i < 8; i++) cr_assert_eq(got[i], (float)m8[i], "%s element %d", dtypes[k], i);
        cr_assert_eq(rows[1], owned[1], "the converted mask is owned by the request");
        free_owned(owned);
        wire_msg_free(&m);
    }
    /* the transformer's uint8 mask as bool and int64 */
    kern_io_info tio[2];
    kern_io_set(&tio[0], "x", KERN_F32, 4, 0);
    kern_io_set(&tio[1], "mask", KERN_U8, 4, 0);
    tio[1].mask = 1;
    for (int k = 0; k < 3; k += 2) {
        tspec t[2] = {{"float32", 2, {2, 4}, xs, sizeof xs}, {dtypes[k], 2, {2, 4}, datas[k], sizes[k]}};
        wire_msg m;
        make_request(&m, t, 2);
        const uint8_t *rows[KERN_MAX_IO];
        void *owned[KERN_MAX_IO];
        char err[384] = "";
        cr_assert_eq(check(&m, tio, 2, rows, owned, err, sizeof err), 0, "%s: %s", dtypes[k], err);
        cr_assert_eq(memcmp(rows[1], m8, 8), 0, "%s", dtypes[k]);
        free_owned(owned);
        wire_msg_free(&m);
    }
}

Test(req_check, mask_values_other_than_0_and_1_are_refused)
{
    kern_io_info io[2];
    kern_io_set(&io[0], "x", KERN_F32, 4, 0);
    kern_io_set(&io[1], "mask", KERN_U8, 4, 0);
    io[1].mask = 1;
    float xs[4] = {1, 2, 3, 4};
    int64_t m64[4] = {0, 1, 7, 0};
    uint8_t m8[4] = {0, 2, 1, 1};
    float mf[4] = {0, 1, 0.5f, 1};
    tspec masks[3] = {{"int64", 2, {1, 4}, m64, sizeof m64}, {"uint8", 2, {1, 4}, m8, sizeof m8},
                      {"float32", 2, {1, 4}, mf, sizeof mf}};
    const char *want[3] = {"element 2", "element 1", "element 2"};
    for (int k = 0; k < 3; k++) {
        tspec t[2] = {{"float32", 2, {1, 4}, xs, sizeof xs}, masks[k]};
        wire_msg m;
        make_request(&m, t, 2);
        const uint8_t *rows[KERN_MAX_IO];
        void *owned[KERN_MAX_IO];
        char err[384] = "";
        cr_assert_eq(check(&m, io, 2, rows, owned, err, sizeof err), DMOE_EINVAL, "%s", masks[k].dtype);
        cr_assert(strstr(err, "inputs[1] (mask)") && strstr(err, want[k]) && strstr(err, "0 and 1"), "%s", err);
        free_owned(owned);
        wire_msg_free(&m);
    }
    /* int64 is a mask's dtype only: x as int64 is refused */
    int64_t xi[4] = {1, 2, 3, 4};
    tspec bad = {"int64", 2, {1, 4}, xi, sizeof xi};
    wire_msg m;
    make_request(&m, &bad, 1);
    const uint8_t *rows[KERN_MAX_IO];
    void *owned[KERN_MAX_IO];
    char err[384] = "";
    cr_assert_eq(check(&m, io, 1, rows, owned, err, sizeof err), DMOE_ESHAPE);
    cr_assert_str_eq(err, "expert.0 takes input as float32; got int64");
    free_owned(owned);
    wire_msg_free(&m);
}
