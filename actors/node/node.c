/* node.c -- assembling, running and stopping a node (see node.h).
 *
 * Design notes. The node actor's mail is its timers: NODE_TICK (the stop sequence's poll), NODE_UPDATE
 * (every update_period: declare the experts in the DHT and checkpoint them), NODE_STATS (the stats log
 * line and the metrics gauges). Start-up continues from callbacks: (peers_resolved, when an initial peer
 * is a host name) -> bootstrap_done -> (free_chosen: a joining node's free uids, read from the DHT by
 * dht_free_choose; served_checked: given uids someone else serves are warned about) -> create_experts.
 *
 * Initial peers given as HOST:PORT or with a host name go through resolve_start (actors/net/resolve.h)
 * first: the DHT takes IP multiaddrs only, and names are looked up without blocking the loop.
 *
 * Addresses: the node binds cfg.host and announces node_addrs_choose's choice (never a wildcard), which
 * is the DHT node's own address; it logs one NODE_BANNER_LISTENING line per bound address and one
 * NODE_BANNER_ANNOUNCING line per announced one. A node with no experts to host (num_experts 0, no uids,
 * no checkpoints) is DHT-only: no worker pool, no activation cache; it serves the DHT and nothing else.
 */
#include "actors/node/node.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <xxhash.h>

#include "actors/node/ckpt.h"
#include "actors/net/client.h"
#include "actors/grid/dht_experts.h"
#include "actors/grid/dht_free.h"
#include "actors/dht/dht_boot.h"
#include "actors/dht/io/dht_net.h"
#include "actors/dht/dht_node.h"
#include "actors/net/resolve.h"
#include "actors/node/metrics.h"
#include "actors/node/node_addrs.h"
#include "runtime/rt_lag.h"
#include "runtime/rt_mem.h"
#include "actors/node/node_banner.h"
#include "actors/serve/server.h"
#include "actors/grid/uid.h"
#include "kernels/kern_classes.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/rt_pool.h"
#include "wire/wire_frame.h"

#define NODE_WITHDRAW_MS 3000 /* longest wait for the withdrawal of the declarations at stop (a few DHT round trips) */
#define NODE_LINGER_IDLE_MS 500   /* at stop, forwards refused: backwards still come this soon after their forward */
#define NODE_LINGER_MS 10000  /* longest time backwards are still served at stop */
#define NODE_DRAIN_MS 30000   /* longest wait for computing batches at stop */
#define NODE_CKPT_MS  30000   /* longest wait for the last checkpoints at stop */
#define NODE_FLUSH_MS 5000    /* longest wait for replies to reach the sockets at stop */
#define NODE_POLL_MS  10
/* the heap's free pages go back to the kernel after a second without work: long enough that a busy
 * node never pays for the trim between batches, short enough that an idle one soon looks its size */
#define NODE_TRIM_IDLE_MS 1000
#define NODE_GAUGE_MS 1000    /* metrics gauges refresh */

enum { NODE_TICK = 1, NODE_UPDATE, NODE_STATS };
enum { ST_STARTING, ST_RUNNING, ST_WITHDRAW, ST_LINGER, ST_DRAIN, ST_CKPT, ST_FLUSH, ST_DHT_STOP, ST_DONE };

/* The withdrawal at stop: its callback may come after node_free (the DHT fails it then), so it holds
 * this, not the node; whichever of the two comes last frees it. */
typedef struct {
    struct node *n;           /* NULL once the node is freed */
    int done;
} withdrawal;

struct node {
    rt_actor actor;
    rt_loop *loop;
    node_cfg cfg;
    const kern_class *cls;
    rt_pool *pool;
    netq quota;                   /* pending bytes, shares, unread replies of the server's connections */
    server *srv;
    client *cl;
    dht_net *dnet;
    dht *dht;
    dht_trust *trusted;          /* --trusted_keys (NULL: an open swarm); freed after the DHT node */
    metrics *met;
    met_std ms;
    rt_lag_probe *lag;            /* the loop's lateness, for dmoe_loop_lag_max_seconds (with metrics) */
    met_series *lag_max;
    actcache *cache;
    int metrics_port;
    expert **experts;
    int n_experts;
    char **pending_uids;          /* chosen, experts not yet created */
    wire_maddr addrs[NODE_MAX_ADDRS];   /* announced */
    int n_addrs;
    resolve *resolving;                 /* initial peers' names, while they resolve */
    rt_timer tick, update, stats;
    int state;
    uint64_t phase_deadline, linger_from;
    double declared_until;        /* the last declaration's expiration (DHT time) */
    withdrawal *wd;               /* the withdrawal at stop, while it is out */
    expert_stats *last;           /* stats at the previous report */
    uint64_t last_report_us;
    void (*done)(void *);
    void *done_arg;
};

uint64_t node_expert_seed(uint64_t seed, const char *uid)
{
    return XXH3_64bits_withSeed(uid, strlen(uid), seed);
}

void node_default_cfg(node_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->expert_cls = "ffn";
    c->kcfg.hidden_dim = 1024;
    c->num_experts = 1;
    c->max_batch_size = 16384;
    c->min_batch_size = 1;
    c->batch_wait_ms = 10;
    wire_maddr_parse_listen("/ip4/127.0.0.1/tcp/0", &c->host[0], NULL, 0);
    c->n_host = 1;
    kern_optim_parse("adam", &c->opt);
    kern_sched_parse("none", &c->sched);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    c->num_workers = cores > 0 ? (int)cores : 1;
    c->max_frame = WIRE_MAX_FRAME_DEFAULT;
    c->max_pending_bytes = (size_t)2 << 30;
    c->max_inflight = 256;
    c->reply_soft_bytes = (size_t)16 << 20;
    c->reply_hard_bytes = (size_t)64 << 20;
    c->max_replies_bytes = (size_t)256 << 20;
    c->min_rate = (size_t)16 << 10;
    c->min_rate_grace_ms = 5000;
    c->idle_timeout_s = 300;
    c->max_connections = 1024;
    c->update_period = 30;
    c->keep_checkpoints = 3;
    c->activation_cache_bytes = (size_t)256 << 20;
    c->metrics_port = -1;
}

/* fatal ends the start: status is the exit status cfg.on_fatal passes on (node.h). */
static void fatal(node *n, int status, const char *msg)
{
    LOG_ERROR("%s", msg);
    if (n->cfg.on_fatal) n->cfg.on_fatal(n->cfg.fatal_arg, status, msg);
}

static double expiration_s(const node *n)
{
    if (n->cfg.expiration > 0) return n->cfg.expiration;
    return fmax(2 * n->cfg.update_period, 3);
}

/* ---- declaring experts ---- */

static void declared(void *arg, int err, const char *msg, const uint8_t *ok, size_t cnt)
{
    node *n = arg;
    if (err) LOG_WARN("declaring experts in the DHT: %s", msg ? msg : dmoe_strerror(err));
    else LOG_DEBUG("declared %zu experts in the DHT", cnt);
    (void)n;
}

static void declare_experts(node *n)
{
    if (!n->dht || n->cfg.client_mode || n->n_experts == 0) return;
    const char **uids = malloc((size_t)n->n_experts * sizeof *uids);
    if (!uids) return;
    for (int i = 0; i < n->n_experts; i++) uids[i] = expert_uid(n->experts[i]);
    char text[WIRE_MADDR_TEXT], err[256];
    wire_maddr endpoint;
    dht_node_maddr(n->dht, text, sizeof text);
    double now = dht_node_now(n->dht), until = now + expiration_s(n), cap = now + dht_node_cfg(n->dht)->max_record_lifetime_s;
    if (until > cap) until = cap;   /* what dht_declare_experts stores */
    if (wire_maddr_parse(text, &endpoint, err, sizeof err) == 0) {
        if (dht_declare_experts(n->dht, uids, (size_t)n->n_experts, &endpoint, until, declared, n, err, sizeof err) != 0)
            LOG_WARN("cannot declare experts: %s", err);
        else if (until > n->declared_until)
            n->declared_until = until;
    }
    free(uids);
}

static void withdrawn(void *arg, int err, const char *msg, const uint8_t *ok, size_t cnt)
{
    withdrawal *w = arg;
    if (!w->n) { free(w); return; }
    w->done = 1;
    if (err) LOG_WARN("withdrawing experts from the DHT: %s", msg ? msg : dmoe_strerror(err));
    else LOG_INFO("Withdrew %zu experts from the DHT", cnt);
}

/* withdraw_experts starts the withdrawal of the node's declarations (dht_withdraw_experts). Returns 1
 * when it is out, 0 when there is nothing to withdraw or it could not start. */
static int withdraw_experts(node *n)
{
    if (!n->dht || n->cfg.client_mode || n->n_experts == 0 || n->declared_until <= 0) return 0;
    const char **uids = malloc((size_t)n->n_experts * sizeof *uids);
    withdrawal *w = calloc(1, sizeof *w);
    if (!uids || !w) { free(uids); free(w); return 0; }
    for (int i = 0; i < n->n_experts; i++) uids[i] = expert_uid(n->experts[i]);
    w->n = n;
    char err[256];
    /* later than the last declaration, so it replaces it on every replica (the cap cuts it, still later) */
    int rc = dht_withdraw_experts(n->dht, uids, (size_t)n->n_experts, n->declared_until + 1, withdrawn, w, err, sizeof err);
    free(uids);
    if (rc) {
        LOG_WARN("cannot withdraw experts: %s", err);
        free(w);
        return 0;
    }
    n->wd = w;
    return 1;
}

/* ---- creating experts ---- */

static void create_experts(node *n, char **uids)
{
    char err[1024];
    int count = 0;
    while (uids && uids[count]) count++;   /* NULL: none (an empty checkpoint folder, a DHT-only node) */
    n->experts = calloc((size_t)(count > 0 ? count : 1), sizeof *n->experts);
    n->last = calloc((size_t)(count > 0 ? count : 1), sizeof *n->last);
    if (!n->experts || !n->last) { fatal(n, 1, "out of memory creating experts"); return; }
    const node_cfg *c = &n->cfg;
    for (int i = 0; i < count; i++) {
        expert_cfg ec = {
            .cls = n->cls, .kcfg = c->kcfg, .opt = c->opt, .sched = c->sched, .max_batch_size = c->max_batch_size,
            .min_batch_size = c->min_batch_size, .batch_wait_ms = c->batch_wait_ms,
            .max_parallel_fwd = c->num_workers, .seed = node_expert_seed(c->seed, uids[i]), .pool = n->pool,
            .ckpt_dir = c->checkpoint_dir, .keep_ckpts = c->keep_checkpoints,
            .met = n->met ? &n->ms : NULL, .compression = c->compression, .cache = n->cache,
        };
        n->experts[i] = expert_new(n->loop, uids[i], &ec, err, sizeof err);
        if (!n->experts[i]) { fatal(n, 1, err); return; }
        n->n_experts++;
    }
    if (server_set_experts(n->srv, n->experts, n->n_experts) != 0) { fatal(n, 1, "out of memory"); return; }
    LOG_INFO(NODE_BANNER_STARTED " with %d experts", n->n_experts);
    for (int i = 0; i < n->n_experts; i++) {
        const kern_model *m = expert_model(n->experts[i]);
        LOG_INFO("%s: %s, %zu parameters", expert_uid(n->experts[i]), n->cls->module_name, m->n_floats);
    }
    n->state = ST_RUNNING;
    n->last_report_us = rt_clock_us();
    declare_experts(n);
    if (n->cfg.update_period > 0) rt_timer_start(&n->update, (uint64_t)(n->cfg.update_period * 1000), 1);
    if (n->cfg.stats_report_interval > 0 || n->met)
        rt_timer_start(&n->stats, n->cfg.stats_report_interval > 0 ? (uint64_t)(n->cfg.stats_report_interval * 1000)
                                                                   : NODE_GAUGE_MS, 1);
    if (n->cfg.on_ready) n->cfg.on_ready(n->cfg.ready_arg);
}

/* Append src's strings not already in *dst (a NULL-terminated strdup'd list). */
static int list_add(char ***dst, char *const *src, int limit)
{
    int n = 0;
    while (*dst && (*dst)[n]) n++;
    for (int i = 0; src && src[i] && (limit < 0 || n < limit); i++) {
        int dup = 0;
        for (int j = 0; j < n && !dup; j++) dup = strcmp((*dst)[j], src[i]) == 0;
        if (dup) continue;
        char **grown = realloc(*dst, (size_t)(n + 2) * sizeof *grown);
        if (!grown) return DMOE_ENOMEM;
        *dst = grown;
        (*dst)[n] = strdup(src[i]);
        (*dst)[++n] = NULL;
    }
    return n;
}

/* free_chosen continues the start with the free uids read from the DHT (dht_free.h): want more than
 * the node holds already (checkpoints). A pattern with too few free uids starts with what it has and
 * says so, unless strict_experts makes that fatal (exit status 2). */
static void free_chosen(void *arg, int err, const char *msg, char **uids, int cnt, uint64_t rows)
{
    node *n = arg;
    if (n->state != ST_STARTING) { uid_list_free(uids); return; }
    if (err) {
        char m[512];
        snprintf(m, sizeof m, "cannot read the free uids of pattern %s: %s", n->cfg.expert_pattern ?
                 n->cfg.expert_pattern : "expert.[0:N]", msg);
        fatal(n, 1, m);
        return;
    }
    int have = list_add(&n->pending_uids, uids, n->cfg.num_experts);
    uid_list_free(uids);
    if (have < 0) { fatal(n, 1, "out of memory"); return; }
    LOG_DEBUG("read %llu rows of the pattern, %d free uids taken", (unsigned long long)rows, cnt);
    if (have < n->cfg.num_experts) {
        char m[512];
        snprintf(m, sizeof m, "pattern %s has only %d free uids for %d experts", n->cfg.expert_pattern ?
                 n->cfg.expert_pattern : "expert.[0:N]", have, n->cfg.num_experts);
        if (n->cfg.strict_experts || have == 0) {
            fatal(n, n->cfg.strict_experts ? 2 : 1, m);
            return;
        }
        LOG_WARN("%s: starting with %d (--strict_experts makes this an error)", m, have);
    }
    create_experts(n, n->pending_uids);
}

/* served_checked warns about the given uids someone else already serves, then creates the experts: the
 * uids were asked for explicitly, so the node takes them all the same (hivemind does too, silently). */
static void served_checked(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t cnt)
{
    node *n = arg;
    if (n->state != ST_STARTING) return;
    char self[WIRE_MADDR_TEXT];
    wire_maddr me;
    dht_node_maddr(n->dht, self, sizeof self);
    if (wire_maddr_parse(self, &me, NULL, 0) != 0) me.peer_id[0] = '\0';
    for (size_t i = 0; !err && i < cnt && n->pending_uids[i]; i++) {
        if (!locs[i].found || (me.peer_id[0] && strcmp(locs[i].node_id, me.peer_id) == 0)) continue;
        char addr[WIRE_MADDR_TEXT];
        wire_maddr_format(&locs[i].addr, addr, sizeof addr);
        LOG_WARN("%s is already served by %s; both will answer", n->pending_uids[i], addr);
    }
    if (err) LOG_DEBUG("looking up the uids to serve in the DHT: %s", msg ? msg : dmoe_strerror(err));
    create_experts(n, n->pending_uids);
}

/* check_served looks the chosen uids up in the DHT (as pattern draws are) before serving them, when the
 * node joined a swarm; served_checked continues. */
static void check_served(node *n)
{
    char err[256];
    size_t cnt = 0;
    while (n->pending_uids && n->pending_uids[cnt]) cnt++;
    if (!n->dht || !n->cfg.initial_peers || !n->cfg.initial_peers[0] || cnt == 0) {
        create_experts(n, n->pending_uids);
        return;
    }
    if (cnt > DHT_EXPERTS_MAX_BATCH) cnt = DHT_EXPERTS_MAX_BATCH;
    if (dht_get_experts(n->dht, (const char *const *)n->pending_uids, cnt, served_checked, n, err, sizeof err) != 0) {
        LOG_DEBUG("cannot look up the uids to serve in the DHT: %s", err);
        create_experts(n, n->pending_uids);
    }
}

/* dht_only says whether the node hosts no experts at all (see the design notes). */
static int dht_only(const node_cfg *c)
{
    return c->num_experts == 0 && !c->expert_uids && !c->checkpoint_dir;
}

static void choose_uids(node *n)
{
    char err[512] = "";
    const node_cfg *c = &n->cfg;
    if (dht_only(c)) {
        char *none[1] = {NULL};
        LOG_INFO("DHT-only node: hosting no experts");
        create_experts(n, none);
        return;
    }
    if (c->checkpoint_dir) {
        char **found = ckpt_list_uids(c->checkpoint_dir, err, sizeof err);
        if (!found) { fatal(n, 1, err); return; }
        int k = list_add(&n->pending_uids, found, -1);
        if (k > 0) LOG_INFO("Found %d experts in %s", k, c->checkpoint_dir);
        uid_list_free(found);
    }
    int have = 0;
    while (n->pending_uids && n->pending_uids[have]) have++;
    if (c->expert_uids) {
        list_add(&n->pending_uids, c->expert_uids, -1);
        check_served(n);
        return;
    }
    if (have >= c->num_experts) { create_experts(n, n->pending_uids); return; }
    int want = c->num_experts - have;
    LOG_INFO("Generating %d expert uids from pattern %s", want, c->expert_pattern ? c->expert_pattern : "expert.[0:N]");
    if (n->dht && c->initial_peers && c->initial_peers[0]) {
        /* a node joining a swarm reads which uids are free; the seed is mixed with the node's id so that
         * nodes started with the same --seed do not all choose alike */
        uint64_t seed = XXH3_64bits_withSeed(dht_node_id(n->dht), sizeof(dht_id), c->seed);
        int rc = dht_free_choose(n->dht, c->expert_pattern, have + want, seed, free_chosen, n, err, sizeof err);
        if (rc != 0) fatal(n, 1, err[0] ? err : dmoe_strerror(rc));
        return;
    }
    /* the first node of a swarm: nobody else declared anything */
    uint64_t grid = 0, row = 0;
    int ncoords = 0;
    if (c->expert_pattern && uid_pattern_shape(c->expert_pattern, &grid, &row, &ncoords, err, sizeof err) != 0) {
        fatal(n, 1, err);
        return;
    }
    int draw = c->expert_pattern && grid < (uint64_t)want ? (int)grid : want;
    char **draws = NULL;
    int got = uid_pattern_generate(c->expert_pattern, draw, c->seed, NULL, NULL, &draws, err, sizeof err);
    if (got < 0) { fatal(n, 1, err); return; }
    int total = list_add(&n->pending_uids, draws, c->num_experts);
    uid_list_free(draws);
    if (total < 0) { fatal(n, 1, "out of memory"); return; }
    if (total < c->num_experts) {
        char m[512];
        snprintf(m, sizeof m, "pattern %s has only %d free uids for %d experts", c->expert_pattern, total, c->num_experts);
        if (c->strict_experts) { fatal(n, 2, m); return; }
        LOG_WARN("%s: starting with %d (--strict_experts makes this an error)", m, total);
    }
    create_experts(n, n->pending_uids);
}

static void bootstrap_done(void *arg, int err, const char *msg)
{
    node *n = arg;
    if (n->state != ST_STARTING) return;
    if (err) {
        char m[1024];
        snprintf(m, sizeof m, "cannot join the DHT: %s", msg ? msg : dmoe_strerror(err));
        fatal(n, 1, m);
        return;
    }
    choose_uids(n);
}

/* ---- statistics ---- */

/* One line per expert that had work since the last report -- requests, rows, batches, mean batch, mean
 * latency (arrival to result) -- and a total line; idle experts print nothing (as hivemind's report). */
static void report_stats(node *n)
{
    uint64_t now = rt_clock_us();
    double dt = (double)(now - n->last_report_us) / 1e6;
    if (dt <= 0) dt = 1e-6;
    uint64_t t_calls = 0, t_rows = 0, t_batches = 0, t_lat = 0;
    int active = 0;
    for (int i = 0; i < n->n_experts; i++) {
        const expert_stats *s = expert_stats_get(n->experts[i]);
        expert_stats *p = &n->last[i];
        uint64_t calls[2], rows = 0, batches = 0, lat = 0;
        for (int dir = 0; dir < 2; dir++) {
            calls[dir] = s->calls[dir] - p->calls[dir];
            rows += s->rows[dir] - p->rows[dir];
            batches += s->batches[dir] - p->batches[dir];
            lat += s->latency_us[dir] - p->latency_us[dir];
        }
        *p = *s;
        uint64_t c = calls[EX_FWD] + calls[EX_BWD];
        if (c == 0 && batches == 0) continue;
        active++;
        t_calls += c;
        t_rows += rows;
        t_batches += batches;
        t_lat += lat;
        LOG_INFO("%s: %llu requests (%llu forward, %llu backward), %llu rows in %llu batches (mean batch %.1f), "
                 "mean latency %.2f ms",
                 expert_uid(n->experts[i]), (unsigned long long)c, (unsigned long long)calls[EX_FWD],
                 (unsigned long long)calls[EX_BWD], (unsigned long long)rows, (unsigned long long)batches,
                 batches ? (double)rows / (double)batches : 0.0, c ? (double)lat / 1000.0 / (double)c : 0.0);
    }
    LOG_INFO("total: %d of %d experts active, %llu requests, %llu rows in %llu batches over %.1f s (%.2f requests/s, "
             "%.2f rows/s), mean latency %.2f ms",
             active, n->n_experts, (unsigned long long)t_calls, (unsigned long long)t_rows,
             (unsigned long long)t_batches, dt, (double)t_calls / dt, (double)t_rows / dt,
             t_calls ? (double)t_lat / 1000.0 / (double)t_calls : 0.0);
    n->last_report_us = now;
}

static void update_gauges(node *n)
{
    if (!n->met || !n->srv) return;
    int depth = 0;
    for (int i = 0; i < n->n_experts; i++) depth += expert_busy(n->experts[i]);
    metrics_set(n->ms.queue_depth, depth);
    if (n->dht) metrics_set(n->ms.routing_table, (double)dht_routing_size(dht_node_routing(n->dht)));
    /* every byte on the node's TCP connections: the ones it serves (experts, DHT) and its own DHT calls */
    uint64_t in = 0, out = 0, cin = 0, cout = 0;
    server_bytes(n->srv, &in, &out);
    if (n->cl) client_bytes(n->cl, &cin, &cout);
    metrics_set_total(n->ms.bytes_in, (double)(in + cin));
    metrics_set_total(n->ms.bytes_out, (double)(out + cout));
    if (n->lag) metrics_set(n->lag_max, (double)rt_lag_probe_meter(n->lag)->max_wall_us / 1e6);
}

/* A scrape of /metrics: the values kept elsewhere (bytes, gauges) are copied in first. */
static void on_scrape(void *arg) { update_gauges(arg); }

/* ---- the stop sequence ---- */

static int experts_busy(node *n)
{
    int busy = 0;
    for (int i = 0; i < n->n_experts; i++) busy += expert_busy(n->experts[i]);
    return busy;
}

/* begin_drain: from here on queued requests are answered "shutting down" and computing ones finish. */
static void begin_drain(node *n)
{
    n->state = ST_DRAIN;
    n->phase_deadline = rt_loop_now_ms(n->loop) + NODE_DRAIN_MS;
    server_shutdown(n->srv);
    for (int i = 0; i < n->n_experts; i++) expert_shutdown(n->experts[i]);
}

/* begin_linger: new forwards are refused (clients retry them elsewhere), while the backwards of forwards
 * this node answered, and queued work, are still served until none has come for NODE_LINGER_IDLE_MS. */
static void begin_linger(node *n)
{
    n->state = ST_LINGER;
    n->linger_from = rt_loop_now_ms(n->loop);
    n->phase_deadline = n->linger_from + NODE_LINGER_MS;
    server_refuse_forwards(n->srv);
}

static void stop_step(node *n)
{
    uint64_t now = rt_loop_now_ms(n->loop);
    if (n->state == ST_WITHDRAW) {
        if (!n->wd->done && now < n->phase_deadline) return;
        if (!n->wd->done) {
            LOG_WARN("stopping before the withdrawal of the experts reached the DHT");
            n->wd->n = NULL;   /* its callback frees it */
        } else {
            free(n->wd);
        }
        n->wd = NULL;
        begin_linger(n);
    }
    if (n->state == ST_LINGER) {
        uint64_t last = server_last_accepted_ms(n->srv);
        if (last < n->linger_from) last = n->linger_from;
        if (now < last + NODE_LINGER_IDLE_MS && now < n->phase_deadline) return;
        begin_drain(n);
    }
    if (n->state == ST_DRAIN) {
        int busy = experts_busy(n);
        if (busy > 0 && now < n->phase_deadline) return;
        if (busy > 0) LOG_WARN("stopping with %d requests still computing", busy);
        for (int i = 0; i < n->n_experts; i++) expert_checkpoint(n->experts[i]);
        n->state = ST_CKPT;
        n->phase_deadline = now + NODE_CKPT_MS;
    }
    if (n->state == ST_CKPT) {
        int pending = 0;
        for (int i = 0; i < n->n_experts; i++) pending += expert_checkpoint_pending(n->experts[i]);
        if (pending > 0 && now < n->phase_deadline) return;
        if (pending > 0) LOG_WARN("stopping with %d checkpoints unwritten", pending);
        server_close_all(n->srv);
        n->state = ST_FLUSH;
        n->phase_deadline = now + NODE_FLUSH_MS;
    }
    if (n->state == ST_FLUSH) {
        if (server_connections(n->srv) > 0 && now < n->phase_deadline) return;
        /* stopping the DHT node aborts its lookups: the calls waiting on them (a declaration, a free-uid
         * scan) finish through their actors' mail, which the loop delivers before the next tick */
        n->state = ST_DHT_STOP;
        if (n->dht) dht_node_stop(n->dht);
        return;
    }
    if (n->state == ST_DHT_STOP) {
        n->state = ST_DONE;
        rt_timer_cancel(&n->tick);
        if (n->done) n->done(n->done_arg);
    }
}

/* The pool has been idle NODE_TRIM_IDLE_MS: what the experts kept for the next batch, and the heap's
 * free pages (rt_mem.h), go back. */
static void trim_heap(void *arg)
{
    node *n = arg;
    for (int i = 0; i < n->n_experts; i++) expert_release_idle(n->experts[i]);
    if (rt_mem_trim()) LOG_DEBUG("idle: free heap pages returned to the kernel");
}

static void node_handle(rt_actor *self, rt_msg *m)
{
    node *n = (node *)self;
    int type = m->type;
    rt_msg_drop(m);
    switch (type) {
    case NODE_TICK:
        stop_step(n);
        break;
    case NODE_UPDATE:
        if (n->state != ST_RUNNING) break;
        declare_experts(n);
        for (int i = 0; i < n->n_experts; i++) expert_checkpoint(n->experts[i]);
        break;
    case NODE_STATS:
        if (n->state != ST_RUNNING) break;
        if (n->cfg.stats_report_interval > 0) report_stats(n);
        update_gauges(n);
        break;
    default:
        break;
    }
}

static void node_destroy(rt_actor *self)
{
    node *n = (node *)self;
    rt_timer_deinit(&n->tick);
    rt_timer_deinit(&n->update);
    rt_timer_deinit(&n->stats);
    netq_deinit(&n->quota);
    free(n);
}

/* The descriptors a node may open: the soft limit raised to the hard one. */
static long raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit up = {rl.rlim_max, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0) rl.rlim_cur = rl.rlim_max;
    }
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1L << 20) ? 1L << 20 : (long)rl.rlim_cur;
}

/* ---- start ---- */

/* peers_resolved continues the start once the initial peers' host names have addresses. */
static void peers_resolved(void *arg, int err, const char *msg, char **maddrs)
{
    node *n = arg;
    char m[1024];
    n->resolving = NULL;
    size_t np = 0;
    while (maddrs && maddrs[np]) np++;
    if (n->state != ST_STARTING) err = 0;   /* stopped meanwhile: nothing to join */
    else if (err) snprintf(m, sizeof m, "cannot join the DHT: %s", msg);
    else if (dht_node_bootstrap(n->dht, (const char *const *)maddrs, np, bootstrap_done, n, m, sizeof m) != 0)
        err = DMOE_EINVAL;
    resolve_list_free(maddrs);
    if (err) fatal(n, 1, m);
}

/* listen_all binds the configured addresses and chooses the announced ones (see node_addrs.h). */
static int listen_all(node *n, char *err, size_t errlen)
{
    const node_cfg *c = &n->cfg;
    wire_maddr bound[NODE_MAX_ADDRS], ifs[64];
    int n_bound = 0;
    for (int i = 0; i < c->n_host && i < NODE_MAX_ADDRS; i++)
        if (server_listen(n->srv, &c->host[i], &bound[n_bound++], err, errlen) != 0) return DMOE_EIO;
    if (c->n_announce > 0) {
        n->n_addrs = c->n_announce;
        memcpy(n->addrs, c->announce, (size_t)c->n_announce * sizeof c->announce[0]);
    } else {
        n->n_addrs = node_addrs_choose(bound, n_bound, ifs, node_addrs_interfaces(ifs, 64), n->addrs, NODE_MAX_ADDRS);
    }
    char text[WIRE_MADDR_TEXT];
    for (int i = 0; i < n_bound; i++) {
        wire_maddr_format(&bound[i], text, sizeof text);
        LOG_INFO(NODE_BANNER_LISTENING "%s", text);
    }
    for (int i = 0; i < n->n_addrs; i++) {
        wire_maddr_format(&n->addrs[i], text, sizeof text);
        LOG_INFO(NODE_BANNER_ANNOUNCING "%s", text);
    }
    return 0;
}

static int start_dht(node *n, char *err, size_t errlen)
{
    n->cl = client_new(n->loop, NULL);
    if (!n->cl) { snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    dht_transport tr;
    if (dht_net_new(n->cl, &n->dnet, &tr) != 0) { snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    dht_cfg dc;
    dht_ident key;
    dht_cfg_default(&dc);
    if (n->cfg.trusted_keys_path) {
        int rc = dht_trust_load(n->cfg.trusted_keys_path, &n->trusted, err, errlen);
        if (rc) return rc;
        dc.trusted_keys = n->trusted;
        LOG_INFO("Private swarm: only records signed by the %zu keys of %s are stored or used",
                 dht_trust_count(n->trusted), n->cfg.trusted_keys_path);
    }
    if (n->cfg.identity_path) {
        int created = 0;
        int rc = dht_ident_load_or_create(n->cfg.identity_path, &key, &created, err, errlen);
        if (rc) return rc;
        if (created) LOG_INFO("Created a new identity in %s", n->cfg.identity_path);
        dc.ident = &key;
    }
    dc.seed = n->cfg.seed ^ XXH3_64bits(n->addrs, sizeof n->addrs[0]) ^ (uint64_t)getpid();
    dc.client_mode = n->cfg.client_mode;
    snprintf(dc.addr.host, sizeof dc.addr.host, "%.63s", n->addrs[0].host);
    dc.addr.port = n->addrs[0].port;
    int rc = dht_node_new(n->loop, &dc, &tr, &n->dht);
    if (rc == 0) {
        char pk[2 * DHT_IDENT_PK_BYTES + 1];
        dht_trust_hex(dht_node_ident(n->dht)->pk, pk);
        LOG_INFO("DHT public key %s (for others' --trusted_keys)", pk);
    }
    dht_ident_wipe(&key);
    if (rc) { snprintf(err, errlen, "cannot create the DHT node: %s", dmoe_strerror(rc)); return rc; }
    if (!n->cfg.client_mode && (rc = dht_net_serve(n->dnet, n->srv, n->dht)) != 0) {
        snprintf(err, errlen, "cannot serve the DHT: %s", dmoe_strerror(rc));
        return rc;
    }
    char self[WIRE_MADDR_TEXT], peers[1024] = "";
    dht_node_maddr(n->dht, self, sizeof self);
    size_t np = 0, off = 0;
    for (; n->cfg.initial_peers && n->cfg.initial_peers[np]; np++)
        off += (size_t)snprintf(peers + off, off < sizeof peers ? sizeof peers - off : 0, "%s'%s'", np ? ", " : "",
                                n->cfg.initial_peers[np]);
    LOG_INFO(NODE_BANNER_DHT "%s'], initial peers = [%s]", n->cfg.client_mode ? "client mode" : self, peers);
    const char *const *given = (const char *const *)n->cfg.initial_peers;
    if (!resolve_needed(given, np)) return dht_node_bootstrap(n->dht, given, np, bootstrap_done, n, err, errlen);
    n->resolving = resolve_start(n->loop, given, np, peers_resolved, n, err, errlen);
    return n->resolving ? 0 : DMOE_EINVAL;
}

node *node_start(rt_loop *l, const node_cfg *c, char *err, size_t errlen)
{
    const kern_class *cls = kern_expert_find(c->expert_cls);
    if (!cls) {
        snprintf(err, errlen, "unknown --expert_cls %s (known: %s)", c->expert_cls, kern_expert_names());
        return NULL;
    }
    if (kern_sched_check(&c->sched) != 0) {
        snprintf(err, errlen, "--scheduler linear needs --num_training_steps >= 1 and --num_warmup_steps >= 0");
        return NULL;
    }
    if (c->max_batch_size < 1 || c->min_batch_size < 1 || c->min_batch_size > c->max_batch_size) {
        snprintf(err, errlen, "need 1 <= min_batch_size <= max_batch_size");
        return NULL;
    }
    if (c->num_experts < 0) {
        snprintf(err, errlen, "--num_experts must be at least 0 (0: a DHT-only node)");
        return NULL;
    }
    if (dht_only(c) && c->client_mode) {
        snprintf(err, errlen, "--num_experts 0 runs a DHT-only node, which cannot be in --client_mode");
        return NULL;
    }
    for (int i = 0; c->expert_uids && c->expert_uids[i]; i++)
        if (!uid_is_valid(c->expert_uids[i]) || (c->checkpoint_dir && !ckpt_uid_ok(c->expert_uids[i]))) {
            snprintf(err, errlen, "invalid expert uid %s (expected name.coord[.coord...], e.g. expert.3)", c->expert_uids[i]);
            return NULL;
        }
    node *n = calloc(1, sizeof *n);
    if (!n) { snprintf(err, errlen, "out of memory"); return NULL; }
    rt_actor_init(&n->actor, l, "node", node_handle, node_destroy);
    n->loop = l;
    n->cfg = *c;
    n->cls = cls;
    n->metrics_port = -1;
    netq_init(&n->quota, c->max_pending_bytes, c->max_replies_bytes);
    if (rt_timer_init(&n->tick, &n->actor, NODE_TICK) != 0 || rt_timer_init(&n->update, &n->actor, NODE_UPDATE) != 0 ||
        rt_timer_init(&n->stats, &n->actor, NODE_STATS) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }

    if (c->activation_cache_bytes > 0 && !dht_only(c) &&
        !(n->cache = actcache_new(c->activation_cache_bytes, c->seed ^ rt_clock_us() ^ (uint64_t)getpid()))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }

    /* the pool's threads are the parallelism: OpenBLAS runs single-threaded inside each */
    openblas_set_num_threads(1);
    if (!dht_only(c) && !(n->pool = rt_pool_new(l, c->num_workers))) { snprintf(err, errlen, "cannot start %d worker threads", c->num_workers); goto fail; }
    if (n->pool && rt_pool_on_idle(n->pool, NODE_TRIM_IDLE_MS, trim_heap, n) != 0) { snprintf(err, errlen, "out of memory"); goto fail; }

    if (c->metrics_port >= 0) {
        n->met = metrics_new();
        if (!n->met || metrics_std_init(n->met, &n->ms) != 0 ||
            metrics_listen(n->met, rt_loop_base(l), NULL, c->metrics_port, &n->metrics_port, err, errlen) != 0) {
            if (!err[0]) snprintf(err, errlen, "cannot start the metrics endpoint");
            goto fail;
        }
        met_family *lag = metrics_gauge(n->met, "dmoe_loop_lag_max_seconds",
                                        "The longest the event loop was late since start (a 10 ms timer's lateness).", 0,
                                        NULL);
        if (!lag || rt_lag_probe_new(l, &n->lag) != 0) {
            snprintf(err, errlen, "cannot start the loop-lag probe");
            goto fail;
        }
        n->lag_max = metrics_series(lag, NULL);
        metrics_on_scrape(n->met, on_scrape, n);
        LOG_INFO("Serving metrics on http://127.0.0.1:%d/metrics", n->metrics_port);
    }

    server_cfg scfg = {.num_workers = c->num_workers, .met = n->met ? &n->ms : NULL};
    conn_default_limits(&scfg.limits);
    /* nothing passes the pending budget: a longer frame is refused at its header */
    scfg.limits.max_frame = c->max_pending_bytes && c->max_pending_bytes < c->max_frame ? c->max_pending_bytes : c->max_frame;
    scfg.limits.max_inflight = c->max_inflight;
    scfg.limits.max_outbuf = c->reply_soft_bytes;
    scfg.limits.out_hard = c->reply_hard_bytes;
    scfg.limits.min_rate = c->min_rate;
    scfg.limits.rate_grace_ms = c->min_rate_grace_ms;
    scfg.limits.idle_timeout_s = c->idle_timeout_s;
    scfg.limits.max_objects = WIRE_MAX_REQ_OBJECTS;
    scfg.limits.quota = &n->quota;
    /* half the descriptors for served connections: the rest for the DHT's, files, the pool */
    long nofile = raise_nofile();
    scfg.max_connections = c->max_connections;
    if (scfg.max_connections > (nofile - 64) / 2) {
        scfg.max_connections = (int)((nofile - 64) / 2 > 1 ? (nofile - 64) / 2 : 1);
        LOG_WARN("--max_connections %d is over half the %ld file descriptors: using %d", c->max_connections, nofile,
                 scfg.max_connections);
    }

    /* listen first: the address is the first thing a user needs (and a busy port fails fast) */
    n->srv = server_new(l, &scfg);
    if (!n->srv) { snprintf(err, errlen, "out of memory"); goto fail; }
    if (listen_all(n, err, errlen) != 0) goto fail;
    if (start_dht(n, err, errlen) != 0) goto fail;
    return n;

fail:
    node_free(n);
    return NULL;
}

void node_stop(node *n, void (*done)(void *), void *arg)
{
    if (n->state >= ST_WITHDRAW) return;
    n->done = done;
    n->done_arg = arg;
    rt_timer_cancel(&n->update);
    rt_timer_cancel(&n->stats);
    /* first take the experts out of the DHT, still serving who found them already; then drain */
    if (n->state == ST_RUNNING && withdraw_experts(n)) {
        n->state = ST_WITHDRAW;
        n->phase_deadline = rt_loop_now_ms(n->loop) + NODE_WITHDRAW_MS;
    } else if (n->state == ST_RUNNING && n->n_experts > 0) {
        begin_linger(n);
    } else {
        begin_drain(n);
    }
    rt_timer_start(&n->tick, NODE_POLL_MS, 1);
}

void node_free(node *n)
{
    if (!n) return;
    rt_timer_cancel(&n->tick);
    rt_timer_cancel(&n->update);
    rt_timer_cancel(&n->stats);
    resolve_cancel(n->resolving);
    n->resolving = NULL;
    if (n->wd && n->wd->done) free(n->wd);
    else if (n->wd) n->wd->n = NULL;   /* its callback frees it */
    n->wd = NULL;
    if (n->dht) dht_node_stop(n->dht);
    server_free(n->srv);
    n->srv = NULL;
    client_free(n->cl);
    n->cl = NULL;
    dht_node_free(n->dht);
    n->dht = NULL;
    dht_net_free(n->dnet);
    dht_trust_free(n->trusted);
    n->dnet = NULL;
    for (int i = 0; i < n->n_experts; i++) expert_free(n->experts[i]);
    free(n->experts);
    n->experts = NULL;
    free(n->last);
    uid_list_free(n->pending_uids);
    /* finish the jobs in flight before their owners are reaped */
    rt_pool_free(n->pool);
    n->pool = NULL;
    actcache_free(n->cache);   /* after the pool: batches in flight hold blocks */
    n->cache = NULL;
    metrics_free(n->met);
    n->met = NULL;
    rt_lag_probe_free(n->lag);
    n->lag = NULL;
    rt_actor_stop(&n->actor);
}
