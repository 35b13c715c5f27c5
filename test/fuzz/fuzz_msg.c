/* fuzz_msg.c -- libFuzzer harness: one frame body through the message decoder (wire/wire_msg) and, for
 * the tensors of a forward or backward request, the tensor decoder and the decompressors
 * (wire/codec/wire_compress); for a reply, the client's entry rx_result (actors/net/remote.c).
 *
 * The input is a frame body, as wire_frame_feed hands it to the server: the server's entry is
 * wire_msg_decode, then, for "inputs" and "grad_outputs", wire_tensor_decode of each tensor and
 * wire_tensor_f32 (decompression) into a buffer of numel floats. The schema check that the server makes
 * before allocating that buffer (trailing dims from the expert, rows under --max_batch_size) stands here
 * as a cap of FUZZ_MAX_NUMEL values, so that a header's claim alone cannot make the harness allocate
 * gigabytes; within the cap, numel is taken as the header says, so the decompressors meet lengths that
 * do not match. Every other field of the root map goes through the scalar accessors.
 *
 * Invariants checked: a decoded tensor's uncompressed data is exactly numel * itemsize bytes; a tensor
 * packed again (wire_tensor_pack) decodes to the same fields and bytes; decompressed values compressed
 * again with the same scheme decompress (when finite). Everything is freed (LeakSanitizer).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "actors/net/remote.h"
#include "runtime/rt_err.h"
#include "test/fuzz/fuzz_common.h"
#include "wire/codec/wire_compress.h"
#include "wire/wire_msg.h"

/* The most floats the harness decompresses one tensor into (16 MiB). */
#define FUZZ_MAX_NUMEL ((size_t)1 << 22)

/* repack: t packed into a request and decoded again must give the same tensor. */
static void repack(const wire_tensor *t)
{
    wire_out *o = wire_out_new();
    FUZZ_CHECK(o != NULL);
    wire_request_begin(o, 7, "forward", 3);
    wire_pack_str(wire_out_pk(o), "t");
    FUZZ_CHECK(wire_tensor_pack(o, t, NULL, NULL) == 0);
    wire_msg m;
    char err[256];
    fuzz_decode_out(o, &m);
    wire_tensor u;
    FUZZ_CHECK(wire_tensor_decode(wire_map_get(&m.root, "t"), &u, err, sizeof err) == 0);
    FUZZ_CHECK(u.dtype == t->dtype && u.compression == t->compression && u.ndim == t->ndim);
    FUZZ_CHECK(memcmp(u.shape, t->shape, sizeof(int64_t) * (size_t)t->ndim) == 0);
    FUZZ_CHECK(u.numel == t->numel && u.nbytes == t->nbytes);
    FUZZ_CHECK(t->nbytes == 0 || memcmp(u.data, t->data, t->nbytes) == 0);
    wire_msg_free(&m);
}

/* recompress: finite values x[n] of t's shape, compressed with t's scheme, must decompress. */
static void recompress(const wire_tensor *t, const float *x)
{
    size_t rows = wire_tensor_rows(t);
    for (size_t i = 0; i < t->numel; i++)
        if (!isfinite(x[i])) return;
    size_t cap = wire_compress_bound_rows(t->compression, t->numel, rows);
    FUZZ_CHECK(cap != SIZE_MAX);
    uint8_t *buf = malloc(cap ? cap : 1);
    float *y = malloc(t->numel ? t->numel * sizeof(float) : 1);
    FUZZ_CHECK(buf && y);
    size_t len = 0;
    int rc = wire_compress_rows(t->compression, x, t->numel, rows, buf, &len);
    /* huge finite values can overflow a scheme's statistics: refused, never written past cap */
    FUZZ_CHECK(rc == 0 || rc == DMOE_ENONFINITE);
    if (rc == 0) {
        FUZZ_CHECK(len == cap);
        rc = wire_decompress_rows(t->compression, buf, len, t->numel, rows, y);
        FUZZ_CHECK(rc == 0 || rc == DMOE_ENONFINITE);
    }
    free(buf);
    free(y);
}

/* tensors: what the server does with the tensors of the array arr (NULL or not an array: nothing). */
static void tensors(const msgpack_object *arr)
{
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY) return;
    for (uint32_t i = 0; i < arr->via.array.size; i++) {
        wire_tensor t;
        char err[128];
        if (wire_tensor_decode(&arr->via.array.ptr[i], &t, err, sizeof err) != 0) continue;
        FUZZ_CHECK(t.ndim >= 0 && t.ndim <= WIRE_MAX_NDIM);
        if (t.compression == WIRE_COMP_NONE) FUZZ_CHECK(t.nbytes == t.numel * wire_dtype_size(t.dtype));
        repack(&t);
        if (t.dtype != WIRE_DT_F32 || t.numel > FUZZ_MAX_NUMEL) continue;
        float *x = malloc(t.numel ? t.numel * sizeof(float) : 1);
        FUZZ_CHECK(x != NULL);
        int rc = wire_tensor_f32(&t, x);
        FUZZ_CHECK(rc == 0 || rc == DMOE_EPROTO);
        if (rc == 0 && t.compression != WIRE_COMP_NONE) recompress(&t, x);
        free(x);
    }
}

/* scalars: every accessor on every value of the root map (they must refuse what they cannot read). */
static void scalars(const wire_msg *m)
{
    const msgpack_object_map *map = &m->root.via.map;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *v = &map->ptr[i].val;
        char s[WIRE_MAX_STR + 1];
        int64_t n;
        double d;
        if (wire_get_str(v, s, sizeof s) == 0) FUZZ_CHECK(strlen(s) < sizeof s);
        (void)wire_get_i64(v, &n);
        (void)wire_get_f64(v, &d);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    wire_msg m;
    char err[256];
    int rc = wire_msg_decode(fuzz_dup(data, size), size, &m, err, sizeof err);
    if (rc != 0) {
        FUZZ_CHECK(rc == DMOE_EPROTO || rc == DMOE_EINVAL || rc == DMOE_ENOMEM);
        return 0;
    }
    FUZZ_CHECK(m.root.type == MSGPACK_OBJECT_MAP);
    scalars(&m);
    if (m.kind == WIRE_REQUEST) {
        tensors(wire_map_get(&m.root, "inputs"));
        tensors(wire_map_get(&m.root, "grad_outputs"));
    } else if (m.kind == WIRE_REPLY_OK) {
        /* a client's entry: rx_result decodes (and decompresses) the tensors an expert answered */
        static const char *const keys[] = {"outputs", "grad_inputs"};
        for (int k = 0; k < 2; k++) {
            rx_tensor out[KERN_MAX_IO];
            int n = rx_result(&m, keys[k], out, KERN_MAX_IO, err, sizeof err);
            FUZZ_CHECK(n <= KERN_MAX_IO);
            for (int i = 0; i < n; i++) rx_tensor_free(&out[i]);
        }
    }
    wire_msg_free(&m);
    return 0;
}
