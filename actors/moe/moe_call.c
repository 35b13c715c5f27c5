/* moe_call.c -- the call actor of the Mixture-of-Experts layer: one forward or backward (see moe.h),
 * from the gating job to the callback.
 *
 * Design notes. A forward or backward is an "op": an actor with one deadline timer and one worker job.
 *   Forward:  moe_forward_ex copies the input, draws the switch layer's jitter and dropout mask (the
 *             layer's random stream, in call order), snapshots the gating parameters and hands the
 *             gating GEMM (and the switch softmax) to the pool -> the job comes back as mail ->
 *             batched beam search (moe_beam.h) -> the chosen (sample, expert) pairs grouped by expert
 *             -> one request per expert with all its rows, all sent at once -> answers -> combine.
 *   Backward: moe_backward queues a start message -> grad_output_j = weight_j * gy to every expert that
 *             answered the forward -> answers -> d loss / d scores on the loop -> the gating backward
 *             GEMM on the pool -> the gradients copied into the layer -> callback.
 * Each reply updates per-sample answer counts; once every sample has k_min answers or nothing left
 * pending, the finish time moves to now + timeout_after_k_min (never later than the deadline). At the
 * finish time, or when nothing is pending, the op combines what it has. Failed and late answers -- and,
 * with detect_anomalies (on by default), answers with NaN or Inf -- are masked out. Requests still out then are
 * abandoned: their replies are dropped when they come (the caller's own timeout bounds them), and the
 * op stops itself only when it has called back, no request is out and its job is back, so no callback
 * ever sees freed memory.
 *
 * Retries (forward only: a backward must reach the experts that computed the forward). The search asks
 * for k_best * (1 + retry_rounds) experts per sample; the first k_best are the sample's slots, the rest
 * its spares, taken best first through a per-sample cursor. When a request fails, each of its rows
 * moves to its sample's next spare not on a peer that is down, and the spares chosen for one failure
 * are asked together, one request per expert (a new entry in f->exp, which may grow: requests are
 * referred to by index). A refusal (connection failed, shutting down) puts the peer down for the rest
 * of the forward: every other request out to it is abandoned and retried at once, and its spares are
 * skipped. A stall is found by the hedge timer: when samples still wait for k_min and nothing has
 * answered for max(MOE_HEDGE_MIN_S, twice the time the answers so far took), the requests they wait on are
 * presumed lost and their peers put down the same way -- only peers that have answered nothing in this
 * forward: one that answered something is alive, merely slow. Retries stop with less than MOE_RETRY_MIN_MS to
 * the deadline, or when a sample has no spare left.
 *
 * The moe_fwd keeps what a backward needs: the inputs, the gating scores, each expert's rows of x and
 * of the extra inputs (the same refcounted tensors are sent again: the node needs every input), outputs
 * and weights. Extra inputs get no gradient. Gradients follow hivemind's autograd graph; experts that
 * fail the backward contribute nothing to the input gradient.
 *
 * Threads. Everything here runs on the loop thread except the two gating GEMMs, which run on a worker
 * of the layer's pool (cfg.pool, or one worker of its own) on buffers nothing else touches meanwhile:
 * the op's parameter snapshot and the moe_fwd's gating buffers, which the caller may not read before
 * the callback. Callbacks run on the loop, never inside the call that started them. Every allocation
 * failure after a call started is reported through its callback (DMOE_ENOMEM).
 *
 * The layer and its forward record (moe_impl.h) are moe.c's; this file owns the timing, the requests
 * and the backward's gradients, and calls into moe.c, never the other way round.
 */
#include "actors/moe/moe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/moe/moe_impl.h"
#include "kernels/kern_ops.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

enum { MSG_TIMER = 1, MSG_START, MSG_GATED };

/* One gating GEMM for a worker: only these buffers, which nothing else touches while the job is out. */
typedef struct {
    rt_job job;
    int backward;
    moe_grid g;
    int64_t B;
    int in;
    const float *W, *b;       /* the op's parameter snapshot */
    const float *xg, *noise;
    const uint8_t *keep;      /* forward, switch: the dropout mask, or NULL */
    float *S, *P;             /* forward: the moe_fwd's scores and probabilities */
    const float *gS;          /* backward: d loss / d scores */
    float *gW, *gb, *gx, *gxg;  /* backward: the op's gradients, the moe_fwd's input gradient, scratch */
} gate_job;

/* One expert call out (heap: the caller holds it until its callback, which may come after the op
 * abandoned the request). */
typedef struct {
    struct op *o;
    int e;
    int abandoned;            /* the op gave up on it: the answer is dropped */
} call_ctx;

typedef struct op {
    rt_actor actor;
    rt_timer timer;
    rt_msg start;             /* backward: dispatch on the next loop round */
    gate_job gj;
    int job_out;              /* the gating job is on the pool */
    moe_layer *m;
    moe_fwd *f;
    int backward;
    moe_beam *beam;
    moe_search *search;
    int pending, live, finished;   /* callbacks outstanding; of those, requests not abandoned */
    int *need, *got, *left;   /* per sample: answers wanted, answers received, requests still out (one block) */
    int *next;                /* forward, per sample: its next spare in the beam's result */
    wire_maddr down[MOE_MAX_DOWN];   /* peers down for the rest of this forward */
    int ndown;
    uint64_t t0, deadline, finish_at;   /* microseconds, rt_clock_us */
    uint64_t t_searched, t_sent, last_answer, last_sent, hedge_at;   /* hedge_at 0: no hedge armed */
    float *wsnap;             /* the gating parameters when the GEMM was handed out */
    uint8_t *keep;            /* forward, switch with grid_dropout < 1: the dropout mask */
    /* backward, one block from gy: */
    float *gy;                /* the output gradient [B, D] (a copy) */
    float *gS, *gP;           /* d loss / d scores, d loss / d probabilities (switch, else NULL) [B, total] */
    float *gxg, *gW;          /* the job's scratch [B, in] and gradients [total, in + 1] */
    float bal_coef;
    moe_fwd_cb fcb;
    moe_bwd_cb bcb;
    void *arg;
} op;

/* ---- the op actor ---- */

static void op_destroy(rt_actor *self)
{
    op *o = (op *)self;
    rt_timer_deinit(&o->timer);
    moe_beam_free(o->beam);
    free(o->next);
    free(o->need);   /* and got, left */
    free(o->wsnap);
    free(o->keep);
    free(o->gy);     /* and the rest of the backward's block */
    free(o);
}

/* op_release stops o once it has called back, no request is out and its job is back. */
static void op_release(op *o)
{
    if (o->finished && o->pending == 0 && !o->job_out) rt_actor_stop(&o->actor);
}

static void arm(op *o)
{
    uint64_t now = rt_clock_us();
    uint64_t at = o->finish_at < o->deadline ? o->finish_at : o->deadline;
    if (o->hedge_at && o->hedge_at < at) at = o->hedge_at;
    rt_timer_start(&o->timer, at > now ? (at - now + 999) / 1000 : 0, 0);
}

/* op_fail calls back with err (a forward's record is freed) and ends the op. */
static void op_fail(op *o, int err, const char *msg)
{
    o->finished = 1;
    rt_timer_cancel(&o->timer);
    if (o->search) { moe_search_cancel(o->search); o->search = NULL; }
    moe_fwd *f = o->f;
    o->f = NULL;
    if (o->backward) {
        o->bcb(o->arg, err, msg, NULL);
    } else {
        o->fcb(o->arg, err, msg, NULL);
        moe_fwd_free(f);
    }
    op_release(o);
}

/* submit_gating hands o->gj to the pool. Returns 0 or the pool's error. */
static int submit_gating(op *o)
{
    int rc = rt_pool_submit(o->m->c.pool, &o->gj.job);
    if (rc == 0) o->job_out = 1;
    return rc;
}

static void fwd_complete(op *o);
static void bwd_complete(op *o);
static void on_gated(op *o);
static void send_all(op *o);
static void hedge(op *o);

static void op_complete(op *o)
{
    if (o->finished) return;
    if (o->backward) bwd_complete(o);
    else fwd_complete(o);
}

/* arm_hedge sets the hedge time while samples wait: max(MOE_HEDGE_MIN_S, twice the time the answers so
 * far took) after the last answer or the last request sent, whichever is later -- so a retry gets its
 * own time (no answer yet: no hedge, there is nothing to compare with). */
static void arm_hedge(op *o)
{
    if (o->backward || o->m->c.retry_rounds <= 0 || !o->last_answer) return;
    uint64_t took = 2 * (o->last_answer - o->t_sent), min = (uint64_t)(MOE_HEDGE_MIN_S * 1e6);
    uint64_t from = o->last_answer > o->last_sent ? o->last_answer : o->last_sent;
    uint64_t at = from + (took > min ? took : min);
    if (at != o->hedge_at) {
        o->hedge_at = at;
        arm(o);
    }
}

/* settle moves the finish time forward once every sample has what it waits for, and keeps the hedge
 * armed while some do not. */
static void settle(op *o)
{
    int64_t B = o->f->B;
    if (o->live == 0) { op_complete(o); return; }
    for (int64_t b = 0; b < B; b++)
        if (o->got[b] < o->need[b] && o->left[b] > 0) { arm_hedge(o); return; }
    o->hedge_at = 0;
    double after = o->m->c.timeout_after_k_min;
    if (after < 0) return;
    uint64_t t = rt_clock_us() + (uint64_t)(after * 1e6);
    if (t < o->finish_at) {
        o->finish_at = t;
        arm(o);
    }
}

static void on_timer(op *o)
{
    if (o->finished || o->job_out) return;   /* a forward's gating job re-arms the timer when it is back */
    uint64_t now = rt_clock_us();
    if (o->hedge_at && now + 500 >= o->hedge_at && !o->search) {
        o->hedge_at = 0;
        hedge(o);
        if (o->finished) return;
    }
    if (now + 500 < o->finish_at && now + 500 < o->deadline) { arm(o); return; }
    if (o->search) {
        op_fail(o, DMOE_ETIMEDOUT, "beam search did not finish within forward_timeout");
        return;
    }
    op_complete(o);
}

static void op_handle(rt_actor *self, rt_msg *msg)
{
    op *o = (op *)self;
    int type = msg->type;
    rt_msg_drop(msg);
    if (type == MSG_TIMER) on_timer(o);
    else if (type == MSG_START && !o->finished) send_all(o);
    else if (type == MSG_GATED) on_gated(o);
}

static void gate_run(rt_job *j)
{
    gate_job *g = (gate_job *)j;
    if (g->backward)
        moe_math_gating_bwd(&g->g, g->xg, g->gS, g->B, g->in, g->W, g->noise, g->gW, g->gb, g->gx, g->gxg);
    else
        moe_math_gating(&g->g, g->xg, g->B, g->in, g->W, g->b, g->keep, g->S, g->P);
}

static op *op_new(moe_layer *m, moe_fwd *f, int backward, double timeout_s)
{
    op *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    rt_actor_init(&o->actor, m->loop, backward ? "moe_bwd" : "moe_fwd", op_handle, op_destroy);
    if (rt_timer_init(&o->timer, &o->actor, MSG_TIMER) != 0) { free(o); return NULL; }
    o->start.type = MSG_START;
    o->gj.job.msg.type = MSG_GATED;
    o->gj.job.run = gate_run;
    o->gj.job.owner = &o->actor;
    o->gj.backward = backward;
    o->gj.g = m->g;
    o->gj.B = f->B;
    o->gj.in = f->in;
    o->m = m;
    o->f = f;
    o->backward = backward;
    o->need = calloc(3 * (size_t)f->B, sizeof *o->need);
    o->wsnap = malloc(m->nparams * sizeof *o->wsnap);
    if (!o->need || !o->wsnap) { rt_actor_stop(&o->actor); return NULL; }
    o->got = o->need + f->B;
    o->left = o->got + f->B;
    o->t0 = rt_clock_us();
    o->deadline = o->t0 + (uint64_t)(timeout_s * 1e6);
    o->finish_at = o->deadline;
    arm(o);
    return o;
}

/* op_abort ends an op that never called back and has nothing out (its starter reports the error). */
static void op_abort(op *o)
{
    o->f = NULL;
    o->finished = 1;
    op_release(o);
}

/* ---- dispatch ---- */

/* valid_answer: float32 [e's rows, D] (a forward's first answer sets D: want 0 takes any width), finite
 * with detect_anomalies (rx_tensor_check says what is wrong in err). */
static int valid_answer(const op *o, const moe_exp *e, const rx_tensor *t, int D, char *err, size_t errlen)
{
    int64_t width = D;
    if (rx_tensor_check(t, WIRE_DT_F32, e->nrows, 1, &width, o->m->c.detect_anomalies,
                        o->backward ? "grad_inputs[0]" : "outputs[0]", err, errlen) != 0) return 0;
    if (t->shape[1] >= 1) return 1;
    snprintf(err, errlen, "outputs[0] has no columns");
    return 0;
}

/* account counts request ei's rows as answered (ok) or not: it is no longer out for them. */
static void account(op *o, int ei, int ok)
{
    const moe_exp *e = &o->f->exp[ei];
    for (int64_t r = 0; r < e->nrows; r++) {
        int64_t b = e->rows[r];
        o->left[b]--;
        if (ok) o->got[b]++;
    }
}

static void on_answer(void *arg, int err, const char *msg, rx_tensor *out);

/* send_one sends request ei (gout: a backward's output gradient, else NULL). Returns 0 (the request is
 * out: counted in pending, live and its rows' left) or the caller's error. */
static int send_one(op *o, int ei, const rx_tensor *gout)
{
    moe_fwd *f = o->f;
    moe_exp *e = &f->exp[ei];
    uint64_t now = rt_clock_us();
    uint64_t ms = o->deadline > now ? (o->deadline - now + 999) / 1000 : 1;
    call_ctx *c = malloc(sizeof *c);
    if (!c) return DMOE_ENOMEM;
    *c = (call_ctx){ o, ei, 0 };
    int rc = o->m->caller.call(o->m->caller.impl, e->uid, &e->addr, e->in, 1 + f->n_extra, gout, ms, on_answer, c);
    if (rc) {
        free(c);
        LOG_WARN("cannot call %s: %s", e->uid, dmoe_strerror(rc));
        return rc;
    }
    e->call = c;
    o->last_sent = now;
    o->pending++;
    o->live++;
    for (int64_t r = 0; r < e->nrows; r++) o->left[e->rows[r]]++;
    return 0;
}

static int same_peer(const wire_maddr *a, const wire_maddr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

static int is_down(const op *o, const wire_maddr *a)
{
    for (int i = 0; i < o->ndown; i++)
        if (same_peer(&o->down[i], a)) return 1;
    return 0;
}

/* retry_rows moves the rows of failed request ei to their samples' next live spares and sends the new
 * requests (a forward with retries on, while the deadline allows). */
static void retry_rows(op *o, int ei)
{
    moe_fwd *f = o->f;
    if (o->backward || o->m->c.retry_rounds <= 0 || !o->beam || !o->next) return;
    if (rt_clock_us() + MOE_RETRY_MIN_MS * 1000ull >= o->deadline) return;
    int first = f->nexp, k = f->k;
    for (int64_t r = 0; r < f->exp[ei].nrows; r++) {
        int64_t b = f->exp[ei].rows[r];
        int j = 0;
        while (j < k && f->slot_exp[b * k + j] != ei) j++;
        if (j == k) continue;
        const moe_beam_expert *ch;
        size_t n = moe_beam_result(o->beam, b, &ch);
        while ((size_t)o->next[b] < n && is_down(o, &ch[o->next[b]].addr)) o->next[b]++;
        if ((size_t)o->next[b] >= n) continue;   /* no spare left: the slot stays failed */
        const moe_beam_expert *pick = &ch[o->next[b]++];
        int nj = first;
        while (nj < f->nexp && strcmp(f->exp[nj].uid, pick->uid) != 0) nj++;
        if (nj == f->nexp) nj = moe_fwd_add_expert(f, pick);
        if (nj == DMOE_ENOMEM) { LOG_WARN("out of memory retrying the rows of %s", f->exp[ei].uid); break; }
        if (nj < 0) continue;
        moe_exp *e = &f->exp[nj];
        f->slot_exp[b * k + j] = nj;
        f->slot_row[b * k + j] = e->nrows;
        e->rows[e->nrows++] = b;
    }
    for (int nj = first; nj < f->nexp; nj++) {
        if (moe_fwd_inputs(f, nj) != 0 || send_one(o, nj, NULL) != 0) continue;   /* its rows stay failed */
        f->st.experts_retried++;
        f->st.rows_retried += f->exp[nj].nrows;
        LOG_DEBUG("forward: %lld rows of %s retried on %s", (long long)f->exp[nj].nrows, f->exp[ei].uid, f->exp[nj].uid);
    }
}

/* lost gives up on request ei (failed, or abandoned): its rows are retried, then no longer wait on it. */
static void lost(op *o, int ei)
{
    retry_rows(o, ei);
    account(o, ei, 0);
}

/* peer_down puts peer a down for the rest of the forward and abandons every request still out to it. */
static void peer_down(op *o, const wire_maddr *a)
{
    moe_fwd *f = o->f;
    if (!is_down(o, a)) {
        if (o->ndown < MOE_MAX_DOWN) o->down[o->ndown++] = *a;
        f->st.peers_down++;
        LOG_DEBUG("forward: peer %s:%u is down for this forward", a->host, (unsigned)a->port);
    }
    int n = f->nexp;   /* not the retries this sends: they avoid the peer */
    for (int ei = 0; ei < n; ei++) {
        moe_exp *e = &f->exp[ei];
        if (!e->call || !same_peer(&e->addr, a)) continue;
        ((call_ctx *)e->call)->abandoned = 1;
        e->call = NULL;
        o->live--;
        lost(o, ei);
    }
}

/* answered_from says whether any request of this forward to peer a has answered (a sign of life). */
static int answered_from(const moe_fwd *f, const wire_maddr *a)
{
    for (int ei = 0; ei < f->nexp; ei++)
        if (f->exp[ei].ok && same_peer(&f->exp[ei].addr, a)) return 1;
    return 0;
}

/* spares_cover says whether every row of the requests out to peer a has a spare left on another peer
 * that is not down: only then can giving up on a lose nothing that waiting for it could have saved. */
static int spares_cover(const op *o, const wire_maddr *a)
{
    const moe_fwd *f = o->f;
    if (o->backward || o->m->c.retry_rounds <= 0 || !o->beam || !o->next) return 0;
    for (int ei = 0; ei < f->nexp; ei++) {
        const moe_exp *e = &f->exp[ei];
        if (!e->call || !same_peer(&e->addr, a)) continue;
        for (int64_t r = 0; r < e->nrows; r++) {
            int64_t b = e->rows[r];
            const moe_beam_expert *ch;
            size_t n = moe_beam_result(o->beam, b, &ch), j = (size_t)o->next[b];
            while (j < n && (same_peer(&ch[j].addr, a) || is_down(o, &ch[j].addr))) j++;
            if (j == n) return 0;
        }
    }
    return 1;
}

/* hedge: nothing has answered for the hedge time while samples wait; the requests they wait on, to
 * peers that have not answered anything in this forward, are presumed lost and those peers down -- when
 * spares can take all their rows (a peer that answered some request is alive, merely slow; one whose rows
 * have nowhere else to go keeps its requests until the deadline). */
static void hedge(op *o)
{
    moe_fwd *f = o->f;
    int n = f->nexp;   /* not the retries this sends */
    for (int ei = 0; ei < n; ei++) {
        if (!f->exp[ei].call || answered_from(f, &f->exp[ei].addr)) continue;
        int waited = 0;
        for (int64_t r = 0; r < f->exp[ei].nrows && !waited; r++) {
            int64_t b = f->exp[ei].rows[r];
            waited = o->got[b] < o->need[b];
        }
        if (!waited || !spares_cover(o, &f->exp[ei].addr)) continue;
        wire_maddr a = f->exp[ei].addr;
        LOG_DEBUG("forward: %s stalled, its peer is presumed down", f->exp[ei].uid);
        peer_down(o, &a);
    }
    settle(o);
}

static void on_answer(void *arg, int err, const char *msg, rx_tensor *out)
{
    call_ctx *c = arg;
    op *o = c->o;
    int ei = c->e, abandoned = c->abandoned;
    free(c);
    o->pending--;
    if (o->finished || !o->f || abandoned) {
        if (out) rx_tensor_free(out);
        if (!abandoned) o->live--;
        op_release(o);
        return;
    }
    o->live--;
    moe_fwd *f = o->f;
    moe_exp *e = &f->exp[ei];
    e->call = NULL;
    int ok = 0;
    if (err == 0) {
        int want = o->backward ? f->in : (f->D > 0 ? f->D : 0);
        char why[256];
        ok = valid_answer(o, e, out, want, why, sizeof why);
        if (ok && o->backward) e->gx = *out;
        else if (ok) { e->out = *out; if (f->D <= 0) f->D = (int)out->shape[1]; }
        else {
            LOG_WARN("%s %s: answer refused, the expert counts as failed: %s", o->backward ? "backward" : "forward",
                     e->uid, why);
            rx_tensor_free(out);
        }
    } else {
        LOG_DEBUG("%s %s failed: %s", o->backward ? "backward" : "forward", e->uid, msg);
        if (out) rx_tensor_free(out);
    }
    if (o->backward) e->bok = ok;
    else e->ok = ok;
    if (ok) {
        o->last_answer = rt_clock_us();
        account(o, ei, 1);
    } else if (o->backward) {
        account(o, ei, 0);
    } else {
        /* a lost connection fails every request on it anyway; a stopping node may still answer the ones
         * it is computing, so they are given up only when spares can take their rows */
        wire_maddr a = e->addr;
        if (o->m->c.retry_rounds > 0 && (err == DMOE_ECONN || (err == DMOE_ESHUTDOWN && spares_cover(o, &a))))
            peer_down(o, &a);   /* e is no longer out, so this abandons only the others (to retry them) */
        lost(o, ei);
    }
    settle(o);
}

/* send_all sends one request per expert (in backward, only to those that answered the forward). */
static void send_all(op *o)
{
    moe_fwd *f = o->f;
    for (int ei = 0; ei < f->nexp; ei++) {
        moe_exp *e = &f->exp[ei];
        if (o->backward && !e->ok) continue;
        rx_tensor gout = {0};
        if (o->backward) {
            int64_t shape[2] = { e->nrows, f->D };
            if (rx_tensor_alloc(&gout, WIRE_DT_F32, 2, shape) != 0) {
                op_fail(o, DMOE_ENOMEM, "out of memory for an expert's output gradient");
                return;
            }
            float *g = rx_tensor_f32(&gout);
            for (int64_t r = 0; r < e->nrows; r++) {
                int64_t b = e->rows[r];
                float w = 0;
                for (int j = 0; j < f->k; j++)
                    if (f->slot_exp[b * f->k + j] == ei) w = f->w[b * f->k + j];
                for (int d = 0; d < f->D; d++) g[r * f->D + d] = w * o->gy[b * f->D + d];
            }
        }
        send_one(o, ei, o->backward ? &gout : NULL);
        rx_tensor_free(&gout);
    }
    o->t_sent = rt_clock_us();
    if (!o->backward) f->st.dispatch_ms = (double)(o->t_sent - o->t_searched) / 1000.0;
    settle(o);
}

static void on_searched(void *arg, int err, const char *msg, moe_beam *b)
{
    op *o = arg;
    o->search = NULL;
    if (err) { op_fail(o, err, msg); return; }
    o->t_searched = rt_clock_us();
    o->f->st.search_ms = (double)(o->t_searched - o->t0) / 1000.0;
    o->f->st.beam_rounds = moe_beam_rounds(b);
    int rc = moe_fwd_group(o->f, o->beam, o->need);
    if (rc == 0 && o->m->c.retry_rounds > 0 && !(o->next = malloc((size_t)o->f->B * sizeof *o->next))) rc = DMOE_ENOMEM;
    if (rc) { op_fail(o, rc, "out of memory"); return; }
    for (int64_t s = 0; o->next && s < o->f->B; s++) {   /* each sample's spares follow its k_best slots */
        const moe_beam_expert *ch;
        size_t n = moe_beam_result(o->beam, s, &ch);
        o->next[s] = n < (size_t)o->f->k ? (int)n : o->f->k;
    }
    send_all(o);
}

/* ---- forward ---- */

/* extra_ok checks an extra input: float32 or uint8, [B, ...], finite with detect_anomalies. */
static int extra_ok(const moe_layer *m, const rx_tensor *t, int64_t B)
{
    if (t->dtype != WIRE_DT_F32 && t->dtype != WIRE_DT_U8) return 0;
    if (t->ndim < 1 || t->ndim > WIRE_MAX_NDIM || t->shape[0] != B) return 0;
    if (t->numel && !t->buf) return 0;
    if (t->dtype == WIRE_DT_F32 && m->c.detect_anomalies && t->numel && !kern_all_finite(rx_tensor_f32(t), t->numel))
        return 0;
    return 1;
}

int moe_forward(moe_layer *m, const float *x, int64_t B, moe_fwd_cb cb, void *arg)
{
    return moe_forward_ex(m, x, B, NULL, 0, cb, arg);
}


int moe_forward_ex(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra, moe_fwd_cb cb,
                   void *arg)
{
    if (B < 1 || B > (1 << 24)) return DMOE_EINVAL;
    if (n_extra < 0 || n_extra > KERN_MAX_IO - 1 || (n_extra > 0 && !extra)) return DMOE_EINVAL;
    for (int i = 0; i < n_extra; i++)
        if (!extra_ok(m, &extra[i], B)) return DMOE_EINVAL;
    int in = m->c.in_features, T = m->g.total;
    if (m->c.detect_anomalies && !kern_all_finite(x, (size_t)B * (size_t)in)) return DMOE_EINVAL;
    moe_fwd *f = moe_fwd_new(m, x, B, extra, n_extra);
    if (!f) return DMOE_ENOMEM;
    op *o = op_new(m, f, 0, m->c.forward_timeout);
    if (!o) { moe_fwd_free(f); return DMOE_ENOMEM; }
    o->fcb = cb;
    o->arg = arg;
    if (m->c.is_switch && m->c.grid_dropout < 1.0) {
        o->keep = malloc((size_t)T);
        if (!o->keep) { op_abort(o); moe_fwd_free(f); return DMOE_ENOMEM; }
    }
    /* the layer's random stream, in call order: the jitter of the gating input, then the dropout mask */
    if (m->c.is_switch) {
        float eps = (float)m->c.jitter_eps;
        for (size_t i = 0; i < (size_t)B * (size_t)in; i++) {
            f->noise[i] = 1.0f - eps + 2.0f * eps * kern_rng_uniform(&m->rng);
            f->xg[i] *= f->noise[i];
        }
    }
    for (int t = 0; o->keep && t < T; t++) o->keep[t] = kern_rng_uniform(&m->rng) < m->c.grid_dropout;
    memcpy(o->wsnap, m->params, m->nparams * sizeof *o->wsnap);
    gate_job *g = &o->gj;
    g->W = o->wsnap;
    g->b = o->wsnap + (size_t)T * (size_t)in;
    g->xg = f->xg;
    g->keep = o->keep;
    g->S = f->S;
    g->P = f->P;
    int rc = submit_gating(o);
    if (rc) { op_abort(o); moe_fwd_free(f); return rc; }
    return 0;
}

/* on_gated: the gating job is back. A forward starts its beam search; a backward is done. */
static void on_gated(op *o)
{
    o->job_out = 0;
    if (o->backward) {
        moe_fwd *f = o->f;
        memcpy(o->m->grads, o->gW, o->m->nparams * sizeof *o->gW);
        o->f = NULL;
        o->bcb(o->arg, 0, "", f->gx);
        op_release(o);
        return;
    }
    moe_layer *m = o->m;
    int beam = o->f->k * (1 + m->c.retry_rounds);   /* the k_best slots, then the spares */
    if (beam > MOE_MAX_BEAM) beam = MOE_MAX_BEAM;
    int rc = moe_beam_new(m->c.uid_prefix, m->c.grid_size, m->c.ndim, o->f->B, o->f->S, beam, &o->beam);
    if (rc) { op_fail(o, rc, "cannot start the beam search"); return; }
    rc = moe_beam_search(&m->succ, o->beam, on_searched, o, &o->search);
    if (rc) {
        char msg[160];
        snprintf(msg, sizeof msg, "cannot start the beam search: %s", dmoe_strerror(rc));
        op_fail(o, rc, msg);
        return;
    }
    arm(o);   /* the deadline may have passed while the job was out */
}

/* fwd_complete combines the answers (moe_fwd_combine) and calls back. */
static void fwd_complete(op *o)
{
    moe_fwd *f = o->f;
    int64_t bad;
    int rc = moe_fwd_combine(f, &bad);
    if (rc) { op_fail(o, rc, "out of memory"); return; }
    o->finished = 1;
    rt_timer_cancel(&o->timer);
    f->st.total_ms = (double)(rt_clock_us() - o->t0) / 1000.0;
    f->st.wait_ms = f->st.total_ms - f->st.search_ms - f->st.dispatch_ms;
    o->f = NULL;
    if (bad >= 0 && !o->m->c.allow_zero_outputs) {
        char msg[256];
        snprintf(msg, sizeof msg, "no expert answered for sample %lld (%lld of %lld samples; %d of %d experts answered)",
                 (long long)bad, (long long)f->st.zero_rows, (long long)f->B, f->st.experts_answered, f->st.experts_chosen);
        o->fcb(o->arg, f->st.experts_chosen ? DMOE_ETIMEDOUT : DMOE_ENOTFOUND, msg, NULL);
        moe_fwd_free(f);
    } else {
        o->fcb(o->arg, 0, "", f);
    }
    op_release(o);
}

/* ---- backward ---- */

int moe_backward(moe_layer *m, moe_fwd *f, const float *gy, float balance_coef, moe_bwd_cb cb, void *arg)
{
    if (!f || !gy || f->m != m) return DMOE_EINVAL;
    size_t ny = (size_t)f->B * (size_t)f->D, ns = (size_t)f->B * (size_t)m->g.total;
    if (m->c.detect_anomalies && !kern_all_finite(gy, ny)) return DMOE_EINVAL;
    op *o = op_new(m, f, 1, m->c.backward_timeout);
    if (!o) return DMOE_ENOMEM;
    size_t np = m->c.is_switch ? ns : 0, nxg = (size_t)f->B * (size_t)f->in;
    o->gy = calloc(ny + ns + np + nxg + m->nparams, sizeof *o->gy);
    if (!o->gy) { op_abort(o); return DMOE_ENOMEM; }
    o->gS = o->gy + ny;
    o->gP = np ? o->gS + ns : NULL;
    o->gxg = o->gS + ns + np;
    o->gW = o->gxg + nxg;
    for (int ei = 0; ei < f->nexp; ei++) { rx_tensor_free(&f->exp[ei].gx); f->exp[ei].bok = 0; }
    memcpy(o->gy, gy, ny * sizeof *o->gy);
    o->bal_coef = balance_coef;
    o->bcb = cb;
    o->arg = arg;
    for (int64_t b = 0; b < f->B; b++) {
        int answered = 0;
        for (int j = 0; j < f->k; j++) {
            int ei = f->slot_exp[b * f->k + j];
            answered += ei >= 0 && f->exp[ei].ok;
        }
        o->need[b] = m->c.backward_k_min < answered ? m->c.backward_k_min : answered;
    }
    if (rt_send(&o->actor, &o->start) != 0) { op_abort(o); return DMOE_ESHUTDOWN; }
    return 0;
}

/* bwd_complete computes d loss / d scores from the answers on the loop, then hands the gating backward
 * to the pool (on_gated calls back). */
static void bwd_complete(op *o)
{
    moe_fwd *f = o->f;
    moe_layer *m = o->m;
    int T = m->g.total, k = f->k, D = f->D;
    for (int64_t b = 0; b < f->B; b++) {
        if (o->got[b] < o->need[b]) {
            char msg[160];
            snprintf(msg, sizeof msg, "backward: sample %lld got %d of the %d expert answers it needs (backward_k_min)",
                     (long long)b, o->got[b], o->need[b]);
            op_fail(o, DMOE_ETIMEDOUT, msg);
            return;
        }
    }
    o->finished = 1;
    rt_timer_cancel(&o->timer);
    memset(f->gx, 0, (size_t)f->B * (size_t)f->in * sizeof *f->gx);
    for (int ei = 0; ei < f->nexp; ei++) {
        const moe_exp *e = &f->exp[ei];
        if (!e->bok) continue;
        const float *g = rx_tensor_f32(&e->gx);
        for (int64_t r = 0; r < e->nrows; r++)
            for (int i = 0; i < f->in; i++) f->gx[e->rows[r] * f->in + i] += g[r * f->in + i];
    }
    int coords[MOE_MAX_BEAM * MOE_MAX_DIMS];
    uint8_t ok[MOE_MAX_BEAM];
    const float *outs[MOE_MAX_BEAM];
    for (int64_t b = 0; b < f->B; b++) {
        const float *gy = o->gy + b * D;
        if (m->c.is_switch && D == f->in)
            for (int d = 0; d < D; d++) f->gx[b * f->in + d] += gy[d];   /* the residual */
        moe_fwd_slots(f, b, coords, ok, outs);
        const float *p = m->c.is_switch ? f->P + b * T : NULL;
        moe_math_slot_grads(&m->g, gy, f->y + b * D, D, k, outs, f->w + b * k, coords, p, o->gS + b * T,
                            o->gP ? o->gP + b * T : NULL);
        if (p) moe_math_switch_bwd(&m->g, p, m->util, o->bal_coef, f->B, o->gP + b * T, o->gS + b * T);
    }
    memcpy(o->wsnap, m->params, (size_t)T * (size_t)f->in * sizeof *o->wsnap);
    gate_job *g = &o->gj;
    g->W = o->wsnap;
    g->xg = f->xg;
    g->noise = f->noise;
    g->gS = o->gS;
    g->gW = o->gW;
    g->gb = o->gW + (size_t)T * (size_t)f->in;
    g->gx = f->gx;
    g->gxg = o->gxg;
    int rc = submit_gating(o);
    if (rc) {
        o->f = NULL;
        o->bcb(o->arg, rc, "cannot hand the gating backward to the worker pool", NULL);
        op_release(o);
    }
}

/* ---- blocking drivers ---- */

typedef struct {
    rt_loop *l;
    int done, err;
    char msg[512];
    moe_fwd *f;
    const float *gx;
} sync_wait;

/* sync_end records how the call ended and stops the loop the driver runs. */
static void sync_end(sync_wait *s, int err, const char *msg)
{
    s->done = 1;
    s->err = err;
    snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "");
    rt_loop_break(s->l);
}

static void sync_fwd(void *arg, int err, const char *msg, moe_fwd *f)
{
    ((sync_wait *)arg)->f = f;
    sync_end(arg, err, msg);
}

static void sync_bwd(void *arg, int err, const char *msg, const float *gx)
{
    ((sync_wait *)arg)->gx = gx;
    sync_end(arg, err, msg);
}

/* sync_wait_for runs m's loop until the call started with rc (what: "forward" or "backward") ends.
 * Returns 0, or the error with err filled. */
static int sync_wait_for(moe_layer *m, sync_wait *s, int rc, const char *what, char *err, size_t errlen)
{
    if (rc) { snprintf(err, errlen, "cannot start the %s: %s", what, dmoe_strerror(rc)); return rc; }
    while (!s->done) rt_loop_run(m->loop);   /* the op's timer keeps the loop alive until it ends */
    if (s->err) { snprintf(err, errlen, "%s", s->msg); return s->err; }
    return 0;
}

int moe_forward_run(moe_layer *m, const float *x, int64_t B, moe_fwd **out, char *err, size_t errlen)
{
    return moe_forward_run_ex(m, x, B, NULL, 0, out, err, errlen);
}

int moe_forward_run_ex(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra, moe_fwd **out,
                       char *err, size_t errlen)
{
    sync_wait s = { .l = m->loop };
    int rc = sync_wait_for(m, &s, moe_forward_ex(m, x, B, extra, n_extra, sync_fwd, &s), "forward", err, errlen);
    if (rc == 0) *out = s.f;
    return rc;
}

int moe_backward_run(moe_layer *m, moe_fwd *f, const float *gy, float balance_coef, const float **gx, char *err,
                     size_t errlen)
{
    sync_wait s = { .l = m->loop };
    int rc = sync_wait_for(m, &s, moe_backward(m, f, gy, balance_coef, sync_bwd, &s), "backward", err, errlen);
    if (rc == 0) *gx = s.gx;
    return rc;
}
