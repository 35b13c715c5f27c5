/* batchq.c -- the batch queue (see batchq.h for what it owns and who calls it).
 *
 * Design notes. Requests wait on a singly linked list (head to tail, arrival order). A batch is one
 * calloc'd ex_batch plus two blocks: the work block (inputs, grad_outputs, workspace, gathered
 * activations), filled by the jobs themselves (batchq_fill, each its rows, from the requests' frames
 * and saved activations, which the batch keeps until then) and freed with those frames as soon as the
 * jobs are back, and the result block, which a reply covering the whole batch references and which is
 * freed when the last reference has been written (b->refs); the replies of a batch of several requests
 * send their own rows instead, copied out by the job (batchq_pack_replies), so that an unread reply
 * never holds more than its own bytes. A backward of one request that brought its handle reads the
 * saved activations where its cache entry holds them. Nothing here blocks or sends mail except the
 * replies (conn_send).
 */
#include "actors/serve/batchq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/node/metrics.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "wire/wire_msg.h"

/* A batch takes no more requests once it holds this many rows (a single request may be bigger, up to
 * max_batch_size). The kernels run at their rate well below it (make bench: fwd+bwd at 256 and 1,024
 * rows within 3% of each other); merging past it only makes one job longer where several could run
 * in parallel, holds more memory and, for big requests, costs fresh pages and reply copies (make
 * bench at 1,024 rows a request: node fwd+bwd at 65% of the kernel with 8-request batches). */
#define BATCHQ_MERGE_ROWS 1024

struct batchq {
    int dir;
    batchq_cfg cfg;
    const kern_model *model;
    ex_req *head, *tail;
    int64_t rows;            /* rows waiting */
    int waiting;             /* requests waiting */
    int in_batches;          /* requests inside batches not yet answered */
    met_series *req_s, *lat_s;   /* requests answered and their latency (NULL without metrics) */
};

static size_t in_row_bytes(const kern_model *m, int i) { return kern_io_numel(&m->in[i]) * kern_dtype_size(m->in[i].dtype); }
static size_t out_row_floats(const kern_model *m, int dir, int j)
{
    return dir == EX_FWD ? kern_io_numel(&m->out[j]) : kern_io_numel(&m->in[j]);
}
static int n_results(const kern_model *m, int dir) { return dir == EX_FWD ? m->n_out : m->n_in; }

/* ---- answering ---- */

static void free_packed(ex_batch *b)
{
    for (int k = 0; b->packed && k < b->nreq; k++)
        for (int j = 0; j < KERN_MAX_IO; j++) free(b->packed[k].buf[j]);
    free(b->packed);
    b->packed = NULL;
}

static void batch_free(ex_batch *b)
{
    batchq_release_work(b);
    free(b->chunks);
    free_packed(b);
    act_block_unref(b->saved);
    free(b->res_block);
    rt_timer_deinit(&b->delay);
    free(b);
}

static void res_unref(const void *data, size_t len, void *arg)
{
    ex_batch *b = arg;
    if (--b->refs == 0) batch_free(b);
}

void batchq_abandon(ex_batch *b)
{
    b->rc = DMOE_ESHUTDOWN;
    snprintf(b->err, sizeof b->err, "the node is stopping");
    batchq_answer(b->q, b);
}

/* A batch dropped from the pool (its expert stopped, or the pool shut down): fail its requests. */
static void batch_abandon(rt_msg *m) { batchq_abandon((ex_batch *)m); }

void batchq_hold(ex_batch *b) { b->refs++; }
void batchq_unhold(ex_batch *b) { res_unref(NULL, 0, b); }

static void free_ref(const void *data, size_t len, void *arg) { free(arg); }

void batchq_pack_replies(ex_batch *b)
{
    const kern_model *m = b->model;
    if (!b->packed || b->rc < 0) return;
    int64_t row = 0;
    int k = 0, nres = n_results(m, b->dir);
    for (ex_req *r = b->reqs; r; r = r->next, k++) {
        ex_packed *p = &b->packed[k];
        for (int j = 0; j < nres && p->rc == 0; j++) {
            size_t rf = out_row_floats(m, b->dir, j), numel = (size_t)r->rows * rf;
            const float *src = b->res[j] + (size_t)row * rf;
            size_t cap = b->compression == WIRE_COMP_NONE ? numel * sizeof(float)
                                                          : wire_compress_bound_rows(b->compression, numel, (size_t)r->rows);
            p->buf[j] = malloc(cap ? cap : 1);
            if (!p->buf[j]) { p->rc = DMOE_ENOMEM; break; }
            if (b->compression == WIRE_COMP_NONE) {   /* its own rows, so its unread reply holds no more */
                memcpy(p->buf[j], src, cap);
                p->len[j] = cap;
                continue;
            }
            /* a non-finite gradient cannot be normalised: the caller gets an error */
            p->rc = wire_compress_rows(b->compression, src, numel, (size_t)r->rows, p->buf[j], &p->len[j]);
        }
        row += r->rows;
    }
}

/* Pack the rows [row, row + r->rows) of result j into o: the worker's copy (batchq_pack_replies), or
 * the result block by reference when the request is the whole batch. */
static int pack_result(batchq *q, ex_batch *b, wire_out *o, ex_packed *p, int j, int64_t row, int64_t rows)
{
    const kern_model *m = q->model;
    const kern_io_info *io = b->dir == EX_FWD ? &m->out[j] : &m->in[j];
    size_t rf = out_row_floats(m, b->dir, j);
    wire_tensor t = {.dtype = WIRE_DT_F32, .compression = WIRE_COMP_NONE, .ndim = io->ndim + 1};
    t.shape[0] = rows;
    for (int d = 0; d < io->ndim; d++) t.shape[d + 1] = io->dims[d];
    t.numel = (size_t)rows * rf;
    t.nbytes = t.numel * sizeof(float);
    if (p) {
        t.compression = b->compression;
        t.data = p->buf[j];
        t.nbytes = p->len[j];
        p->buf[j] = NULL;   /* the reply owns it now, whatever happens */
        return wire_tensor_pack(o, &t, free_ref, (void *)t.data);
    }
    t.data = (const uint8_t *)(b->res[j] + (size_t)row * rf);
    b->refs++;
    return wire_tensor_pack(o, &t, res_unref, b);
}

void batchq_answer(batchq *q, ex_batch *b)
{
    const kern_model *m = q->model;
    int nres = n_results(m, b->dir);
    int64_t row = 0;
    b->refs++;   /* ours, until every request is answered */
    for (int k = 0; b->reqs; k++) {
        ex_req *r = b->reqs;
        b->reqs = r->next;
        q->in_batches--;
        int64_t first = row;
        row += r->rows;
        if (b->rc < 0) {
            ex_reply_error(r, b->rc, b->err[0] ? b->err : dmoe_strerror(b->rc));
            continue;
        }
        if (!conn_is_open(r->c)) {           /* the caller left while we computed */
            ex_req_free(r);
            continue;
        }
        ex_packed *p = b->packed ? &b->packed[k] : NULL;
        if (p && p->rc < 0) {
            ex_reply_error(r, p->rc, p->rc == DMOE_ENOMEM ? "out of memory building the reply"
                                                          : "the input gradient cannot be compressed (not finite)");
            continue;
        }
        wire_out *o = wire_out_new();
        if (!o) { ex_reply_error(r, DMOE_ENOMEM, "out of memory building the reply"); continue; }
        msgpack_packer *pk = wire_out_pk(o);
        wire_reply_begin(o, r->id);
        uint64_t handle = 0;
        if (b->dir == EX_FWD && b->saved && r->save)
            handle = actcache_put(q->cfg.cache, q->model, b->saved, first, r->rows, r->in_hash);
        msgpack_pack_map(pk, handle ? 2 : 1);
        if (handle) {
            wire_pack_str(pk, "handle");
            msgpack_pack_uint64(pk, handle);
        }
        wire_pack_str(pk, b->dir == EX_FWD ? "outputs" : "grad_inputs");
        msgpack_pack_array(pk, (size_t)nres);
        int rc = 0;
        for (int j = 0; j < nres && rc == 0; j++) rc = pack_result(q, b, o, p, j, first, r->rows);
        if (rc != 0) {
            wire_out_free(o);
            ex_reply_error(r, rc, "out of memory building the reply");
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

int64_t batchq_wait_us(const batchq *q, uint64_t now_us)
{
    if (!q->head) return -1;
    if (q->rows >= q->cfg.min_batch_size || q->rows >= q->cfg.max_batch_size) return 0;
    uint64_t waited = now_us - q->head->t_arrive_us, limit = (uint64_t)q->cfg.batch_wait_ms * 1000u;
    return waited >= limit ? 0 : (int64_t)(limit - waited);
}

static ex_req *pop(batchq *q)
{
    ex_req *r = q->head;
    q->head = r->next;
    if (!q->head) q->tail = NULL;
    q->rows -= r->rows;
    q->waiting--;
    r->next = NULL;
    return r;
}

/* The first nreq requests could not be batched (no memory): each caller gets an error reply. */
static void fail_first(batchq *q, int nreq, const char *msg)
{
    LOG_WARN("%s", msg);
    while (nreq-- > 0) ex_reply_error(pop(q), DMOE_ENOMEM, msg);
}

ex_batch *batchq_take(batchq *q, uint64_t now_us)
{
    const kern_model *m = q->model;
    while (q->head && !conn_is_open(q->head->c)) ex_req_free(pop(q));   /* callers gone */
    if (batchq_wait_us(q, now_us) != 0) return NULL;

    int64_t B = 0;
    int nreq = 0;
    int from_saved = q->dir == EX_BWD && m->cls->backward_saved, any_save = 0;
    for (ex_req *r = q->head; r && B < BATCHQ_MERGE_ROWS && B + r->rows <= q->cfg.max_batch_size; r = r->next) {
        B += r->rows;
        nreq++;
        any_save = any_save || r->save;
        /* a backward whose requests all brought their forward's activations skips recomputing them */
        from_saved = from_saved && r->cached != NULL;
    }
    if (B == 0) {   /* the server refuses requests over max_batch_size; should one get here, it fails alone */
        ex_reply_error(pop(q), DMOE_ETOOBIG, "the request is over max_batch_size");
        return NULL;
    }

    size_t in_bytes = 0, gout_floats = 0, res_floats = 0;
    for (int i = 0; i < m->n_in; i++) in_bytes += ((size_t)B * in_row_bytes(m, i) + 63) & ~(size_t)63;
    if (q->dir == EX_BWD)
        for (int j = 0; j < m->n_out; j++) gout_floats += (size_t)B * kern_io_numel(&m->out[j]) + 16;
    for (int j = 0; j < n_results(m, q->dir); j++) res_floats += (size_t)B * out_row_floats(m, q->dir, j) + 16;
    size_t ws_floats = q->dir == EX_FWD ? m->cls->forward_ws(m, B) : m->cls->backward_ws(m, B);
    /* one request: its saved rows are read where they are (its entry holds them until the job is back) */
    int saved_in_place = from_saved && nreq == 1;
    size_t saved_floats = from_saved && !saved_in_place ? (size_t)B * m->cls->saved_floats(m) : 0;
    int compress = q->dir == EX_BWD && q->cfg.compression != WIRE_COMP_NONE;
    /* several requests: each reply gets its own rows from the worker (batchq_pack_replies), so that an
     * unread reply holds its own bytes and not the whole batch's block */
    int pack = compress || nreq > 1;

    ex_batch *b = calloc(1, sizeof *b);
    if (!b) { fail_first(q, nreq, "out of memory building a batch"); return NULL; }
    b->work = malloc(in_bytes + (gout_floats + ws_floats + saved_floats + 32) * sizeof(float));
    b->res_block = malloc((res_floats + 1) * sizeof(float));
    if (pack) b->packed = calloc((size_t)nreq, sizeof *b->packed);
    if (!b->work || !b->res_block || (pack && !b->packed)) {
        free(b->work);
        free(b->res_block);
        free(b->packed);
        free(b);
        fail_first(q, nreq, "out of memory building a batch");
        return NULL;
    }

    uint8_t *p = b->work;
    for (int i = 0; i < m->n_in; i++) { b->in[i] = p; p += ((size_t)B * in_row_bytes(m, i) + 63) & ~(size_t)63; }
    float *f = (float *)p;
    if (q->dir == EX_BWD)
        for (int j = 0; j < m->n_out; j++) { b->gout[j] = f; f += (size_t)B * kern_io_numel(&m->out[j]) + 16; }
    b->ws = f;
    b->ws_floats = ws_floats;
    f += ws_floats + 16;
    if (saved_in_place) b->gathered = act_entry_rows(q->head->cached);
    else if (from_saved) b->gathered = f;
    b->gathered_in_place = saved_in_place;
    /* no block for the activations (no memory) only means no cache: the backward will recompute */
    if (q->dir == EX_FWD && any_save && q->cfg.cache && m->cls->forward_save) b->saved = act_block_new(B, m->cls->saved_floats(m));
    float *rp = b->res_block;
    for (int j = 0; j < n_results(m, q->dir); j++) { b->res[j] = rp; rp += (size_t)B * out_row_floats(m, q->dir, j) + 16; }

    /* the rows stay in their frames: the batch's jobs copy them in (batchq_fill), on the workers */
    ex_req **tailp = &b->reqs;
    for (int k = 0; k < nreq; k++) {
        ex_req *r = pop(q);
        q->in_batches++;
        if (r->cached && !b->gathered) {   /* useless now (another request of the batch has none) */
            act_entry_release(r->cached);
            r->cached = NULL;
        }
        b->t_queued_us += now_us - r->t_arrive_us;
        *tailp = r;
        tailp = &r->next;
    }
    b->job.msg.type = EX_MSG_JOB_DONE;
    b->job.msg.drop = batch_abandon;
    b->q = q;
    b->dir = q->dir;
    b->B = B;
    b->nreq = nreq;
    b->compression = compress ? q->cfg.compression : WIRE_COMP_NONE;
    b->model = m;
    return b;
}

void batchq_fill(ex_batch *b, int64_t r0, int64_t r1)
{
    const kern_model *m = b->model;
    int64_t row = 0;
    for (const ex_req *r = b->reqs; r && row < r1; row += r->rows, r = r->next) {
        int64_t a = row > r0 ? row : r0, z = row + r->rows < r1 ? row + r->rows : r1;
        if (a >= z) continue;
        size_t off = (size_t)(a - row), n = (size_t)(z - a);
        for (int i = 0; i < m->n_in; i++) {
            size_t rb = in_row_bytes(m, i);
            memcpy((uint8_t *)b->in[i] + (size_t)a * rb, r->in[i] + off * rb, n * rb);
        }
        if (b->dir == EX_BWD)
            for (int j = 0; j < m->n_out; j++) {
                size_t rf = kern_io_numel(&m->out[j]);
                memcpy(b->gout[j] + (size_t)a * rf, r->gout[j] + off * rf * sizeof(float), n * rf * sizeof(float));
            }
        if (b->gathered && !b->gathered_in_place) {
            size_t sf = m->cls->saved_floats(m);
            memcpy((float *)b->gathered + (size_t)a * sf, act_entry_rows(r->cached) + off * sf, n * sf * sizeof(float));
        }
    }
}

void batchq_release_work(ex_batch *b)
{
    for (ex_req *r = b->reqs; r; r = r->next) {   /* the rows are in (or the batch failed): frames go */
        ex_req_drop_frame(r);
        memset(r->in, 0, sizeof r->in);
        memset(r->gout, 0, sizeof r->gout);
        act_entry_release(r->cached);
        r->cached = NULL;
    }
    free(b->work);
    b->work = NULL;
    memset(b->in, 0, sizeof b->in);
    memset(b->gout, 0, sizeof b->gout);
    b->ws = NULL;
    b->gathered = NULL;
}

void batchq_fail_waiting(batchq *q, int code, const char *msg)
{
    while (q->head) ex_reply_error(pop(q), code, msg);
}

void batchq_push(batchq *q, ex_req *r)
{
    r->next = NULL;
    if (q->tail) q->tail->next = r;
    else q->head = r;
    q->tail = r;
    q->rows += r->rows;
    q->waiting++;
}

int batchq_waiting(const batchq *q) { return q->waiting; }

uint64_t batchq_oldest_us(const batchq *q) { return q->head ? q->head->t_arrive_us : 0; }

int batchq_pending(const batchq *q) { return q->waiting + q->in_batches; }

batchq *batchq_new(int dir, const batchq_cfg *cfg, const kern_model *model, const char *uid)
{
    batchq *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->dir = dir;
    q->cfg = *cfg;
    if (q->cfg.min_batch_size < 1) q->cfg.min_batch_size = 1;
    q->model = model;
    if (cfg->met) {
        const char *method = dir == EX_FWD ? "forward" : "backward";
        const char *labels[2] = {method, uid};
        q->req_s = metrics_series(cfg->met->requests, labels);
        q->lat_s = metrics_series(cfg->met->latency, &method);
    }
    return q;
}

void batchq_free(batchq *q)
{
    if (!q) return;
    batchq_fail_waiting(q, DMOE_ESHUTDOWN, "the node is stopping");
    free(q);
}
