/* api_expert.c -- remote experts through the public API: handles (found on the DHT or given by
 * address), their schema, forward and backward calls, and the tensor lists the calls return.
 *
 * An expert handle is plain data (uid, host address) plus a reference on its DHT handle, whose client
 * carries the calls (pooled connections, one per peer). A call copies its tensors on the caller's
 * thread, posts an operation, and on the loop thread builds the request (remote.h) and sends it
 * (client.h); the reply's tensors, once they fit the request (rx_reply_check: rows, float32 or uint8
 * outputs, one gradient per input with its shape; the values are the caller's to judge), become a
 * dmoe_tensors list, an error reply becomes the node's code and message. Handles are created and released on the loop thread (the reference count lives there).
 */
#include "actors/api/api_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/grid/dht_experts.h"
#include "wire/wire_out.h"

struct dmoe_expert {
    dmoe_dht *d;
    char uid[UID_MAX_LEN + 1];
    wire_maddr addr;
};

struct dmoe_tensors {
    int n;
    rx_tensor t[KERN_MAX_IO];
};

/* ---- tensors ---- */

int api_tensor_copy(const dmoe_tensor *in, rx_tensor *out, char *err, size_t errlen)
{
    if (in->dtype != DMOE_FLOAT32 && in->dtype != DMOE_UINT8) {
        dmoe_set_err(err, errlen, "tensor dtype %d: only float32 (0) and uint8 (1)", in->dtype);
        return DMOE_EINVAL;
    }
    if (in->ndim < 1 || in->ndim > WIRE_MAX_NDIM) {
        dmoe_set_err(err, errlen, "tensor with %d dimensions: 1 to %d", in->ndim, WIRE_MAX_NDIM);
        return DMOE_EINVAL;
    }
    for (int i = 0; i < in->ndim; i++)
        if (in->shape[i] < 0) { dmoe_set_err(err, errlen, "negative tensor dimension"); return DMOE_EINVAL; }
    int rc = rx_tensor_alloc(out, in->dtype == DMOE_FLOAT32 ? WIRE_DT_F32 : WIRE_DT_U8, in->ndim, in->shape);
    if (rc) { dmoe_set_err(err, errlen, "tensor too big or out of memory"); return rc; }
    if (out->numel) {
        if (!in->data) { rx_tensor_free(out); dmoe_set_err(err, errlen, "tensor without data"); return DMOE_EINVAL; }
        memcpy(out->buf->data, in->data, out->numel * wire_dtype_size(out->dtype));
    }
    return 0;
}

dmoe_tensors *api_tensors_new(rx_tensor *t, int n)
{
    dmoe_tensors *ts = calloc(1, sizeof *ts);
    if (!ts) {
        for (int i = 0; i < n; i++) rx_tensor_free(&t[i]);
        return NULL;
    }
    ts->n = n;
    memcpy(ts->t, t, (size_t)n * sizeof *t);
    return ts;
}

int dmoe_tensors_count(const dmoe_tensors *ts) { return ts ? ts->n : 0; }

int dmoe_tensors_get(const dmoe_tensors *ts, int i, dmoe_tensor *out)
{
    if (!ts || i < 0 || i >= ts->n) return DMOE_EINVAL;
    const rx_tensor *t = &ts->t[i];
    memset(out, 0, sizeof *out);
    out->dtype = t->dtype == WIRE_DT_U8 ? DMOE_UINT8 : DMOE_FLOAT32;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, (size_t)t->ndim * sizeof t->shape[0]);
    out->data = t->buf ? t->buf->data : NULL;
    return 0;
}

void dmoe_tensors_free(dmoe_tensors *ts)
{
    if (!ts) return;
    for (int i = 0; i < ts->n; i++) rx_tensor_free(&ts->t[i]);
    free(ts);
}

/* ---- handles ---- */

typedef struct {
    api_op op;
    dmoe_dht *d;
    char **uids;
    size_t n;
    dmoe_expert **out;
    dmoe_expert *one;     /* dmoe_expert_new: the handle to register */
} find_op;

static void find_free(api_op *op)
{
    find_op *f = (find_op *)op;
    for (size_t i = 0; i < f->n; i++) free(f->uids[i]);
    free(f->uids);
    free(f->one);
    free(f);
}

static void on_found(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n)
{
    find_op *f = arg;
    if (err) { api_done(&f->op, err, msg); return; }
    dmoe_expert **hs = calloc(n ? n : 1, sizeof *hs);
    int ok = hs != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        if (!locs[i].found) continue;
        if (!(hs[i] = calloc(1, sizeof *hs[i]))) { ok = 0; break; }
        hs[i]->d = f->d;
        snprintf(hs[i]->uid, sizeof hs[i]->uid, "%s", f->uids[i]);
        hs[i]->addr = locs[i].addr;
    }
    if (!ok) {
        for (size_t i = 0; hs && i < n; i++) free(hs[i]);
        free(hs);
        api_done(&f->op, DMOE_ENOMEM, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (hs[i]) f->d->refs++;
        f->out[i] = hs[i];
    }
    free(hs);
    api_done(&f->op, 0, "");
}

static void run_find(api_op *op)
{
    find_op *f = (find_op *)op;
    char err[512];
    if (f->d->stopped) { api_done(op, DMOE_ESHUTDOWN, "the DHT was shut down"); return; }
    if (f->one) {
        f->d->refs++;
        *f->out = f->one;
        f->one = NULL;
        api_done(op, 0, "");
        return;
    }
    int rc = dht_get_experts(f->d->d, (const char *const *)f->uids, f->n, on_found, f, err, sizeof err);
    if (rc) api_done(op, rc, err);
}

int dmoe_get_experts(dmoe_dht *d, const char *const *uids, size_t n, dmoe_expert **out, char *err, size_t errlen)
{
    if (!d || !out || (n && !uids)) { dmoe_set_err(err, errlen, "dmoe_get_experts: bad argument"); return DMOE_EINVAL; }
    if (n == 0) return 0;
    find_op *f = calloc(1, sizeof *f);
    if (!f || !(f->uids = calloc(n, sizeof *f->uids))) {
        free(f);
        dmoe_set_err(err, errlen, "out of memory");
        return DMOE_ENOMEM;
    }
    f->op.run = run_find;
    f->op.free = find_free;
    f->d = d;
    f->out = out;
    for (size_t i = 0; i < n; i++, f->n++) {
        if (!uids[i] || strlen(uids[i]) > UID_MAX_LEN || !(f->uids[i] = strdup(uids[i]))) {
            dmoe_set_err(err, errlen, "%s", uids[i] && strlen(uids[i]) <= UID_MAX_LEN ? "out of memory" : "bad uid");
            find_free(&f->op);
            return uids[i] && strlen(uids[i]) <= UID_MAX_LEN ? DMOE_ENOMEM : DMOE_EINVAL;
        }
    }
    return api_sync(d->ctx, &f->op, err, errlen);
}

int dmoe_expert_new(dmoe_dht *d, const char *uid, const char *maddr, dmoe_expert **out, char *err, size_t errlen)
{
    if (!d || !uid || !maddr || !out) { dmoe_set_err(err, errlen, "dmoe_expert_new: NULL argument"); return DMOE_EINVAL; }
    if (strlen(uid) > UID_MAX_LEN) { dmoe_set_err(err, errlen, "uid longer than %d bytes", UID_MAX_LEN); return DMOE_EINVAL; }
    find_op *f = calloc(1, sizeof *f);
    if (f) f->one = calloc(1, sizeof *f->one);
    if (!f || !f->one) { free(f); dmoe_set_err(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    f->op.run = run_find;
    f->op.free = find_free;
    f->d = d;
    f->out = out;
    f->one->d = d;
    snprintf(f->one->uid, sizeof f->one->uid, "%s", uid);
    int rc = wire_maddr_parse(maddr, &f->one->addr, err, errlen);
    if (rc) { find_free(&f->op); return rc; }
    return api_sync(d->ctx, &f->op, err, errlen);
}

const char *dmoe_expert_uid(const dmoe_expert *e) { return e->uid; }
void dmoe_expert_maddr(const dmoe_expert *e, char *buf, size_t cap) { wire_maddr_format(&e->addr, buf, cap); }

typedef struct {
    api_op op;
    dmoe_expert *e;
} release_op;

static void run_release(api_op *op)
{
    dmoe_expert *e = ((release_op *)op)->e;
    api_dht_unref(e->d);
    free(e);
    api_done(op, 0, "");
}

void dmoe_expert_free(dmoe_expert *e)
{
    if (!e) return;
    release_op *r = calloc(1, sizeof *r);
    if (!r) return;
    r->op.run = run_release;
    r->e = e;
    api_async(e->d->ctx, &r->op, NULL, NULL);
}

/* ---- calls ---- */

typedef struct {
    api_op op;
    dmoe_expert *e;
    int kind;                     /* 0 forward, 1 backward, 2 info */
    int keep;                     /* forward: the node keeps its activations (dmoe_expert_forward_keep) */
    uint64_t handle;              /* backward: the handle of its forward (0: none) */
    uint64_t *handle_out;         /* forward_keep: where the reply's handle goes */
    rx_tensor in[KERN_MAX_IO], gout[KERN_MAX_IO];
    int n_in, n_gout;
    uint64_t timeout_ms;
    dmoe_tensors **out;
    /* info */
    int *n_inputs, *n_outputs, *in_dtype, *in_ndim;
    int64_t *in_dims;
} call_op;

static void call_free(api_op *op)
{
    call_op *c = (call_op *)op;
    for (int i = 0; i < c->n_in; i++) rx_tensor_free(&c->in[i]);
    for (int i = 0; i < c->n_gout; i++) rx_tensor_free(&c->gout[i]);
    free(c);
}

static void write_info(call_op *c, const rx_schema *s)
{
    if (c->n_inputs) *c->n_inputs = s->n_in;
    if (c->n_outputs) *c->n_outputs = s->n_out;
    for (int i = 0; i < s->n_in; i++) {
        if (c->in_dtype) c->in_dtype[i] = s->in[i].dtype == KERN_U8 ? DMOE_UINT8 : DMOE_FLOAT32;
        if (c->in_ndim) c->in_ndim[i] = s->in[i].ndim;
        for (int k = 0; c->in_dims && k < KERN_MAX_DIMS; k++)
            c->in_dims[i * KERN_MAX_DIMS + k] = k < s->in[i].ndim ? s->in[i].dims[k] : 0;
    }
}

static int on_reply(void *arg, int err, const char *msg, wire_msg *reply)
{
    call_op *c = arg;
    char e[512];
    if (err) {
        snprintf(e, sizeof e, "%s %s: %s", c->kind == 2 ? "info" : c->kind ? "backward" : "forward", c->e->uid,
                 msg && msg[0] ? msg : dmoe_strerror(err));
        api_done(&c->op, err, e);
        return 0;
    }
    if (c->kind == 2) {
        rx_schema s;
        int rc = rx_schema_parse(reply->result, &s, e, sizeof e);
        if (rc == 0) write_info(c, &s);
        api_done(&c->op, rc, rc ? e : "");
        return 0;
    }
    rx_tensor res[KERN_MAX_IO];
    int n = rx_result(reply, c->kind ? "grad_inputs" : "outputs", res, KERN_MAX_IO, e, sizeof e);
    int rc = n < 0 ? n : rx_reply_check(NULL, c->kind, c->in, c->n_in, res, n, 0, e, sizeof e);
    if (rc) {
        char m[640];
        snprintf(m, sizeof m, "%s %s answered badly: %s", c->kind ? "backward" : "forward", c->e->uid, e);
        for (int i = 0; i < n; i++) rx_tensor_free(&res[i]);
        api_done(&c->op, rc, m);
        return 0;
    }
    dmoe_tensors *ts = api_tensors_new(res, n);
    if (!ts) { api_done(&c->op, DMOE_ENOMEM, "out of memory"); return 0; }
    *c->out = ts;
    if (c->handle_out) *c->handle_out = rx_reply_handle(reply);
    api_done(&c->op, 0, "");
    return 0;
}

static void run_call(api_op *op)
{
    call_op *c = (call_op *)op;
    dmoe_dht *d = c->e->d;
    if (d->stopped) { api_done(op, DMOE_ESHUTDOWN, "the DHT was shut down"); return; }
    uint64_t id = client_next_id(d->cl);
    wire_out *req;
    if (c->kind == 2) {
        req = wire_out_new();
        if (req) {
            wire_request_begin(req, id, "info", 3);
            wire_pack_str(wire_out_pk(req), "uid");
            wire_pack_str(wire_out_pk(req), c->e->uid);
        }
    } else {
        const rx_tensor *gout = c->kind ? c->gout : NULL;
        req = c->keep || c->handle
                  ? rx_request_with_handle(id, c->e->uid, c->in, c->n_in, gout, c->n_gout, WIRE_COMP_NONE, c->handle)
                  : rx_request(id, c->e->uid, c->in, c->n_in, gout, c->n_gout, WIRE_COMP_NONE);
    }
    if (!req) { api_done(op, DMOE_ENOMEM, "out of memory"); return; }
    int rc = client_call(d->cl, &c->e->addr, id, req, c->timeout_ms, on_reply, c);
    if (rc) api_done(op, rc, "cannot reach the expert's host (an IP address is needed)");
}

static call_op *call_new(dmoe_expert *e, int kind, const dmoe_tensor *in, int n_in, const dmoe_tensor *gout, int n_gout,
                         double timeout_s, char *err, size_t errlen, int *rc)
{
    *rc = DMOE_EINVAL;
    if (!e) { dmoe_set_err(err, errlen, "NULL expert"); return NULL; }
    if (kind != 2 && (n_in < 1 || n_in > KERN_MAX_IO || !in)) {
        dmoe_set_err(err, errlen, "an expert takes 1 to %d inputs, not %d", KERN_MAX_IO, n_in);
        return NULL;
    }
    if (kind == 1 && (n_gout < 1 || n_gout > KERN_MAX_IO || !gout)) {
        dmoe_set_err(err, errlen, "a backward takes 1 to %d output gradients, not %d", KERN_MAX_IO, n_gout);
        return NULL;
    }
    call_op *c = calloc(1, sizeof *c);
    if (!c) { *rc = DMOE_ENOMEM; dmoe_set_err(err, errlen, "out of memory"); return NULL; }
    c->op.run = run_call;
    c->op.free = call_free;
    c->e = e;
    c->kind = kind;
    c->timeout_ms = (uint64_t)((timeout_s > 0 ? timeout_s : 30.0) * 1000.0);
    for (int i = 0; kind != 2 && i < n_in; i++, c->n_in++)
        if ((*rc = api_tensor_copy(&in[i], &c->in[i], err, errlen)) != 0) { call_free(&c->op); return NULL; }
    for (int i = 0; kind == 1 && i < n_gout; i++, c->n_gout++)
        if ((*rc = api_tensor_copy(&gout[i], &c->gout[i], err, errlen)) != 0) { call_free(&c->op); return NULL; }
    *rc = 0;
    return c;
}

int dmoe_expert_info(dmoe_expert *e, int *n_in, int *n_out, int *in_dtype, int *in_ndim, int64_t *in_dims,
                     double timeout_s, char *err, size_t errlen)
{
    int rc;
    call_op *c = call_new(e, 2, NULL, 0, NULL, 0, timeout_s, err, errlen, &rc);
    if (!c) return rc;
    c->n_inputs = n_in;
    c->n_outputs = n_out;
    c->in_dtype = in_dtype;
    c->in_ndim = in_ndim;
    c->in_dims = in_dims;
    return api_sync(e->d->ctx, &c->op, err, errlen);
}

int dmoe_expert_forward(dmoe_expert *e, const dmoe_tensor *in, int n_in, double timeout_s, dmoe_tensors **out,
                        char *err, size_t errlen)
{
    int rc;
    call_op *c = out ? call_new(e, 0, in, n_in, NULL, 0, timeout_s, err, errlen, &rc) : NULL;
    if (!c) return out ? rc : DMOE_EINVAL;
    c->out = out;
    return api_sync(e->d->ctx, &c->op, err, errlen);
}

int dmoe_expert_backward(dmoe_expert *e, const dmoe_tensor *in, int n_in, const dmoe_tensor *gout, int n_gout,
                         double timeout_s, dmoe_tensors **out, char *err, size_t errlen)
{
    int rc;
    call_op *c = out ? call_new(e, 1, in, n_in, gout, n_gout, timeout_s, err, errlen, &rc) : NULL;
    if (!c) return out ? rc : DMOE_EINVAL;
    c->out = out;
    return api_sync(e->d->ctx, &c->op, err, errlen);
}

int dmoe_expert_forward_keep(dmoe_expert *e, const dmoe_tensor *in, int n_in, double timeout_s, dmoe_tensors **out,
                             uint64_t *handle, char *err, size_t errlen)
{
    int rc;
    call_op *c = out && handle ? call_new(e, 0, in, n_in, NULL, 0, timeout_s, err, errlen, &rc) : NULL;
    if (!c) return out && handle ? rc : DMOE_EINVAL;
    *handle = 0;
    c->out = out;
    c->keep = 1;
    c->handle_out = handle;
    return api_sync(e->d->ctx, &c->op, err, errlen);
}

int dmoe_expert_backward_with(dmoe_expert *e, const dmoe_tensor *in, int n_in, const dmoe_tensor *gout, int n_gout,
                              uint64_t handle, double timeout_s, dmoe_tensors **out, char *err, size_t errlen)
{
    int rc;
    call_op *c = out ? call_new(e, 1, in, n_in, gout, n_gout, timeout_s, err, errlen, &rc) : NULL;
    if (!c) return out ? rc : DMOE_EINVAL;
    c->out = out;
    c->handle = handle;
    return api_sync(e->d->ctx, &c->op, err, errlen);
}

int dmoe_expert_forward_async(dmoe_expert *e, const dmoe_tensor *in, int n_in, double timeout_s, dmoe_tensors **out,
                              dmoe_callback cb, void *arg)
{
    int rc;
    call_op *c = out ? call_new(e, 0, in, n_in, NULL, 0, timeout_s, NULL, 0, &rc) : NULL;
    if (!c) return out ? rc : DMOE_EINVAL;
    c->out = out;
    return api_async(e->d->ctx, &c->op, cb, arg);
}

int dmoe_expert_backward_async(dmoe_expert *e, const dmoe_tensor *in, int n_in, const dmoe_tensor *gout, int n_gout,
                               double timeout_s, dmoe_tensors **out, dmoe_callback cb, void *arg)
{
    int rc;
    call_op *c = out ? call_new(e, 1, in, n_in, gout, n_gout, timeout_s, NULL, 0, &rc) : NULL;
    if (!c) return out ? rc : DMOE_EINVAL;
    c->out = out;
    return api_async(e->d->ctx, &c->op, cb, arg);
}
