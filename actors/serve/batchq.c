/* batchq.c -- the batch queue actor (see batchq.h for what it owns and the mail it exchanges). */
#include "actors/serve/batchq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/node/metrics.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "wire/wire_msg.h"

enum { BQ_REQ = 1, BQ_PULL, BQ_DONE, BQ_TICK, BQ_SHUTDOWN };

struct batchq {
    rt_actor actor;
    rt_actor *ex;
    int dir;
    expert_cfg cfg;
    const kern_model *model;
    ex_req *head, *tail;
    int64_t rows;            /* rows waiting */
    int waiting;             /* requests waiting */
    int in_batches;          /* requests inside batches not yet answered */
    int batches_out;         /* batches not yet back or not yet freed */
    int shutting_down;
    rt_signal pull_sig, shutdown_sig;
    rt_signal work_sig, nothing_sig;   /* raised towards the expert */
    rt_timer tick;
    int tick_armed;
    met_series *req_s, *lat_s;   /* requests answered and their latency (NULL without metrics) */
};

static size_t in_row_bytes(const kern_model *m, int i) { return kern_io_numel(&m->in[i]) * kern_dtype_size(m->in[i].dtype); }
static size_t out_row_floats(const kern_model *m, int dir, int j)
{
    return dir == EX_FWD ? kern_io_numel(&m->out[j]) : kern_io_numel(&m->in[j]);
}
static int n_results(const kern_model *m, int dir) { return dir == EX_FWD ? m->n_out : m->n_in; }

/* ---- answering ---- */

static void batch_free(ex_batch *b)
{
    batchq_release_work(b);
    free(b->chunks);
    act_block_unref(b->saved);
    free(b->res_block);
    rt_timer_deinit(&b->delay);
    batchq *q = b->q;
    free(b);
    q->batches_out--;
}

static void answer(batchq *q, ex_batch *b);

static void res_unref(const void *data, size_t len, void *arg)
{
    ex_batch *b = arg;
    if (--b->refs == 0) batch_free(b);
}

/* A batch dropped from a mailbox (its actor stopped, or the pool shut down): fail its requests. */
static void batch_abandon(rt_msg *m)
{
    ex_batch *b = (ex_batch *)m;
    b->rc = DMOE_ESHUTDOWN;
    snprintf(b->err, sizeof b->err, "the node is stopping");
    answer(b->q, b);
}

static void free_ref(const void *data, size_t len, void *arg) { free(arg); }

/* Pack t compressed with scheme into a buffer of its own (the reply owns it). */
static int pack_compressed(wire_out *o, wire_tensor *t, wire_scheme scheme)
{
    size_t rows = wire_tensor_rows(t);
    size_t cap = wire_compress_bound_rows(scheme, t->numel, rows), len = 0;
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf) return DMOE_ENOMEM;
    int rc = wire_compress_rows(scheme, (const float *)t->data, t->numel, rows, buf, &len);
    if (rc != 0) {   /* a non-finite gradient cannot be normalised: the caller gets an error */
        free(buf);
        return rc;
    }
    wire_tensor c = *t;
    c.compression = scheme;
    c.data = buf;
    c.nbytes = len;
    return wire_tensor_pack(o, &c, free_ref, buf);
}

static void answer(batchq *q, ex_batch *b)
{
    const kern_model *m = q->model;
    int nres = n_results(m, b->dir);
    int64_t row = 0;
    b->refs++;   /* ours, until every request is answered */
    while (b->reqs) {
        ex_req *r = b->reqs;
        b->reqs = r->next;
        q->in_batches--;
        if (b->rc < 0) {
            ex_reply_error(r, b->rc, b->err[0] ? b->err : dmoe_strerror(b->rc));
            row += r->rows;
            continue;
        }
        if (!conn_is_open(r->c)) {           /* the caller left while we computed */
            row += r->rows;
            ex_req_free(r);
            continue;
        }
        wire_out *o = wire_out_new();
        if (!o) { ex_reply_error(r, DMOE_ENOMEM, "out of memory building the reply"); row += r->rows; continue; }
        msgpack_packer *pk = wire_out_pk(o);
        wire_reply_begin(o, r->id);
        uint64_t handle = 0;
        if (b->dir == EX_FWD && b->saved && b->rc == 0)
            handle = actcache_put(q->cfg.cache, q->model, b->saved, row, r->rows, r->in_hash);
        msgpack_pack_map(pk, handle ? 2 : 1);
        if (handle) {
            wire_pack_str(pk, "handle");
            msgpack_pack_uint64(pk, handle);
        }
        wire_pack_str(pk, b->dir == EX_FWD ? "outputs" : "grad_inputs");
        msgpack_pack_array(pk, (size_t)nres);
        int rc = 0;
        for (int j = 0; j < nres && rc == 0; j++) {
            const kern_io_info *io = b->dir == EX_FWD ? &m->out[j] : &m->in[j];
            size_t rf = out_row_floats(m, b->dir, j);
            wire_tensor t = {.dtype = WIRE_DT_F32, .compression = WIRE_COMP_NONE, .ndim = io->ndim + 1};
            t.shape[0] = r->rows;
            for (int d = 0; d < io->ndim; d++) t.shape[d + 1] = io->dims[d];
            t.numel = (size_t)r->rows * rf;
            t.nbytes = t.numel * sizeof(float);
            t.data = (const uint8_t *)(b->res[j] + (size_t)row * rf);
            if (b->dir == EX_BWD && q->cfg.compression != WIRE_COMP_NONE) {
                rc = pack_compressed(o, &t, q->cfg.compression);
                continue;
            }
            b->refs++;
            rc = wire_tensor_pack(o, &t, res_unref, b);
        }
        row += r->rows;
        if (rc != 0) {
            wire_out_free(o);
            ex_reply_error(r, rc, rc == DMOE_ENOMEM ? "out of memory building the reply"
                                                    : "the input gradient cannot be compressed (not finite)");
            continue;
        }
        conn_send(r->c, o);
        metrics_inc(q->req_s, 1);
        metrics_observe(q->lat_s, (double)(rt_clock_us() - r->t_arrive_us) / 1e6);
        ex_req_free(r);
    }
    res_unref(NULL, 0, b);
}

/* ---- building batches ---- */

static int ready_to_batch(batchq *q, uint64_t now_us)
{
    if (!q->head) return 0;
    if (q->rows >= q->cfg.min_batch_size || q->rows >= q->cfg.max_batch_size) return 1;
    return now_us - q->head->t_arrive_us >= (uint64_t)q->cfg.batch_wait_ms * 1000u;
}

/* The request after the first n of the queue (NULL when there are no more). */
static ex_req *stop_at(batchq *q, int n)
{
    ex_req *r = q->head;
    while (r && n-- > 0) r = r->next;
    return r;
}

static ex_batch *build_batch(batchq *q)
{
    const kern_model *m = q->model;
    uint64_t now = rt_clock_us();
    /* drop requests whose callers are gone */
    while (q->head && !conn_is_open(q->head->c)) {
        ex_req *r = q->head;
        q->head = r->next;
        if (!q->head) q->tail = NULL;
        q->rows -= r->rows;
        q->waiting--;
        ex_req_free(r);
    }
    if (!ready_to_batch(q, now)) return NULL;

    int64_t B = 0;
    int nreq = 0;
    for (ex_req *r = q->head; r && B + r->rows <= q->cfg.max_batch_size; r = r->next) { B += r->rows; nreq++; }
    if (B == 0) return NULL;

    size_t in_bytes = 0, gout_floats = 0, res_floats = 0;
    for (int i = 0; i < m->n_in; i++) in_bytes += ((size_t)B * in_row_bytes(m, i) + 63) & ~(size_t)63;
    if (q->dir == EX_BWD)
        for (int j = 0; j < m->n_out; j++) gout_floats += (size_t)B * kern_io_numel(&m->out[j]) + 16;
    for (int j = 0; j < n_results(m, q->dir); j++) res_floats += (size_t)B * out_row_floats(m, q->dir, j) + 16;
    size_t ws_floats = q->dir == EX_FWD ? m->cls->forward_ws(m, B) : m->cls->backward_ws(m, B);
    /* a backward whose requests all brought their forward's activations skips recomputing them */
    int from_saved = q->dir == EX_BWD && m->cls->backward_saved;
    for (ex_req *r = q->head; from_saved && r && r != stop_at(q, nreq); r = r->next) from_saved = r->cached != NULL;
    size_t saved_floats = from_saved ? (size_t)B * m->cls->saved_floats(m) : 0;

    ex_batch *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->work = malloc(in_bytes + (gout_floats + ws_floats + saved_floats + 32) * sizeof(float));
    b->res_block = malloc((res_floats + 1) * sizeof(float));
    if (!b->work || !b->res_block) { free(b->work); free(b->res_block); free(b); return NULL; }
    if (rt_timer_init(&b->delay, q->ex, EX_MSG_DELAY_DONE) != 0) { free(b->work); free(b->res_block); free(b); return NULL; }

    uint8_t *p = b->work;
    for (int i = 0; i < m->n_in; i++) { b->in[i] = p; p += ((size_t)B * in_row_bytes(m, i) + 63) & ~(size_t)63; }
    float *f = (float *)p;
    if (q->dir == EX_BWD)
        for (int j = 0; j < m->n_out; j++) { b->gout[j] = f; f += (size_t)B * kern_io_numel(&m->out[j]) + 16; }
    b->ws = f;
    b->ws_floats = ws_floats;
    f += ws_floats + 16;
    if (from_saved) b->gathered = f;
    if (q->dir == EX_FWD && q->cfg.cache && m->cls->forward_save) b->saved = act_block_new(B, m->cls->saved_floats(m));
    float *rp = b->res_block;
    for (int j = 0; j < n_results(m, q->dir); j++) { b->res[j] = rp; rp += (size_t)B * out_row_floats(m, q->dir, j) + 16; }

    /* one copy per row, straight out of the frames, which are then freed */
    int64_t row = 0;
    ex_req **tailp = &b->reqs;
    for (int k = 0; k < nreq; k++) {
        ex_req *r = q->head;
        q->head = r->next;
        if (!q->head) q->tail = NULL;
        q->rows -= r->rows;
        q->waiting--;
        q->in_batches++;
        for (int i = 0; i < m->n_in; i++) {
            size_t rb = in_row_bytes(m, i);
            memcpy((uint8_t *)b->in[i] + (size_t)row * rb, r->in[i], (size_t)r->rows * rb);
        }
        if (q->dir == EX_BWD)
            for (int j = 0; j < m->n_out; j++) {
                size_t rf = kern_io_numel(&m->out[j]);
                memcpy(b->gout[j] + (size_t)row * rf, r->gout[j], (size_t)r->rows * rf * sizeof(float));
            }
        if (r->cached) {   /* gathered, or useless now: either way the entry is done */
            if (b->gathered) {
                size_t sf = m->cls->saved_floats(m);
                memcpy(b->gathered + (size_t)row * sf, act_entry_rows(r->cached), (size_t)r->rows * sf * sizeof(float));
            }
            act_entry_release(r->cached);
            r->cached = NULL;
        }
        b->t_queued_us += now - r->t_arrive_us;
        ex_req_drop_frame(r);
        memset(r->in, 0, sizeof r->in);
        memset(r->gout, 0, sizeof r->gout);
        r->next = NULL;
        *tailp = r;
        tailp = &r->next;
        row += r->rows;
    }
    b->job.msg.drop = batch_abandon;
    b->q = q;
    b->dir = q->dir;
    b->B = B;
    q->batches_out++;
    return b;
}

void batchq_release_work(ex_batch *b)
{
    free(b->work);
    b->work = NULL;
    memset(b->in, 0, sizeof b->in);
    memset(b->gout, 0, sizeof b->gout);
    b->ws = NULL;
    b->gathered = NULL;
}

static void fail_waiting(batchq *q, int code, const char *msg)
{
    while (q->head) {
        ex_req *r = q->head;
        q->head = r->next;
        q->waiting--;
        q->rows -= r->rows;
        ex_reply_error(r, code, msg);
    }
    q->tail = NULL;
}

static void batchq_handle(rt_actor *self, rt_msg *m)
{
    batchq *q = (batchq *)self;
    switch (m->type) {
    case BQ_REQ: {
        ex_req *r = (ex_req *)m;
        if (q->shutting_down) { ex_reply_error(r, DMOE_ESHUTDOWN, "the node is stopping"); return; }
        r->next = NULL;
        if (q->tail) q->tail->next = r;
        else q->head = r;
        q->tail = r;
        q->rows += r->rows;
        q->waiting++;
        rt_signal_raise(&q->work_sig);
        return;
    }
    case BQ_PULL: {
        rt_msg_drop(m);
        ex_batch *b = q->shutting_down ? NULL : build_batch(q);
        if (b) {
            b->job.msg.type = EX_MSG_BATCH | (q->dir << 8);
            if (rt_send(q->ex, &b->job.msg) != 0) {   /* expert gone: fail the batch here */
                b->rc = DMOE_ESHUTDOWN;
                batchq_release_work(b);
                answer(q, b);
            }
            if (q->head) rt_signal_raise(&q->work_sig);
        } else {
            rt_signal_raise(&q->nothing_sig);
            if (q->head && !q->tick_armed && q->cfg.batch_wait_ms > 0) {
                /* too few rows yet: look again when the oldest has waited long enough */
                q->tick_armed = 1;
                rt_timer_start(&q->tick, (uint64_t)q->cfg.batch_wait_ms, 0);
            }
        }
        return;
    }
    case BQ_TICK:
        rt_msg_drop(m);
        q->tick_armed = 0;
        if (q->head) rt_signal_raise(&q->work_sig);
        return;
    case BQ_DONE: {
        ex_batch *b = (ex_batch *)m;
        answer(q, b);
        return;
    }
    case BQ_SHUTDOWN:
        rt_msg_drop(m);
        q->shutting_down = 1;
        fail_waiting(q, DMOE_ESHUTDOWN, "the node is stopping");
        rt_timer_cancel(&q->tick);
        return;
    default:
        rt_msg_drop(m);
    }
}

static void batchq_destroy(rt_actor *self)
{
    batchq *q = (batchq *)self;
    fail_waiting(q, DMOE_ESHUTDOWN, "the node is stopping");
    rt_timer_deinit(&q->tick);
    free(q);
}

batchq *batchq_new(rt_loop *l, rt_actor *ex, int dir, const expert_cfg *cfg, const kern_model *model,
                   const char *uid)
{
    batchq *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    rt_actor_init(&q->actor, l, dir == EX_FWD ? "batchq.forward" : "batchq.backward", batchq_handle, batchq_destroy);
    q->ex = ex;
    q->dir = dir;
    q->cfg = *cfg;
    if (q->cfg.min_batch_size < 1) q->cfg.min_batch_size = 1;
    q->model = model;
    rt_signal_init(&q->pull_sig, &q->actor, BQ_PULL);
    rt_signal_init(&q->shutdown_sig, &q->actor, BQ_SHUTDOWN);
    rt_signal_init(&q->work_sig, ex, EX_MSG_WORK | (dir << 8));
    rt_signal_init(&q->nothing_sig, ex, EX_MSG_NOTHING | (dir << 8));
    if (rt_timer_init(&q->tick, &q->actor, BQ_TICK) != 0) { free(q); return NULL; }
    if (cfg->met) {
        const char *method = dir == EX_FWD ? "forward" : "backward";
        const char *labels[2] = {method, uid};
        q->req_s = metrics_series(cfg->met->requests, labels);
        q->lat_s = metrics_series(cfg->met->latency, &method);
    }
    return q;
}

void batchq_push(batchq *q, ex_req *req)
{
    req->msg.type = BQ_REQ;
    req->msg.drop = NULL;
    if (rt_send(&q->actor, &req->msg) != 0) ex_reply_error(req, DMOE_ESHUTDOWN, "the node is stopping");
}

void batchq_pull(batchq *q) { rt_signal_raise(&q->pull_sig); }

void batchq_done(batchq *q, ex_batch *b)
{
    b->job.msg.type = BQ_DONE;
    if (rt_send(&q->actor, &b->job.msg) != 0) {
        b->rc = DMOE_ESHUTDOWN;
        answer(q, b);
    }
}

int batchq_pending(const batchq *q) { return q->waiting + q->in_batches; }

void batchq_shutdown(batchq *q) { rt_signal_raise(&q->shutdown_sig); }

void batchq_stop(batchq *q) { rt_actor_stop(&q->actor); }
