/* expert.c -- the expert actor: parameters, optimizer, scheduling of its batches on the pool
 * (see expert.h for the model and batchq.h for the queue side).
 *
 * Mail in: from its queues, EX_MSG_WORK (work waiting), EX_MSG_BATCH (a batch to compute),
 * EX_MSG_NOTHING (a pull found nothing); from the pool, EX_MSG_JOB_DONE (the same batch, computed);
 * from a batch's delay timer, EX_MSG_DELAY_DONE (nop_delay). The direction rides in bits 8+ of the type.
 */
#include "actors/serve/expert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/serve/batchq.h"
#include "actors/node/ckpt.h"
#include "actors/node/metrics.h"
#include "kernels/kern_ops.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

#define EX_MIN_CHUNK_ROWS 32   /* smaller slices lose more GEMM efficiency than the second core gains */

struct expert {
    rt_actor actor;
    char uid[256];
    expert_cfg cfg;
    kern_model model;
    float *params, *grads;
    float *grads_extra;     /* gradients of the chunks past the first of a split backward */
    kern_optim opt;
    batchq *q[2];
    int running[2], pulling[2], wanted[2];
    int delayed;            /* batches held by nop_delay timers */
    int ckpt_wanted, ckpt_running;
    int64_t ckpt_step;      /* optimizer step of the newest checkpoint on disk (-1: none) */
    ckpt_job ckpt;
    int shutting;
    uint64_t batch_seq;     /* seeds per-batch randomness */
    expert_stats stats;
};

/* ---- requests ---- */

void ex_req_drop_frame(ex_req *r)
{
    if (r->wm) {
        wire_msg_free(r->wm);
        free(r->wm);
        r->wm = NULL;
    }
    if (r->budget && r->charge) rt_budget_release(r->budget, r->charge);
    r->charge = 0;
    for (int i = 0; i < 2 * KERN_MAX_IO; i++) {
        free(r->owned[i]);
        r->owned[i] = NULL;
    }
}

void ex_req_free(ex_req *r)
{
    if (!r) return;
    ex_req_drop_frame(r);
    act_entry_release(r->cached);
    if (r->c) {
        conn_release(r->c);
        conn_unref(r->c);
    }
    free(r);
}

void ex_reply_error(ex_req *r, int code, const char *msg)
{
    metrics_std_error(r->met, code);
    if (r->c && conn_is_open(r->c)) {
        wire_out *o = wire_error_reply(r->id, code, msg);
        if (o) conn_send(r->c, o);
    }
    ex_req_free(r);
}

/* ---- the jobs, on worker threads ---- */

/* Rows [r0, r1) of a batch: forward, or backward into grads (no optimizer step). */
static int run_rows(ex_batch *b, int64_t r0, int64_t r1, float *grads, float *ws)
{
    const kern_model *m = b->model;
    int64_t n = r1 - r0;
    const void *in[KERN_MAX_IO];
    for (int i = 0; i < m->n_in; i++)
        in[i] = (const uint8_t *)b->in[i] + (size_t)r0 * kern_io_numel(&m->in[i]) * kern_dtype_size(m->in[i].dtype);
    if (b->dir == EX_FWD) {
        float *out[KERN_MAX_IO];
        for (int j = 0; j < m->n_out; j++) out[j] = b->res[j] + (size_t)r0 * kern_io_numel(&m->out[j]);
        if (b->saved)
            return m->cls->forward_save(m, b->params, n, in, out, ws, b->seed,
                                        b->saved->data + (size_t)r0 * b->saved->row_floats);
        return m->cls->forward(m, b->params, n, in, out, ws, b->seed);
    }
    const float *gout[KERN_MAX_IO];
    float *gin[KERN_MAX_IO];
    for (int j = 0; j < m->n_out; j++) gout[j] = b->gout[j] + (size_t)r0 * kern_io_numel(&m->out[j]);
    for (int i = 0; i < m->n_in; i++) {
        gin[i] = b->res[i] + (size_t)r0 * kern_io_numel(&m->in[i]);
        if (m->in[i].dtype != KERN_F32) {   /* masks get a zero gradient */
            memset(gin[i], 0, (size_t)n * kern_io_numel(&m->in[i]) * sizeof(float));
            gin[i] = NULL;
        }
    }
    if (b->gathered)
        return m->cls->backward_saved(m, b->params, n, in, b->gathered + (size_t)r0 * m->cls->saved_floats(m), gout,
                                      gin, grads, ws, b->seed);
    return m->cls->backward(m, b->params, n, in, gout, gin, grads, ws, b->seed);
}

/* After a backward's gradients are complete: check them and take the optimizer step. */
static void step(ex_batch *b)
{
    const kern_model *m = b->model;
    if (b->rc != 0 || m->n_floats == 0) return;
    if (!kern_all_finite(b->grads, m->n_floats)) {
        b->rc = DMOE_ENONFINITE;
        snprintf(b->err, sizeof b->err, "parameter gradients are not finite: optimizer step skipped");
        return;
    }
    kern_optim_step(b->opt, m, b->params, b->grads, b->lr);
}

static void job_run(rt_job *j)
{
    ex_batch *b = (ex_batch *)j;
    uint64_t t0 = b->t_compute_us;
    b->rc = run_rows(b, 0, b->B, b->grads, b->ws);
    if (b->dir == EX_BWD) step(b);
    if (b->rc < 0 && !b->err[0]) snprintf(b->err, sizeof b->err, "kernel failed: %s", dmoe_strerror(b->rc));
    b->t_compute_us = rt_clock_us() - t0;
}

static void chunk_run(rt_job *j)
{
    ex_chunk *c = (ex_chunk *)j;
    ex_batch *b = c->b;
    c->rc = run_rows(b, c->r0, c->r1, c->grads, c->ws);
    /* the last chunk to finish sums the gradients and steps; the atomic orders the others' writes */
    if (atomic_fetch_sub(&b->chunks_running, 1) != 1) return;
    for (int k = 0; k < b->nchunks; k++)
        if (b->chunks[k].rc < 0 && b->rc == 0) b->rc = b->chunks[k].rc;
    if (b->dir == EX_BWD && b->rc == 0) {
        size_t n = b->model->n_floats;
        for (int k = 1; k < b->nchunks; k++) {
            const float *g = b->chunks[k].grads;
            for (size_t i = 0; i < n; i++) b->grads[i] += g[i];
        }
        step(b);
    }
    if (b->rc < 0 && !b->err[0]) snprintf(b->err, sizeof b->err, "kernel failed: %s", dmoe_strerror(b->rc));
}

/* ---- scheduling ---- */

static void pull(expert *e, int dir)
{
    e->wanted[dir] = 0;
    e->pulling[dir] = 1;
    batchq_pull(e->q[dir]);
}

static void start_checkpoint(expert *e)
{
    ckpt_job *j = &e->ckpt;
    e->ckpt_wanted = 0;
    if (e->opt.step == e->ckpt_step) return;   /* nothing new since the last file */
    snprintf(j->dir, sizeof j->dir, "%s/%s", e->cfg.ckpt_dir, e->uid);
    snprintf(j->uid, sizeof j->uid, "%s", e->uid);
    j->job.run = ckpt_run;
    j->job.owner = &e->actor;
    j->job.msg.type = EX_MSG_CKPT_DONE;
    j->job.msg.drop = NULL;
    j->model = &e->model;
    j->params = e->params;
    j->opt = &e->opt;
    j->sched = e->cfg.sched;
    j->base_lr = e->cfg.opt.lr;
    j->step = e->opt.step;
    j->samples_seen = e->stats.samples_seen;
    j->keep = e->cfg.keep_ckpts;
    j->rc = 0;
    j->err[0] = '\0';
    if (rt_pool_submit(e->cfg.pool, &j->job) == 0) e->ckpt_running = 1;
}

static void finish_checkpoint(expert *e)
{
    ckpt_job *j = &e->ckpt;
    e->ckpt_running = 0;
    if (j->rc == 0) {
        e->ckpt_step = j->step;
        LOG_DEBUG("%s: checkpoint %s written", e->uid, j->path);
    } else {
        LOG_ERROR("%s: checkpoint not written: %s", e->uid, j->err);
    }
}

static void schedule(expert *e)
{
    int fwd_busy = e->running[EX_FWD] + e->pulling[EX_FWD];
    int bwd_busy = e->running[EX_BWD] + e->pulling[EX_BWD];
    /* a checkpoint reads the weights: no backward may write them meanwhile; forwards may run */
    if (e->ckpt_wanted && !e->ckpt_running && bwd_busy == 0) start_checkpoint(e);
    if (e->shutting || e->ckpt_running || e->ckpt_wanted) return;
    if (e->wanted[EX_BWD] && fwd_busy == 0 && bwd_busy == 0) {
        pull(e, EX_BWD);
        return;
    }
    /* backward waiting or running: let the forwards in flight finish, start no new ones */
    if (e->wanted[EX_FWD] && !e->wanted[EX_BWD] && bwd_busy == 0 && !e->pulling[EX_FWD] &&
        e->running[EX_FWD] < e->cfg.max_parallel_fwd)
        pull(e, EX_FWD);
}

/* A chunk's completion dropped undelivered (the expert stopped): the last one gives the batch up. */
static void chunk_drop(rt_msg *m)
{
    ex_batch *b = ((ex_chunk *)m)->b;
    if (--b->chunks_left == 0) rt_msg_drop(&b->job.msg);
}

/* Split b into chunk jobs across the workers when it is big enough. Returns the number of chunks (0: run
 * as one job). Chunk workspaces are carved from the batch's, which is linear in the rows. */
static int split(expert *e, ex_batch *b)
{
    int workers = rt_pool_threads(e->cfg.pool);
    int64_t k = b->B / EX_MIN_CHUNK_ROWS;
    if (k > workers) k = workers;
    if (k < 2) return 0;
    const kern_model *m = &e->model;
    size_t (*wsf)(const kern_model *, int64_t) = b->dir == EX_FWD ? m->cls->forward_ws : m->cls->backward_ws;
    if (b->dir == EX_BWD && m->n_floats > 0 && !e->grads_extra) {
        e->grads_extra = malloc((size_t)(workers - 1) * m->n_floats * sizeof(float));
        if (!e->grads_extra) return 0;
    }
    b->chunks = calloc((size_t)k, sizeof *b->chunks);
    if (!b->chunks) return 0;
    size_t used = 0;
    for (int64_t i = 0; i < k; i++) {
        ex_chunk *c = &b->chunks[i];
        c->b = b;
        c->idx = (int)i;
        c->r0 = b->B * i / k;
        c->r1 = b->B * (i + 1) / k;
        c->ws = b->ws + used;
        used += wsf(m, c->r1 - c->r0);
        c->grads = i == 0 ? e->grads : e->grads_extra + (size_t)(i - 1) * m->n_floats;
    }
    if (used > b->ws_floats) {   /* a class whose workspace is not linear in the rows: no split */
        free(b->chunks);
        b->chunks = NULL;
        return 0;
    }
    return (int)k;
}

static void start_batch(expert *e, ex_batch *b)
{
    b->job.run = job_run;
    b->job.owner = &e->actor;
    b->job.msg.type = EX_MSG_JOB_DONE | (b->dir << 8);
    b->model = &e->model;
    b->params = e->params;
    b->grads = e->grads;
    b->opt = &e->opt;
    b->lr = kern_sched_lr(&e->cfg.sched, e->cfg.opt.lr, e->opt.step);   /* no backward runs now */
    b->seed = e->cfg.seed ^ (0x9E3779B97F4A7C15ull * ++e->batch_seq);
    e->running[b->dir]++;
    b->t_compute_us = rt_clock_us();   /* start time while chunks run; the duration once done */
    b->nchunks = split(e, b);
    if (b->nchunks > 0) {
        atomic_store(&b->chunks_running, b->nchunks);
        b->chunks_left = b->nchunks;
        for (int i = 0; i < b->nchunks; i++) {
            ex_chunk *c = &b->chunks[i];
            c->job.run = chunk_run;
            c->job.owner = &e->actor;
            c->job.msg.type = EX_MSG_CHUNK_DONE;
            c->job.msg.drop = chunk_drop;
            if (rt_pool_submit(e->cfg.pool, &c->job) != 0) {
                /* only at shutdown, and then for every chunk alike: none was submitted */
                e->running[b->dir]--;
                b->rc = DMOE_ESHUTDOWN;
                batchq_release_work(b);
                batchq_done(b->q, b);
                return;
            }
        }
        return;
    }
    if (rt_pool_submit(e->cfg.pool, &b->job) != 0) {
        e->running[b->dir]--;
        b->rc = DMOE_ESHUTDOWN;
        batchq_release_work(b);
        batchq_done(b->q, b);
    }
}

static void finish_batch(expert *e, ex_batch *b)
{
    int dir = b->dir, used_saved = b->gathered != NULL;
    e->running[dir]--;
    batchq_release_work(b);
    expert_stats *s = &e->stats;
    s->batches[dir]++;
    s->compute_us[dir] += b->t_compute_us;
    if (e->cfg.met) metrics_observe(e->cfg.met->batch_size, (double)b->B);
    s->queue_wait_us[dir] += b->t_queued_us;
    int nreq = 0;
    for (ex_req *r = b->reqs; r; r = r->next) nreq++;
    s->calls[dir] += (uint64_t)nreq;
    if (b->rc < 0) {
        s->errors[dir]++;
        LOG_WARN("%s: %s batch of %lld rows failed: %s", e->uid, dir == EX_FWD ? "forward" : "backward",
                 (long long)b->B, b->err);
    } else {
        s->rows[dir] += (uint64_t)b->B;
        if (dir == EX_BWD) {
            s->samples_seen += (uint64_t)b->B;
            if (used_saved) s->backward_cached++;
            s->steps = (uint64_t)e->opt.step;
        }
    }
    if (e->cfg.kcfg.delay_ms > 0 && b->rc == 0) {
        e->delayed++;
        rt_timer_start(&b->delay, (uint64_t)e->cfg.kcfg.delay_ms, 0);
        return;
    }
    batchq_done(b->q, b);
}

static void expert_handle(rt_actor *self, rt_msg *m)
{
    expert *e = (expert *)self;
    int type = m->type & 0xff, dir = (m->type >> 8) & 1;
    switch (type) {
    case EX_MSG_WORK:
        rt_msg_drop(m);
        e->wanted[dir] = 1;
        break;
    case EX_MSG_NOTHING:
        rt_msg_drop(m);
        e->pulling[dir] = 0;
        break;
    case EX_MSG_BATCH:
        e->pulling[dir] = 0;
        start_batch(e, (ex_batch *)m);
        break;
    case EX_MSG_JOB_DONE:
        finish_batch(e, (ex_batch *)m);
        break;
    case EX_MSG_CHUNK_DONE: {
        ex_batch *b = ((ex_chunk *)m)->b;
        if (--b->chunks_left == 0) {
            b->t_compute_us = rt_clock_us() - b->t_compute_us;
            finish_batch(e, b);
        }
        break;
    }
    case EX_MSG_CKPT_DONE:
        finish_checkpoint(e);
        break;
    case EX_MSG_DELAY_DONE: {
        ex_batch *b = (ex_batch *)((char *)m - offsetof(ex_batch, delay));
        e->delayed--;
        batchq_done(b->q, b);
        break;
    }
    default:
        rt_msg_drop(m);
    }
    schedule(e);
}

static void expert_destroy(rt_actor *self)
{
    expert *e = (expert *)self;
    kern_optim_free(&e->opt);
    free(e->params);
    free(e->grads);
    free(e->grads_extra);
    free(e);
}

/* ---- the public side ---- */

static float *alloc_floats(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, (n ? n : 1) * sizeof(float)) != 0) return NULL;
    return p;
}

expert *expert_new(rt_loop *l, const char *uid, const expert_cfg *cfg, char *err, size_t errlen)
{
    if (strlen(uid) >= sizeof ((expert *)0)->uid) { snprintf(err, errlen, "uid too long: %s", uid); return NULL; }
    expert *e = calloc(1, sizeof *e);
    if (!e) { snprintf(err, errlen, "out of memory"); return NULL; }
    rt_actor_init(&e->actor, l, "expert", expert_handle, expert_destroy);
    strcpy(e->uid, uid);
    e->cfg = *cfg;
    if (e->cfg.max_parallel_fwd < 1) e->cfg.max_parallel_fwd = 1;
    if (cfg->cls->setup(&e->model, &cfg->kcfg) != 0) {
        snprintf(err, errlen, "expert class %s does not accept these settings (hidden_dim %d)", cfg->cls->name,
                 cfg->kcfg.hidden_dim);
        free(e);
        return NULL;
    }
    e->model.cls = cfg->cls;
    e->params = alloc_floats(e->model.n_floats);
    e->grads = alloc_floats(e->model.n_floats);
    if (!e->params || !e->grads || kern_optim_init(&e->opt, &cfg->opt, e->model.n_floats) != 0) {
        snprintf(err, errlen, "out of memory for %zu parameters", e->model.n_floats);
        expert_destroy(&e->actor);
        return NULL;
    }
    cfg->cls->init(&e->model, e->params, cfg->seed);
    e->ckpt_step = -1;
    if (cfg->ckpt_dir) {
        ckpt_loaded got;
        char why[1024];
        int rc = ckpt_load(cfg->ckpt_dir, uid, &e->model, e->params, &e->opt, &got, why, sizeof why);
        if (rc < 0) {
            snprintf(err, errlen, "%s", why);
            expert_destroy(&e->actor);
            return NULL;
        }
        if (rc == 1) {
            e->stats.samples_seen = got.samples_seen;
            e->stats.steps = (uint64_t)e->opt.step;
            e->ckpt_step = got.has_optimizer ? got.step : -1;
            LOG_INFO("%s: loaded %s (step %lld%s)", uid, got.path, (long long)got.step,
                     got.has_optimizer ? "" : ", weights only: the optimizer starts fresh");
        }
    }
    e->q[EX_FWD] = batchq_new(l, &e->actor, EX_FWD, &e->cfg, &e->model, e->uid);
    e->q[EX_BWD] = batchq_new(l, &e->actor, EX_BWD, &e->cfg, &e->model, e->uid);
    if (!e->q[EX_FWD] || !e->q[EX_BWD]) {
        snprintf(err, errlen, "out of memory");
        if (e->q[EX_FWD]) batchq_stop(e->q[EX_FWD]);
        if (e->q[EX_BWD]) batchq_stop(e->q[EX_BWD]);
        expert_destroy(&e->actor);
        return NULL;
    }
    return e;
}

const char *expert_uid(const expert *e) { return e->uid; }
const kern_model *expert_model(const expert *e) { return &e->model; }
const expert_stats *expert_stats_get(const expert *e) { return &e->stats; }
const expert_cfg *expert_cfg_get(const expert *e) { return &e->cfg; }
void expert_submit(expert *e, ex_req *req)
{
    batchq_push(e->q[req->dir], req);
}

int expert_busy(const expert *e)
{
    return batchq_pending(e->q[EX_FWD]) + batchq_pending(e->q[EX_BWD]) + e->running[EX_FWD] +
           e->running[EX_BWD] + e->delayed + (int)e->actor.depth;
}

void expert_shutdown(expert *e)
{
    e->shutting = 1;
    batchq_shutdown(e->q[EX_FWD]);
    batchq_shutdown(e->q[EX_BWD]);
}

void expert_checkpoint(expert *e)
{
    if (!e->cfg.ckpt_dir) return;
    e->ckpt_wanted = 1;
    schedule(e);
}

int expert_checkpoint_pending(const expert *e) { return e->ckpt_wanted || e->ckpt_running; }

void expert_free(expert *e)
{
    if (!e) return;
    batchq_stop(e->q[EX_FWD]);
    batchq_stop(e->q[EX_BWD]);
    rt_actor_stop(&e->actor);
}

static void pack_io(msgpack_packer *pk, const kern_io_info *io, int n)
{
    msgpack_pack_array(pk, (size_t)n);
    for (int i = 0; i < n; i++) {
        msgpack_pack_map(pk, 3);
        wire_pack_str(pk, "name");
        wire_pack_str(pk, io[i].name);
        wire_pack_str(pk, "dtype");
        wire_pack_str(pk, io[i].dtype == KERN_U8 ? "uint8" : "float32");
        wire_pack_str(pk, "shape");
        msgpack_pack_array(pk, (size_t)io[i].ndim + 1);
        msgpack_pack_int64(pk, -1);
        for (int d = 0; d < io[i].ndim; d++) msgpack_pack_int64(pk, io[i].dims[d]);
    }
}

static void pack_kv_u64(msgpack_packer *pk, const char *k, uint64_t v)
{
    wire_pack_str(pk, k);
    msgpack_pack_uint64(pk, v);
}

void expert_pack_info(const expert *e, msgpack_packer *pk)
{
    const expert_stats *s = &e->stats;
    msgpack_pack_map(pk, 14);
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, e->uid);
    wire_pack_str(pk, "expert_cls");
    wire_pack_str(pk, e->model.cls->name);
    wire_pack_str(pk, "module");
    wire_pack_str(pk, e->model.cls->module_name);
    wire_pack_str(pk, "hidden_dim");
    msgpack_pack_int(pk, e->cfg.kcfg.hidden_dim);
    pack_kv_u64(pk, "n_params", e->model.n_floats);
    wire_pack_str(pk, "inputs");
    pack_io(pk, e->model.in, e->model.n_in);
    wire_pack_str(pk, "outputs");
    pack_io(pk, e->model.out, e->model.n_out);
    wire_pack_str(pk, "keyword_names");   /* hivemind's schema field: no expert here takes keyword inputs */
    msgpack_pack_array(pk, 0);
    wire_pack_str(pk, "optimizer");
    wire_pack_str(pk, kern_optim_name(e->opt.cfg.kind));
    wire_pack_str(pk, "lr");
    msgpack_pack_float(pk, kern_sched_lr(&e->cfg.sched, e->cfg.opt.lr, e->opt.step));
    wire_pack_str(pk, "scheduler");
    wire_pack_str(pk, kern_sched_name(e->cfg.sched.kind));
    wire_pack_str(pk, "compression");
    wire_pack_str(pk, wire_compress_name(e->cfg.compression));
    pack_kv_u64(pk, "max_batch_size", (uint64_t)e->cfg.max_batch_size);
    wire_pack_str(pk, "stats");
    msgpack_pack_map(pk, 13);
    pack_kv_u64(pk, "forward_calls", s->calls[EX_FWD]);
    pack_kv_u64(pk, "backward_calls", s->calls[EX_BWD]);
    pack_kv_u64(pk, "forward_batches", s->batches[EX_FWD]);
    pack_kv_u64(pk, "backward_batches", s->batches[EX_BWD]);
    pack_kv_u64(pk, "forward_rows", s->rows[EX_FWD]);
    pack_kv_u64(pk, "backward_rows", s->rows[EX_BWD]);
    pack_kv_u64(pk, "errors", s->errors[EX_FWD] + s->errors[EX_BWD]);
    pack_kv_u64(pk, "steps", s->steps);
    pack_kv_u64(pk, "samples_seen", s->samples_seen);
    pack_kv_u64(pk, "backward_cached", s->backward_cached);
    pack_kv_u64(pk, "queue_depth", (uint64_t)(batchq_pending(e->q[EX_FWD]) + batchq_pending(e->q[EX_BWD])));
    pack_kv_u64(pk, "queue_wait_us", s->queue_wait_us[EX_FWD] + s->queue_wait_us[EX_BWD]);
    pack_kv_u64(pk, "compute_us", s->compute_us[EX_FWD] + s->compute_us[EX_BWD]);
}
