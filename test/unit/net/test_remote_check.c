/* test_remote_check.c -- rx_tensor_check / rx_reply_check (actors/net/remote.h), the one check of what
 * an expert answered: count, dtype, rows, row shape and NaN/Inf, with and without the expert's schema. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "actors/net/remote.h"
#include "runtime/rt_err.h"

static rx_tensor make(wire_dtype dt, int64_t b, int64_t w)
{
    rx_tensor t;
    int64_t shape[2] = { b, w };
    cr_assert_eq(rx_tensor_alloc(&t, dt, 2, shape), 0);
    memset(t.buf->data, 0, t.buf->nbytes);
    return t;
}

/* a schema of two inputs (float32 [-1, 4] and a uint8 mask [-1, 4]) and two outputs (float32 [-1, 4],
 * uint8 [-1, 2]) */
static rx_schema schema(void)
{
    rx_schema s;
    memset(&s, 0, sizeof s);
    s.n_in = 2;
    s.n_out = 2;
    s.in[0] = (kern_io_info){ .dtype = KERN_F32, .ndim = 1, .dims = { 4 } };
    s.in[1] = (kern_io_info){ .dtype = KERN_U8, .ndim = 1, .dims = { 4 } };
    s.out[0] = (kern_io_info){ .dtype = KERN_F32, .ndim = 1, .dims = { 4 } };
    s.out[1] = (kern_io_info){ .dtype = KERN_U8, .ndim = 1, .dims = { 2 } };
    return s;
}

Test(remote_check, answers_against_the_schema)
{
    rx_schema s = schema();
    rx_tensor in[2] = { make(WIRE_DT_F32, 3, 4), make(WIRE_DT_U8, 3, 4) };
    rx_tensor out[2] = { make(WIRE_DT_F32, 3, 4), make(WIRE_DT_U8, 3, 2) };
    char err[256];
    cr_assert_eq(rx_reply_check(&s, 0, in, 2, out, 2, 1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rx_reply_check(&s, 0, in, 2, out, 1, 1, err, sizeof err), DMOE_ESHAPE);
    cr_assert(strstr(err, "1 outputs, expected 2"), "%s", err);
    /* the uint8 output where float32 is declared */
    rx_tensor swapped[2] = { out[1], out[0] };
    cr_assert_eq(rx_reply_check(&s, 0, in, 2, swapped, 2, 1, err, sizeof err), DMOE_ESHAPE);
    cr_assert(strstr(err, "outputs[0]: dtype uint8, expected float32"), "%s", err);
    /* NaN counts only when asked */
    rx_tensor_f32(&out[0])[5] = NAN;
    cr_assert_eq(rx_reply_check(&s, 0, in, 2, out, 2, 1, err, sizeof err), DMOE_ENONFINITE);
    cr_assert(strstr(err, "outputs[0] contains NaN or Inf"), "%s", err);
    cr_assert_eq(rx_reply_check(&s, 0, in, 2, out, 2, 0, err, sizeof err), 0, "%s", err);
    /* a backward: one float32 gradient per input, the mask's too, with the input's shape */
    rx_tensor g[2] = { make(WIRE_DT_F32, 3, 4), make(WIRE_DT_F32, 3, 4) };
    cr_assert_eq(rx_reply_check(&s, 1, in, 2, g, 2, 1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rx_reply_check(&s, 1, in, 2, g, 1, 1, err, sizeof err), DMOE_ESHAPE);
    rx_tensor g16 = make(WIRE_DT_F16, 3, 4), gwrong[2] = { g[0], g16 };
    cr_assert_eq(rx_reply_check(&s, 1, in, 2, gwrong, 2, 1, err, sizeof err), DMOE_ESHAPE);
    cr_assert(strstr(err, "grad_inputs[1]: dtype float16, expected float32"), "%s", err);
    for (int i = 0; i < 2; i++) { rx_tensor_free(&in[i]); rx_tensor_free(&out[i]); rx_tensor_free(&g[i]); }
    rx_tensor_free(&g16);
}

Test(remote_check, answers_against_the_request_without_a_schema)
{
    rx_tensor in[2] = { make(WIRE_DT_F32, 3, 4), make(WIRE_DT_U8, 3, 4) };
    rx_tensor ok = make(WIRE_DT_F32, 3, 7), u8 = make(WIRE_DT_U8, 3, 1), f16 = make(WIRE_DT_F16, 3, 4);
    rx_tensor rows = make(WIRE_DT_F32, 2, 4);
    char err[256];
    /* a forward: any row shape, float32 or uint8, the request's rows */
    cr_assert_eq(rx_reply_check(NULL, 0, in, 2, &ok, 1, 1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rx_reply_check(NULL, 0, in, 2, &u8, 1, 1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rx_reply_check(NULL, 0, in, 2, &f16, 1, 1, err, sizeof err), DMOE_ESHAPE);
    cr_assert(strstr(err, "expected float32 or uint8"), "%s", err);
    cr_assert_eq(rx_reply_check(NULL, 0, in, 2, &rows, 1, 1, err, sizeof err), DMOE_ESHAPE);
    cr_assert(strstr(err, "shape [2, 4], expected [3, ...]"), "%s", err);
    cr_assert_eq(rx_reply_check(NULL, 0, in, 2, &ok, 0, 1, err, sizeof err), DMOE_ESHAPE);
    /* a backward: exactly one float32 gradient per input, of its shape */
    rx_tensor g[2] = { make(WIRE_DT_F32, 3, 4), make(WIRE_DT_F32, 3, 4) };
    cr_assert_eq(rx_reply_check(NULL, 1, in, 2, g, 2, 1, err, sizeof err), 0, "%s", err);
    rx_tensor wide[2] = { g[0], ok };
    cr_assert_eq(rx_reply_check(NULL, 1, in, 2, wide, 2, 1, err, sizeof err), DMOE_ESHAPE);
    cr_assert(strstr(err, "grad_inputs[1]: shape [3, 7], expected [3, 4]"), "%s", err);
    cr_assert_eq(rx_reply_check(NULL, 1, in, 2, g, 1, 1, err, sizeof err), DMOE_ESHAPE);
    /* one tensor, any width (the layer's first answer), Inf refused when asked */
    int64_t any = 0;
    rx_tensor_f32(&ok)[20] = INFINITY;
    cr_assert_eq(rx_tensor_check(&ok, WIRE_DT_F32, 3, 1, &any, 0, "outputs[0]", err, sizeof err), 0, "%s", err);
    cr_assert_eq(rx_tensor_check(&ok, WIRE_DT_F32, 3, 1, &any, 1, "outputs[0]", err, sizeof err), DMOE_ENONFINITE);
    int64_t four = 4;
    cr_assert_eq(rx_tensor_check(&ok, WIRE_DT_F32, 3, 1, &four, 0, "outputs[0]", err, sizeof err), DMOE_ESHAPE);
    cr_assert(strstr(err, "outputs[0]: shape [3, 7], expected [3, 4]"), "%s", err);
    for (int i = 0; i < 2; i++) { rx_tensor_free(&in[i]); rx_tensor_free(&g[i]); }
    rx_tensor_free(&ok);
    rx_tensor_free(&u8);
    rx_tensor_free(&f16);
    rx_tensor_free(&rows);
}
