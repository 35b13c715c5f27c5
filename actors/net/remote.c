/* remote.c -- host tensors, schemas and requests of remote experts (see remote.h). */
#include "actors/net/remote.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern_ops.h"
#include "runtime/rt_err.h"

static void buf_unref(const void *data, size_t len, void *arg)
{
    rx_buf *b = arg;
    if (--b->refs == 0) {
        free(b->data);
        free(b);
    }
}

void rx_buf_ref(rx_buf *b) { b->refs++; }
void rx_buf_unref(rx_buf *b) { if (b) buf_unref(NULL, 0, b); }

int rx_tensor_alloc(rx_tensor *t, wire_dtype dtype, int ndim, const int64_t *shape)
{
    if (ndim < 1 || ndim > WIRE_MAX_NDIM) return DMOE_ETOOBIG;
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] > 0 && numel > SIZE_MAX / 8 / (size_t)shape[i])) return DMOE_ETOOBIG;
        numel *= (size_t)shape[i];
    }
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->numel = numel;
    size_t nbytes = numel * wire_dtype_size(dtype);
    rx_buf *b = calloc(1, sizeof *b);
    void *p = NULL;
    if (!b || posix_memalign(&p, 64, nbytes ? nbytes : 64) != 0) { free(b); return DMOE_ENOMEM; }
    b->refs = 1;
    b->nbytes = nbytes;
    b->data = p;
    t->buf = b;
    return 0;
}

void rx_tensor_free(rx_tensor *t)
{
    if (t->buf) buf_unref(NULL, 0, t->buf);
    memset(t, 0, sizeof *t);
}

float *rx_tensor_f32(const rx_tensor *t)
{
    return t->buf && t->dtype == WIRE_DT_F32 ? (float *)t->buf->data : NULL;
}

int rx_tensor_from_wire(rx_tensor *t, const wire_tensor *w)
{
    /* every scheme spends at least one byte per value (wire_compress.h): fewer bytes are malformed, and
     * refused before the size the shape claims is allocated */
    if (w->compression != WIRE_COMP_NONE && w->nbytes < w->numel) return DMOE_EPROTO;
    int rc = rx_tensor_alloc(t, w->dtype, w->ndim, w->shape);
    if (rc) return rc;
    if (w->compression == WIRE_COMP_NONE) {
        memcpy(t->buf->data, w->data, w->nbytes);
        return 0;
    }
    if (wire_tensor_f32(w, (float *)t->buf->data) != 0) {
        rx_tensor_free(t);
        return DMOE_EPROTO;
    }
    return 0;
}

/* ---- schema ---- */

static int parse_io(const msgpack_object *arr, kern_io_info *io, int *n, char *err, size_t errlen)
{
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY || arr->via.array.size > KERN_MAX_IO) {
        snprintf(err, errlen, "info: inputs/outputs must be arrays of at most %d entries", KERN_MAX_IO);
        return DMOE_EINVAL;
    }
    *n = (int)arr->via.array.size;
    for (int i = 0; i < *n; i++) {
        const msgpack_object *e = &arr->via.array.ptr[i];
        memset(&io[i], 0, sizeof io[i]);
        char dtype[16];
        const msgpack_object *sh = e->type == MSGPACK_OBJECT_MAP ? wire_map_get(e, "shape") : NULL;
        if (e->type != MSGPACK_OBJECT_MAP || wire_get_str(wire_map_get(e, "name"), io[i].name, sizeof io[i].name) != 0 ||
            wire_get_str(wire_map_get(e, "dtype"), dtype, sizeof dtype) != 0 || !sh ||
            sh->type != MSGPACK_OBJECT_ARRAY || sh->via.array.size < 1 || sh->via.array.size > KERN_MAX_DIMS + 1) {
            snprintf(err, errlen, "info: malformed tensor description %d", i);
            return DMOE_EINVAL;
        }
        if (strcmp(dtype, "float32") == 0) io[i].dtype = KERN_F32;
        else if (strcmp(dtype, "uint8") == 0) io[i].dtype = KERN_U8;
        else { snprintf(err, errlen, "info: unknown dtype %s", dtype); return DMOE_EINVAL; }
        io[i].ndim = (int)sh->via.array.size - 1;
        for (int d = 0; d < io[i].ndim; d++) {
            int64_t v;
            if (wire_get_i64(&sh->via.array.ptr[d + 1], &v) != 0 || v < 1) {
                snprintf(err, errlen, "info: bad dimension in tensor description %d", i);
                return DMOE_EINVAL;
            }
            io[i].dims[d] = v;
        }
    }
    return 0;
}

int rx_schema_parse(const msgpack_object *info, rx_schema *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    if (!info || info->type != MSGPACK_OBJECT_MAP) { snprintf(err, errlen, "info: not a map"); return DMOE_EINVAL; }
    int64_t v;
    if (wire_get_str(wire_map_get(info, "uid"), s->uid, sizeof s->uid) != 0) {
        snprintf(err, errlen, "info: no uid");
        return DMOE_EINVAL;
    }
    wire_get_str(wire_map_get(info, "expert_cls"), s->expert_cls, sizeof s->expert_cls);
    wire_get_str(wire_map_get(info, "module"), s->module, sizeof s->module);
    if (wire_get_i64(wire_map_get(info, "hidden_dim"), &v) == 0) s->hidden_dim = (int)v;
    if (wire_get_i64(wire_map_get(info, "n_params"), &v) == 0) s->n_params = (uint64_t)v;
    s->max_batch_size = INT64_MAX;
    if (wire_get_i64(wire_map_get(info, "max_batch_size"), &v) == 0 && v > 0) s->max_batch_size = v;
    char comp[32];
    s->compression = WIRE_COMP_NONE;
    if (wire_get_str(wire_map_get(info, "compression"), comp, sizeof comp) == 0 && wire_compress_parse(comp, &s->compression) != 0) {
        snprintf(err, errlen, "info: unknown compression %s", comp);
        return DMOE_EINVAL;
    }
    int rc = parse_io(wire_map_get(info, "inputs"), s->in, &s->n_in, err, errlen);
    if (rc == 0) rc = parse_io(wire_map_get(info, "outputs"), s->out, &s->n_out, err, errlen);
    return rc;
}

static int check_list(const char *what, const kern_io_info *io, int n_io, const rx_tensor *t, int n, int64_t *B,
                      int64_t max_b, char *err, size_t errlen)
{
    if (n != n_io) {
        snprintf(err, errlen, "the expert takes %d %s tensor%s, got %d", n_io, what, n_io == 1 ? "" : "s", n);
        return DMOE_ESHAPE;
    }
    for (int i = 0; i < n; i++) {
        wire_dtype want = io[i].dtype == KERN_U8 ? WIRE_DT_U8 : WIRE_DT_F32;
        if (t[i].dtype != want) {
            snprintf(err, errlen, "%s %d (%s): dtype %s, the expert takes %s", what, i, io[i].name,
                     wire_dtype_name(t[i].dtype), wire_dtype_name(want));
            return DMOE_ESHAPE;
        }
        int ok = t[i].ndim == io[i].ndim + 1;
        for (int d = 0; ok && d < io[i].ndim; d++) ok = t[i].shape[d + 1] == io[i].dims[d];
        if (!ok) {
            char want_s[96] = "[B";
            size_t off = 2;
            for (int d = 0; d < io[i].ndim && off < sizeof want_s; d++)
                off += (size_t)snprintf(want_s + off, sizeof want_s - off, ", %lld", (long long)io[i].dims[d]);
            snprintf(err, errlen, "%s %d (%s): the expert takes shape %s]", what, i, io[i].name, want_s);
            return DMOE_ESHAPE;
        }
        if (t[i].shape[0] < 1) { snprintf(err, errlen, "%s %d (%s): zero rows", what, i, io[i].name); return DMOE_ESHAPE; }
        if (*B < 0) *B = t[i].shape[0];
        else if (*B != t[i].shape[0]) {
            snprintf(err, errlen, "%s %d (%s): %lld rows, other tensors have %lld", what, i, io[i].name,
                     (long long)t[i].shape[0], (long long)*B);
            return DMOE_ESHAPE;
        }
        if (*B > max_b) {
            snprintf(err, errlen, "%lld rows is over the node's max_batch_size %lld", (long long)*B, (long long)max_b);
            return DMOE_ETOOBIG;
        }
        if (t[i].dtype == WIRE_DT_F32 && !kern_all_finite(rx_tensor_f32(&t[i]), t[i].numel)) {
            snprintf(err, errlen, "%s %d (%s) contains NaN or Inf", what, i, io[i].name);
            return DMOE_ENONFINITE;
        }
    }
    return 0;
}

int rx_check(const rx_schema *s, const rx_tensor *in, int n_in, const rx_tensor *gout, int n_gout, char *err,
             size_t errlen)
{
    int64_t B = -1;
    int rc = check_list("input", s->in, s->n_in, in, n_in, &B, s->max_batch_size, err, errlen);
    if (rc == 0 && n_gout >= 0) rc = check_list("grad_output", s->out, s->n_out, gout, n_gout, &B, s->max_batch_size, err, errlen);
    return rc;
}

static void free_ref(const void *data, size_t len, void *arg) { free(arg); }

static int pack_tensors(wire_out *o, const rx_tensor *t, int n, wire_scheme comp)
{
    msgpack_pack_array(wire_out_pk(o), (size_t)n);
    for (int i = 0; i < n; i++) {
        wire_tensor w = {.dtype = t[i].dtype, .compression = WIRE_COMP_NONE, .ndim = t[i].ndim, .numel = t[i].numel};
        memcpy(w.shape, t[i].shape, sizeof w.shape);
        w.nbytes = t[i].buf ? t[i].buf->nbytes : 0;
        w.data = t[i].buf ? t[i].buf->data : NULL;
        if (comp != WIRE_COMP_NONE && t[i].dtype == WIRE_DT_F32 && t[i].buf) {
            size_t rows = wire_tensor_rows(&w), len = 0;
            uint8_t *buf = malloc(wire_compress_bound_rows(comp, w.numel, rows) + 1);
            if (!buf) return DMOE_ENOMEM;
            int rc = wire_compress_rows(comp, (const float *)w.data, w.numel, rows, buf, &len);
            if (rc != 0) { free(buf); return rc; }
            w.compression = comp;
            w.data = buf;
            w.nbytes = len;
            if (wire_tensor_pack(o, &w, free_ref, buf) != 0) return DMOE_ENOMEM;
            continue;
        }
        if (t[i].buf) t[i].buf->refs++;
        if (wire_tensor_pack(o, &w, t[i].buf ? buf_unref : NULL, t[i].buf) != 0) return DMOE_ENOMEM;
    }
    return 0;
}

static wire_out *request(uint64_t id, const char *uid, const rx_tensor *in, int n_in, const rx_tensor *gout, int n_gout,
                         wire_scheme comp, uint64_t handle, int save);

wire_out *rx_request(uint64_t id, const char *uid, const rx_tensor *in, int n_in, const rx_tensor *gout, int n_gout,
                     wire_scheme comp)
{
    return request(id, uid, in, n_in, gout, n_gout, comp, 0, 0);
}

uint64_t rx_reply_handle(const wire_msg *reply)
{
    const msgpack_object *h = reply->result && reply->result->type == MSGPACK_OBJECT_MAP
                                  ? wire_map_get(reply->result, "handle") : NULL;
    return h && h->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? h->via.u64 : 0;
}

wire_out *rx_request_with_handle(uint64_t id, const char *uid, const rx_tensor *in, int n_in, const rx_tensor *gout,
                                 int n_gout, wire_scheme comp, uint64_t handle)
{
    return request(id, uid, in, n_in, gout, n_gout, comp, handle, 1);
}

/* The request: a backward with handle when it has one; a forward that will bring no handle back says
 * "save": false, so that the node keeps nothing for it. */
static wire_out *request(uint64_t id, const char *uid, const rx_tensor *in, int n_in, const rx_tensor *gout, int n_gout,
                         wire_scheme comp, uint64_t handle, int save)
{
    wire_out *o = wire_out_new();
    if (!o) return NULL;
    msgpack_packer *pk = wire_out_pk(o);
    int with_handle = gout && handle, no_save = !gout && !save;
    wire_request_begin(o, id, gout ? "backward" : "forward", (gout ? 5 : 4) + (with_handle || no_save ? 1 : 0));
    if (with_handle) {
        wire_pack_str(pk, "handle");
        msgpack_pack_uint64(pk, handle);
    }
    if (no_save) {
        wire_pack_str(pk, "save");
        msgpack_pack_false(pk);
    }
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, uid);
    wire_pack_str(pk, "inputs");
    int rc = pack_tensors(o, in, n_in, comp);
    if (rc == 0 && gout) {
        wire_pack_str(pk, "grad_outputs");
        rc = pack_tensors(o, gout, n_gout, comp);
    }
    if (rc != 0) { wire_out_free(o); return NULL; }
    return o;
}

/* ---- answers ---- */

static int shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    int off = snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && off > 0 && (size_t)off < cap; d++)
        off += snprintf(buf + off, cap - (size_t)off, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (off > 0 && (size_t)off < cap) off += snprintf(buf + off, cap - (size_t)off, "]");
    return off;
}

int rx_tensor_check(const rx_tensor *t, int dtype, int64_t rows, int row_ndim, const int64_t *row_dims, int finite,
                    const char *what, char *err, size_t errlen)
{
    int dt_ok = dtype == RX_ANY_DTYPE ? t->dtype == WIRE_DT_F32 || t->dtype == WIRE_DT_U8 : (int)t->dtype == dtype;
    if (!dt_ok) {
        snprintf(err, errlen, "%s: dtype %s, expected %s", what, wire_dtype_name(t->dtype),
                 dtype == RX_ANY_DTYPE ? "float32 or uint8" : wire_dtype_name((wire_dtype)dtype));
        return DMOE_ESHAPE;
    }
    int ok = t->ndim >= 1 && t->shape[0] == rows && (row_ndim < 0 || t->ndim == row_ndim + 1);
    for (int d = 0; ok && row_ndim > 0 && d < row_ndim; d++) ok = row_dims[d] <= 0 || t->shape[d + 1] == row_dims[d];
    if (!ok) {
        char got[160], want[160] = "";
        int off = snprintf(want, sizeof want, "[%lld", (long long)rows);
        for (int d = 0; d < row_ndim && off > 0 && (size_t)off < sizeof want; d++)
            off += row_dims[d] > 0 ? snprintf(want + off, sizeof want - (size_t)off, ", %lld", (long long)row_dims[d])
                                   : snprintf(want + off, sizeof want - (size_t)off, ", *");
        if (off > 0 && (size_t)off < sizeof want) snprintf(want + off, sizeof want - (size_t)off, "%s]", row_ndim < 0 ? ", ..." : "");
        shape_str(got, sizeof got, t->ndim, t->shape);
        snprintf(err, errlen, "%s: shape %s, expected %s", what, got, want);
        return DMOE_ESHAPE;
    }
    if (finite && t->dtype == WIRE_DT_F32 && t->numel && !kern_all_finite(rx_tensor_f32(t), t->numel)) {
        snprintf(err, errlen, "%s contains NaN or Inf", what);
        return DMOE_ENONFINITE;
    }
    return 0;
}

int rx_reply_check(const rx_schema *s, int backward, const rx_tensor *in, int n_in, const rx_tensor *out, int n,
                   int finite, char *err, size_t errlen)
{
    const char *key = backward ? "grad_inputs" : "outputs";
    int want = s ? (backward ? s->n_in : s->n_out) : backward ? n_in : -1;
    if (n_in < 1 || (want >= 0 && n != want) || n < 1) {
        snprintf(err, errlen, "%d %s, expected %s%d", n, key, want < 0 ? "at least " : "", want < 0 ? 1 : want);
        return DMOE_ESHAPE;
    }
    int64_t rows = in[0].ndim >= 1 ? in[0].shape[0] : 0;
    for (int i = 0; i < n; i++) {
        char what[64];
        snprintf(what, sizeof what, "%s[%d]", key, i);
        int dtype, row_ndim;
        const int64_t *row_dims;
        if (s) {
            const kern_io_info *io = backward ? &s->in[i] : &s->out[i];
            dtype = backward || io->dtype != KERN_U8 ? WIRE_DT_F32 : WIRE_DT_U8;
            row_ndim = io->ndim;
            row_dims = io->dims;
        } else if (backward) {
            dtype = WIRE_DT_F32;
            row_ndim = in[i].ndim - 1;
            row_dims = in[i].shape + 1;
        } else {
            dtype = RX_ANY_DTYPE;
            row_ndim = -1;
            row_dims = NULL;
        }
        int rc = rx_tensor_check(&out[i], dtype, rows, row_ndim, row_dims, finite, what, err, errlen);
        if (rc) return rc;
    }
    return 0;
}

int rx_result(const wire_msg *reply, const char *key, rx_tensor *out, int max, char *err, size_t errlen)
{
    const msgpack_object *arr = reply->result && reply->result->type == MSGPACK_OBJECT_MAP
                                    ? wire_map_get(reply->result, key) : NULL;
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY || (int)arr->via.array.size > max) {
        snprintf(err, errlen, "reply has no %s array (of at most %d tensors)", key, max);
        return DMOE_EPROTO;
    }
    int n = (int)arr->via.array.size;
    for (int i = 0; i < n; i++) {
        wire_tensor w;
        char terr[128];
        int rc = wire_tensor_decode(&arr->via.array.ptr[i], &w, terr, sizeof terr);
        if (rc == 0) rc = rx_tensor_from_wire(&out[i], &w);
        if (rc != 0) {
            snprintf(err, errlen, "reply %s[%d]: %s", key, i, rc == DMOE_ENOMEM ? "out of memory" : terr);
            for (int j = 0; j < i; j++) rx_tensor_free(&out[j]);
            return rc == DMOE_ENOMEM ? rc : DMOE_EPROTO;
        }
    }
    return n;
}
