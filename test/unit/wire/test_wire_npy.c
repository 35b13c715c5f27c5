/* test_wire_npy.c -- .npy reading and writing (wire/wire_npy.c): round trips, hand-built headers of
 * versions 1.0 and 2.0 written the many ways numpy and people write them, and every refusal. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/rt_err.h"
#include "wire/codec/wire_npy.h"

/* wn_path returns a per-process temporary path for name. */
static const char *wn_path(const char *name)
{
    static char p[256];
    snprintf(p, sizeof p, "/tmp/dmoe_test_npy_%d_%s.npy", (int)getpid(), name);
    return p;
}

/* wn_write_raw writes version major.0 with header text hdr (padded as given) and data. */
static void wn_write_raw(const char *path, int major, const char *hdr, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    size_t hl = strlen(hdr);
    uint8_t pre[12] = { 0x93, 'N', 'U', 'M', 'P', 'Y', (uint8_t)major, 0 };
    size_t pl;
    if (major == 1) {
        pre[8] = (uint8_t)hl;
        pre[9] = (uint8_t)(hl >> 8);
        pl = 10;
    } else {
        pre[8] = (uint8_t)hl;
        pre[9] = (uint8_t)(hl >> 8);
        pre[10] = (uint8_t)(hl >> 16);
        pre[11] = (uint8_t)(hl >> 24);
        pl = 12;
    }
    fwrite(pre, 1, pl, f);
    fwrite(hdr, 1, hl, f);
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

/* wn_read reads path, returning the code; on success fills the outputs. */
typedef struct {
    wire_dtype dt;
    int ndim;
    int64_t shape[WIRE_MAX_NDIM];
    void *data;
    size_t nbytes;
    char err[256];
} wn_arr;

static int wn_read(const char *path, wn_arr *a)
{
    memset(a, 0, sizeof *a);
    int rc = wire_npy_read(path, &a->dt, &a->ndim, a->shape, &a->data, &a->nbytes, a->err, sizeof a->err);
    if (rc) cr_assert(a->err[0], "refusals explain themselves");
    return rc;
}

Test(wire_npy, write_then_read_f32, .timeout = 30)
{
    float x[2 * 3 * 4];
    for (int i = 0; i < 24; i++) x[i] = (float)i * 0.5f - 3.0f;
    int64_t shape[3] = { 2, 3, 4 };
    const char *p = wn_path("rt");
    char err[128];
    cr_assert_eq(wire_npy_write(p, WIRE_DT_F32, 3, shape, x, err, sizeof err), 0, "%s", err);

    FILE *f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fclose(f);
    cr_assert_eq((sz - (long)sizeof x) % 64, 0, "data starts on a 64-byte boundary");

    wn_arr a;
    cr_assert_eq(wn_read(p, &a), 0, "%s", a.err);
    cr_assert_eq(a.dt, WIRE_DT_F32);
    cr_assert_eq(a.ndim, 3);
    cr_assert(a.shape[0] == 2 && a.shape[1] == 3 && a.shape[2] == 4);
    cr_assert_eq(a.nbytes, sizeof x);
    cr_assert_arr_eq(a.data, x, sizeof x);
    free(a.data);
    unlink(p);
}

Test(wire_npy, write_then_read_edge_shapes, .timeout = 30)
{
    const char *p = wn_path("edge");
    wn_arr a;
    float one = 2.5f;
    cr_assert_eq(wire_npy_write(p, WIRE_DT_F32, 0, NULL, &one, NULL, 0), 0); /* a scalar */
    cr_assert_eq(wn_read(p, &a), 0, "%s", a.err);
    cr_assert_eq(a.ndim, 0);
    cr_assert_eq(a.nbytes, 4);
    cr_assert_eq(*(float *)a.data, 2.5f);
    free(a.data);

    int64_t s1[1] = { 5 };
    uint8_t m[5] = { 1, 0, 1, 1, 0 };
    cr_assert_eq(wire_npy_write(p, WIRE_DT_U8, 1, s1, m, NULL, 0), 0);
    cr_assert_eq(wn_read(p, &a), 0, "%s", a.err);
    cr_assert_eq(a.dt, WIRE_DT_U8);
    cr_assert_eq(a.ndim, 1);
    cr_assert_arr_eq(a.data, m, 5);
    free(a.data);

    int64_t s0[2] = { 0, 7 };
    cr_assert_eq(wire_npy_write(p, WIRE_DT_F32, 2, s0, NULL, NULL, 0), 0); /* zero elements */
    cr_assert_eq(wn_read(p, &a), 0, "%s", a.err);
    cr_assert_eq(a.nbytes, 0);
    cr_assert_not_null(a.data);
    free(a.data);

    int64_t neg[1] = { -1 };
    cr_assert_eq(wire_npy_write(p, WIRE_DT_F32, 1, neg, &one, NULL, 0), DMOE_EINVAL);
    cr_assert_eq(wire_npy_write(p, WIRE_DT_F16, 1, s1, &one, NULL, 0), DMOE_EINVAL);
    cr_assert_eq(wire_npy_write(p, WIRE_DT_F32, 9, s1, &one, NULL, 0), DMOE_EINVAL);
    unlink(p);
}

Test(wire_npy, hand_built_headers, .timeout = 30)
{
    float x[6] = { 1, 2, 3, 4, 5, 6 };
    static const struct {
        int major;
        const char *hdr;
        int ndim;
    } ok[] = {
        { 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                    \n", 2 },
        { 1, "{'descr':'<f4','fortran_order':False,'shape':(2,3)}\n", 2 },
        { 1, "{ 'shape' : ( 6 , ) , 'fortran_order' : False , 'descr' : '<f4' }", 1 },
        { 1, "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (3L, 2L)}\n", 2 },
        { 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }   \n", 3 },
        { 3, "{'fortran_order': False, 'descr': '<f4', 'shape': (6,)}\n", 1 },
    };
    const char *p = wn_path("hand");
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        wn_write_raw(p, ok[i].major, ok[i].hdr, x, sizeof x);
        wn_arr a;
        cr_assert_eq(wn_read(p, &a), 0, "case %zu: %s", i, a.err);
        cr_assert_eq(a.ndim, ok[i].ndim, "case %zu", i);
        cr_assert_arr_eq(a.data, x, sizeof x);
        free(a.data);
    }
    unlink(p);
}

Test(wire_npy, f8_and_b1_converted, .timeout = 30)
{
    const char *p = wn_path("conv");
    double d[3] = { 1.5, -0.25, 1e10 };
    wn_write_raw(p, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }\n", d, sizeof d);
    wn_arr a;
    cr_assert_eq(wn_read(p, &a), 0, "%s", a.err);
    cr_assert_eq(a.dt, WIRE_DT_F32);
    cr_assert_eq(a.nbytes, 12);
    float *f = a.data;
    cr_assert(f[0] == 1.5f && f[1] == -0.25f && f[2] == 1e10f);
    free(a.data);

    uint8_t b[4] = { 1, 0, 0, 1 };
    wn_write_raw(p, 1, "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 2), }\n", b, sizeof b);
    cr_assert_eq(wn_read(p, &a), 0, "%s", a.err);
    cr_assert_eq(a.dt, WIRE_DT_U8);
    cr_assert_arr_eq(a.data, b, 4);
    free(a.data);
    unlink(p);
}

Test(wire_npy, refusals, .timeout = 30)
{
    float x[6] = { 0 };
    static const struct {
        const char *hdr;
        size_t nbytes;
        int rc;
        const char *word; /* must appear in the message */
    } bad[] = {
        { "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n", 24, DMOE_EINVAL, "Fortran" },
        { "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }\n", 24, DMOE_EINVAL, "big-endian" },
        { "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }\n", 24, DMOE_EINVAL, "not supported" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }\n", 24, DMOE_ESHAPE, "dtype say" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }\n", 24, DMOE_ESHAPE, "dtype say" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }\n", 4, DMOE_ETOOBIG, "dims" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }\n", 24, DMOE_EPROTO, "shape" },
        { "{'descr': '<f4', 'fortran_order': False, }\n", 24, DMOE_EPROTO, "lacks" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'extra': 1}\n", 24, DMOE_EPROTO, "extra" },
        { "{'descr': '<f4', 'fortran_order': 0, 'shape': (6,)}\n", 24, DMOE_EPROTO, "fortran_order" },
        { "['descr', '<f4']\n", 24, DMOE_EPROTO, "dict" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (6,)} x\n", 24, DMOE_EPROTO, "after" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}\n", 24, DMOE_ETOOBIG,
          "overflow" },
    };
    const char *p = wn_path("bad");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        wn_write_raw(p, 1, bad[i].hdr, x, bad[i].nbytes);
        wn_arr a;
        cr_assert_eq(wn_read(p, &a), bad[i].rc, "case %zu: %s", i, a.err);
        cr_assert(strstr(a.err, bad[i].word) != NULL, "case %zu: \"%s\" lacks \"%s\"", i, a.err, bad[i].word);
        cr_assert_null(a.data);
    }

    /* Not an npy file; an unknown version; a header length past the end; no file at all. */
    FILE *f = fopen(p, "wb");
    fputs("hello, this is not numpy", f);
    fclose(f);
    wn_arr a;
    cr_assert_eq(wn_read(p, &a), DMOE_EPROTO);
    wn_write_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }\n", x, sizeof x);
    f = fopen(p, "r+b");
    fseek(f, 6, SEEK_SET);
    fputc(7, f);
    fclose(f);
    cr_assert_eq(wn_read(p, &a), DMOE_EPROTO);
    cr_assert(strstr(a.err, "version") != NULL, "%s", a.err);
    wn_write_raw(p, 1, "{", NULL, 0);
    f = fopen(p, "r+b");
    fseek(f, 8, SEEK_SET);
    fputc(0xff, f);
    fclose(f);
    cr_assert_eq(wn_read(p, &a), DMOE_EPROTO);
    unlink(p);
    cr_assert_eq(wn_read(p, &a), DMOE_ENOTFOUND);
}
