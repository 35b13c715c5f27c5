/* req_check.c -- checking a request's tensors against its expert's schema (see req_check.h). */
#include "actors/serve/req_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/serve/actcache.h"
#include "runtime/rt_err.h"
#include "wire/codec/wire_compress.h"

/* Whether n little-endian float32 values at unaligned p are all finite (exponent not all ones). */
static int finite_f32_bytes(const uint8_t *p, size_t n)
{
    uint32_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, p + 4 * i, 4);
        if ((u & 0x7f800000u) == 0x7f800000u) acc = 1;
    }
    return acc == 0;
}

int req_check_tensors(const wire_msg *m, const char *key, const char *uid, const kern_io_info *io, int n,
                      int64_t max_batch, int64_t *B, const uint8_t **rows, void **owned, char *err, size_t errlen)
{
    (void)uid;
    const msgpack_object *arr = wire_map_get(&m->root, key);
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY) {
        snprintf(err, errlen, "%s must be an array of tensors", key);
        return DMOE_EINVAL;
    }
    if ((int)arr->via.array.size != n) {
        snprintf(err, errlen, "%s: expected %d tensor%s, got %u", key, n, n == 1 ? "" : "s", arr->via.array.size);
        return DMOE_ESHAPE;
    }
    for (int i = 0; i < n; i++) {
        wire_tensor t;
        char terr[128];
        int rc = wire_tensor_decode(&arr->via.array.ptr[i], &t, terr, sizeof terr);
        if (rc < 0) {
            snprintf(err, errlen, "%s[%d] (%s): %s", key, i, io[i].name, terr);
            return rc;
        }
        wire_dtype want = io[i].dtype == KERN_U8 ? WIRE_DT_U8 : WIRE_DT_F32;
        if (t.dtype != want) {
            snprintf(err, errlen, "%s[%d] (%s): dtype %s, expected %s", key, i, io[i].name, wire_dtype_name(t.dtype),
                     wire_dtype_name(want));
            return DMOE_ESHAPE;
        }
        int shape_ok = t.ndim == io[i].ndim + 1;
        for (int d = 0; shape_ok && d < io[i].ndim; d++) shape_ok = t.shape[d + 1] == io[i].dims[d];
        if (!shape_ok) {
            char want_s[96] = "[B";
            size_t off = 2;
            for (int d = 0; d < io[i].ndim && off < sizeof want_s; d++)
                off += (size_t)snprintf(want_s + off, sizeof want_s - off, ", %lld", (long long)io[i].dims[d]);
            char got_s[96] = "[";
            size_t got = 1;
            for (int d = 0; d < t.ndim && got < sizeof got_s; d++)
                got += (size_t)snprintf(got_s + got, sizeof got_s - got, "%s%lld", d ? ", " : "", (long long)t.shape[d]);
            snprintf(err, errlen, "%s[%d] (%s): shape %s] does not match %s]", key, i, io[i].name, got_s, want_s);
            return DMOE_ESHAPE;
        }
        if (t.shape[0] < 1) {
            snprintf(err, errlen, "%s[%d] (%s): zero rows", key, i, io[i].name);
            return DMOE_ESHAPE;
        }
        if (*B < 0) *B = t.shape[0];
        else if (*B != t.shape[0]) {
            snprintf(err, errlen, "%s[%d] (%s): %lld rows, but other tensors have %lld", key, i, io[i].name,
                     (long long)t.shape[0], (long long)*B);
            return DMOE_ESHAPE;
        }
        if (*B > max_batch) {   /* before anything the rows would size is allocated */
            snprintf(err, errlen, "%lld rows is over this node's max_batch_size %lld: split the request",
                     (long long)*B, (long long)max_batch);
            return DMOE_ETOOBIG;
        }
        if (t.compression != WIRE_COMP_NONE) {
            if (!wire_compress_len_ok(t.compression, t.nbytes, t.numel, wire_tensor_rows(&t))) {
                snprintf(err, errlen, "%s[%d] (%s): malformed %s data (%zu bytes for %zu values)", key, i, io[i].name,
                         wire_compress_name(t.compression), t.nbytes, t.numel);
                return DMOE_EINVAL;
            }
            if (posix_memalign(&owned[i], 64, (t.numel ? t.numel : 1) * sizeof(float)) != 0) {
                owned[i] = NULL;
                snprintf(err, errlen, "out of memory decompressing %s[%d]", key, i);
                return DMOE_ENOMEM;
            }
            if (wire_tensor_f32(&t, owned[i]) != 0) {
                snprintf(err, errlen, "%s[%d] (%s): malformed %s data", key, i, io[i].name, wire_compress_name(t.compression));
                return DMOE_EINVAL;
            }
            t.data = (const uint8_t *)owned[i];
        }
        if (t.dtype == WIRE_DT_F32 && !finite_f32_bytes(t.data, t.numel)) {
            snprintf(err, errlen, "%s[%d] (%s) contains NaN or Inf: rejected", key, i, io[i].name);
            return DMOE_ENONFINITE;
        }
        rows[i] = t.data;
    }
    return 0;
}

void req_check_run(req_check *k)
{
    ex_req *r = k->r;
    const wire_msg *m = r->wm;
    int64_t B = -1;
    k->rc = req_check_tensors(m, "inputs", k->uid, k->in, k->n_in, k->max_batch_size, &B, r->in, r->owned, k->err, sizeof k->err);
    if (k->rc == 0 && r->dir == EX_BWD)
        k->rc = req_check_tensors(m, "grad_outputs", k->uid, k->out, k->n_out, k->max_batch_size, &B, r->gout,
                                  r->owned + KERN_MAX_IO, k->err, sizeof k->err);
    if (k->rc != 0) return;
    r->rows = B;
    if (k->hash) {
        const void *ptrs[KERN_MAX_IO];
        size_t lens[KERN_MAX_IO];
        for (int i = 0; i < k->n_in; i++) {
            ptrs[i] = r->in[i];
            lens[i] = (size_t)B * kern_io_numel(&k->in[i]) * kern_dtype_size(k->in[i].dtype);
        }
        r->in_hash = actcache_hash(ptrs, lens, k->n_in);
    }
}

size_t req_payload_bytes(const wire_msg *m, const char *key)
{
    const msgpack_object *arr = wire_map_get(&m->root, key);
    size_t n = 0;
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY) return 0;
    for (uint32_t i = 0; i < arr->via.array.size; i++) {
        const msgpack_object *t = &arr->via.array.ptr[i];
        const msgpack_object *d = t->type == MSGPACK_OBJECT_MAP ? wire_map_get(t, "data") : NULL;
        if (d && d->type == MSGPACK_OBJECT_BIN) n += d->via.bin.size;
    }
    return n;
}

size_t req_check_cost(const wire_msg *m, int dir, int64_t max_batch)
{
    size_t bytes = sizeof(ex_req) + 4096;   /* the ex_req, its req_check */
    const char *keys[2] = {"inputs", "grad_outputs"};
    for (int k = 0; k <= dir; k++) {
        const msgpack_object *arr = wire_map_get(&m->root, keys[k]);
        if (!arr || arr->type != MSGPACK_OBJECT_ARRAY) continue;
        for (uint32_t i = 0; i < arr->via.array.size && i < 2 * KERN_MAX_IO; i++) {
            wire_tensor t;
            if (wire_tensor_decode(&arr->via.array.ptr[i], &t, NULL, 0) != 0 || t.compression == WIRE_COMP_NONE ||
                t.ndim < 1 || t.shape[0] > max_batch ||
                !wire_compress_len_ok(t.compression, t.nbytes, t.numel, wire_tensor_rows(&t)))
                continue;
            bytes += t.numel * sizeof(float) + 64;
        }
    }
    return bytes;
}
