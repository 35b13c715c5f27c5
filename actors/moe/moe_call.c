/* moe_call.c -- the call actor of the Mixture-of-Experts layer: one forward or backward (see moe.h),
 * from the gating job to the callback.
 *
 * Design notes. A forward or backward is an "op": an actor with one deadline timer and one worker job.
 *   Forward:  moe_forward_ex copies the input, draws the switch layer's jitter and dropout mask (the
 *             layer's random stream, in call order), snapshots the gating parameters and hands the
 *             gating GEMM (and the switch softmax) to the pool, with the beam search's set-up and its
 *             first round (every sample's frontier: most of the search's CPU) -> the job comes back
 *             as mail -> the batched beam search (moe_beam.h) goes on over the DHT -> after each
 *             round, the samples whose search ended grouped by expert (a wave) -> one request per
 *             expert of the wave with all its rows, sent while the next round is out -> ... the last
 *             wave when the search ends -> answers -> the combine (weights and output) on the pool,
 *             the switch layer's utilisation on the loop -> callback. Nothing settles before the last wave
 *             is out; the experts' input gradients add up in the order of a single wave
 *             (moe_exp.rank), so the waves never change a bit.
 *   Backward: moe_backward queues a start message -> grad_output_j = weight_j * gy to every expert that
 *             answered the forward -> answers -> on the pool: the input gradient from the answers,
 *             d loss / d scores, the gating backward GEMM -> the gradients copied into the layer ->
 *             callback.
 * Each reply updates per-sample answer counts; once every sample has k_min answers or nothing left
 * pending, the finish time moves to now + timeout_after_k_min (never later than the deadline). At the
 * finish time, or when nothing is pending, the op combines what it has. Until an expert's schema has
 * matched, a forward also asks its first expert for its info (the caller's info port) alongside the
 * requests and waits for it: a schema that does not take what the layer sends (another width) ends the
 * forward with one message naming both shapes, instead of every expert failing. A failed call is
 * logged at WARN the first time the layer sees its error, at DEBUG after that. Failed and late answers -- and,
 * with detect_anomalies (on by default), answers with NaN or Inf -- are masked out. Requests still out then are
 * abandoned: their replies are dropped when they come (the caller's own timeout bounds them), and the
 * op stops itself only when it has called back, no request is out and its job is back, so no callback
 * ever sees freed memory.
 *
 * Retries (forward only: a backward must reach the experts that computed the forward) live in
 * moe_retry.c, which also sends every request (moe_retry_send) and counts its rows when it settles
 * (moe_retry_account). This file decides when: a failed answer gives its request up (moe_retry_lost),
 * after putting its peer down for the rest of the forward on a refusal (connection failed, or shutting
 * down when spares cover its rows: moe_retry_peer_down); dispatch sets each sample's spare cursor
 * (o->next) as its wave goes out. A retry may come while later waves are still being searched; the
 * ranks (moe_exp.rank) of its request and of the failed one are given when the search ends
 * (moe_fwd_group_end) or, after that, when the retry is made. A stall is found by the hedge timer, armed
 * here (arm_hedge) only once the search has ended: when samples still wait for k_min and nothing has
 * answered for max(MOE_HEDGE_MIN_S, twice the time the answers so far took), moe_retry_hedge gives up on
 * the requests they wait on; this file settles after each of these calls.
 *
 * The moe_fwd keeps what a backward needs: the inputs, the gating scores, each expert's rows of x and
 * of the extra inputs (the same refcounted tensors are sent again: the node needs every input), outputs
 * and weights. Extra inputs get no gradient. Gradients follow hivemind's autograd graph; experts that
 * fail the backward contribute nothing to the input gradient.
 *
 * Threads. Everything here runs on the loop thread except the gating job: the two gating GEMMs, in a
 * forward the beam search's moe_beam_new and first moe_beam_want and later the combine (moe_fwd_mix),
 * in a backward the arithmetic from the answers to d loss / d scores. It runs on a worker of the
 * layer's pool (cfg.pool, or one worker of its own) on what nothing else touches meanwhile: the op's
 * snapshots (parameters, utilisation) and buffers, the moe_fwd record, which the caller may not touch
 * before the callback (late answers are dropped unread once the op has handed the record over), and
 * the job's copies of the grid; the beam it makes is the loop's once the job is back. Callbacks run on
 * the loop, never inside the call that started them. Every allocation failure after a call started is
 * reported through its callback (DMOE_ENOMEM).
 *
 * The layer and its forward record (moe_impl.h) are moe.c's; the op and its structs (moe_op.h) are this
 * file's: it owns the timing and the backward's gradients, and calls into moe.c and moe_retry.c, never
 * the other way round (a request's answer reaches on_answer through o->answer, set in op_new).
 */
#include "actors/moe/moe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/moe/moe_impl.h"
#include "actors/moe/moe_retry.h"
#include "kernels/kern_ops.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

enum { MSG_TIMER = 1, MSG_START, MSG_GATED };

/* ---- the op actor ---- */

static void op_destroy(rt_actor *self)
{
    op *o = (op *)self;
    rt_timer_deinit(&o->timer);
    moe_beam_free(o->beam);
    free(o->next);
    free(o->need);   /* and got, left */
    free(o->wave);
    free(o->sent);
    free(o->wsnap);
    free(o->order);
    free(o->usnap);
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
static void fwd_combined(op *o);
static void send_range(op *o, int from, int to);
static void on_answer(void *arg, int err, const char *msg, rx_tensor *out);

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
 * armed while some do not (once the search has ended: nothing hedges while later waves are searched). */
static void settle(op *o)
{
    int64_t B = o->f->B;
    if (o->search) return;   /* a forward's later waves are still to come */
    if (o->live == 0) { op_complete(o); return; }
    if (o->info_out) return;   /* its answer may end the forward with a clearer error than the experts' */
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
        moe_retry_hedge(o);
        settle(o);
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
    else if (type == MSG_START && !o->finished) {
        send_range(o, 0, o->f->nexp);
        settle(o);
    }
    else if (type == MSG_GATED) on_gated(o);
}

/* bwd_slots, on the worker: the input gradient from the experts' answers (in rank order: the same bits
 * however the forward's waves fell) and the residual, then d loss / d scores sample by sample. */
static void bwd_slots(gate_job *g)
{
    moe_fwd *f = g->f;
    const moe_grid *grid = &g->g;
    int T = grid->total, k = f->k, D = f->D;
    memset(f->gx, 0, (size_t)f->B * (size_t)f->in * sizeof *f->gx);
    for (int oi = 0; oi < f->nexp; oi++) {
        const moe_exp *e = &f->exp[g->order[oi]];
        if (!e->bok) continue;
        const float *ge = rx_tensor_f32(&e->gx);
        for (int64_t r = 0; r < e->nrows; r++)
            for (int i = 0; i < f->in; i++) f->gx[e->rows[r] * f->in + i] += ge[r * f->in + i];
    }
    int coords[MOE_MAX_BEAM * MOE_MAX_DIMS];
    uint8_t ok[MOE_MAX_BEAM];
    const float *outs[MOE_MAX_BEAM];
    for (int64_t b = 0; b < f->B; b++) {
        const float *gy = g->gy + b * D;
        if (g->util && D == f->in)
            for (int d = 0; d < D; d++) f->gx[b * f->in + d] += gy[d];   /* the residual */
        moe_fwd_slots(f, b, coords, ok, outs);
        const float *p = g->util ? f->P + b * T : NULL;
        moe_math_slot_grads(grid, gy, f->y + b * D, D, k, outs, f->w + b * k, coords, p, g->gSw + b * T,
                            g->gP ? g->gP + b * T : NULL);
        if (p) moe_math_switch_bwd(grid, p, g->util, g->bal_coef, f->B, g->gP + b * T, g->gSw + b * T);
    }
}

static void gate_run(rt_job *j)
{
    gate_job *g = (gate_job *)j;
    if (g->backward) {
        bwd_slots(g);
        moe_math_gating_bwd(&g->g, g->xg, g->gS, g->B, g->in, g->W, g->noise, g->gW, g->gb, g->gx, g->gxg);
    } else if (g->combine) {
        moe_fwd_mix(g->f, &g->g);
    } else {
        moe_math_gating(&g->g, g->xg, g->B, g->in, g->W, g->b, g->keep, g->S, g->P);
        /* the search's set-up and first round (every sample's frontier) are the heavy part of it: here */
        g->beam_rc = moe_beam_new(g->prefix, g->grid, g->ndim, g->B, g->S, g->k, &g->beam);
        const char *const *prefixes;
        if (g->beam_rc == 0) moe_beam_want(g->beam, &prefixes);
    }
}

static op *op_new(moe_layer *m, moe_fwd *f, int backward, double timeout_s)
{
    op *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    rt_actor_init(&o->actor, m->loop, backward ? "moe_bwd" : "moe_fwd", op_handle, op_destroy);
    if (rt_timer_init(&o->timer, &o->actor, MSG_TIMER) != 0) { free(o); return NULL; }
    o->answer = on_answer;
    o->start.type = MSG_START;
    o->gj.job.msg.type = MSG_GATED;
    o->gj.job.run = gate_run;
    o->gj.job.owner = &o->actor;
    o->gj.backward = backward;
    o->gj.g = m->g;
    o->gj.B = f->B;
    o->gj.in = f->in;
    snprintf(o->gj.prefix, sizeof o->gj.prefix, "%s", m->c.uid_prefix);
    memcpy(o->gj.grid, m->c.grid_size, sizeof o->gj.grid);
    o->gj.ndim = m->c.ndim;
    o->gj.k = f->k * (1 + m->c.retry_rounds);   /* the k_best slots, then the spares */
    if (o->gj.k > MOE_MAX_BEAM) o->gj.k = MOE_MAX_BEAM;
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

/* warn_once logs a failed expert call (an error, or an answer refused) at WARN the first time the layer
 * sees that error -- its code and text with the digits left out, so that "expert.3 ... [3, 11]" and
 * "expert.4 ... [5, 11]" count as one -- and at DEBUG after that (or once MOE_WARNED_MAX distinct errors
 * were logged). */
static void warn_once(moe_layer *m, int backward, const char *uid, int err, const char *what, const char *msg)
{
    uint64_t key = 1469598103934665603ull ^ (uint64_t)(uint32_t)err;   /* FNV-1a over the text, digits out */
    for (const char *t = what; *t; t++) key = (key ^ (uint8_t)*t) * 1099511628211ull;
    for (const char *p = msg; p && *p; p++)
        if (*p < '0' || *p > '9') key = (key ^ (uint8_t)*p) * 1099511628211ull;
    int seen = 0;
    for (int i = 0; i < m->n_warned && !seen; i++) seen = m->warned[i] == key;
    if (seen || m->n_warned == MOE_WARNED_MAX) {
        LOG_DEBUG("%s %s%s: %s", backward ? "backward" : "forward", uid, what, msg);
        return;
    }
    m->warned[m->n_warned++] = key;
    LOG_WARN("%s %s%s: %s (more like this are logged at DEBUG)", backward ? "backward" : "forward", uid, what, msg);
}

/* dims_text writes "[B, d0, d1]" for n row dims. */
static void dims_text(const int64_t *dims, int n, char *buf, size_t len)
{
    size_t off = (size_t)snprintf(buf, len, "[B");
    for (int d = 0; d < n && off < len; d++)
        off += (size_t)snprintf(buf + off, len - off, ", %lld", (long long)dims[d]);
    if (off < len) snprintf(buf + off, len - off, "]");
}

/* schema_mismatch compares an expert's schema s with what the forward f sends (x [B, in_features] and
 * the extra inputs) and, with out_features set, what it expects back. Returns 0 when they agree, else 1
 * with a message naming both shapes in why. */
static int schema_mismatch(const moe_layer *m, const moe_fwd *f, const moe_exp *e, const rx_schema *s, char *why,
                           size_t len)
{
    char at[WIRE_MADDR_TEXT + 300], want[96], got[96];
    char addr[WIRE_MADDR_TEXT];
    wire_maddr_format(&e->addr, addr, sizeof addr);
    snprintf(at, sizeof at, "%s at %s", e->uid, addr);
    if (s->n_in != 1 + f->n_extra) {
        snprintf(why, len, "the experts take %d input tensor%s (%s takes %d); this layer sends %d (x%s): check the "
                 "expert class", s->n_in, s->n_in == 1 ? "" : "s", at, s->n_in, 1 + f->n_extra,
                 f->n_extra ? " and its extra inputs" : " only");
        return 1;
    }
    int64_t xin = f->in;
    if (s->in[0].dtype != KERN_F32 || s->in[0].ndim != 1 || s->in[0].dims[0] != xin) {
        dims_text(s->in[0].dims, s->in[0].ndim, want, sizeof want);
        dims_text(&xin, 1, got, sizeof got);
        snprintf(why, len, "the experts take input of shape %s %s (%s); this layer sends %s float32 (in_features %d)",
                 want, s->in[0].dtype == KERN_U8 ? "uint8" : "float32", at, got, f->in);
        return 1;
    }
    for (int i = 0; i < f->n_extra; i++) {
        const kern_io_info *io = &s->in[1 + i];
        const rx_tensor *t = &f->extra[i];
        int same = t->ndim - 1 == io->ndim;
        for (int d = 0; same && d < io->ndim; d++) same = t->shape[d + 1] == io->dims[d];
        if (same) continue;
        dims_text(io->dims, io->ndim, want, sizeof want);
        dims_text(t->shape + 1, t->ndim - 1, got, sizeof got);
        snprintf(why, len, "the experts take inputs[%d] (%s) of shape %s (%s); this layer sends %s", 1 + i, io->name,
                 want, at, got);
        return 1;
    }
    int64_t D = m->c.out_features;
    if (D > 0 && s->n_out >= 1 && (s->out[0].ndim != 1 || s->out[0].dims[0] != D)) {
        dims_text(s->out[0].dims, s->out[0].ndim, want, sizeof want);
        dims_text(&D, 1, got, sizeof got);
        snprintf(why, len, "the experts answer outputs of shape %s (%s); this layer expects %s (out_features %lld)",
                 want, at, got, (long long)D);
        return 1;
    }
    return 0;
}

/* on_info: the schema of the forward's first expert is back. A mismatch ends the forward with one clear
 * message (the experts' answers would only say "failed"); a match is remembered by the layer. */
static void on_info(void *arg, int err, const char *msg, const rx_schema *s)
{
    op *o = arg;
    o->pending--;
    o->live--;
    o->info_out = 0;
    if (o->finished || !o->f) { op_release(o); return; }
    if (err) {
        LOG_DEBUG("the schema of %s is unknown (%s): not checked", o->f->exp[0].uid, msg);
    } else {
        char why[768];
        if (schema_mismatch(o->m, o->f, &o->f->exp[0], s, why, sizeof why)) {
            op_fail(o, DMOE_ESHAPE, why);
            return;
        }
        o->m->schema_ok = 1;
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
            warn_once(o->m, o->backward, e->uid, DMOE_EPROTO, ": answer refused, the expert counts as failed", why);
            rx_tensor_free(out);
        }
    } else {
        warn_once(o->m, o->backward, e->uid, err, " failed", msg);
        if (out) rx_tensor_free(out);
    }
    if (o->backward) e->bok = ok;
    else e->ok = ok;
    if (ok) {
        o->last_answer = rt_clock_us();
        moe_retry_account(o, ei, 1);
    } else if (o->backward) {
        moe_retry_account(o, ei, 0);
    } else {
        /* a lost connection fails every request on it anyway; a stopping node may still answer the ones
         * it is computing, so they are given up only when spares can take their rows */
        wire_maddr a = e->addr;
        if (o->m->c.retry_rounds > 0
            && (err == DMOE_ECONN || (err == DMOE_ESHUTDOWN && moe_retry_spares_cover(o, &a))))
            moe_retry_peer_down(o, &a);   /* e is no longer out, so this abandons only the others (to retry them) */
        moe_retry_lost(o, ei);
    }
    settle(o);
}

/* send_range sends the requests f->exp[from..to) (in backward, only to the experts that answered the
 * forward); the caller settles. */
static void send_range(op *o, int from, int to)
{
    moe_fwd *f = o->f;
    /* until an expert's schema matched, ask the first wave's first expert for it alongside the requests */
    if (!o->backward && from == 0 && to > 0 && !o->m->schema_ok && o->m->caller.info) {
        uint64_t now = rt_clock_us();
        uint64_t ms = o->deadline > now ? (o->deadline - now + 999) / 1000 : 1;
        if (o->m->caller.info(o->m->caller.impl, f->exp[0].uid, &f->exp[0].addr, ms, on_info, o) == 0) {
            o->pending++;
            o->live++;
            o->info_out = 1;
        }
    }
    for (int ei = from; ei < to; ei++) {
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
        moe_retry_send(o, ei, o->backward ? &gout : NULL);   /* one that cannot go out stays failed */
        rx_tensor_free(&gout);
    }
    if (!o->t_sent) o->t_sent = rt_clock_us();
}

/* dispatch groups the samples whose search has ended (all of them when all is set) and not yet sent
 * into this wave's requests and sends them. Returns 0, or an error after op_fail. */
static int dispatch(op *o, int all)
{
    moe_fwd *f = o->f;
    int64_t n = 0;
    for (int64_t b = 0; b < f->B; b++)
        if (!o->sent[b] && (all || moe_beam_sample_done(o->beam, b))) {
            o->wave[n++] = b;
            o->sent[b] = 1;
        }
    if (n == 0) return 0;
    int first;
    int rc = moe_fwd_group(f, o->beam, o->wave, n, o->need, &first);
    if (rc) { op_fail(o, rc, "out of memory"); return rc; }
    for (int64_t i = 0; o->next && i < n; i++) {   /* each sample's spares follow its k_best slots */
        const moe_beam_expert *ch;
        size_t cnt = moe_beam_result(o->beam, o->wave[i], &ch);
        o->next[o->wave[i]] = cnt < (size_t)f->k ? (int)cnt : f->k;
    }
    f->st.waves++;
    send_range(o, first, f->nexp);
    return o->finished ? DMOE_ENOMEM : 0;
}

/* on_progress: a round of the search ended and the next is out; the samples it finished go now. */
static void on_progress(void *arg, moe_beam *b)
{
    op *o = arg;
    (void)b;
    if (!o->finished) dispatch(o, 0);
}

static void on_searched(void *arg, int err, const char *msg, moe_beam *b)
{
    op *o = arg;
    o->search = NULL;
    if (err) { op_fail(o, err, msg); return; }
    o->t_searched = rt_clock_us();
    o->f->st.search_ms = (double)(o->t_searched - o->t0) / 1000.0;
    o->f->st.beam_rounds = moe_beam_rounds(b);
    if (dispatch(o, 1) != 0) return;
    int rc = moe_fwd_group_end(o->f);
    if (rc) { op_fail(o, rc, "out of memory"); return; }
    o->f->st.dispatch_ms = (double)(rt_clock_us() - o->t_searched) / 1000.0;
    settle(o);
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

/* on_gated: the gating job is back. A forward starts its beam search (or, its combine back, calls
 * back); a backward is done. */
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
    if (o->gj.combine) { fwd_combined(o); return; }
    moe_layer *m = o->m;
    o->beam = o->gj.beam;   /* made on the worker; the op frees it */
    o->gj.beam = NULL;
    if (o->gj.beam_rc) { op_fail(o, o->gj.beam_rc, "cannot start the beam search"); return; }
    o->wave = malloc((size_t)o->f->B * sizeof *o->wave);
    o->sent = calloc((size_t)o->f->B, 1);
    if (m->c.retry_rounds > 0) o->next = calloc((size_t)o->f->B, sizeof *o->next);
    if (!o->wave || !o->sent || (m->c.retry_rounds > 0 && !o->next)) { op_fail(o, DMOE_ENOMEM, "out of memory"); return; }
    int rc = moe_beam_search_progress(&m->succ, o->beam, on_searched, on_progress, o, &o->search);
    if (rc) {
        char msg[160];
        snprintf(msg, sizeof msg, "cannot start the beam search: %s", dmoe_strerror(rc));
        op_fail(o, rc, msg);
        return;
    }
    arm(o);   /* the deadline may have passed while the job was out */
}

/* fwd_complete hands the combine of the answers to the pool (on_gated: fwd_combined calls back). */
static void fwd_complete(op *o)
{
    moe_fwd *f = o->f;
    int rc = moe_fwd_combine_begin(f);
    if (rc) { op_fail(o, rc, "out of memory"); return; }
    o->finished = 1;   /* answers still out are dropped unread: the record is the job's */
    for (int ei = 0; ei < f->nexp; ei++) f->exp[ei].call = NULL;   /* their contexts go with their answers */
    rt_timer_cancel(&o->timer);
    o->gj.combine = 1;
    o->gj.f = f;
    rc = submit_gating(o);
    if (rc) op_fail(o, rc, "cannot hand the combine to the worker pool");
}

/* fwd_combined: the combine is back; the layer's part of it, then the callback. */
static void fwd_combined(op *o)
{
    moe_fwd *f = o->f;
    int64_t bad;
    int rc = moe_fwd_combine_end(f, &bad);
    if (rc) { op_fail(o, rc, "out of memory"); return; }
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

/* bwd_complete checks that every sample has its answers, then hands the rest to the pool: the input
 * gradient from the answers, d loss / d scores, and the gating backward (on_gated calls back). */
static void bwd_complete(op *o)
{
    moe_fwd *f = o->f;
    moe_layer *m = o->m;
    int T = m->g.total;
    for (int64_t b = 0; b < f->B; b++) {
        if (o->got[b] < o->need[b]) {
            char msg[160];
            snprintf(msg, sizeof msg, "backward: sample %lld got %d of the %d expert answers it needs (backward_k_min)",
                     (long long)b, o->got[b], o->need[b]);
            op_fail(o, DMOE_ETIMEDOUT, msg);
            return;
        }
    }
    /* the experts' input gradients add up in rank order: the same bits however the forward's waves fell */
    o->order = malloc((size_t)(f->nexp ? f->nexp : 1) * sizeof *o->order);
    o->usnap = m->c.is_switch ? malloc((size_t)T * sizeof *o->usnap) : NULL;
    int *at = calloc((size_t)f->nuid + 1, sizeof *at);
    if (!o->order || !at || (m->c.is_switch && !o->usnap)) {
        free(at);
        op_fail(o, DMOE_ENOMEM, "out of memory");
        return;
    }
    o->finished = 1;   /* answers still out are dropped unread: the record is the job's */
    rt_timer_cancel(&o->timer);
    for (int ei = 0; ei < f->nexp; ei++) at[f->exp[ei].rank + 1]++;
    for (int u = 0; u < f->nuid; u++) at[u + 1] += at[u];
    for (int ei = 0; ei < f->nexp; ei++) o->order[at[f->exp[ei].rank]++] = ei;
    free(at);
    if (o->usnap) memcpy(o->usnap, m->util, (size_t)T * sizeof *o->usnap);
    memcpy(o->wsnap, m->params, (size_t)T * (size_t)f->in * sizeof *o->wsnap);
    gate_job *g = &o->gj;
    g->f = f;
    g->order = o->order;
    g->gy = o->gy;
    g->util = o->usnap;
    g->gSw = o->gS;
    g->gP = o->gP;
    g->bal_coef = o->bal_coef;
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
