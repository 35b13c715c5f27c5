/* loadgen_engine.c -- the load generator's engine: one run's state machine, its figures and report
 * (see loadgen.h for the API, loadgen_engine.h for how the files divide the work).
 *
 * Design notes. lg_engine_run makes a loop and lets the mode (its lg_mode_ops) set up its users
 * (loadgen_node.c asks the node for its experts, loadgen_moe.c and loadgen_dht.c join the DHT), then runs
 * them all through one state machine here (phases, bounds, figures); only sending a request and reading
 * its outcome differ by mode, and every outcome ends in lg_user_done. The engine knows no mode by name.
 *
 * A user always has at most one request in flight; its completion callback records the outcome and sends
 * the next one. Users start in waves of LG_RAMP per loop round so the node's accept queue never
 * overflows. The generator's own actor receives the timers: the per-second tick (CSV samples), the end of
 * the duration, the end of the wait for the last replies.
 *
 * Mix, node and MoE modes (ops->paired): `mix` is the fraction of requests that are backwards, and a
 * backward is always the backward of the same user's forward just before it (same rows, same expert,
 * plus gradients for its outputs): a training pair. So at most half the requests can be backwards (mix
 * <= 0.5, loadgen_check_cfg): each forward adds mix / (1 - mix) to the user's accumulator, and when it
 * reaches 1 (minus 1) that forward opens a pair -- mix 0.5 pairs every forward (forward, backward,
 * forward, ... as training), mix 0.25 every third (forward, forward, forward, backward), 0 none. A pair
 * is never cut: a forward that opens one is sent only when max_requests leaves room for its backward
 * too (the backward is reserved), and when the duration ends a user still sends the backward it owes
 * (then the wait for the last replies is twice the call timeout). A forward that fails owes nothing. A
 * user's first request is always a forward. DHT mode (not paired): a forward is a store, a backward a
 * get of any key stored so far; each request adds mix to the accumulator and is a get when it reaches
 * 1, so mix 1 would be gets only -- refused, a get needs a store first (mix < 1).
 *
 * Figures: every outcome counts in the report (sent, ok, errors by code, lost); a success after the
 * warm-up also adds its latency (by direction) and rows to the measured window, and every success adds
 * to the current second's sample, written to the CSV by the tick. With cfg->progress the tick also
 * rewrites one line there ("\r": rows/s, requests/s, p50, errors so far), erased at the end.
 *
 * Phases: INFO -> RUN (sending) -> DRAIN (bounds reached: waiting for the replies in flight, at most
 * the call timeout plus a second) -> DONE. A callback that arrives in DONE comes from client_free
 * failing the call: that request is lost.
 *
 * Loop thread only; nothing here is shared between runs.
 */
#include "actors/load/loadgen_engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"

/* ---- small helpers ---- */

static int vec_push(lg_vec *v, uint32_t x)
{
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 1024;
        uint32_t *nv = realloc(v->v, nc * sizeof *nv);
        if (!nv) return DMOE_ENOMEM;
        v->v = nv;
        v->cap = nc;
    }
    v->v[v->n++] = x;
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted vector. */
static double pct(const uint32_t *v, size_t n, double p)
{
    if (n == 0) return 0;
    size_t k = (size_t)ceil(p * (double)n);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return v[k - 1];
}

static void lat_summary(lg_vec *v, loadgen_lat *out)
{
    memset(out, 0, sizeof *out);
    if (v->n == 0) return;
    qsort(v->v, v->n, sizeof *v->v, cmp_u32);
    double sum = 0;
    for (size_t i = 0; i < v->n; i++) sum += v->v[i];
    out->n = v->n;
    out->p50 = pct(v->v, v->n, 0.50);
    out->p90 = pct(v->v, v->n, 0.90);
    out->p99 = pct(v->v, v->n, 0.99);
    out->max = v->v[v->n - 1];
    out->mean = sum / (double)v->n;
}

static int code_index(int err)
{
    int k = err < 0 ? -err : err;
    return k > 0 && k < LOADGEN_N_CODES ? k : 0;
}

static void record_error(lg *g, int err, const char *msg)
{
    loadgen_report *r = g->r;
    r->errors++;
    r->err_by_code[code_index(err)]++;
    g->tick_err++;
    if (!r->first_error[0])
        snprintf(r->first_error, sizeof r->first_error, "%s: %s", code_index(err) ? dmoe_strerror(err) : "other",
                 msg ? msg : "");
}

void lg_set_err(lg *g, int rc, const char *fmt, const char *a, const char *b)
{
    if (g->rc == 0) {
        g->rc = rc;
        snprintf(g->err, g->errlen, fmt, a, b);
    }
}

/* ---- the end ---- */

static void write_sample(lg *g, uint64_t now, int final)
{
    loadgen_report *r = g->r;
    /* the last interval is kept when it is long enough for its rates to mean something */
    if (final && now < g->t_tick_us + 250000) return;
    struct loadgen_sample s = {
        .t_s = (double)(now - g->t0_us) / 1e6, .requests = g->tick_ok, .rows = g->tick_rows, .errors = g->tick_err,
    };
    if (g->tick_lat.n) {
        qsort(g->tick_lat.v, g->tick_lat.n, sizeof *g->tick_lat.v, cmp_u32);
        s.p50_ms = pct(g->tick_lat.v, g->tick_lat.n, 0.50) / 1000.0;
        s.p99_ms = pct(g->tick_lat.v, g->tick_lat.n, 0.99) / 1000.0;
    }
    double dt = (double)(now - g->t_tick_us) / 1e6;
    if (g->cfg->progress && !final) {
        char p50[32] = "-";
        if (g->tick_lat.n) snprintf(p50, sizeof p50, "%.2f ms", s.p50_ms);
        fprintf(g->cfg->progress, "\r%6.0f s  %10.1f rows/s  %8.1f requests/s  p50 %-11s errors %llu\033[K", s.t_s,
                dt > 0 ? (double)s.rows / dt : 0.0, dt > 0 ? (double)s.requests / dt : 0.0, p50,
                (unsigned long long)r->errors);
        fflush(g->cfg->progress);
    }
    if (g->csv)
        fprintf(g->csv, "%.3f,%llu,%llu,%.1f,%.1f,%.3f,%.3f,%llu\n", s.t_s, (unsigned long long)s.requests,
                (unsigned long long)s.rows, dt > 0 ? (double)s.requests / dt : 0.0, dt > 0 ? (double)s.rows / dt : 0.0,
                g->tick_lat.n ? s.p50_ms : NAN, g->tick_lat.n ? s.p99_ms : NAN, (unsigned long long)s.errors);
    if (r->n_samples % 64 == 0) {
        struct loadgen_sample *ns = realloc(r->samples, (size_t)(r->n_samples + 64) * sizeof *ns);
        if (ns) r->samples = ns;
        else { lg_set_err(g, DMOE_ENOMEM, "%s%s", "out of memory", ""); return; }
    }
    r->samples[r->n_samples++] = s;
    g->tick_ok = g->tick_rows = g->tick_err = 0;
    g->tick_lat.n = 0;
    g->t_tick_us = now;
}

void lg_finish(lg *g)
{
    if (g->phase == PH_DONE) return;
    uint64_t now = rt_clock_us();
    if (g->phase != PH_INFO) {
        write_sample(g, now, 1);
        g->r->run_s = (double)(now - g->t0_us) / 1e6;
    }
    if (g->cfg->progress) {   /* the summary takes the progress line's place */
        fprintf(g->cfg->progress, "\r\033[K");
        fflush(g->cfg->progress);
    }
    g->phase = PH_DONE;
    rt_timer_cancel(&g->tick);
    rt_timer_cancel(&g->deadline);
    rt_loop_break(g->loop);
}

static void maybe_finish(lg *g)
{
    if (g->inflight > 0 || g->phase == PH_DONE || g->phase == PH_INFO) return;
    if (g->phase == PH_DRAIN) { lg_finish(g); return; }
    /* running, but every user has given up (requests refused before sending) */
    if (g->n_started == g->n_users) {
        int idle = 1;
        for (int i = 0; i < g->n_users && idle; i++) idle = !g->users[i].busy;
        if (idle) lg_finish(g);
    }
}

static void enter_drain(lg *g)
{
    if (g->phase != PH_RUN) return;
    g->phase = PH_DRAIN;
    if (g->inflight == 0) { lg_finish(g); return; }
    /* a forward still in flight may owe its backward: two calls, one after the other */
    uint64_t calls = g->ops->paired && g->cfg->mix > 0 ? 2 : 1;
    rt_timer_start(&g->deadline, calls * g->cfg->timeout_ms + LG_DRAIN_EXTRA_MS, 0);
}

/* ---- requests ---- */

/* Whether u's next request is a backward, and for a forward whether the bounds leave room for it (and
 * for the backward it owes when it opens a pair; then that backward is reserved). Returns 1 backward, 0
 * forward, -1 nothing to send (the bounds are reached). */
static int next_dir(lg_user *u)
{
    lg *g = u->g;
    const loadgen_cfg *c = g->cfg;
    if (g->ops->paired && u->owed) {   /* the second half of a pair: always sent, it was reserved */
        u->owed = 0;
        g->reserved--;
        if (g->ops->can_backward(u)) return 1;
    }
    if (g->phase != PH_RUN) return -1;
    if (!g->ops->paired) {
        if (c->max_requests && g->r->sent >= c->max_requests) return -1;
        u->acc += c->mix;
        if (u->acc >= 1.0 && g->ops->can_backward(u)) { u->acc -= 1.0; return 1; }
        return 0;
    }
    double acc = u->acc + (c->mix > 0 ? c->mix / (1.0 - c->mix) : 0.0);
    int opens = acc >= 1.0 - 1e-9;
    if (c->max_requests && g->r->sent + g->reserved + 1 + (uint64_t)opens > c->max_requests) return -1;
    u->acc = opens ? acc - 1.0 : acc;
    if (opens) {
        u->owed = 1;
        g->reserved++;
    }
    return 0;
}

static void user_send(lg_user *u)
{
    lg *g = u->g;
    const loadgen_cfg *c = g->cfg;
    if (g->phase != PH_RUN && g->phase != PH_DRAIN) return;
    int bwd = next_dir(u);
    if (bwd < 0) {
        if (g->phase == PH_RUN) enter_drain(g);
        else maybe_finish(g);
        return;
    }
    if (bwd) {
        u->target = u->prev_target;
        u->rows = u->prev_rows;
    } else {
        u->target = g->n_targets > 1 ? (int)kern_rng_below(&u->rng, (uint64_t)g->n_targets) : 0;
        u->rows = c->batch_min +
                  (c->batch_max > c->batch_min ? (int64_t)kern_rng_below(&u->rng, (uint64_t)(c->batch_max - c->batch_min + 1)) : 0);
        u->prev_target = u->target;
        u->prev_rows = u->rows;
        u->has_prev = 1;
    }
    u->dir = bwd;
    g->r->sent++;
    u->t_send_us = rt_clock_us();
    int rc = g->ops->send(u);
    if (rc != 0) {   /* never left: an error, and this user stops (owing nothing) */
        record_error(g, rc, "cannot send the request");
        if (u->owed) { u->owed = 0; g->reserved--; }
        maybe_finish(g);
        return;
    }
    u->busy = 1;
    g->inflight++;
    if (c->max_requests && g->r->sent + g->reserved >= c->max_requests) enter_drain(g);
}

/* lg_user_done records the outcome of u's request (err 0: success) and sends its next one. */
void lg_user_done(lg_user *u, int err, const char *msg)
{
    lg *g = u->g;
    loadgen_report *r = g->r;
    u->busy = 0;
    g->inflight--;
    if (g->phase == PH_DONE) {   /* failed at the end (client_free, a stopped DHT node, a call deadline): lost */
        r->lost++;
        if (g->wait_lost && g->inflight == 0) rt_loop_break(g->loop);
        return;
    }
    uint64_t now = rt_clock_us();
    if (err) {
        record_error(g, err, msg);
        if (u->owed && u->dir == 0) { u->owed = 0; g->reserved--; }   /* a failed forward owes no backward */
    } else {
        uint64_t rows = g->ops->one_row_per_request ? 1 : (uint64_t)u->rows;
        r->ok++;
        uint64_t us = now - u->t_send_us;
        uint32_t us32 = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
        g->tick_ok++;
        g->tick_rows += rows;
        if (vec_push(&g->tick_lat, us32) != 0) lg_set_err(g, DMOE_ENOMEM, "%s%s", "out of memory", "");
        if (now >= g->window_us) {
            if (vec_push(&g->lat[u->dir], us32) != 0) lg_set_err(g, DMOE_ENOMEM, "%s%s", "out of memory", "");
            r->requests++;
            r->rows += rows;
            if (u->dir) { r->bwd_requests++; r->bwd_rows += rows; }
            else { r->fwd_requests++; r->fwd_rows += rows; }
            g->t_last_us = now;
        }
    }
    if (g->rc) { lg_finish(g); return; }
    if (g->phase == PH_RUN || (g->phase == PH_DRAIN && u->owed)) user_send(u);
    maybe_finish(g);
}

/* users_close ends what the users hold; calls still in flight end as lost. Idempotent. */
static void users_close(lg *g)
{
    g->phase = PH_DONE;
    g->ops->close(g);
}

/* ---- start-up ---- */

static void start_users(lg *g)
{
    int end = g->n_started + LG_RAMP;
    if (end > g->n_users) end = g->n_users;
    while (g->n_started < end && g->phase == PH_RUN) user_send(&g->users[g->n_started++]);
    if (g->n_started < g->n_users && g->phase == PH_RUN) rt_signal_raise(&g->start_sig);
    else g->n_started = g->n_users;   /* the rest never start: the bounds were reached */
    maybe_finish(g);
}

/* lg_start_run starts the clock, the timers and the first wave of users. */
void lg_start_run(lg *g)
{
    g->phase = PH_RUN;
    g->t0_us = g->t_tick_us = rt_clock_us();
    g->window_us = g->t0_us + (uint64_t)(g->cfg->warmup_s * 1e6);
    g->t_last_us = g->window_us;
    rt_timer_start(&g->tick, LG_TICK_MS, 1);
    if (g->cfg->duration_s > 0) rt_timer_start(&g->deadline, (uint64_t)(g->cfg->duration_s * 1000.0 + 0.5), 0);
    start_users(g);
}

static void lg_handle(rt_actor *self, rt_msg *m)
{
    lg *g = (lg *)self;
    int type = m->type;
    rt_msg_drop(m);
    if (g->phase == PH_DONE) return;
    if (type == LG_MSG_TICK) write_sample(g, rt_clock_us(), 0);
    else if (type == LG_MSG_START) start_users(g);
    else if (type == LG_MSG_DEADLINE) {
        if (g->phase == PH_RUN) enter_drain(g);
        else lg_finish(g);   /* the wait for the last replies is over */
    }
    if (g->rc) lg_finish(g);
}

static void lg_destroy(rt_actor *self)
{
    lg *g = (lg *)self;
    rt_timer_deinit(&g->tick);
    rt_timer_deinit(&g->deadline);
}

int lg_engine_run(const loadgen_cfg *c, const lg_mode_ops *ops, loadgen_report *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    int rc = 0;
    lg *g = calloc(1, sizeof *g);
    if (!g) { snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    g->cfg = c;
    g->ops = ops;
    g->r = r;
    g->err = err;
    g->errlen = errlen;
    g->phase = PH_INFO;
    if (c->csv_path) {
        g->csv = fopen(c->csv_path, "w");
        if (!g->csv) {
            snprintf(err, errlen, "cannot write %s", c->csv_path);
            free(g);
            return DMOE_EIO;
        }
        fprintf(g->csv, "time_s,requests,rows,requests_per_s,rows_per_s,p50_ms,p99_ms,errors\n");
    }
    g->loop = rt_loop_new();
    if (!g->loop) { snprintf(err, errlen, "cannot create the event loop"); rc = DMOE_ENOMEM; goto out; }
    rt_actor_init(&g->actor, g->loop, "loadgen", lg_handle, lg_destroy);
    if (rt_timer_init(&g->tick, &g->actor, LG_MSG_TICK) != 0 || rt_timer_init(&g->deadline, &g->actor, LG_MSG_DEADLINE) != 0) {
        snprintf(err, errlen, "out of memory");
        rc = DMOE_ENOMEM;
        goto out_loop;
    }
    rt_signal_init(&g->start_sig, &g->actor, LG_MSG_START);

    rc = ops->start(g);   /* now, or from a callback (node: the info reply), it calls lg_start_run */
    if (rc) goto out_loop;
    if (g->phase != PH_DONE) rt_loop_run(g->loop);
    rc = g->rc;

    /* calls still in flight end as lost (phase DONE): failed by client_free or a stopped DHT node, or
     * at their own deadline (MoE) */
    users_close(g);
    r->window_s = g->t_last_us > g->window_us ? (double)(g->t_last_us - g->window_us) / 1e6 : 0;
    if (r->window_s > 0) {
        r->req_per_s = (double)r->requests / r->window_s;
        r->rows_per_s = (double)r->rows / r->window_s;
    }
    lat_summary(&g->lat[0], &r->lat_fwd);
    lat_summary(&g->lat[1], &r->lat_bwd);
    lg_vec all = {0};
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < g->lat[d].n; i++)
            if (vec_push(&all, g->lat[d].v[i]) != 0 && rc == 0) { snprintf(err, errlen, "out of memory"); rc = DMOE_ENOMEM; }
    lat_summary(&all, &r->lat);
    free(all.v);
out_loop:
    users_close(g);
    rt_timer_cancel(&g->tick);
    rt_timer_cancel(&g->deadline);
    rt_actor_stop(&g->actor);
    rt_loop_run(g->loop);   /* reaps the stopped actors (calls, connections, ours) */
    rt_loop_free(g->loop);
out:
    if (ops->free) ops->free(g);   /* what the mode made for the run (node: row buffers, targets) */
    free(g->users);
    free(g->lat[0].v);
    free(g->lat[1].v);
    free(g->tick_lat.v);
    if (g->csv && fclose(g->csv) != 0 && rc == 0) {
        snprintf(err, errlen, "cannot write %s", c->csv_path);
        rc = DMOE_EIO;
    }
    free(g);
    if (rc) loadgen_report_free(r);
    return rc;
}
