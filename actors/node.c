/* node.c -- assembling and stopping a node (see node.h). */
#include "actors/node.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "actors/server.h"
#include "actors/uid.h"
#include "runtime/rt_budget.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/rt_pool.h"
#include "wire/wire_frame.h"

#define NODE_DRAIN_MS 30000   /* longest wait for computing batches at stop */
#define NODE_FLUSH_MS 5000    /* longest wait for replies to reach the sockets at stop */
#define NODE_POLL_MS  10

enum { NODE_TICK = 1 };

struct node {
    rt_actor actor;
    rt_loop *loop;
    rt_pool *pool;
    rt_budget budget;
    server *srv;
    expert **experts;
    int n_experts;
    wire_maddr addrs[NODE_MAX_ADDRS];
    int n_addrs;
    rt_timer tick;
    int stopping;            /* 0 running, 1 draining batches, 2 flushing connections, 3 done */
    uint64_t phase_deadline;
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
    c->kcfg.dropout = 0.0f;
    c->num_experts = 1;
    c->max_batch_size = 16384;
    c->min_batch_size = 1;
    c->batch_wait_ms = 10;
    wire_maddr_parse_listen("/ip4/127.0.0.1/tcp/0", &c->host[0], NULL, 0);
    c->n_host = 1;
    kern_optim_parse("adam", &c->opt);
    c->seed = 0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    c->num_workers = cores > 0 ? (int)cores : 1;
    c->max_frame = WIRE_MAX_FRAME_DEFAULT;
    c->max_pending_bytes = (size_t)2 << 30;
    c->max_inflight = 256;
}

static void node_handle(rt_actor *self, rt_msg *m)
{
    node *n = (node *)self;
    rt_msg_drop(m);
    if (m->type != NODE_TICK || !n->stopping || n->stopping == 3) return;
    uint64_t now = rt_loop_now_ms(n->loop);
    if (n->stopping == 1) {
        int busy = 0;
        for (int i = 0; i < n->n_experts; i++) busy += expert_busy(n->experts[i]);
        if (busy > 0 && now < n->phase_deadline) return;
        if (busy > 0) LOG_WARN("stopping with %d requests still computing", busy);
        server_close_all(n->srv);
        n->stopping = 2;
        n->phase_deadline = now + NODE_FLUSH_MS;
    }
    if (n->stopping == 2) {
        if (server_connections(n->srv) > 0 && now < n->phase_deadline) return;
        n->stopping = 3;
        rt_timer_cancel(&n->tick);
        if (n->done) n->done(n->done_arg);
    }
}

static void node_destroy(rt_actor *self)
{
    node *n = (node *)self;
    rt_timer_deinit(&n->tick);
    free(n);
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
    node *n = calloc(1, sizeof *n);
    if (!n) { snprintf(err, errlen, "out of memory"); return NULL; }
    rt_actor_init(&n->actor, l, "node", node_handle, node_destroy);
    n->loop = l;
    rt_budget_init(&n->budget, c->max_pending_bytes);
    if (rt_timer_init(&n->tick, &n->actor, NODE_TICK) != 0) { free(n); snprintf(err, errlen, "out of memory"); return NULL; }

    /* the pool's threads are the parallelism: OpenBLAS runs single-threaded inside each */
    openblas_set_num_threads(1);
    n->pool = rt_pool_new(l, c->num_workers);
    if (!n->pool) { snprintf(err, errlen, "cannot start %d worker threads", c->num_workers); goto fail; }

    server_cfg scfg = {.num_workers = c->num_workers};
    conn_default_limits(&scfg.limits);
    scfg.limits.max_frame = c->max_frame;
    scfg.limits.max_inflight = c->max_inflight;
    scfg.limits.budget = &n->budget;

    /* listen first: the address is the first thing a user needs (and a busy port fails fast) */
    n->srv = server_new(l, &scfg);
    if (!n->srv) { snprintf(err, errlen, "out of memory"); goto fail; }
    for (int i = 0; i < c->n_host; i++) {
        wire_maddr bound;
        if (server_listen(n->srv, &c->host[i], &bound, err, errlen) != 0) goto fail;
        if (n->n_addrs < NODE_MAX_ADDRS) n->addrs[n->n_addrs++] = bound;
    }
    if (c->n_announce > 0) {
        n->n_addrs = c->n_announce;
        memcpy(n->addrs, c->announce, (size_t)c->n_announce * sizeof c->announce[0]);
    }
    for (int i = 0; i < n->n_addrs; i++) {
        char text[WIRE_MADDR_TEXT];
        wire_maddr_format(&n->addrs[i], text, sizeof text);
        LOG_INFO("Listening on %s", text);
    }

    /* uids: given, or drawn from the pattern */
    char **uids = NULL;
    int n_uids = 0;
    if (c->expert_uids) {
        for (n_uids = 0; c->expert_uids[n_uids]; n_uids++) {
            if (!uid_is_valid(c->expert_uids[n_uids])) {
                snprintf(err, errlen, "invalid expert uid %s (expected name.coord[.coord...], e.g. expert.3)",
                         c->expert_uids[n_uids]);
                goto fail;
            }
        }
        uids = c->expert_uids;
    } else {
        if (c->num_experts < 1) { snprintf(err, errlen, "--num_experts must be at least 1"); goto fail; }
        LOG_INFO("Generating %d expert uids from pattern %s", c->num_experts,
                 c->expert_pattern ? c->expert_pattern : "expert.[0:N]");
        int got = uid_pattern_generate(c->expert_pattern, c->num_experts, c->seed, NULL, NULL, &uids, err, errlen);
        if (got < 0) goto fail;
        n_uids = got;
    }
    n->experts = calloc((size_t)(n_uids > 0 ? n_uids : 1), sizeof *n->experts);
    if (!n->experts) { snprintf(err, errlen, "out of memory"); goto fail_uids; }
    for (int i = 0; i < n_uids; i++) {
        for (int j = 0; j < i; j++)
            if (strcmp(uids[i], uids[j]) == 0) { snprintf(err, errlen, "expert uid %s given twice", uids[i]); goto fail_uids; }
        expert_cfg ec = {
            .cls = cls, .kcfg = c->kcfg, .opt = c->opt, .sched = c->sched, .max_batch_size = c->max_batch_size,
            .min_batch_size = c->min_batch_size, .batch_wait_ms = c->batch_wait_ms,
            .max_parallel_fwd = c->num_workers, .seed = node_expert_seed(c->seed, uids[i]), .pool = n->pool,
            .budget = &n->budget,
        };
        n->experts[i] = expert_new(l, uids[i], &ec, err, errlen);
        if (!n->experts[i]) goto fail_uids;
        n->n_experts++;
    }
    if (server_set_experts(n->srv, n->experts, n->n_experts) != 0) { snprintf(err, errlen, "out of memory"); goto fail_uids; }
    LOG_INFO("Server started with %d experts", n->n_experts);
    for (int i = 0; i < n->n_experts; i++) {
        const kern_model *m = expert_model(n->experts[i]);
        LOG_INFO("%s: %s, %zu parameters", expert_uid(n->experts[i]), cls->module_name, m->n_floats);
    }
    if (uids != c->expert_uids) uid_list_free(uids);
    return n;

fail_uids:
    if (uids != c->expert_uids) uid_list_free(uids);
fail:
    node_free(n);
    return NULL;
}

const wire_maddr *node_addr(const node *n, int i) { return i >= 0 && i < n->n_addrs ? &n->addrs[i] : NULL; }

expert *node_expert(const node *n, const char *uid) { return n->srv ? server_find(n->srv, uid) : NULL; }

int node_experts(const node *n, expert ***out)
{
    *out = n->experts;
    return n->n_experts;
}

void node_stop(node *n, void (*done)(void *), void *arg)
{
    if (n->stopping) return;
    n->stopping = 1;
    n->done = done;
    n->done_arg = arg;
    n->phase_deadline = rt_loop_now_ms(n->loop) + NODE_DRAIN_MS;
    server_shutdown(n->srv);
    for (int i = 0; i < n->n_experts; i++) expert_shutdown(n->experts[i]);
    rt_timer_start(&n->tick, NODE_POLL_MS, 1);
}

void node_free(node *n)
{
    if (!n) return;
    rt_timer_cancel(&n->tick);
    server_free(n->srv);
    for (int i = 0; i < n->n_experts; i++) expert_free(n->experts[i]);
    free(n->experts);
    n->experts = NULL;
    /* finish the jobs in flight before their owners are reaped */
    rt_pool_free(n->pool);
    n->pool = NULL;
    rt_actor_stop(&n->actor);
}
