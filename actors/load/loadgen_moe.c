/* loadgen_moe.c -- the load generator's MoE mode: each user runs a Mixture-of-Experts layer over the live
 * experts of a DHT (`dmoe-call --initial_peers MADDR load --moe`).
 *
 * Set-up (moe_start, blocking, before the run): each user opens its own moe_net (a client and a
 * client-mode DHT node, joined one user after the other) and its own layer (moe.h; gating seeded per
 * user, so users route differently), and draws batch_max random input rows. The layer waits for every
 * chosen expert (timeout_after_k_min -1) up to the call timeout, without retries (retry_rounds 0), so a
 * masked expert is a failure to report, not a straggler to forgive.
 *
 * Requests. moe_send runs one layer forward of the user's first u->rows rows, or -- when the engine
 * chose a backward -- the backward of the forward the user kept. on_moe_fwd checks the output's row
 * count and that every chosen expert answered (else the forward counts as an error, LG_EPARTIAL, shown
 * as "other"), notes the most experts one forward chose (the report's n_targets) and, in the window,
 * where the forward's time went (beam search, dispatch, waiting: moe_fwd_stats), makes the output
 * gradients at the first need, and keeps a successful forward for the backward the mix may send next:
 * a user's backward always belongs to its previous, successful forward. Both callbacks end in
 * lg_user_done.
 *
 * At the end moe_close lets every call in flight end by its own deadline (a layer may not be freed
 * under a running call), then frees the layers, the kept forwards, the networks and the rows. The
 * engine calls all of these through lg_moe_ops. Loop thread only.
 */
#include <stdlib.h>

#include "actors/load/loadgen_engine.h"
#include "runtime/rt_err.h"

#define LG_EPARTIAL (-100)     /* not a DMOE code: a MoE forward some chosen expert did not answer ("other") */

_Static_assert(LOADGEN_MAX_DIMS <= MOE_MAX_DIMS, "the MoE grid of a run must fit the layer's");

static void on_moe_bwd(void *arg, int err, const char *msg, const float *gx)
{
    lg_user *u = arg;
    moe_fwd_free(u->fwd);   /* the backward has let go of it before calling back */
    u->fwd = NULL;
    lg_user_done(u, err, msg);
}

static void on_moe_fwd(void *arg, int err, const char *msg, moe_fwd *f)
{
    lg_user *u = arg;
    lg *g = u->g;
    char e[256];
    if (err == 0 && g->phase != PH_DONE) {
        const moe_fwd_stats *st = moe_fwd_stats_of(f);
        int64_t B;
        int D;
        moe_fwd_output(f, &B, &D);
        if (st->experts_chosen > g->r->n_targets) g->r->n_targets = st->experts_chosen;
        if (B != u->rows) {
            snprintf(e, sizeof e, "the layer's output has %lld rows, sent %lld", (long long)B, (long long)u->rows);
            err = DMOE_EPROTO;
        } else if (st->experts_answered < st->experts_chosen || st->zero_rows) {
            /* the layer masked them out and went on; a load test reports it */
            snprintf(e, sizeof e, "partial forward: %d of %d chosen experts answered", st->experts_answered,
                     st->experts_chosen);
            err = LG_EPARTIAL;
        } else if (rt_clock_us() >= g->window_us) {   /* the breakdown, as the window measures it */
            g->r->moe_fwds++;
            g->r->moe_retried += (uint64_t)st->experts_retried;
            g->r->moe_search_ms += st->search_ms;
            g->r->moe_dispatch_ms += st->dispatch_ms;
            g->r->moe_wait_ms += st->wait_ms;
            g->r->moe_total_ms += st->total_ms;
        }
        if (err == 0 && g->cfg->mix > 0 && (!u->gy || u->gy_D != D)) {
            free(u->gy);
            u->gy_D = D;
            u->gy = malloc((size_t)g->cfg->batch_max * (size_t)D * sizeof *u->gy);
            if (!u->gy) { snprintf(e, sizeof e, "out of memory"); err = DMOE_ENOMEM; }
            for (size_t i = 0; u->gy && i < (size_t)g->cfg->batch_max * (size_t)D; i++) u->gy[i] = kern_rng_normal(&u->rng) * 0.01f;
        }
        if (err) msg = e;
    }
    if (err == 0 && g->cfg->mix > 0 && g->phase != PH_DONE) {
        moe_fwd_free(u->fwd);
        u->fwd = f;
    } else {
        moe_fwd_free(f);
    }
    lg_user_done(u, err, msg);
}

static int moe_send(lg_user *u)
{
    if (u->dir) return moe_backward(u->moe, u->fwd, u->gy, 0.0f, on_moe_bwd, u);
    return moe_forward(u->moe, u->x, u->rows, on_moe_fwd, u);
}

/* Each user joins the DHT (blocking, one after the other) and makes its layer and input rows; then the
 * run starts. */
static int moe_start(lg *g)
{
    const loadgen_cfg *c = g->cfg;
    size_t np = 0;
    while (c->initial_peers[np]) np++;
    g->users = calloc((size_t)c->clients, sizeof *g->users);
    if (!g->users) { snprintf(g->err, g->errlen, "out of memory"); return DMOE_ENOMEM; }
    g->n_users = c->clients;
    moe_cfg mc;
    moe_cfg_default(&mc);
    mc.in_features = c->in_features;
    mc.ndim = c->ndim;
    for (int d = 0; d < c->ndim; d++) mc.grid_size[d] = c->grid_size[d];
    snprintf(mc.uid_prefix, sizeof mc.uid_prefix, "%s", c->uid_prefix);
    mc.k_best = c->k_best;
    mc.forward_timeout = mc.backward_timeout = (double)c->timeout_ms / 1000.0;
    mc.timeout_after_k_min = -1;   /* every chosen expert answers, or the forward counts as an error */
    mc.retry_rounds = 0;           /* so no expert's rows move elsewhere: a failure is reported, not hidden */
    for (int i = 0; i < g->n_users; i++) {
        lg_user *u = &g->users[i];
        u->g = g;
        kern_rng_seed(&u->rng, c->seed * 0x9E3779B97F4A7C15ull + (uint64_t)i + 1);
        u->net = moe_net_open(g->loop, c->initial_peers, np, DHT_NEG_CACHE_S, g->err, g->errlen);
        if (!u->net) return DMOE_ECONN;
        mc.seed = c->seed * 1000003ull + (uint64_t)i;
        int rc = moe_layer_new(g->loop, &mc, moe_net_succ(u->net), moe_net_caller(u->net), &u->moe, g->err, g->errlen);
        if (rc) return rc;
        size_t n = (size_t)c->batch_max * (size_t)c->in_features;
        u->x = malloc(n * sizeof *u->x);
        if (!u->x) { snprintf(g->err, g->errlen, "out of memory"); return DMOE_ENOMEM; }
        for (size_t k = 0; k < n; k++) u->x[k] = kern_rng_normal(&u->rng);
    }
    g->r->row_elems = c->in_features;
    snprintf(g->r->first_target, sizeof g->r->first_target, "%s", c->uid_prefix);
    lg_start_run(g);
    return 0;
}

static void moe_close(lg *g)
{
    if (g->inflight > 0) {
        /* a layer may not be freed under a running call: every call ends by its own deadline */
        g->wait_lost = 1;
        while (g->inflight > 0) rt_loop_run(g->loop);
    }
    for (int i = 0; i < g->n_users; i++) {
        lg_user *u = &g->users[i];
        moe_fwd_free(u->fwd);
        moe_layer_free(u->moe);
        moe_net_close(u->net);
        free(u->x);
        free(u->gy);
        u->fwd = NULL;
        u->moe = NULL;
        u->net = NULL;
        u->x = u->gy = NULL;
    }
}

static int moe_can_backward(const lg_user *u) { return u->fwd != NULL; }

const lg_mode_ops lg_moe_ops = {
    .name = "moe",
    .start = moe_start,
    .send = moe_send,
    .can_backward = moe_can_backward,
    .close = moe_close,
    .paired = 1,
};
