/* moe_adapt.c -- the DHT as a successors provider and the client as an expert caller (see moe_adapt.h).
 *
 * Both are thin: they translate the layer's calls into dht_get_active_successors and client_call, and
 * the replies back. The client caller owns one small context per call, freed by the reply callback,
 * which the client runs exactly once (with an error when the call fails or times out). The caller
 * checks each answer's structure against the request (rx_reply_check: count, dtype, rows, a gradient's
 * shape); the layer then checks the width and, with detect_anomalies, the values.
 */
#include "actors/moe/route/moe_adapt.h"

#include <stdlib.h>

#include "runtime/rt_err.h"

/* ---- the DHT as a successors provider ---- */

static int dht_provider_get(void *impl, const char *const *prefixes, size_t n, dht_successors_cb cb, void *arg)
{
    moe_dht_succ *s = impl;
    char err[256];
    return dht_get_active_successors(s->d, prefixes, n, s->neg_cache_s, cb, arg, err, sizeof err);
}

void moe_succ_dht(moe_dht_succ *s, moe_succ_provider *p)
{
    p->impl = s;
    p->get = dht_provider_get;
}

/* ---- the client as an expert caller ---- */

typedef struct {
    moe_call_cb cb;
    void *arg;
    int backward;
    rx_buf *xbuf;   /* the first input's buffer: a forward's reply leaves its activation handle there */
    int n_in;
    rx_tensor in[KERN_MAX_IO];   /* the request's inputs (shapes only, for checking the answer; no data) */
} client_ctx;

static int on_client_reply(void *arg, int err, const char *msg, wire_msg *reply)
{
    client_ctx *c = arg;
    rx_tensor out[KERN_MAX_IO];
    char e[256];
    if (err) {
        c->cb(c->arg, err, msg ? msg : dmoe_strerror(err), NULL);
    } else {
        int n = rx_result(reply, c->backward ? "grad_inputs" : "outputs", out, KERN_MAX_IO, e, sizeof e);
        int rc = n < 0 ? n : rx_reply_check(NULL, c->backward, c->in, c->n_in, out, n, 0, e, sizeof e);
        if (rc) {
            for (int i = 0; i < n; i++) rx_tensor_free(&out[i]);
            c->cb(c->arg, rc, e, NULL);
        } else {
            for (int i = 1; i < n; i++) rx_tensor_free(&out[i]);
            /* the backward of these rows will send the handle back, so the node skips the recompute */
            if (!c->backward && c->xbuf) c->xbuf->handle = rx_reply_handle(reply);
            c->cb(c->arg, 0, "", &out[0]);
        }
    }
    rx_buf_unref(c->xbuf);
    free(c);
    return 0;
}

static int client_caller_call(void *impl, const char *uid, const wire_maddr *addr, const rx_tensor *in, int n_in,
                              const rx_tensor *gout, uint64_t timeout_ms, moe_call_cb cb, void *arg)
{
    client *cl = impl;
    if (n_in < 1 || n_in > KERN_MAX_IO) return DMOE_EINVAL;
    const rx_tensor *x = &in[0];
    client_ctx *c = malloc(sizeof *c);
    if (!c) return DMOE_ENOMEM;
    *c = (client_ctx){ cb, arg, gout != NULL, x->buf, n_in };
    for (int i = 0; i < n_in; i++) {   /* the answer is checked against these shapes */
        c->in[i] = in[i];
        c->in[i].buf = NULL;
    }
    uint64_t handle = 0;
    if (x->buf) {
        rx_buf_ref(x->buf);
        if (gout) {   /* a handle is good once */
            handle = x->buf->handle;
            x->buf->handle = 0;
        }
    }
    uint64_t id = client_next_id(cl);
    wire_out *req = rx_request_with_handle(id, uid, in, n_in, gout, gout ? 1 : 0, WIRE_COMP_NONE, handle);
    if (!req) { rx_buf_unref(c->xbuf); free(c); return DMOE_ENOMEM; }
    int rc = client_call(cl, addr, id, req, timeout_ms, on_client_reply, c);
    if (rc) { rx_buf_unref(c->xbuf); free(c); }
    return rc;
}

typedef struct {
    moe_info_cb cb;
    void *arg;
} info_ctx;

static int on_info_reply(void *arg, int err, const char *msg, wire_msg *reply)
{
    info_ctx *c = arg;
    if (err) {
        c->cb(c->arg, err, msg ? msg : dmoe_strerror(err), NULL);
    } else {
        rx_schema s;
        char e[256];
        if (rx_schema_parse(reply->result, &s, e, sizeof e) != 0) c->cb(c->arg, DMOE_EPROTO, e, NULL);
        else c->cb(c->arg, 0, "", &s);
    }
    free(c);
    return 0;
}

static int client_caller_info(void *impl, const char *uid, const wire_maddr *addr, uint64_t timeout_ms,
                              moe_info_cb cb, void *arg)
{
    client *cl = impl;
    info_ctx *c = malloc(sizeof *c);
    wire_out *req = wire_out_new();
    if (!c || !req) { free(c); wire_out_free(req); return DMOE_ENOMEM; }
    *c = (info_ctx){cb, arg};
    uint64_t id = client_next_id(cl);
    wire_request_begin(req, id, "info", 3);
    wire_pack_str(wire_out_pk(req), "uid");
    wire_pack_str(wire_out_pk(req), uid);
    int rc = client_call(cl, addr, id, req, timeout_ms, on_info_reply, c);
    if (rc) free(c);
    return rc;
}

void moe_caller_client(client *cl, moe_caller *out)
{
    out->impl = cl;
    out->call = client_caller_call;
    out->info = client_caller_info;
}
