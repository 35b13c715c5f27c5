/* loadgen.c -- the load generator's engine: one run's state machine, its figures and report, printing,
 * and the command line (see loadgen.h for the API, loadgen_impl.h for how the files divide the work).
 *
 * Design notes. loadgen_run makes a loop and lets the mode set up its users (loadgen_node.c asks the
 * node for its experts, loadgen_moe.c and loadgen_dht.c join the DHT), then runs them all through one
 * state machine here (phases, bounds, figures); only sending a request and reading its outcome differ by
 * mode, and every outcome ends in lg_user_done.
 *
 * A user always has at most one request in flight; its completion callback records the outcome and sends
 * the next one. Users start in waves of LG_RAMP per loop round so the node's accept queue never
 * overflows. The generator's own actor receives the timers: the per-second tick (CSV samples), the end of
 * the duration, the end of the wait for the last replies.
 *
 * Mix: each user adds `mix` to an accumulator per request and sends a backward when it reaches 1 (and
 * subtracts 1), so mix 0.5 alternates forward, backward, forward, ... as training does, and mix 0.25
 * sends one backward after every three forwards. A backward carries the inputs (same rows, same count,
 * same expert) of the user's previous forward, plus gradients for its outputs. A user's first request
 * is always a forward. (DHT mode: a forward is a store, a backward a get of any stored key.)
 *
 * Figures: every outcome counts in the report (sent, ok, errors by code, lost); a success after the
 * warm-up also adds its latency (by direction) and rows to the measured window, and every success adds
 * to the current second's sample, written to the CSV by the tick.
 *
 * Phases: INFO -> RUN (sending) -> DRAIN (bounds reached: waiting for the replies in flight, at most
 * the call timeout plus a second) -> DONE. A callback that arrives in DONE comes from client_free
 * failing the call: that request is lost.
 *
 * Loop thread only; nothing here is shared between runs.
 */
#include "actors/load/loadgen.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "actors/load/loadgen_impl.h"
#include "actors/moe/moe_net.h"
#include "runtime/text/rt_args.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "wire/codec/wire_json.h"

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
    if (g->csv)
        fprintf(g->csv, "%.3f,%llu,%llu,%.1f,%.1f,%.3f,%.3f,%llu\n", s.t_s, (unsigned long long)s.requests,
                (unsigned long long)s.rows, dt > 0 ? (double)s.requests / dt : 0.0, dt > 0 ? (double)s.rows / dt : 0.0,
                s.p50_ms, s.p99_ms, (unsigned long long)s.errors);
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
    rt_timer_start(&g->deadline, g->cfg->timeout_ms + LG_DRAIN_EXTRA_MS, 0);
}

/* ---- requests ---- */

static void user_send(lg_user *u)
{
    lg *g = u->g;
    const loadgen_cfg *c = g->cfg;
    if (g->phase != PH_RUN) return;
    if (c->max_requests && g->r->sent >= c->max_requests) { enter_drain(g); return; }
    u->acc += c->mix;
    int can_bwd = c->mode == LOADGEN_MOE ? u->fwd != NULL : c->mode == LOADGEN_DHT ? g->n_keys > 0 : u->has_prev;
    int bwd = 0;
    if (u->acc >= 1.0 && can_bwd) {
        bwd = 1;
        u->acc -= 1.0;
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
    int rc = c->mode == LOADGEN_MOE ? lg_moe_send(u) : c->mode == LOADGEN_DHT ? lg_dht_send(u) : lg_node_send(u);
    if (rc != 0) {   /* never left: an error, and this user stops */
        record_error(g, rc, "cannot send the request");
        maybe_finish(g);
        return;
    }
    u->busy = 1;
    g->inflight++;
    if (c->max_requests && g->r->sent >= c->max_requests) enter_drain(g);
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
    } else {
        uint64_t rows = g->cfg->mode == LOADGEN_DHT ? 1 : (uint64_t)u->rows;
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
    if (g->phase == PH_RUN) user_send(u);
    maybe_finish(g);
}

/* users_close ends what the users hold; calls still in flight end as lost. Idempotent. */
static void users_close(lg *g)
{
    const loadgen_cfg *c = g->cfg;
    g->phase = PH_DONE;
    if (c->mode == LOADGEN_MOE) lg_moe_close(g);
    else if (c->mode == LOADGEN_DHT) lg_dht_close(g);
    else lg_node_close(g);
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

/* ---- public ---- */

void loadgen_default_cfg(loadgen_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->clients = 1;
    c->duration_s = 10;
    c->batch_min = c->batch_max = 1;
    c->timeout_ms = 30000;
    c->uid_prefix = "expert.";
    c->k_best = 2;
    c->in_features = 1024;
}

void loadgen_report_free(loadgen_report *r)
{
    if (!r) return;
    free(r->samples);
    r->samples = NULL;
    r->n_samples = 0;
}

static int check_cfg(const loadgen_cfg *c, char *err, size_t errlen)
{
    if (c->clients < 1 || c->clients > LOADGEN_MAX_CLIENTS)
        snprintf(err, errlen, "clients must be in 1..%d", LOADGEN_MAX_CLIENTS);
    else if (c->max_requests == 0 && !(c->duration_s > 0))
        snprintf(err, errlen, "a run needs a bound: a request count or a duration");
    else if (!(c->duration_s >= 0 && c->duration_s < 1e6) || !(c->warmup_s >= 0 && c->warmup_s < 1e6))
        snprintf(err, errlen, "duration and warm-up must be non-negative seconds");
    else if (!(c->mix >= 0 && c->mix <= 1))
        snprintf(err, errlen, "mix is the fraction of backwards, in [0, 1]");
    else if (c->batch_min < 1 || c->batch_max < c->batch_min || c->batch_max > (1 << 24))
        snprintf(err, errlen, "batch sizes must satisfy 1 <= min <= max <= %d", 1 << 24);
    else if (c->mode == LOADGEN_NODE && !c->all && (!c->uids || !c->uids[0]))
        snprintf(err, errlen, "no experts to target: give uids or all");
    else if (c->mode != LOADGEN_NODE && (!c->initial_peers || !c->initial_peers[0]))
        snprintf(err, errlen, "--moe and --dht need initial peers (the address of any node of the DHT)");
    else if (c->mode == LOADGEN_MOE && (c->ndim < 1 || c->ndim > LOADGEN_MAX_DIMS || c->k_best < 1 || c->in_features < 1 ||
                                        !c->uid_prefix || !c->uid_prefix[0]))
        snprintf(err, errlen, "--moe needs a grid (1..%d sizes), a uid prefix, k_best >= 1 and in_features >= 1", LOADGEN_MAX_DIMS);
    else if (c->mode == LOADGEN_DHT && c->batch_max > LG_DHT_MAX_VALUE)
        snprintf(err, errlen, "--dht: values (--batch) are at most %d bytes", LG_DHT_MAX_VALUE);
    else if (c->mode < LOADGEN_NODE || c->mode > LOADGEN_DHT)
        snprintf(err, errlen, "unknown mode %d", c->mode);
    else if (c->timeout_ms == 0)
        snprintf(err, errlen, "the call timeout must be positive");
    else
        return 0;
    return DMOE_EINVAL;
}

int loadgen_run(const loadgen_cfg *c, loadgen_report *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    int rc = check_cfg(c, err, errlen);
    if (rc) return rc;
    lg *g = calloc(1, sizeof *g);
    if (!g) { snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    g->cfg = c;
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

    if (c->mode == LOADGEN_NODE) {
        rc = lg_node_start(g);   /* the info reply builds the users and starts the run */
        if (rc) goto out_loop;
    } else {
        rc = c->mode == LOADGEN_MOE ? lg_moe_setup(g) : lg_dht_setup(g);
        if (rc) goto out_loop;
        lg_start_run(g);
    }
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
    client_free(g->info_cl);
    rt_timer_cancel(&g->tick);
    rt_timer_cancel(&g->deadline);
    rt_actor_stop(&g->actor);
    rt_loop_run(g->loop);   /* reaps the stopped actors (calls, connections, ours) */
    rt_loop_free(g->loop);
out:
    if (c->mode == LOADGEN_NODE) lg_node_free(g);   /* the users' row buffers, the targets */
    free(g->users);
    free(g->keys);
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

/* ---- printing ---- */

static void print_lat_json(FILE *f, const char *key, const loadgen_lat *l)
{
    fprintf(f, "\"%s\": {\"n\": %llu, \"p50\": %.0f, \"p90\": %.0f, \"p99\": %.0f, \"max\": %.0f, \"mean\": %.1f}", key,
            (unsigned long long)l->n, l->p50, l->p90, l->p99, l->max, l->mean);
}

static void print_lat_human(FILE *f, const char *what, const loadgen_lat *l)
{
    if (!l->n) return;
    fprintf(f, "  %-9s p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f ms  (%llu replies)\n", what, l->p50 / 1e3,
            l->p90 / 1e3, l->p99 / 1e3, l->max / 1e3, l->mean / 1e3, (unsigned long long)l->n);
}

static void human_bytes(char *buf, size_t cap, uint64_t b)
{
    if (b >= (1ull << 30)) snprintf(buf, cap, "%.2f GiB", (double)b / (double)(1ull << 30));
    else if (b >= (1ull << 20)) snprintf(buf, cap, "%.1f MiB", (double)b / (double)(1ull << 20));
    else snprintf(buf, cap, "%.1f KiB", (double)b / 1024.0);
}

void loadgen_print(FILE *f, const loadgen_cfg *c, const loadgen_report *r, int json)
{
    static const char *const modes[] = {"node", "moe", "dht"};
    char peer[WIRE_MADDR_TEXT];
    if (c->mode == LOADGEN_NODE) wire_maddr_format(&c->peer, peer, sizeof peer);
    else snprintf(peer, sizeof peer, "%s", c->initial_peers && c->initial_peers[0] ? c->initial_peers[0] : "");
    int mode = c->mode >= LOADGEN_NODE && c->mode <= LOADGEN_DHT ? c->mode : LOADGEN_NODE;
    if (json) {
        fprintf(f, "{\"ok\": %s, \"mode\": \"%s\", \"peer\": ", r->errors == 0 && r->lost == 0 ? "true" : "false",
                modes[mode]);
        wire_json_string(f, peer, strlen(peer));
        fprintf(f, ", \"targets\": %d, \"first_target\": ", r->n_targets);
        wire_json_string(f, r->first_target, strlen(r->first_target));
        fprintf(f, ", \"clients\": %d, \"batch_min\": %lld, \"batch_max\": %lld, \"mix\": %g, \"row_elems\": %lld",
                c->clients, (long long)c->batch_min, (long long)c->batch_max, c->mix, (long long)r->row_elems);
        fprintf(f, ", \"run_s\": %.3f, \"sent\": %llu, \"replies\": %llu, \"errors\": %llu, \"lost\": %llu, \"errors_by_kind\": {",
                r->run_s, (unsigned long long)r->sent, (unsigned long long)r->ok, (unsigned long long)r->errors,
                (unsigned long long)r->lost);
        int first = 1;
        for (int k = 0; k < LOADGEN_N_CODES; k++) {
            if (!r->err_by_code[k]) continue;
            const char *name = k ? dmoe_strerror(-k) : "other";
            fprintf(f, "%s", first ? "" : ", ");
            wire_json_string(f, name, strlen(name));
            fprintf(f, ": %llu", (unsigned long long)r->err_by_code[k]);
            first = 0;
        }
        fprintf(f, "}, \"first_error\": ");
        wire_json_string(f, r->first_error, strlen(r->first_error));
        fprintf(f, ", \"bytes_sent\": %llu, \"bytes_received\": %llu, \"window_s\": %.3f, \"requests\": %llu, \"rows\": %llu",
                (unsigned long long)r->bytes_sent, (unsigned long long)r->bytes_received, r->window_s,
                (unsigned long long)r->requests, (unsigned long long)r->rows);
        fprintf(f, ", \"forward_requests\": %llu, \"backward_requests\": %llu, \"requests_per_s\": %.2f, \"rows_per_s\": %.2f, ",
                (unsigned long long)r->fwd_requests, (unsigned long long)r->bwd_requests, r->req_per_s, r->rows_per_s);
        print_lat_json(f, "latency_us", &r->lat);
        fprintf(f, ", ");
        print_lat_json(f, "forward_latency_us", &r->lat_fwd);
        fprintf(f, ", ");
        print_lat_json(f, "backward_latency_us", &r->lat_bwd);
        fprintf(f, ", \"samples\": %d}\n", r->n_samples);
        return;
    }
    char batch[64], sent[32], recv[32];
    if (c->batch_min == c->batch_max) snprintf(batch, sizeof batch, "%lld", (long long)c->batch_min);
    else snprintf(batch, sizeof batch, "%lld-%lld", (long long)c->batch_min, (long long)c->batch_max);
    human_bytes(sent, sizeof sent, r->bytes_sent);
    human_bytes(recv, sizeof recv, r->bytes_received);
    const char *fw = mode == LOADGEN_DHT ? "store" : "forward", *bw = mode == LOADGEN_DHT ? "get" : "backward";
    if (mode == LOADGEN_MOE) {
        char grid[96] = "";
        for (int d = 0; d < c->ndim && d < LOADGEN_MAX_DIMS; d++)
            snprintf(grid + strlen(grid), sizeof grid - strlen(grid), "%s%d", d ? "x" : "", c->grid_size[d]);
        fprintf(f, "load on a MoE layer via %s: %s grid %s, k_best %d, up to %d experts per forward, %d clients, batch %s x %lld, "
                   "%.0f%% backward, %.1f s\n", peer, c->uid_prefix, grid, c->k_best, r->n_targets, c->clients, batch,
                (long long)r->row_elems, c->mix * 100.0, r->run_s);
    } else if (mode == LOADGEN_DHT) {
        fprintf(f, "load on the DHT via %s: %d client-mode peers, values of %s bytes, %.0f%% gets, %.1f s\n", peer,
                c->clients, batch, c->mix * 100.0, r->run_s);
    } else {
        fprintf(f, "load on %s: %d expert%s (%s%s), %d clients, batch %s x %lld, %.0f%% backward, %.1f s\n", peer,
                r->n_targets, r->n_targets == 1 ? "" : "s", r->first_target, r->n_targets > 1 ? ", ..." : "", c->clients,
                batch, (long long)r->row_elems, c->mix * 100.0, r->run_s);
    }
    fprintf(f, "  requests  %llu sent, %llu replies, %llu errors, %llu lost\n", (unsigned long long)r->sent,
            (unsigned long long)r->ok, (unsigned long long)r->errors, (unsigned long long)r->lost);
    fprintf(f, "  window    %.2f s after %.1f s warm-up: %llu requests (%llu %s, %llu %s), %llu rows\n", r->window_s,
            c->warmup_s, (unsigned long long)r->requests, (unsigned long long)r->fwd_requests, fw,
            (unsigned long long)r->bwd_requests, bw, (unsigned long long)r->rows);
    fprintf(f, "  throughput %.1f requests/s, %.1f rows/s\n", r->req_per_s, r->rows_per_s);
    print_lat_human(f, "latency", &r->lat);
    if (r->lat_fwd.n && r->lat_bwd.n) {
        print_lat_human(f, fw, &r->lat_fwd);
        print_lat_human(f, bw, &r->lat_bwd);
    }
    if (mode == LOADGEN_NODE) fprintf(f, "  bytes     %s sent, %s received\n", sent, recv);
    for (int k = 0; k < LOADGEN_N_CODES; k++)
        if (r->err_by_code[k])
            fprintf(f, "  error     %s: %llu\n", k ? dmoe_strerror(-k) : "other", (unsigned long long)r->err_by_code[k]);
    if (r->first_error[0]) fprintf(f, "  first error: %s\n", r->first_error);
    if (r->errors == 0 && r->lost == 0) fprintf(f, "  result    OK: zero errors, zero lost replies\n");
    else fprintf(f, "  result    FAILED: %llu errors, %llu lost replies\n", (unsigned long long)r->errors, (unsigned long long)r->lost);
}

/* ---- the command line ---- */

static int parse_batch(const char *s, int64_t *lo, int64_t *hi)
{
    char *end;
    long long a = strtoll(s, &end, 10);
    long long b = a;
    if (end == s) return DMOE_EINVAL;
    if (*end == '-') {
        const char *t = end + 1;
        b = strtoll(t, &end, 10);
        if (end == t) return DMOE_EINVAL;
    }
    if (*end || a < 1 || b < a) return DMOE_EINVAL;
    *lo = a;
    *hi = b;
    return 0;
}

static int is_number_word(const char *w) { return w[0] >= '0' && w[0] <= '9'; }

int loadgen_main(int argc, char **argv)
{
    loadgen_cfg c;
    loadgen_default_cfg(&c);
    const char *peer = NULL, *log_level = NULL, *batch = "1", *csv = NULL;
    char **uids = NULL, **initial_peers = NULL, **grid_words = NULL;
    int json = 0, moe = 0, dht_mode = 0;
    double timeout_s = (double)c.timeout_ms / 1000.0;
    uint64_t requests = 0;
    const rt_arg flags[] = {
        {"peer", ARG_STR, &peer, "the node to load, e.g. /ip4/127.0.0.1/tcp/PORT", "Target"},
        {"uids", ARG_LIST, &uids, "experts to call (a random one per forward); default: every expert", "Target"},
        {"all", ARG_FLAG, &c.all, "call every expert of the node (read from info)", "Target"},
        {"moe", ARG_FLAG, &moe, "each client runs a MoE layer over the live experts of the DHT (--initial_peers)", "Target"},
        {"dht", ARG_FLAG, &dht_mode, "each client is a client-mode DHT peer storing and getting random keys", "Target"},
        {"initial_peers", ARG_LIST, &initial_peers, "DHT peers to join (--moe, --dht)", "Target", rt_args_is_maddr},
        {"uid_prefix", ARG_STR, &c.uid_prefix, "--moe: the experts' uid prefix", "MoE"},
        {"grid_size", ARG_LIST, &grid_words, "--moe: grid dimensions, e.g. 250 or 32 32", "MoE", is_number_word},
        {"k_best", ARG_INT, &c.k_best, "--moe: experts per sample", "MoE"},
        {"in_features", ARG_INT, &c.in_features, "--moe: the experts' input width (their hidden_dim)", "MoE"},
        {"clients", ARG_INT, &c.clients, "concurrent connections, one request in flight each", "Load"},
        {"requests", ARG_U64, &requests, "stop after this many requests (0: no count bound)", "Load"},
        {"duration", ARG_F64, &c.duration_s, "stop after this many seconds (0: no time bound)", "Load"},
        {"warmup", ARG_F64, &c.warmup_s, "seconds of replies left out of the throughput and latency figures", "Load"},
        {"mix", ARG_F64, &c.mix, "fraction of backwards (0.5: forward, backward, forward, ... as training); --dht: of gets", "Load"},
        {"batch", ARG_STR, &batch, "rows per forward: fixed (32) or uniform in a range (1-64); --dht: value bytes", "Load"},
        {"seed", ARG_U64, &c.seed, "seed for inputs, batch sizes and targets", "Load"},
        {"timeout", ARG_F64, &timeout_s, "seconds to wait for each reply", "Load"},
        {"csv", ARG_STR, &csv, "write per-second samples (time, requests, rows, p50, p99, errors) here", "Output"},
        {"json", ARG_FLAG, &json, "print one JSON object instead of a summary", "Output"},
        {"log_level", ARG_STR, &log_level, "DEBUG, INFO, WARN or ERROR", "Output"},
    };
    const int nflags = (int)(sizeof flags / sizeof flags[0]);
    const char *synopsis = "dmoe-call --peer ADDR load [--uids UID... | --all] [--clients N] [--requests N] [--duration S]\n"
                           "       [--mix F] [--batch B | --batch LO-HI] [--csv FILE] [--json]\n"
                           "       dmoe-call --initial_peers MADDR... load --moe --grid_size N... [--uid_prefix P] [--k_best K]\n"
                           "       [--in_features H] [load flags]\n"
                           "       dmoe-call --initial_peers MADDR... load --dht [load flags]";
    char err[512];
    char *pos[2];
    int npos;
    int rc = rt_args_parse(argc, argv, flags, nflags, pos, 2, &npos, err, sizeof err);
    if (rc == 1) { rt_args_usage(stdout, synopsis, flags, nflags); rt_args_free(flags, nflags); return 0; }
    int status = 2;
    if (rc != 0) { fprintf(stderr, "dmoe-call load: %s\n", err); goto out; }
    if (npos > 1 || (npos == 1 && strcmp(pos[0], "load") != 0)) { fprintf(stderr, "usage: %s\n", synopsis); goto out; }
    if (log_level && rt_log_parse_level(log_level) >= 0) rt_log_set_level(rt_log_parse_level(log_level));
    else if (!getenv("DMOE_LOG")) rt_log_set_level(RT_LOG_WARN);
    if (moe && dht_mode) { fprintf(stderr, "dmoe-call load: give --moe or --dht, not both\n"); goto out; }
    c.mode = moe ? LOADGEN_MOE : dht_mode ? LOADGEN_DHT : LOADGEN_NODE;
    if (c.mode == LOADGEN_NODE) {
        if (!peer) { fprintf(stderr, "dmoe-call load: --peer ADDR is required (or --moe / --dht with --initial_peers)\n"); goto out; }
        if (wire_maddr_parse(peer, &c.peer, err, sizeof err) != 0) { fprintf(stderr, "dmoe-call load: --peer %s: %s\n", peer, err); goto out; }
    } else {
        if (peer || uids || c.all) { fprintf(stderr, "dmoe-call load: --moe and --dht take --initial_peers, not --peer, --uids or --all\n"); goto out; }
        if (!initial_peers) { fprintf(stderr, "dmoe-call load: --moe and --dht need --initial_peers MADDR...\n"); goto out; }
        c.initial_peers = (const char *const *)initial_peers;
    }
    if (c.mode == LOADGEN_MOE) {
        int grid[MOE_MAX_DIMS], ndim = 0;
        if (moe_parse_grid(grid_words, grid, &ndim, err, sizeof err) != 0) { fprintf(stderr, "dmoe-call load: %s\n", err); goto out; }
        if (ndim > LOADGEN_MAX_DIMS) { fprintf(stderr, "dmoe-call load: at most %d grid dimensions\n", LOADGEN_MAX_DIMS); goto out; }
        for (int d = 0; d < ndim; d++) c.grid_size[d] = grid[d];
        c.ndim = ndim;
    }
    if (parse_batch(batch, &c.batch_min, &c.batch_max) != 0) {
        fprintf(stderr, "dmoe-call load: --batch %s: expected a row count (32) or a range (1-64)\n", batch);
        goto out;
    }
    if (!(timeout_s > 0 && timeout_s < 1e6)) { fprintf(stderr, "dmoe-call load: --timeout must be positive\n"); goto out; }
    c.timeout_ms = (uint64_t)(timeout_s * 1000.0);
    c.max_requests = requests;
    c.csv_path = csv;
    c.uids = (const char *const *)uids;
    if (!uids && c.mode == LOADGEN_NODE) c.all = 1;
    if (uids && c.all) { fprintf(stderr, "dmoe-call load: give --uids or --all, not both\n"); goto out; }
    rc = check_cfg(&c, err, sizeof err);
    if (rc) { fprintf(stderr, "dmoe-call load: %s\n", err); goto out; }

    /* one socket per client: make sure the descriptor limit allows it */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)c.clients + 64 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = (rlim_t)c.clients + 64 < rl.rlim_max ? (rlim_t)c.clients + 64 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    loadgen_report r;
    rc = loadgen_run(&c, &r, err, sizeof err);
    if (rc) {
        if (json) {
            printf("{\"ok\": false, \"code\": %d, \"error\": ", -rc);
            wire_json_string(stdout, err, strlen(err));
            printf("}\n");
        } else {
            fprintf(stderr, "dmoe-call load: %s: %s\n", dmoe_strerror(rc), err);
        }
        status = rc == DMOE_EINVAL ? 2 : 1;
        goto out;
    }
    loadgen_print(stdout, &c, &r, json);
    fflush(stdout);
    status = r.errors == 0 && r.lost == 0 ? 0 : 1;
    loadgen_report_free(&r);
out:
    rt_args_free(flags, nflags);
    return status;
}
