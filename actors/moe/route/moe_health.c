/* moe_health.c -- leaving gone peers out of MoE searches (see moe_health.h).
 *
 * A wrapper around a layer's two ports. Calls (and info requests) pass through to the inner caller;
 * a call's reply callback marks the peer dead on "connection failed", "shutting down" or a timeout.
 * Successor lookups pass through to
 * the inner provider; the reply is copied without the dead peers' experts before the search sees it.
 * The dead list is a small array (MOE_HEALTH_MAX_PEERS) of addresses with the time their sentence ends;
 * when it is full, the entry whose sentence ends first is reused. Loop thread only.
 */
#include "actors/moe/route/moe_health.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/rt_actor.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

typedef struct {
    char host[WIRE_MADDR_HOST];
    uint16_t port;
    uint64_t until_us;
} dead_peer;

struct moe_health {
    moe_succ_provider inner_succ, succ;
    moe_caller inner_caller, caller;
    uint64_t dead_us;
    dead_peer dead[MOE_HEALTH_MAX_PEERS];
    int n_dead;
};

int moe_health_is_dead(const moe_health *h, const wire_maddr *a)
{
    uint64_t now = rt_clock_us();
    for (int i = 0; i < h->n_dead; i++)
        if (h->dead[i].port == a->port && strcmp(h->dead[i].host, a->host) == 0) return h->dead[i].until_us > now;
    return 0;
}

static void mark_dead(moe_health *h, const wire_maddr *a)
{
    uint64_t now = rt_clock_us();
    int slot = -1, soonest = 0;
    for (int i = 0; i < h->n_dead; i++) {
        if (h->dead[i].port == a->port && strcmp(h->dead[i].host, a->host) == 0) { slot = i; break; }
        if (h->dead[i].until_us < h->dead[soonest].until_us) soonest = i;
    }
    if (slot < 0) slot = h->n_dead < MOE_HEALTH_MAX_PEERS ? h->n_dead++ : soonest;
    if (h->dead[slot].until_us <= now)
        LOG_INFO("peer %s:%u is gone: its experts are left out for %.0f s", a->host, (unsigned)a->port,
                 (double)h->dead_us / 1e6);
    snprintf(h->dead[slot].host, sizeof h->dead[slot].host, "%s", a->host);
    h->dead[slot].port = a->port;
    h->dead[slot].until_us = now + h->dead_us;
}

/* ---- the caller ---- */

typedef struct {
    moe_health *h;
    wire_maddr addr;
    moe_call_cb cb;
    void *arg;
} call_ctx;

static void on_called(void *arg, int err, const char *msg, rx_tensor *out)
{
    call_ctx *c = arg;
    if (err == DMOE_ECONN || err == DMOE_ESHUTDOWN || err == DMOE_ETIMEDOUT) mark_dead(c->h, &c->addr);
    c->cb(c->arg, err, msg, out);
    free(c);
}

static int health_call(void *impl, const char *uid, const wire_maddr *addr, const rx_tensor *in, int n_in,
                       const rx_tensor *gout, uint64_t timeout_ms, moe_call_cb cb, void *arg)
{
    moe_health *h = impl;
    call_ctx *c = malloc(sizeof *c);
    if (!c) return DMOE_ENOMEM;
    *c = (call_ctx){h, *addr, cb, arg};
    int rc = h->inner_caller.call(h->inner_caller.impl, uid, addr, in, n_in, gout, timeout_ms, on_called, c);
    if (rc) free(c);
    return rc;
}

static int health_info(void *impl, const char *uid, const wire_maddr *addr, uint64_t timeout_ms, moe_info_cb cb,
                       void *arg)
{
    moe_health *h = impl;
    return h->inner_caller.info(h->inner_caller.impl, uid, addr, timeout_ms, cb, arg);
}

/* ---- the provider ---- */

typedef struct {
    moe_health *h;
    dht_successors_cb cb;
    void *arg;
} get_ctx;

static void on_got(void *arg, int err, const char *msg, const dht_successors *per, size_t n)
{
    get_ctx *g = arg;
    moe_health *h = g->h;
    if (err || !per) {
        g->cb(g->arg, err, msg, per, n);
        free(g);
        return;
    }
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += per[i].n;
    dht_successors *kept = calloc(n ? n : 1, sizeof *kept);
    dht_successor *items = malloc((total ? total : 1) * sizeof *items);
    if (!kept || !items) {
        free(kept);
        free(items);
        g->cb(g->arg, DMOE_ENOMEM, "out of memory filtering the successors", NULL, 0);
        free(g);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        kept[i].items = items + k;
        for (size_t j = 0; j < per[i].n; j++)
            if (!moe_health_is_dead(h, &per[i].items[j].addr)) items[k++] = per[i].items[j];
        kept[i].n = (size_t)(items + k - kept[i].items);
    }
    g->cb(g->arg, 0, msg, kept, n);
    free(kept);
    free(items);
    free(g);
}

static int health_get(void *impl, const char *const *prefixes, size_t n, dht_successors_cb cb, void *arg)
{
    moe_health *h = impl;
    get_ctx *g = malloc(sizeof *g);
    if (!g) return DMOE_ENOMEM;
    *g = (get_ctx){h, cb, arg};
    int rc = h->inner_succ.get(h->inner_succ.impl, prefixes, n, on_got, g);
    if (rc) free(g);
    return rc;
}

moe_health *moe_health_new(const moe_succ_provider *succ, const moe_caller *caller, double dead_s)
{
    moe_health *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->inner_succ = *succ;
    h->inner_caller = *caller;
    h->dead_us = (uint64_t)(dead_s * 1e6);
    h->succ = (moe_succ_provider){h, health_get};
    h->caller = (moe_caller){h, health_call, caller->info ? health_info : NULL};
    return h;
}

const moe_succ_provider *moe_health_succ(moe_health *h) { return &h->succ; }
const moe_caller *moe_health_caller(moe_health *h) { return &h->caller; }
void moe_health_free(moe_health *h) { free(h); }
