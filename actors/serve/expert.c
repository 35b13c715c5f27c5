/* expert.c -- the expert actor: parameters, optimizer, scheduling of its batches on the pool
 * (see expert.h for the model, batch.h for its mail, batchq.h for the queue side).
 *
 * Design notes. The handler does one thing per message and ends with schedule(), which decides from
 * the counters alone (a step running, running[dir], the queues' waiting requests, a checkpoint wanted
 * or running) what may start now: nothing during a step; else a checkpoint, one backward, or forwards
 * up to max_parallel_fwd. A queue that holds requests but not yet min_batch_size rows arms its
 * direction's tick timer for the time left.
 *
 * A backward of a class with two stages (kern_class backward_inputs / backward_params) answers
 * earlier: its job (or each chunk) computes the input gradients and the replies, then runs the rest of
 * the parameter gradients as its follow-up on the same worker (rt_job.then), while the loop answers
 * (answer_staged: the batch stays held, running[BWD] stays up, so nothing else starts). When every
 * second stage is back, finish_staged counts the batch and starts the step. The first stage's mail
 * has no drop of its own; the second's gives the batch up (params_drop, chunk_params_drop).
 *
 * The step after a backward (finish_batch answers, then expert_step_start: expert_step.c) is a small
 * state machine on
 * e->step: phase 1 jobs (sum and check ranges of the gradient buffers) all back -> kern_optim_begin on
 * the loop -> phase 2 jobs (update the ranges) all back -> idle, and schedule() may start the next
 * batch. Its ranges are whole KERN_OPTIM_BLOCKs, one per worker at most, so the sums and the norm are
 * those of the single-threaded step.
 */
#include "actors/serve/expert.h"
#include "actors/serve/expert_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actors/node/ckpt.h"
#include "actors/node/metrics.h"
#include "actors/serve/batchq.h"
#include "kernels/kern_ops.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

#define EX_MIN_CHUNK_ROWS 32   /* smaller slices lose more GEMM efficiency than the second core gains */
/* a backward splits into at most this many chunks: each chunk past the first needs a whole copy of the
 * expert's gradients (8 MiB for ffn 512) while it and its step run, so the split, not the workers, would
 * set the memory; 3 keep a node's memory at 14 workers within 1.3x of 2 workers (make bench,
 * memory_by_workers) */
#define EX_MAX_BWD_CHUNKS 3

/* ---- the jobs, on worker threads ---- */

/* Where row r0 of a batch starts in each input, and (gout non-NULL) in each grad_output. */
static void rows_from(const ex_batch *b, int64_t r0, const void **in, const float **gout)
{
    const kern_model *m = b->model;
    for (int i = 0; i < m->n_in; i++)
        in[i] = (const uint8_t *)b->in[i] + (size_t)r0 * kern_io_numel(&m->in[i]) * kern_dtype_size(m->in[i].dtype);
    for (int j = 0; gout && j < m->n_out; j++) gout[j] = b->gout[j] + (size_t)r0 * kern_io_numel(&m->out[j]);
}

/* Rows [r0, r1) of a batch: forward, or backward into grads (no optimizer step). */
static int run_rows(ex_batch *b, int64_t r0, int64_t r1, float *grads, float *ws)
{
    const kern_model *m = b->model;
    int64_t n = r1 - r0;
    const void *in[KERN_MAX_IO];
    const float *gout[KERN_MAX_IO];
    rows_from(b, r0, in, b->dir == EX_BWD ? gout : NULL);
    if (b->dir == EX_FWD) {
        float *out[KERN_MAX_IO];
        for (int j = 0; j < m->n_out; j++) out[j] = b->res[j] + (size_t)r0 * kern_io_numel(&m->out[j]);
        if (b->saved)
            return m->cls->forward_save(m, b->params, n, in, out, ws, b->seed,
                                        b->saved->data + (size_t)r0 * b->saved->row_floats);
        return m->cls->forward(m, b->params, n, in, out, ws, b->seed);
    }
    float *gin[KERN_MAX_IO];
    for (int i = 0; i < m->n_in; i++) {
        gin[i] = b->res[i] + (size_t)r0 * kern_io_numel(&m->in[i]);
        if (m->in[i].dtype != KERN_F32) {   /* masks get a zero gradient */
            memset(gin[i], 0, (size_t)n * kern_io_numel(&m->in[i]) * sizeof(float));
            gin[i] = NULL;
        }
    }
    const float *saved = b->gathered ? b->gathered + (size_t)r0 * m->cls->saved_floats(m) : NULL;
    if (b->staged)   /* the first stage: the input gradients; params_rows follows after the replies */
        return m->cls->backward_inputs(m, b->params, n, in, saved, gout, gin, grads, ws, b->seed);
    if (saved) return m->cls->backward_saved(m, b->params, n, in, saved, gout, gin, grads, ws, b->seed);
    return m->cls->backward(m, b->params, n, in, gout, gin, grads, ws, b->seed);
}

/* The second stage of a two-stage backward for rows [r0, r1): the rest of their parameter gradients
 * into grads, from the inputs, the grad_outputs and what the first stage left in ws. Runs as the
 * follow-up of the job that ran the first stage, while the loop answers; it touches grads, ws and its
 * time counters only. */
static int params_rows(ex_batch *b, int64_t r0, int64_t r1, float *grads, float *ws)
{
    const void *in[KERN_MAX_IO];
    const float *gout[KERN_MAX_IO];
    rows_from(b, r0, in, gout);
    uint64_t t0 = rt_clock_us();
    int rc = b->model->cls->backward_params(b->model, r1 - r0, in, gout, grads, ws);
    uint64_t dt = rt_clock_us() - t0;
    atomic_fetch_add(&b->t_params_us, dt);
    atomic_fetch_add(&b->t_kernel_us, dt);
    return rc;
}

static void job_run(rt_job *j)
{
    ex_batch *b = (ex_batch *)j;
    uint64_t t0 = b->t_compute_us, t_fill = rt_clock_us();
    batchq_fill(b, 0, b->B);
    uint64_t t_run = rt_clock_us();
    atomic_store(&b->t_fill_us, t_run - t_fill);
    b->rc = run_rows(b, 0, b->B, b->grads, b->ws);
    batchq_pack_replies(b);   /* the replies' share of the work; a backward's step comes after it */
    if (b->rc < 0 && !b->err[0]) snprintf(b->err, sizeof b->err, "kernel failed: %s", dmoe_strerror(b->rc));
    uint64_t now = rt_clock_us();
    atomic_fetch_add(&b->t_kernel_us, now - t_run);
    if (!b->staged) b->t_compute_us = now - t0;   /* a staged batch's ends with its second stage, on the loop */
}

/* The follow-up of a staged batch's job (first stage skipped when it failed: no step follows). */
static void params_run(rt_job *j)
{
    ex_batch *b = (ex_batch *)((char *)j - offsetof(ex_batch, params_job));
    b->params_rc = b->rc < 0 ? 0 : params_rows(b, 0, b->B, b->grads, b->ws);
}

/* The follow-up of a staged batch's chunk: its own rows, when its own first stage succeeded (another
 * chunk's failure fails the batch, and then no step reads these gradients). */
static void chunk_params_run(rt_job *j)
{
    ex_chunk *c = (ex_chunk *)((char *)j - offsetof(ex_chunk, params_job));
    c->params_rc = c->rc < 0 ? 0 : params_rows(c->b, c->r0, c->r1, c->grads, c->ws);
}

static void chunk_run(rt_job *j)
{
    ex_chunk *c = (ex_chunk *)j;
    ex_batch *b = c->b;
    uint64_t t_fill = rt_clock_us();
    batchq_fill(b, c->r0, c->r1);
    uint64_t t_run = rt_clock_us();
    atomic_fetch_add(&b->t_fill_us, t_run - t_fill);
    c->rc = run_rows(b, c->r0, c->r1, c->grads, c->ws);
    atomic_fetch_add(&b->t_kernel_us, rt_clock_us() - t_run);
    /* the last chunk to finish packs the replies; the atomic orders the others' writes. The
     * gradients stay in the chunks' buffers: the step sums them (step_run). */
    if (atomic_fetch_sub(&b->chunks_running, 1) != 1) return;
    for (int k = 0; k < b->nchunks; k++)
        if (b->chunks[k].rc < 0 && b->rc == 0) b->rc = b->chunks[k].rc;
    if (b->rc == 0) batchq_pack_replies(b);
    if (b->rc < 0 && !b->err[0]) snprintf(b->err, sizeof b->err, "kernel failed: %s", dmoe_strerror(b->rc));
}

/* ---- scheduling ---- */

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
        LOG_INFO("%s: checkpoint %s written (step %lld, %.1f MiB, %.0f ms; %zu older removed)", e->uid, j->path,
                 (long long)j->step, (double)j->bytes / 1048576.0, (double)j->write_us / 1000.0, j->removed);
    } else {
        LOG_ERROR("%s: checkpoint not written: %s", e->uid, j->err);
    }
}

/* A chunk's completion dropped undelivered (the expert stopped): the last one gives the batch up. */
static void chunk_drop(rt_msg *m)
{
    ex_batch *b = ((ex_chunk *)m)->b;
    if (--b->chunks_left == 0) rt_msg_drop(&b->job.msg);
}

/* A staged batch's second stage is back undelivered (the expert stopped; the first stage's mail was
 * dropped before it, or was answered): its requests fail, or its hold is given up. */
static void staged_abandon(ex_batch *b)
{
    if (!b->held) { batchq_abandon(b); return; }
    b->held = 0;
    batchq_unhold(b);
}
static void params_drop(rt_msg *m) { staged_abandon((ex_batch *)((char *)m - offsetof(ex_batch, params_job.msg))); }
static void chunk_params_drop(rt_msg *m)
{
    ex_batch *b = ((ex_chunk *)((char *)m - offsetof(ex_chunk, params_job.msg)))->b;
    if (--b->params_left == 0) staged_abandon(b);
}

/* Split b into chunk jobs across the workers when it is big enough. Returns the number of chunks (0: run
 * as one job). Chunk workspaces are carved from the batch's, which is linear in the rows. */
static int split(expert *e, ex_batch *b)
{
    int workers = rt_pool_threads(e->cfg.pool);
    int64_t k = b->B / EX_MIN_CHUNK_ROWS;
    if (k > workers) k = workers;
    if (b->dir == EX_BWD && k > EX_MAX_BWD_CHUNKS) k = EX_MAX_BWD_CHUNKS;
    if (k < 2) return 0;
    const kern_model *m = &e->model;
    size_t (*wsf)(const kern_model *, int64_t) = b->dir == EX_FWD ? m->cls->forward_ws : m->cls->backward_ws;
    if (b->dir == EX_BWD && m->n_floats > 0 && !e->grads_extra) {   /* kept until the node is idle */
        int extra = (workers < EX_MAX_BWD_CHUNKS ? workers : EX_MAX_BWD_CHUNKS) - 1;
        e->grads_extra = malloc((size_t)extra * m->n_floats * sizeof(float));
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

/* The job could not be submitted (only at shutdown): the batch fails with DMOE_ESHUTDOWN. */
static void refuse_batch(expert *e, ex_batch *b)
{
    e->running[b->dir]--;
    b->rc = DMOE_ESHUTDOWN;
    batchq_release_work(b);
    batchq_answer(b->q, b);
}

static void start_batch(expert *e, ex_batch *b)
{
    b->job.run = job_run;
    b->job.owner = &e->actor;
    b->params = e->params;
    b->grads = e->grads;
    b->lr = kern_sched_lr(&e->cfg.sched, e->cfg.opt.lr, e->opt.step);   /* no backward runs now */
    b->seed = e->cfg.seed ^ (0x9E3779B97F4A7C15ull * ++e->batch_seq);
    e->running[b->dir]++;
    b->t_compute_us = rt_clock_us();   /* start time while chunks run; the duration once done */
    /* a class that can: the replies leave after the input gradients, the rest of the parameter
     * gradients follow on the same worker (the first stage's mail is then only a step of the batch:
     * its drop does nothing, the second stage's gives the batch up) */
    b->staged = b->dir == EX_BWD && e->model.cls->backward_inputs && e->model.cls->backward_params;
    b->nchunks = split(e, b);
    if (b->staged && b->nchunks == 0) {
        b->job.msg.drop = NULL;
        b->job.then = &b->params_job;
        b->params_job.run = params_run;
        b->params_job.owner = &e->actor;
        b->params_job.msg.type = EX_MSG_PARAMS_DONE;
        b->params_job.msg.drop = params_drop;
    }
    if (b->nchunks > 0) {
        atomic_store(&b->chunks_running, b->nchunks);
        b->chunks_left = b->nchunks;
        b->params_left = b->staged ? b->nchunks : 0;
        for (int i = 0; i < b->nchunks; i++) {
            ex_chunk *c = &b->chunks[i];
            c->job.run = chunk_run;
            c->job.owner = &e->actor;
            c->job.msg.type = EX_MSG_CHUNK_DONE;
            c->job.msg.drop = b->staged ? NULL : chunk_drop;
            if (b->staged) {
                c->job.then = &c->params_job;
                c->params_job.run = chunk_params_run;
                c->params_job.owner = &e->actor;
                c->params_job.msg.type = EX_MSG_CHUNK_PARAMS_DONE;
                c->params_job.msg.drop = chunk_params_drop;
            }
            if (rt_pool_submit(e->cfg.pool, &c->job) != 0) {
                /* only at shutdown, and then for every chunk alike: none was submitted */
                refuse_batch(e, b);
                return;
            }
        }
        return;
    }
    if (rt_pool_submit(e->cfg.pool, &b->job) != 0) refuse_batch(e, b);
}

/* The next batch of direction dir (batchq_take; its jobs copy the rows in): the loop thread's time for
 * it is counted in batch_build_ns. Both timers read the monotonic clock (the vDSO): a thread CPU clock
 * is a system call per read, and four of them were an eighth of the loop's time for a 1-row request;
 * nothing in these spans wakes another thread, so they are seldom preempted. */
static ex_batch *take(expert *e, int dir, uint64_t now)
{
    uint64_t t0 = rt_clock_ns();
    ex_batch *b = batchq_take(e->q[dir], now);
    e->stats.batch_build_ns += rt_clock_ns() - t0;
    return b;
}

/* The callers of b are answered (batchq_answer; their replies go out as mail to the connections): the
 * loop thread's time for it is counted in reply_ns. */
static void answer(expert *e, ex_batch *b)
{
    uint64_t t0 = rt_clock_ns();
    batchq_answer(b->q, b);
    e->stats.reply_ns += rt_clock_ns() - t0;
}

/* Start what may start now (see the design notes). */
static void schedule(expert *e)
{
    if (e->step.phase != EX_STEP_IDLE) return;   /* nothing reads or writes the parameters during a step */
    /* a checkpoint reads the weights: no backward may write them meanwhile; forwards may run */
    if (e->ckpt_wanted && !e->ckpt_running && e->running[EX_BWD] == 0) start_checkpoint(e);
    if (e->shutting || e->ckpt_running || e->ckpt_wanted) return;
    uint64_t now = rt_clock_us();
    int64_t bwd_wait = batchq_wait_us(e->q[EX_BWD], now);
    if (bwd_wait == 0 && e->running[EX_FWD] == 0 && e->running[EX_BWD] == 0) {
        ex_batch *b = take(e, EX_BWD, now);
        if (b) start_batch(e, b);
    }
    /* backward waiting or running: let the forwards in flight finish, start no new ones. Each pass
     * takes requests off the queue, so the loop ends when it is empty or the workers are all given. */
    while (batchq_waiting(e->q[EX_BWD]) == 0 && e->running[EX_BWD] == 0 &&
           e->running[EX_FWD] < e->cfg.max_parallel_fwd && batchq_wait_us(e->q[EX_FWD], now) == 0) {
        ex_batch *b = take(e, EX_FWD, now);
        if (b) start_batch(e, b);
    }
    for (int dir = 0; dir < 2; dir++) {
        int64_t wait = batchq_wait_us(e->q[dir], now);
        if (wait > 0 && !e->tick_armed[dir]) {   /* too few rows yet: look again when the oldest waited enough */
            e->tick_armed[dir] = 1;
            rt_timer_start(&e->tick[dir], (uint64_t)(wait + 999) / 1000, 0);
        }
    }
}

/* What the answer of b counts; its requests are still in it. */
static void count_answer(expert *e, ex_batch *b)
{
    int dir = b->dir;
    expert_stats *s = &e->stats;
    if (e->cfg.met) metrics_observe(e->cfg.met->batch_size, (double)b->B);
    s->queue_wait_us[dir] += b->t_queued_us;
    s->calls[dir] += (uint64_t)b->nreq;
    uint64_t now_us = rt_clock_us();
    for (const ex_req *r = b->reqs; r; r = r->next) s->latency_us[dir] += now_us - r->t_arrive_us;
    if (b->rc < 0) {
        s->errors[dir]++;
        LOG_WARN("%s: %s batch of %lld rows failed: %s", e->uid, dir == EX_FWD ? "forward" : "backward",
                 (long long)b->B, b->err);
    } else {
        s->rows[dir] += (uint64_t)b->B;
        if (dir == EX_BWD) {
            s->samples_seen += (uint64_t)b->B;
            if (b->gathered) s->backward_cached++;
        }
    }
}

/* b's jobs are all back: what they count, and their work block goes. */
static void count_done(expert *e, ex_batch *b)
{
    expert_stats *s = &e->stats;
    e->running[b->dir]--;
    batchq_release_work(b);
    s->batches[b->dir]++;
    s->compute_us[b->dir] += b->t_compute_us;
    s->kernel_us += atomic_load(&b->t_kernel_us);
    s->batch_fill_us += atomic_load(&b->t_fill_us);
    s->params_after_reply_us += atomic_load(&b->t_params_us);
}

static void finish_batch(expert *e, ex_batch *b)
{
    /* reply first: the step of a good backward follows, and nothing else of the expert starts before
     * it ends, so every result is the one the step inside the backward's job used to give */
    int step = b->dir == EX_BWD && b->rc == 0, nbuf = b->nchunks > 0 ? b->nchunks : 1;
    float lr = b->lr;
    count_answer(e, b);
    count_done(e, b);
    /* nop_delay holds a good answer; a delay timer that cannot be made only means no delay */
    if (e->cfg.kcfg.delay_ms > 0 && b->rc == 0 && rt_timer_init(&b->delay, &e->actor, EX_MSG_DELAY_DONE) == 0) {
        b->next_delayed = e->delayed;
        e->delayed = b;
        e->n_delayed++;
        rt_timer_start(&b->delay, (uint64_t)e->cfg.kcfg.delay_ms, 0);
    } else {
        answer(e, b);   /* may free b */
    }
    if (step) expert_step_start(e, nbuf, lr);
}

/* A staged backward's first stage is back (every chunk's): its callers get their input gradients now;
 * the batch stays, held, for the second stage still running on its buffers. */
static void answer_staged(expert *e, ex_batch *b)
{
    count_answer(e, b);
    batchq_hold(b);
    b->held = 1;
    answer(e, b);
}

/* ... and its second stage is back: the step follows when both stages succeeded, as after an unstaged
 * backward, and the batch goes. */
static void finish_staged(expert *e, ex_batch *b)
{
    int ok = b->rc == 0 && b->params_rc == 0;
    for (int k = 0; k < b->nchunks; k++) ok = ok && b->chunks[k].params_rc == 0;
    if (b->rc == 0 && !ok)
        LOG_WARN("%s: parameter gradients of a backward batch of %lld rows failed: optimizer step skipped", e->uid,
                 (long long)b->B);
    b->t_compute_us = rt_clock_us() - b->t_compute_us;
    count_done(e, b);
    if (ok) expert_step_start(e, b->nchunks > 0 ? b->nchunks : 1, b->lr);
    b->held = 0;
    batchq_unhold(b);   /* may free b */
}

static void answer_delayed(expert *e, ex_batch *b)
{
    for (ex_batch **pp = &e->delayed; *pp; pp = &(*pp)->next_delayed)
        if (*pp == b) { *pp = b->next_delayed; break; }
    e->n_delayed--;
    answer(e, b);
}

static void expert_handle(rt_actor *self, rt_msg *m)
{
    expert *e = (expert *)self;
    switch (m->type) {
    case EX_MSG_REQ: {
        ex_req *r = (ex_req *)m;
        if (e->shutting) { ex_reply_error(r, DMOE_ESHUTDOWN, "the node is stopping"); return; }
        batchq_push(e->q[r->dir], r);
        rt_signal_raise(&e->sched);   /* behind the requests already in the mailbox */
        return;
    }
    case EX_MSG_SCHEDULE:
        rt_msg_drop(m);
        break;
    case EX_MSG_TICK:
        e->tick_armed[(rt_timer *)m == &e->tick[EX_BWD] ? EX_BWD : EX_FWD] = 0;
        rt_msg_drop(m);
        break;
    case EX_MSG_JOB_DONE: {
        ex_batch *b = (ex_batch *)m;
        if (b->staged) answer_staged(e, b);
        else finish_batch(e, b);
        break;
    }
    case EX_MSG_CHUNK_DONE: {
        ex_batch *b = ((ex_chunk *)m)->b;
        if (--b->chunks_left > 0) break;
        if (b->staged) {
            answer_staged(e, b);
        } else {
            b->t_compute_us = rt_clock_us() - b->t_compute_us;
            finish_batch(e, b);
        }
        break;
    }
    case EX_MSG_PARAMS_DONE:
        finish_staged(e, (ex_batch *)((char *)m - offsetof(ex_batch, params_job.msg)));
        break;
    case EX_MSG_CHUNK_PARAMS_DONE: {
        ex_batch *b = ((ex_chunk *)((char *)m - offsetof(ex_chunk, params_job.msg)))->b;
        if (--b->params_left == 0) finish_staged(e, b);
        break;
    }
    case EX_MSG_CKPT_DONE:
        finish_checkpoint(e);
        break;
    case EX_MSG_STEP_DONE:
        expert_step_job_done(e, (ex_step_job *)m);
        break;
    case EX_MSG_DELAY_DONE:
        answer_delayed(e, (ex_batch *)((char *)m - offsetof(ex_batch, delay)));
        break;
    default:
        rt_msg_drop(m);
    }
    schedule(e);
}

static void expert_destroy(rt_actor *self)
{
    expert *e = (expert *)self;
    while (e->delayed) {   /* the timers' mail was dropped with the mailbox: answer now */
        rt_timer_cancel(&e->delayed->delay);
        answer_delayed(e, e->delayed);
    }
    for (int dir = 0; dir < 2; dir++) {
        batchq_free(e->q[dir]);
        rt_timer_deinit(&e->tick[dir]);
    }
    kern_optim_free(&e->opt);
    free(e->step.jobs);
    free(e->step.bufs);
    free(e->step.sumsq);
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
    int threads = rt_pool_threads(cfg->pool);
    e->step.jobs = calloc((size_t)threads, sizeof *e->step.jobs);
    e->step.bufs = calloc((size_t)threads, sizeof *e->step.bufs);
    e->step.sumsq = calloc(e->model.n_floats / KERN_OPTIM_BLOCK + 1, sizeof *e->step.sumsq);
    e->step.opt = &e->opt;
    e->step.model = &e->model;
    e->step.params = e->params;
    if (!e->params || !e->grads || !e->step.jobs || !e->step.bufs || !e->step.sumsq ||
        kern_optim_init(&e->opt, &cfg->opt, e->model.n_floats) != 0) {
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
            /* nothing to save before the first step: a weights-only seed (the user's file) stays as it is */
            e->ckpt_step = got.has_optimizer ? got.step : e->opt.step;
            LOG_INFO("%s: loaded %s (step %lld%s)", uid, got.path, (long long)got.step,
                     got.has_optimizer ? "" : ", weights only: the optimizer starts fresh");
        }
    }
    batchq_cfg qc = {.max_batch_size = cfg->max_batch_size, .min_batch_size = cfg->min_batch_size,
                     .batch_wait_ms = cfg->batch_wait_ms, .compression = cfg->compression, .cache = cfg->cache,
                     .met = cfg->met};
    rt_signal_init(&e->sched, &e->actor, EX_MSG_SCHEDULE);
    for (int dir = 0; dir < 2; dir++) {
        e->q[dir] = batchq_new(dir, &qc, &e->model, e->uid);
        if (!e->q[dir] || rt_timer_init(&e->tick[dir], &e->actor, EX_MSG_TICK) != 0) {
            snprintf(err, errlen, "out of memory");
            expert_destroy(&e->actor);
            return NULL;
        }
    }
    return e;
}

const char *expert_uid(const expert *e) { return e->uid; }
const kern_model *expert_model(const expert *e) { return &e->model; }
const expert_stats *expert_stats_get(const expert *e) { return &e->stats; }
const expert_cfg *expert_cfg_get(const expert *e) { return &e->cfg; }
void expert_submit(expert *e, ex_req *req)
{
    req->msg.type = EX_MSG_REQ;
    req->msg.drop = NULL;
    if (rt_send(&e->actor, &req->msg) != 0) ex_reply_error(req, DMOE_ESHUTDOWN, "the node is stopping");
}

int expert_busy(const expert *e)
{
    return batchq_pending(e->q[EX_FWD]) + batchq_pending(e->q[EX_BWD]) + e->running[EX_FWD] +
           e->running[EX_BWD] + e->n_delayed + (int)e->actor.depth + (e->step.phase != EX_STEP_IDLE);
}

void expert_shutdown(expert *e)
{
    e->shutting = 1;
    for (int dir = 0; dir < 2; dir++) {
        batchq_fail_waiting(e->q[dir], DMOE_ESHUTDOWN, "the node is stopping");
        rt_timer_cancel(&e->tick[dir]);
    }
}

void expert_checkpoint(expert *e)
{
    if (!e->cfg.ckpt_dir) return;
    e->ckpt_wanted = 1;
    schedule(e);
}

int expert_checkpoint_pending(const expert *e) { return e->ckpt_wanted || e->ckpt_running; }

int expert_stepping(const expert *e) { return e->step.phase != EX_STEP_IDLE; }

void expert_free(expert *e)
{
    if (!e) return;
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
    msgpack_pack_map(pk, 21);
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
    pack_kv_u64(pk, "kernel_us", s->kernel_us);
    pack_kv_u64(pk, "step_us", s->step_us);
    pack_kv_u64(pk, "step_work_us", s->step_work_us);
    pack_kv_u64(pk, "step_wait_us", s->step_wait_us);
    pack_kv_u64(pk, "batch_build_us", s->batch_build_ns / 1000u);
    pack_kv_u64(pk, "batch_fill_us", s->batch_fill_us);
    pack_kv_u64(pk, "params_after_reply_us", s->params_after_reply_us);
    pack_kv_u64(pk, "reply_us", s->reply_ns / 1000u);
}

void expert_release_idle(expert *e)
{
    if (e->running[EX_BWD] || e->step.phase != EX_STEP_IDLE) return;
    free(e->grads_extra);
    e->grads_extra = NULL;
}
