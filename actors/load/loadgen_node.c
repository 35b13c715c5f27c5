/* loadgen_node.c -- the load generator's node mode: forward and backward requests sent straight to the
 * experts of one dmoe node (`dmoe-call --peer ADDR load`).
 *
 * Set-up is asynchronous. node_start sends one info call (no uid) to the node; its reply lists the
 * experts, from which pick_targets chooses the run's targets (the given uids, or every expert with
 * --all) and checks they share one schema and that batch_max fits the smallest max_batch_size. Then
 * make_users gives each user its own client (its own connection) and, per schema input, batch_max
 * random rows (per output, random gradients when the mix has backwards), built once and sent again and
 * again: a request references the first B rows of those buffers (wire_out_bin_ref, no copy), and a
 * reference count keeps a buffer alive while a request still points into it. Finally lg_start_run
 * hands the users to the engine.
 *
 * Requests. node_send packs a forward {uid, inputs} or a backward {uid, inputs, grad_outputs} with
 * the handle of the user's previous forward when the node returned one (as a training client does: the
 * node then skips recomputing the forward); a forward that opens no training pair says "save": false. on_reply counts the reply's bytes, checks it carries one
 * tensor per output (forward) or input (backward) with the request's row count, keeps a forward's
 * handle, and ends in lg_user_done.
 *
 * At the end node_close frees the clients (calls still in flight end as lost) and, after the loop is
 * gone, node_free drops the buffers and the target list. The engine calls all of these through
 * lg_node_ops. Loop thread only.
 */
#include <stdlib.h>
#include <string.h>

#include "actors/load/loadgen_engine.h"
#include "runtime/rt_err.h"

/* A buffer of rows referenced by requests in flight; freed by the last reference. */
struct lg_buf {
    int refs;
    size_t nbytes;
    uint8_t *data;
};

/* ---- row buffers ---- */

static lg_buf *buf_new(size_t nbytes)
{
    lg_buf *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->data = malloc(nbytes ? nbytes : 1);
    if (!b->data) { free(b); return NULL; }
    b->nbytes = nbytes;
    b->refs = 1;
    return b;
}

static void buf_unref(lg_buf *b)
{
    if (b && --b->refs == 0) {
        free(b->data);
        free(b);
    }
}

static void buf_release(const void *data, size_t len, void *arg) { buf_unref(arg); }

/* Fill a user's buffer for io with batch_max random rows: normal floats; 0/1 for a float input named
 * like a mask; zeros (nothing padded) for a uint8 mask. */
static void fill_rows(lg_buf *b, const kern_io_info *io, kern_rng *rng)
{
    if (io->dtype == KERN_U8) {
        memset(b->data, 0, b->nbytes);
        return;
    }
    float *f = (float *)b->data;
    size_t n = b->nbytes / sizeof(float);
    int is_mask = strstr(io->name, "mask") != NULL;
    for (size_t i = 0; i < n; i++) f[i] = is_mask ? (kern_rng_uniform(rng) < 0.8f ? 1.0f : 0.0f) : kern_rng_normal(rng);
}

static int pack_rows(wire_out *o, lg_buf *const *bufs, const kern_io_info *io, int n, int64_t rows)
{
    msgpack_pack_array(wire_out_pk(o), (size_t)n);
    for (int i = 0; i < n; i++) {
        wire_tensor w = {.dtype = io[i].dtype == KERN_U8 ? WIRE_DT_U8 : WIRE_DT_F32, .compression = WIRE_COMP_NONE,
                         .ndim = io[i].ndim + 1};
        w.shape[0] = rows;
        for (int d = 0; d < io[i].ndim; d++) w.shape[d + 1] = io[i].dims[d];
        w.numel = (size_t)rows * kern_io_numel(&io[i]);
        w.nbytes = w.numel * kern_dtype_size(io[i].dtype);
        w.data = bufs[i]->data;
        bufs[i]->refs++;
        if (wire_tensor_pack(o, &w, buf_release, bufs[i]) != 0) return DMOE_ENOMEM;
    }
    return 0;
}

/* ---- requests ---- */

static int count_write(void *data, const char *buf, size_t len)
{
    *(uint64_t *)data += len;
    return 0;
}

/* Check that a successful reply carries one tensor per schema output (forward) or input (backward),
 * each with the request's row count. Returns 0 or DMOE_EPROTO with err. */
static int check_reply(const lg *g, const lg_user *u, const wire_msg *reply, char *err, size_t errlen)
{
    const char *key = u->dir ? "grad_inputs" : "outputs";
    int want = u->dir ? g->schema.n_in : g->schema.n_out;
    const msgpack_object *arr = reply->result && reply->result->type == MSGPACK_OBJECT_MAP
                                    ? wire_map_get(reply->result, key) : NULL;
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY || (int)arr->via.array.size != want) {
        snprintf(err, errlen, "the reply has no %s array of %d tensors", key, want);
        return DMOE_EPROTO;
    }
    for (int i = 0; i < want; i++) {
        wire_tensor w;
        char terr[128];
        if (wire_tensor_decode(&arr->via.array.ptr[i], &w, terr, sizeof terr) != 0) {
            snprintf(err, errlen, "reply %s[%d]: %s", key, i, terr);
            return DMOE_EPROTO;
        }
        if (w.ndim < 1 || w.shape[0] != u->rows) {
            snprintf(err, errlen, "reply %s[%d] has %lld rows, sent %lld", key, i, w.ndim ? (long long)w.shape[0] : 0LL,
                     (long long)u->rows);
            return DMOE_EPROTO;
        }
    }
    return 0;
}

static int on_reply(void *arg, int err, const char *msg, wire_msg *reply)
{
    lg_user *u = arg;
    lg *g = u->g;
    if (g->phase == PH_DONE) { lg_user_done(u, err, msg); return 0; }
    char e[256];
    if (reply) {
        uint64_t n = 0;
        msgpack_packer pk;
        msgpack_packer_init(&pk, &n, count_write);
        msgpack_pack_object(&pk, reply->root);
        g->r->bytes_received += n + 4;
    }
    if (err == 0) {
        err = check_reply(g, u, reply, e, sizeof e);
        msg = e;
    }
    if (err == 0 && u->dir == 0) u->prev_handle = rx_reply_handle(reply);
    lg_user_done(u, err, msg);
    return 0;
}

/* Node mode: one forward or backward request to the user's target expert. */
static int node_send(lg_user *u)
{
    lg *g = u->g;
    const loadgen_cfg *c = g->cfg;
    int bwd = u->dir;
    uint64_t id = client_next_id(u->cl);
    wire_out *o = wire_out_new();
    int rc = o ? 0 : DMOE_ENOMEM;
    if (rc == 0) {
        int with_handle = bwd && u->prev_handle, no_save = !bwd && !u->owed;
        wire_request_begin(o, id, bwd ? "backward" : "forward", (bwd ? 5 : 4) + with_handle + no_save);
        if (with_handle) {   /* as a training client does: the node then skips recomputing the forward */
            wire_pack_str(wire_out_pk(o), "handle");
            msgpack_pack_uint64(wire_out_pk(o), u->prev_handle);
            u->prev_handle = 0;
        }
        if (no_save) {   /* a forward no backward follows, as an inference client's: nothing to keep */
            wire_pack_str(wire_out_pk(o), "save");
            msgpack_pack_false(wire_out_pk(o));
        }
        wire_pack_str(wire_out_pk(o), "uid");
        wire_pack_str(wire_out_pk(o), g->uids[u->target]);
        wire_pack_str(wire_out_pk(o), "inputs");
        rc = pack_rows(o, u->in, g->schema.in, g->schema.n_in, u->rows);
        if (rc == 0 && bwd) {
            wire_pack_str(wire_out_pk(o), "grad_outputs");
            rc = pack_rows(o, u->gout, g->schema.out, g->schema.n_out, u->rows);
        }
        if (rc != 0) { wire_out_free(o); o = NULL; }
    }
    if (rc == 0) {
        g->r->bytes_sent += wire_out_len(o) + 4;
        rc = client_call(u->cl, &c->peer, id, o, c->timeout_ms, on_reply, u);
    }
    return rc;
}

/* ---- set-up ---- */

static int same_io(const kern_io_info *a, int na, const kern_io_info *b, int nb)
{
    if (na != nb) return 0;
    for (int i = 0; i < na; i++) {
        if (a[i].dtype != b[i].dtype || a[i].ndim != b[i].ndim) return 0;
        for (int d = 0; d < a[i].ndim; d++)
            if (a[i].dims[d] != b[i].dims[d]) return 0;
    }
    return 1;
}

/* Choose the targets among the node's experts and check they share one schema. */
static int pick_targets(lg *g, const msgpack_object *experts)
{
    const loadgen_cfg *c = g->cfg;
    uint32_t n = experts->via.array.size;
    int want = 0;
    if (!c->all)
        while (c->uids[want]) want++;
    int cap = c->all ? (int)n : want;
    if (cap < 1) { lg_set_err(g, DMOE_EINVAL, "%s%s", "the node hosts no experts", ""); return g->rc; }
    if (cap > LOADGEN_MAX_TARGETS) cap = LOADGEN_MAX_TARGETS;
    g->uids = calloc((size_t)cap, sizeof *g->uids);
    if (!g->uids) { lg_set_err(g, DMOE_ENOMEM, "%s%s", "out of memory", ""); return g->rc; }
    for (int t = 0; t < cap; t++) {
        rx_schema s;
        char e[256];
        int found = 0;
        for (uint32_t i = 0; i < n && !found; i++) {
            if (rx_schema_parse(&experts->via.array.ptr[i], &s, e, sizeof e) != 0) {
                lg_set_err(g, DMOE_EPROTO, "the node's info is unreadable: %s%s", e, "");
                return g->rc;
            }
            found = c->all ? (int)i == t : strcmp(s.uid, c->uids[t]) == 0;
        }
        if (!found) { lg_set_err(g, DMOE_EINVAL, "the node has no expert %s%s", c->uids[t], ""); return g->rc; }
        if (t == 0) {
            g->schema = s;
        } else if (!same_io(s.in, s.n_in, g->schema.in, g->schema.n_in) ||
                   !same_io(s.out, s.n_out, g->schema.out, g->schema.n_out)) {
            lg_set_err(g, DMOE_EINVAL, "experts %s and %s take different inputs: target one kind at a time", g->schema.uid, s.uid);
            return g->rc;
        }
        if (s.max_batch_size < g->schema.max_batch_size) g->schema.max_batch_size = s.max_batch_size;
        snprintf(g->uids[t], sizeof g->uids[t], "%s", s.uid);
        g->n_targets = t + 1;
    }
    if (c->batch_max > g->schema.max_batch_size) {
        char a[32], b[32];
        snprintf(a, sizeof a, "%lld", (long long)c->batch_max);
        snprintf(b, sizeof b, "%lld", (long long)g->schema.max_batch_size);
        lg_set_err(g, DMOE_EINVAL, "batch %s is over the node's max_batch_size %s", a, b);
        return g->rc;
    }
    if (g->schema.n_in < 1 || g->schema.n_out < 1) {
        lg_set_err(g, DMOE_EINVAL, "expert %s has no inputs or outputs%s", g->schema.uid, "");
        return g->rc;
    }
    return 0;
}

static int make_users(lg *g)
{
    const loadgen_cfg *c = g->cfg;
    g->users = calloc((size_t)c->clients, sizeof *g->users);
    if (!g->users) return DMOE_ENOMEM;
    g->n_users = c->clients;
    for (int i = 0; i < g->n_users; i++) {
        lg_user *u = &g->users[i];
        u->g = g;
        kern_rng_seed(&u->rng, c->seed * 0x9E3779B97F4A7C15ull + (uint64_t)i + 1);
        u->cl = client_new(g->loop, NULL);
        if (!u->cl) return DMOE_ENOMEM;
        for (int k = 0; k < g->schema.n_in; k++) {
            u->in[k] = buf_new((size_t)c->batch_max * kern_io_numel(&g->schema.in[k]) * kern_dtype_size(g->schema.in[k].dtype));
            if (!u->in[k]) return DMOE_ENOMEM;
            fill_rows(u->in[k], &g->schema.in[k], &u->rng);
        }
        for (int k = 0; c->mix > 0 && k < g->schema.n_out; k++) {
            u->gout[k] = buf_new((size_t)c->batch_max * kern_io_numel(&g->schema.out[k]) * sizeof(float));
            if (!u->gout[k]) return DMOE_ENOMEM;
            fill_rows(u->gout[k], &g->schema.out[k], &u->rng);
        }
    }
    return 0;
}

static int on_info(void *arg, int err, const char *msg, wire_msg *reply)
{
    lg *g = arg;
    if (g->phase != PH_INFO) return 0;
    if (err) {
        lg_set_err(g, err, "info from the node failed: %s%s", msg ? msg : dmoe_strerror(err), "");
        lg_finish(g);
        return 0;
    }
    const msgpack_object *ex = reply->result ? wire_map_get(reply->result, "experts") : NULL;
    if (!ex || ex->type != MSGPACK_OBJECT_ARRAY) {
        lg_set_err(g, DMOE_EPROTO, "the node's info has no experts list%s%s", "", "");
        lg_finish(g);
        return 0;
    }
    if (pick_targets(g, ex) != 0) { lg_finish(g); return 0; }
    g->r->n_targets = g->n_targets;
    snprintf(g->r->first_target, sizeof g->r->first_target, "%s", g->uids[0]);
    g->r->row_elems = (int64_t)kern_io_numel(&g->schema.in[0]);
    int rc = make_users(g);
    if (rc) { lg_set_err(g, rc, "%s%s", "out of memory for the users' rows", ""); lg_finish(g); return 0; }
    lg_start_run(g);
    return 0;
}

static int node_start(lg *g)
{
    const loadgen_cfg *c = g->cfg;
    g->info_cl = client_new(g->loop, NULL);
    wire_out *o = g->info_cl ? wire_out_new() : NULL;
    if (!o) { snprintf(g->err, g->errlen, "out of memory"); return DMOE_ENOMEM; }
    uint64_t id = client_next_id(g->info_cl);
    wire_request_begin(o, id, "info", 2);
    int rc = client_call(g->info_cl, &c->peer, id, o, c->timeout_ms, on_info, g);
    if (rc) snprintf(g->err, g->errlen, "cannot call %s (an IP address is needed)", c->peer.host);
    return rc;
}

static void node_close(lg *g)
{
    for (int i = 0; i < g->n_users; i++) {
        client_free(g->users[i].cl);   /* fails its call in flight: lost */
        g->users[i].cl = NULL;
    }
    client_free(g->info_cl);
    g->info_cl = NULL;
}

static void node_free(lg *g)
{
    for (int i = 0; i < g->n_users; i++) {
        for (int k = 0; k < KERN_MAX_IO; k++) {
            buf_unref(g->users[i].in[k]);
            buf_unref(g->users[i].gout[k]);
        }
    }
    free(g->uids);
    g->uids = NULL;
}

static int node_can_backward(const lg_user *u) { return u->has_prev; }

const lg_mode_ops lg_node_ops = {
    .name = "node",
    .start = node_start,
    .send = node_send,
    .can_backward = node_can_backward,
    .close = node_close,
    .free = node_free,
    .paired = 1,
};
