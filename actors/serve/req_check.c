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

/* A tensor's name in messages: "input" for an expert's only input, else "inputs[1] (mask)". */
static void tensor_name(const char *key, int i, int n, const kern_io_info *io, char *buf, size_t len)
{
    if (n == 1 && strcmp(key, "inputs") == 0) snprintf(buf, len, "input");
    else snprintf(buf, len, "%s[%d] (%s)", key, i, io->name);
}

/* "[B, 16]" for a schema's row dims, or "[3, 11]" for a tensor's shape (rows given: B < 0 writes "B"). */
static void shape_text(const int64_t *dims, int ndim, int with_b, char *buf, size_t len)
{
    size_t off = (size_t)snprintf(buf, len, "[%s", with_b ? "B" : "");
    for (int d = 0; d < ndim && off < len; d++)
        off += (size_t)snprintf(buf + off, len - off, "%s%lld", d || with_b ? ", " : "", (long long)dims[d]);
    if (off < len) snprintf(buf + off, len - off, "]");
}

/* Whether a mask input may arrive as dtype d (converted to the declared dtype on receipt). */
static int mask_dtype_ok(wire_dtype d)
{
    return d == WIRE_DT_F32 || d == WIRE_DT_U8 || d == WIRE_DT_I64 || d == WIRE_DT_BOOL;
}

/* Element i of a mask's data as an integer (a float that is neither 0 nor 1 reads as 2: refused). */
static int64_t mask_value(const uint8_t *p, wire_dtype d, size_t i)
{
    if (d == WIRE_DT_U8 || d == WIRE_DT_BOOL) return p[i];
    if (d == WIRE_DT_I64) {
        int64_t v;
        memcpy(&v, p + 8 * i, 8);
        return v;
    }
    float f;
    memcpy(&f, p + 4 * i, 4);
    return f == 0.0f ? 0 : f == 1.0f ? 1 : 2;
}

/* Check that the n values of a mask are 0 or 1 and, when it came as another dtype than the declared
 * one, write them as that dtype into *owned (allocated here). Returns 0, DMOE_EINVAL (the first bad
 * element's index in *bad_at) or DMOE_ENOMEM. */
static int mask_take(const uint8_t *p, wire_dtype got, kern_dtype want, size_t n, void **owned, size_t *bad_at)
{
    for (size_t i = 0; i < n; i++) {
        int64_t v = mask_value(p, got, i);
        if (v != 0 && v != 1) {
            *bad_at = i;
            return DMOE_EINVAL;
        }
    }
    wire_dtype same = want == KERN_U8 ? WIRE_DT_U8 : WIRE_DT_F32;
    if (got == same) return 0;
    if (posix_memalign(owned, 64, (n ? n : 1) * kern_dtype_size(want)) != 0) {
        *owned = NULL;
        return DMOE_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        int64_t v = mask_value(p, got, i);
        if (want == KERN_U8) ((uint8_t *)*owned)[i] = (uint8_t)v;
        else ((float *)*owned)[i] = (float)v;
    }
    return 0;
}

int req_check_tensors(const wire_msg *m, const char *key, const char *uid, const kern_io_info *io, int n,
                      int64_t max_batch, int64_t *B, const uint8_t **rows, void **owned, char *err, size_t errlen)
{
    const msgpack_object *arr = wire_map_get(&m->root, key);
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY) {
        snprintf(err, errlen, "%s must be an array of tensors", key);
        return DMOE_EINVAL;
    }
    if ((int)arr->via.array.size != n) {
        char names[160] = "";
        size_t off = 0;
        for (int i = 0; i < n && off < sizeof names; i++)
            off += (size_t)snprintf(names + off, sizeof names - off, "%s%s", i ? ", " : "", io[i].name);
        snprintf(err, errlen, "%s takes %d tensor%s in %s (%s); got %u", uid, n, n == 1 ? "" : "s", key, names,
                 arr->via.array.size);
        return DMOE_ESHAPE;
    }
    for (int i = 0; i < n; i++) {
        wire_tensor t;
        char terr[128], name[80];
        tensor_name(key, i, n, &io[i], name, sizeof name);
        int rc = wire_tensor_decode(&arr->via.array.ptr[i], &t, terr, sizeof terr);
        if (rc < 0) {
            snprintf(err, errlen, "%s: %s: %s", uid, name, terr);
            return rc;
        }
        wire_dtype want = io[i].dtype == KERN_U8 ? WIRE_DT_U8 : WIRE_DT_F32;
        if (t.dtype != want && !(io[i].mask && mask_dtype_ok(t.dtype))) {
            snprintf(err, errlen, "%s takes %s as %s%s; got %s", uid, name, wire_dtype_name(want),
                     io[i].mask ? " (or another of float32, uint8, int64, bool: a 0/1 mask)" : "",
                     wire_dtype_name(t.dtype));
            return DMOE_ESHAPE;
        }
        int shape_ok = t.ndim == io[i].ndim + 1;
        for (int d = 0; shape_ok && d < io[i].ndim; d++) shape_ok = t.shape[d + 1] == io[i].dims[d];
        if (!shape_ok) {
            char want_s[96], got_s[128];
            shape_text(io[i].dims, io[i].ndim, 1, want_s, sizeof want_s);
            shape_text(t.shape, t.ndim, 0, got_s, sizeof got_s);
            snprintf(err, errlen, "%s takes %s of shape %s; got %s", uid, name, want_s, got_s);
            return DMOE_ESHAPE;
        }
        if (t.shape[0] < 1) {
            snprintf(err, errlen, "%s: %s has zero rows", uid, name);
            return DMOE_ESHAPE;
        }
        if (*B < 0) *B = t.shape[0];
        else if (*B != t.shape[0]) {
            snprintf(err, errlen, "%s: %s has %lld rows, but other tensors have %lld", uid, name, (long long)t.shape[0],
                     (long long)*B);
            return DMOE_ESHAPE;
        }
        if (*B > max_batch) {   /* before anything the rows would size is allocated */
            snprintf(err, errlen, "%lld rows is over this node's max_batch_size %lld: split the request",
                     (long long)*B, (long long)max_batch);
            return DMOE_ETOOBIG;
        }
        if (t.compression != WIRE_COMP_NONE) {
            if (!wire_compress_len_ok(t.compression, t.nbytes, t.numel, wire_tensor_rows(&t))) {
                snprintf(err, errlen, "%s: %s: malformed %s data (%zu bytes for %zu values)", uid, name,
                         wire_compress_name(t.compression), t.nbytes, t.numel);
                return DMOE_EINVAL;
            }
            if (posix_memalign(&owned[i], 64, (t.numel ? t.numel : 1) * sizeof(float)) != 0) {
                owned[i] = NULL;
                snprintf(err, errlen, "out of memory decompressing %s[%d]", key, i);
                return DMOE_ENOMEM;
            }
            if (wire_tensor_f32(&t, owned[i]) != 0) {
                snprintf(err, errlen, "%s: %s: malformed %s data", uid, name, wire_compress_name(t.compression));
                return DMOE_EINVAL;
            }
            t.data = (const uint8_t *)owned[i];
        }
        if (t.dtype == WIRE_DT_F32 && !finite_f32_bytes(t.data, t.numel)) {
            snprintf(err, errlen, "%s: %s contains NaN or Inf: rejected", uid, name);
            return DMOE_ENONFINITE;
        }
        if (io[i].mask) {
            size_t at = 0;
            void *conv = NULL;
            rc = mask_take(t.data, t.dtype, io[i].dtype, t.numel, &conv, &at);
            if (rc == DMOE_EINVAL)
                snprintf(err, errlen, "%s: %s is a mask and must hold only 0 and 1; element %zu is neither", uid, name, at);
            if (rc == DMOE_ENOMEM) snprintf(err, errlen, "out of memory converting %s[%d]", key, i);
            if (rc) return rc;
            if (conv) {
                free(owned[i]);   /* a decompressed float mask, now converted */
                owned[i] = conv;
                t.data = conv;
            }
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
            if (wire_tensor_decode(&arr->via.array.ptr[i], &t, NULL, 0) != 0 || t.ndim < 1 || t.shape[0] > max_batch)
                continue;
            if (t.compression == WIRE_COMP_NONE) {   /* a mask converted on receipt: at most a float a value */
                if (t.dtype == WIRE_DT_U8 || t.dtype == WIRE_DT_I64 || t.dtype == WIRE_DT_BOOL)
                    bytes += t.numel * sizeof(float) + 64;
                continue;
            }
            if (!wire_compress_len_ok(t.compression, t.nbytes, t.numel, wire_tensor_rows(&t))) continue;
            bytes += t.numel * sizeof(float) + 64;
        }
    }
    return bytes;
}
