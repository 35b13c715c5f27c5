/* test_wire_msg.c -- message decoding and encoding (wire/wire_msg.c): round trips of requests,
 * replies and tensors; every malformed frame and field the decoder must refuse; the worked frame
 * example of wire/PROTOCOL.md. */
#include <criterion/criterion.h>
#include <event2/buffer.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "wire/wire_frame.h"
#include "wire/wire_msg.h"
#include "wire/wire_out.h"

/* wm_decode_bytes copies p[n] into a malloc'd frame and decodes it. */
static int wm_decode_bytes(const void *p, size_t n, wire_msg *m)
{
    uint8_t *f = malloc(n ? n : 1);
    memcpy(f, p, n);
    char err[200] = "";
    int rc = wire_msg_decode(f, n, m, err, sizeof err);
    if (rc) cr_assert(err[0] != 0, "a refused frame gets a message");
    return rc;
}

/* wm_decode_out flattens o and decodes it. */
static int wm_decode_out(wire_out *o, wire_msg *m)
{
    uint8_t *f;
    size_t n;
    cr_assert_eq(wire_out_flatten(o, &f, &n), 0);
    return wire_msg_decode(f, n, m, NULL, 0);
}

/* wm_envelope starts the map {"id": 1, key: <the caller packs it next>} on sb with msgpack-c's own
 * packer pk (the caller destroys sb). */
static void wm_envelope(msgpack_sbuffer *sb, msgpack_packer *pk, const char *key)
{
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(pk, 2);
    msgpack_pack_str_with_body(pk, "id", 2);
    msgpack_pack_uint64(pk, 1);
    msgpack_pack_str_with_body(pk, key, strlen(key));
}

/* ---- the PROTOCOL.md example ---- */

Test(wire_msg, protocol_md_ping_example, .timeout = 30)
{
    /* wire/PROTOCOL.md, "Worked example": {"id": 1, "method": "ping"} as a whole frame. */
    static const uint8_t expect[] = { 0x00, 0x00, 0x00, 0x11, 0x82, 0xa2, 0x69, 0x64, 0x01, 0xa6, 0x6d,
                                      0x65, 0x74, 0x68, 0x6f, 0x64, 0xa4, 0x70, 0x69, 0x6e, 0x67 };
    wire_out *o = wire_out_new();
    wire_request_begin(o, 1, "ping", 2);
    struct evbuffer *b = evbuffer_new();
    cr_assert_eq(wire_out_send(o, b), 0);
    cr_assert_eq(evbuffer_get_length(b), sizeof expect);
    cr_assert_arr_eq(evbuffer_pullup(b, -1), expect, sizeof expect);
    evbuffer_free(b);

    /* And the same bytes with msgpack-c's own packer onto a plain buffer. */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    wm_envelope(&sb, &pk, "method");
    msgpack_pack_str_with_body(&pk, "ping", 4);
    cr_assert_eq(sb.size, sizeof expect - 4);
    cr_assert_arr_eq(sb.data, expect + 4, sb.size);
    msgpack_sbuffer_destroy(&sb);

    wire_msg m;
    cr_assert_eq(wm_decode_bytes(expect + 4, sizeof expect - 4, &m), 0);
    cr_assert_eq(m.kind, WIRE_REQUEST);
    cr_assert_eq(m.id, 1);
    cr_assert_str_eq(m.method, "ping");
    wire_msg_free(&m);
}

/* ---- round trips ---- */

Test(wire_msg, request_round_trip, .timeout = 30)
{
    wire_out *o = wire_out_new();
    wire_request_begin(o, 0xFFFFFFFFFFFFull, "info", 3);
    wire_pack_str(wire_out_pk(o), "uid");
    wire_pack_str(wire_out_pk(o), "ffn.0.3");
    wire_msg m;
    cr_assert_eq(wm_decode_out(o, &m), 0);
    cr_assert_eq(m.kind, WIRE_REQUEST);
    cr_assert_eq(m.id, 0xFFFFFFFFFFFFull);
    cr_assert_str_eq(m.method, "info");
    char uid[64];
    cr_assert_eq(wire_get_str(wire_map_get(&m.root, "uid"), uid, sizeof uid), 0);
    cr_assert_str_eq(uid, "ffn.0.3");
    const msgpack_object *u = wire_map_get(&m.root, "uid");
    cr_assert((const uint8_t *)u->via.str.ptr > m.frame && (const uint8_t *)u->via.str.ptr < m.frame + 64,
              "strings point into the frame");
    cr_assert_null(wire_map_get(&m.root, "nope"));
    wire_msg_free(&m);
    wire_msg_free(&m); /* zeroed: no-op */
    wire_msg_free(NULL);
}

Test(wire_msg, reply_ok_round_trip, .timeout = 30)
{
    wire_out *o = wire_out_new();
    wire_reply_begin(o, 42);
    msgpack_pack_map(wire_out_pk(o), 1);
    wire_pack_str(wire_out_pk(o), "time");
    msgpack_pack_double(wire_out_pk(o), 1700000000.25);
    wire_msg m;
    cr_assert_eq(wm_decode_out(o, &m), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK);
    cr_assert_eq(m.id, 42);
    cr_assert_str_eq(m.method, "");
    double t;
    cr_assert_eq(wire_get_f64(wire_map_get(m.result, "time"), &t), 0);
    cr_assert_eq(t, 1700000000.25);
    wire_msg_free(&m);
}

Test(wire_msg, reply_err_round_trip, .timeout = 30)
{
    wire_msg m;
    cr_assert_eq(wm_decode_out(wire_error_reply(9, DMOE_ESHAPE, "input 0: expected [B, 16], got [B, 8]"), &m), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_ERR);
    cr_assert_eq(m.id, 9);
    cr_assert_eq(m.err_code, DMOE_ESHAPE);
    cr_assert_str_eq(m.err_msg, "input 0: expected [B, 16], got [B, 8]");
    const msgpack_object *code = wire_map_get(wire_map_get(&m.root, "error"), "code");
    cr_assert_eq(code->type, MSGPACK_OBJECT_POSITIVE_INTEGER, "codes travel positive");
    cr_assert_eq(code->via.u64, 7);
    wire_msg_free(&m);

    /* Positive code accepted the same; NULL message gets the code's name; a long message is cut. */
    cr_assert_eq(wm_decode_out(wire_error_reply(0, 11, NULL), &m), 0);
    cr_assert_eq(m.err_code, DMOE_EOVERLOAD);
    cr_assert_str_eq(m.err_msg, "overloaded");
    wire_msg_free(&m);
    char longmsg[1000];
    memset(longmsg, 'z', sizeof longmsg - 1);
    longmsg[sizeof longmsg - 1] = 0;
    cr_assert_eq(wm_decode_out(wire_error_reply(1, DMOE_EINVAL, longmsg), &m), 0);
    cr_assert_eq(strlen(m.err_msg), sizeof m.err_msg - 1);
    wire_msg_free(&m);
}

Test(wire_msg, tensor_round_trip, .timeout = 30)
{
    float x[2 * 3] = { 1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f };
    uint8_t mask[2] = { 1, 0 };
    wire_tensor t1 = { .dtype = WIRE_DT_F32, .ndim = 2, .shape = { 2, 3 }, .numel = 6,
                       .data = (const uint8_t *)x, .nbytes = sizeof x };
    wire_tensor t2 = { .dtype = WIRE_DT_U8, .ndim = 1, .shape = { 2 }, .numel = 2, .data = mask, .nbytes = 2 };
    wire_out *o = wire_out_new();
    wire_request_begin(o, 5, "forward", 4);
    msgpack_packer *pk = wire_out_pk(o);
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, "e");
    wire_pack_str(pk, "inputs");
    msgpack_pack_array(pk, 2);
    cr_assert_eq(wire_tensor_pack(o, &t1, NULL, NULL), 0);
    cr_assert_eq(wire_tensor_pack(o, &t2, NULL, NULL), 0);
    wire_msg m;
    cr_assert_eq(wm_decode_out(o, &m), 0);
    const msgpack_object *in = wire_map_get(&m.root, "inputs");
    cr_assert_eq(in->type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(in->via.array.size, 2);
    wire_tensor d;
    char err[128];
    cr_assert_eq(wire_tensor_decode(&in->via.array.ptr[0], &d, err, sizeof err), 0, "%s", err);
    cr_assert_eq(d.dtype, WIRE_DT_F32);
    cr_assert_eq(d.compression, WIRE_COMP_NONE);
    cr_assert_eq(d.ndim, 2);
    cr_assert(d.shape[0] == 2 && d.shape[1] == 3);
    cr_assert_eq(d.numel, 6);
    cr_assert_eq(d.nbytes, sizeof x);
    cr_assert(d.data >= m.frame && d.data + d.nbytes <= m.frame + 4096, "data points into the frame");
    float back[6];
    memcpy(back, d.data, sizeof back);
    cr_assert_arr_eq(back, x, sizeof x);
    cr_assert_eq(wire_tensor_decode(&in->via.array.ptr[1], &d, err, sizeof err), 0, "%s", err);
    cr_assert_eq(d.dtype, WIRE_DT_U8);
    cr_assert(d.data[0] == 1 && d.data[1] == 0);
    wire_msg_free(&m);
}

Test(wire_msg, dtype_table, .timeout = 30)
{
    wire_dtype d;
    cr_assert_eq(wire_dtype_parse("float32", 7, &d), 0);
    cr_assert_eq(d, WIRE_DT_F32);
    cr_assert_eq(wire_dtype_parse("uint8", 5, &d), 0);
    cr_assert_eq(d, WIRE_DT_U8);
    cr_assert_eq(wire_dtype_parse("float16", 7, &d), 0);
    cr_assert_eq(d, WIRE_DT_F16);
    cr_assert_eq(wire_dtype_parse("float3", 6, &d), DMOE_EINVAL);
    cr_assert_eq(wire_dtype_parse("float32x", 8, &d), DMOE_EINVAL);
    cr_assert_eq(wire_dtype_size(WIRE_DT_F32), 4);
    cr_assert_eq(wire_dtype_size(WIRE_DT_U8), 1);
    cr_assert_eq(wire_dtype_size(WIRE_DT_F16), 2);
    cr_assert_str_eq(wire_dtype_name(WIRE_DT_U8), "uint8");
    /* masks as hivemind sends them */
    cr_assert_eq(wire_dtype_parse("int64", 5, &d), 0);
    cr_assert_eq(d, WIRE_DT_I64);
    cr_assert_eq(wire_dtype_parse("bool", 4, &d), 0);
    cr_assert_eq(d, WIRE_DT_BOOL);
    cr_assert_eq(wire_dtype_size(WIRE_DT_I64), 8);
    cr_assert_eq(wire_dtype_size(WIRE_DT_BOOL), 1);
    cr_assert_str_eq(wire_dtype_name(WIRE_DT_I64), "int64");
    cr_assert_str_eq(wire_dtype_name(WIRE_DT_BOOL), "bool");
}

/* ---- field getters ---- */

Test(wire_msg, getters, .timeout = 30)
{
    msgpack_object o;
    memset(&o, 0, sizeof o);
    char buf[8];
    o.type = MSGPACK_OBJECT_STR;
    o.via.str.ptr = "abc";
    o.via.str.size = 3;
    cr_assert_eq(wire_get_str(&o, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "abc");
    cr_assert_eq(wire_get_str(&o, buf, 3), DMOE_ETOOBIG);
    o.via.str.ptr = "a\0c";
    cr_assert_eq(wire_get_str(&o, buf, sizeof buf), DMOE_EINVAL);
    cr_assert_eq(wire_get_str(NULL, buf, sizeof buf), DMOE_EINVAL);

    int64_t i;
    double f;
    o.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    o.via.u64 = 12;
    cr_assert_eq(wire_get_i64(&o, &i), 0);
    cr_assert_eq(i, 12);
    cr_assert_eq(wire_get_f64(&o, &f), 0);
    cr_assert_eq(f, 12.0);
    o.via.u64 = (uint64_t)INT64_MAX + 1;
    cr_assert_eq(wire_get_i64(&o, &i), DMOE_EINVAL);
    o.type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
    o.via.i64 = -5;
    cr_assert_eq(wire_get_i64(&o, &i), 0);
    cr_assert_eq(i, -5);
    o.type = MSGPACK_OBJECT_FLOAT64;
    o.via.f64 = 0.125;
    cr_assert_eq(wire_get_i64(&o, &i), DMOE_EINVAL);
    cr_assert_eq(wire_get_f64(&o, &f), 0);
    cr_assert_eq(f, 0.125);
    o.type = MSGPACK_OBJECT_NIL;
    cr_assert_eq(wire_get_f64(&o, &f), DMOE_EINVAL);
}

/* ---- malformed frames ---- */

#define WM_EXPECT(code, ...)                                                                  \
    do {                                                                                      \
        static const uint8_t wm_b_[] = { __VA_ARGS__ };                                       \
        wire_msg wm_m_;                                                                       \
        int wm_rc_ = wm_decode_bytes(wm_b_, sizeof wm_b_, &wm_m_);                            \
        cr_assert_eq(wm_rc_, code, "line %d: got %d", __LINE__, wm_rc_);                      \
        if (wm_rc_ == 0) wire_msg_free(&wm_m_);                                               \
    } while (0)

Test(wire_msg, malformed_frames, .timeout = 30)
{
    WM_EXPECT(DMOE_EPROTO, 0xc1);                                    /* not msgpack */
    WM_EXPECT(DMOE_EPROTO, 'G', 'E', 'T', ' ', '/');                 /* not msgpack either */
    WM_EXPECT(DMOE_EPROTO, 0x91, 0x01);                              /* top level array */
    WM_EXPECT(DMOE_EPROTO, 0x05);                                    /* top level int */
    WM_EXPECT(DMOE_EPROTO, 0xa2, 'i', 'd');                          /* top level str */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa2, 'i', 'd');                    /* truncated: value missing */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa2, 'i');                         /* truncated inside a str */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa2, 'i', 'd', 0xcd, 0x01);        /* truncated uint16 */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa1, 'x', 0xdb, 0x00, 0x00);       /* truncated str32 length */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa1, 'x', 0xc6, 0x7f, 0xff, 0xff, 0xff, 0x00); /* bin over the end */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff); /* 4G-element array */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa1, 'x', 0xdc, 0x00, 0x03, 0x01, 0x02); /* 3 announced, 2 there */
    WM_EXPECT(DMOE_EPROTO, 0xdf, 0xff, 0xff, 0xff, 0xff, 0x00);      /* 4G-pair map */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa1, 'x', 0x82, 0x01, 0x02, 0x03); /* map pairs need 2 bytes each */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa1, 'x', 0xd4, 0x01, 0x02);       /* fixext */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa1, 'x', 0xc7, 0x01, 0x05, 0x00); /* ext8 */
    WM_EXPECT(DMOE_EPROTO, 0x81, 0xa2, 'i', 'd', 0x01, 0x00);        /* trailing byte */
    WM_EXPECT(DMOE_EPROTO, 0x80, 0x80);                              /* two maps */
}

Test(wire_msg, empty_frame_refused, .timeout = 30)
{
    wire_msg m;
    uint8_t *f = malloc(1);
    cr_assert_eq(wire_msg_decode(f, 0, &m, NULL, 0), DMOE_EPROTO);
}

/* wm_nested builds {"id": 1, "result": [[[...1...]]]} with `levels` arrays around 1. */
static uint8_t *wm_nested(int levels, size_t *n)
{
    uint8_t *b = malloc(16 + (size_t)levels);
    size_t at = 0;
    const uint8_t head[] = { 0x82, 0xa2, 'i', 'd', 0x01, 0xa6, 'r', 'e', 's', 'u', 'l', 't' };
    memcpy(b, head, sizeof head);
    at = sizeof head;
    for (int i = 0; i < levels; i++) b[at++] = 0x91;
    b[at++] = 0x01;
    *n = at;
    return b;
}

Test(wire_msg, depth_limit, .timeout = 30)
{
    size_t n;
    wire_msg m;
    uint8_t *b = wm_nested(WIRE_MAX_DEPTH - 1, &n); /* with the top map: exactly WIRE_MAX_DEPTH */
    cr_assert_eq(wire_msg_decode(b, n, &m, NULL, 0), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK);
    wire_msg_free(&m);
    b = wm_nested(WIRE_MAX_DEPTH, &n);
    cr_assert_eq(wire_msg_decode(b, n, &m, NULL, 0), DMOE_EPROTO);
    b = wm_nested(100000, &n); /* a depth bomb */
    char err[128];
    cr_assert_eq(wire_msg_decode(b, n, &m, err, sizeof err), DMOE_EPROTO);
    cr_assert(strstr(err, "deeper") != NULL, "%s", err);
}

Test(wire_msg, empty_containers_and_scalars_ok, .timeout = 30)
{
    /* {"id": 3, "result": [nil, true, -1, 1.0f, {}, [], "", bin0]} */
    WM_EXPECT(0, 0x82, 0xa2, 'i', 'd', 0x03, 0xa6, 'r', 'e', 's', 'u', 'l', 't', 0x98, 0xc0, 0xc3, 0xff, 0xca,
              0x3f, 0x80, 0x00, 0x00, 0x80, 0x90, 0xa0, 0xc4, 0x00);
}

Test(wire_msg, envelope_errors, .timeout = 30)
{
    wire_msg m;
    /* {"method": "ping"}: no id. */
    static const uint8_t noid[] = { 0x81, 0xa6, 'm', 'e', 't', 'h', 'o', 'd', 0xa4, 'p', 'i', 'n', 'g' };
    cr_assert_eq(wm_decode_bytes(noid, sizeof noid, &m), DMOE_EINVAL);
    cr_assert_eq(m.id, 0);
    /* id negative, id a string, id a float */
    WM_EXPECT(DMOE_EINVAL, 0x82, 0xa2, 'i', 'd', 0xff, 0xa6, 'm', 'e', 't', 'h', 'o', 'd', 0xa1, 'x');
    WM_EXPECT(DMOE_EINVAL, 0x82, 0xa2, 'i', 'd', 0xa1, '1', 0xa6, 'm', 'e', 't', 'h', 'o', 'd', 0xa1, 'x');
    WM_EXPECT(DMOE_EINVAL, 0x82, 0xa2, 'i', 'd', 0xca, 0x3f, 0x80, 0, 0, 0xa6, 'm', 'e', 't', 'h', 'o', 'd',
              0xa1, 'x');
    /* {"id": 3, "method": 5}: method not a string; the id is still reported. */
    static const uint8_t badm[] = { 0x82, 0xa2, 'i', 'd', 0x03, 0xa6, 'm', 'e', 't', 'h', 'o', 'd', 0x05 };
    cr_assert_eq(wm_decode_bytes(badm, sizeof badm, &m), DMOE_EINVAL);
    cr_assert_eq(m.id, 3);
    /* method "" and a method of 32 bytes */
    WM_EXPECT(DMOE_EINVAL, 0x82, 0xa2, 'i', 'd', 0x03, 0xa6, 'm', 'e', 't', 'h', 'o', 'd', 0xa0);
    wire_out *o = wire_out_new();
    wire_request_begin(o, 4, "abcdefghijklmnopqrstuvwxyz012345", 2);
    cr_assert_eq(wm_decode_out(o, &m), DMOE_EINVAL);
    cr_assert_eq(m.id, 4);
    o = wire_out_new();
    wire_request_begin(o, 4, "abcdefghijklmnopqrstuvwxyz01234", 2); /* 31 bytes: fine */
    cr_assert_eq(wm_decode_out(o, &m), 0);
    wire_msg_free(&m);
    /* {"id": 3}: neither method, result nor error */
    WM_EXPECT(DMOE_EINVAL, 0x81, 0xa2, 'i', 'd', 0x03);
    /* {"id": 3, "error": 5} and {"id": 3, "error": {"message": "x"}} */
    WM_EXPECT(DMOE_EINVAL, 0x82, 0xa2, 'i', 'd', 0x03, 0xa5, 'e', 'r', 'r', 'o', 'r', 0x05);
    WM_EXPECT(DMOE_EINVAL, 0x82, 0xa2, 'i', 'd', 0x03, 0xa5, 'e', 'r', 'r', 'o', 'r', 0x81, 0xa7, 'm', 'e',
              's', 's', 'a', 'g', 'e', 0xa1, 'x');
    /* {"id": 3, "error": nil, "result": 1}: a nil error means success */
    WM_EXPECT(0, 0x83, 0xa2, 'i', 'd', 0x03, 0xa5, 'e', 'r', 'r', 'o', 'r', 0xc0, 0xa6, 'r', 'e', 's', 'u',
              'l', 't', 0x01);
}

/* ---- tensors: every refusal ---- */

typedef struct {
    const char *dtype;       /* NULL: no dtype key */
    int ndim;                /* -1: no shape key */
    int64_t shape[12];
    int64_t data_len;        /* -1: no data key; -2: data as a str */
    const char *compression; /* NULL: absent */
} wm_tspec;

/* wm_tensor_rc packs a tensor map from spec into {"id":1,"result":T}, decodes it and returns the
 * result of wire_tensor_decode. */
static int wm_tensor_rc(const wm_tspec *s)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    wm_envelope(&sb, &pk, "result");
    size_t n = (s->dtype != NULL) + (s->ndim >= 0) + (s->data_len != -1) + (s->compression != NULL);
    msgpack_pack_map(&pk, n);
    if (s->dtype) {
        msgpack_pack_str_with_body(&pk, "dtype", 5);
        msgpack_pack_str_with_body(&pk, s->dtype, strlen(s->dtype));
    }
    if (s->ndim >= 0) {
        msgpack_pack_str_with_body(&pk, "shape", 5);
        msgpack_pack_array(&pk, (size_t)s->ndim);
        for (int i = 0; i < s->ndim; i++) msgpack_pack_int64(&pk, s->shape[i]);
    }
    if (s->data_len >= 0) {
        msgpack_pack_str_with_body(&pk, "data", 4);
        uint8_t *z = calloc(1, (size_t)s->data_len + 1);
        msgpack_pack_bin_with_body(&pk, z, (size_t)s->data_len);
        free(z);
    } else if (s->data_len == -2) {
        msgpack_pack_str_with_body(&pk, "data", 4);
        msgpack_pack_str_with_body(&pk, "abcd", 4);
    }
    if (s->compression) {
        msgpack_pack_str_with_body(&pk, "compression", 11);
        msgpack_pack_str_with_body(&pk, s->compression, strlen(s->compression));
    }
    wire_msg m;
    cr_assert_eq(wm_decode_bytes(sb.data, sb.size, &m), 0);
    msgpack_sbuffer_destroy(&sb);
    wire_tensor t;
    char err[160] = "";
    int rc = wire_tensor_decode(m.result, &t, err, sizeof err);
    if (rc) cr_assert(err[0], "refusals explain themselves");
    wire_msg_free(&m);
    return rc;
}

Test(wire_msg, tensor_refusals, .timeout = 30)
{
    const int64_t big = (int64_t)1 << 40;
    struct {
        wm_tspec s;
        int rc;
    } cases[] = {
        { { "float32", 2, { 2, 3 }, 24, NULL }, 0 },
        { { "float32", 2, { 2, 3 }, 24, "NONE" }, 0 },
        { { "uint8", 1, { 5 }, 5, NULL }, 0 },
        { { "float32", 0, { 0 }, 4, NULL }, 0 },                 /* a scalar */
        { { "float32", 2, { 0, 3 }, 0, NULL }, 0 },              /* zero rows decode; the node refuses */
        { { "complex64", 1, { 1 }, 8, NULL }, DMOE_EINVAL },     /* bad dtype */
        { { "float32", 2, { 2, -3 }, 24, NULL }, DMOE_EINVAL },  /* negative dim */
        { { "float32", 9, { 1, 1, 1, 1, 1, 1, 1, 1, 1 }, 4, NULL }, DMOE_ETOOBIG }, /* too many dims */
        { { "float32", 8, { 1, 1, 1, 1, 1, 1, 1, 1 }, 4, NULL }, 0 },
        { { "float32", 2, { big, big }, 0, NULL }, DMOE_ETOOBIG },  /* numel overflows */
        { { "float32", 1, { (int64_t)1 << 62 }, 0, NULL }, DMOE_ETOOBIG }, /* numel * 4 overflows */
        { { "float32", 2, { 2, 3 }, 23, NULL }, DMOE_ESHAPE },   /* data length mismatch */
        { { "float32", 2, { 2, 3 }, 25, NULL }, DMOE_ESHAPE },
        { { "float32", 2, { 2, 3 }, 24, "ZSTD" }, DMOE_EINVAL }, /* unknown compression */
        { { NULL, 2, { 2, 3 }, 24, NULL }, DMOE_EINVAL },        /* no dtype */
        { { "float32", -1, { 0 }, 24, NULL }, DMOE_EINVAL },     /* no shape */
        { { "float32", 2, { 2, 3 }, -1, NULL }, DMOE_EINVAL },   /* no data */
        { { "float32", 1, { 1 }, -2, NULL }, DMOE_EINVAL },      /* data is a str */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_assert_eq(wm_tensor_rc(&cases[i].s), cases[i].rc, "case %zu", i);

    wire_tensor t;
    msgpack_object notmap;
    memset(&notmap, 0, sizeof notmap);
    notmap.type = MSGPACK_OBJECT_ARRAY;
    cr_assert_eq(wire_tensor_decode(&notmap, &t, NULL, 0), DMOE_EINVAL);
}

Test(wire_msg, object_count_bounded_before_decoding, .timeout = 30)
{
    /* {"id": 1, "x": [nil * 1000]}: 1 map + 2 keys + id + array + 1000 nils = 1004 objects */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    wm_envelope(&sb, &pk, "result");
    msgpack_pack_array(&pk, 1000);
    for (int i = 0; i < 1000; i++) msgpack_pack_nil(&pk);
    size_t objects = 0;
    cr_assert_eq(wire_msg_count((const uint8_t *)sb.data, sb.size, &objects, NULL, 0), 0);
    cr_assert_eq(objects, 1005, "map, 2 keys, the id, the array, 1000 nils: %zu", objects);
    wire_msg m;
    uint8_t *f = malloc(sb.size);
    memcpy(f, sb.data, sb.size);
    char err[160] = "";
    cr_assert_eq(wire_msg_decode_max(f, sb.size, 1004, &m, err, sizeof err), DMOE_ETOOBIG);
    cr_assert(strstr(err, "1005"), "%s", err);
    f = malloc(sb.size);
    memcpy(f, sb.data, sb.size);
    cr_assert_eq(wire_msg_decode_max(f, sb.size, 1005, &m, NULL, 0), 0);
    cr_assert_eq(m.objects, 1005);
    cr_assert_geq(wire_msg_decode_cost(m.objects), 1005 * sizeof(msgpack_object), "the tree is charged");
    wire_msg_free(&m);
    msgpack_sbuffer_destroy(&sb);
}
