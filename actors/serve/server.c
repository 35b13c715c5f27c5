/* server.c -- listeners, connections and the request router of a node (see server.h).
 *
 * Design notes. The server is an actor only so that the pool can mail it back the checks of big
 * requests (SRV_CHECKED: a req_check). A forward or backward request is first looked at on the loop
 * (uid, expert, shutting down: O(1)); its tensors -- decode, dtype, shape, rows, decompression, the
 * NaN/Inf scan, the activation-cache hash: O(bytes) -- are checked by req_check_run (req_check.c),
 * inline when the tensor payload is at most SERVER_INLINE_CHECK_BYTES, else on a worker. Both ways end in checked(),
 * which answers the error or mails the request to the expert. The request holds its connection (ref
 * and in-flight hold) and its frame's budget charge from the moment it is routed.
 */
#include "actors/serve/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "actors/node/metrics.h"
#include "actors/serve/req_check.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/rt_version.h"
#include "wire/wire_frame.h"

#define SERVER_MAX_LISTENERS 8
/* Tensor payloads up to this many bytes are checked on the loop. Measured on the 2-core dev box: the
 * NaN/Inf scan takes ~12 us per 64 KiB, a pool round trip (submit, worker wake-up, eventfd, completion
 * mail) adds 35-50 us of latency. Below 64 KiB the hop would delay the request more than the loop
 * time it saves; above it the scan (and any decompression, slower per byte) goes to a worker. */
#define SERVER_INLINE_CHECK_BYTES (64u << 10)

/* How often the connections' rate and idle time are looked at. */
#define SERVER_SWEEP_MS 250
/* msgpack objects a forward or backward request may hold: the envelope, then per tensor its map (4
 * pairs) and shape (at most WIRE_MAX_NDIM dims), with room to spare; anything bigger is not one. */
#define SERVER_REQ_OBJECTS(n_tensors) (64 + 32 * (size_t)(n_tensors))

enum { SRV_CHECKED = 1, SRV_SWEEP = 2 };

typedef struct srv_conn {
    conn *c;
    server *s;
    struct srv_conn *prev, *next;
} srv_conn;

#define SERVER_MAX_HANDLERS 4

struct server {
    rt_actor actor;            /* receives SRV_CHECKED from the pool */
    struct {
        char prefix[16];
        server_method_fn fn;
        void *arg;
    } handlers[SERVER_MAX_HANDLERS];
    int n_handlers;
    rt_loop *loop;
    server_cfg cfg;
    expert **experts;          /* sorted by uid */
    int n_experts;
    struct evconnlistener *listeners[SERVER_MAX_LISTENERS];
    int n_listeners;
    srv_conn *conns;
    int n_conns;
    uint64_t closed_in, closed_out;   /* bytes of connections already closed */
    int shutting;
    int no_forwards;           /* server_refuse_forwards: new forwards answered "shutting down" */
    uint64_t last_accepted_ms; /* loop time of the last expert request accepted */
    rt_timer sweep;            /* SRV_SWEEP: conn_tick on every connection */
    int reserve_fd;            /* a spare descriptor: closed to accept-and-close when out of them */
};

static int cmp_expert(const void *a, const void *b)
{
    return strcmp(expert_uid(*(expert *const *)a), expert_uid(*(expert *const *)b));
}

expert *server_find(const server *s, const char *uid)
{
    int lo = 0, hi = s->n_experts - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(uid, expert_uid(s->experts[mid]));
        if (c == 0) return s->experts[mid];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

/* ---- replies ---- */

/* Not even an error reply fits in memory: close the connection (after what is queued), so the caller
 * learns at once instead of waiting for a reply that never comes. */
static void no_memory_for_reply(conn *c)
{
    LOG_WARN("out of memory replying to %s: closing the connection", conn_peer(c));
    conn_close(c, 1);
}

static void reply_error(server *s, conn *c, uint64_t id, int code, const char *msg)
{
    metrics_std_error(s->cfg.met, code);
    wire_out *o = wire_error_reply(id, code, msg);
    if (o) conn_send(c, o);
    else no_memory_for_reply(c);
}


static void count_request(server *s, const char *method)
{
    if (!s->cfg.met) return;
    const char *labels[2] = {method, ""};
    metrics_inc(metrics_series(s->cfg.met->requests, labels), 1);
}

static void reply_ping(conn *c, uint64_t id)
{
    wire_out *o = wire_out_new();
    if (!o) { no_memory_for_reply(c); return; }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    wire_reply_begin(o, id);
    msgpack_packer *pk = wire_out_pk(o);
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "time");
    msgpack_pack_double(pk, (double)tv.tv_sec + tv.tv_usec / 1e6);
    conn_send(c, o);
}

static void reply_info(server *s, conn *c, const wire_msg *m)
{
    const msgpack_object *uo = wire_map_get(&m->root, "uid");
    wire_out *o = wire_out_new();
    if (!o) { reply_error(s, c, m->id, DMOE_ENOMEM, "out of memory building the reply"); return; }
    msgpack_packer *pk = wire_out_pk(o);
    if (uo && uo->type != MSGPACK_OBJECT_NIL) {
        char uid[256];
        if (wire_get_str(uo, uid, sizeof uid) != 0) {
            wire_out_free(o);
            reply_error(s, c, m->id, DMOE_EINVAL, "info: uid must be a string of at most 255 bytes");
            return;
        }
        expert *e = server_find(s, uid);
        if (!e) {
            wire_out_free(o);
            char msg[320];
            snprintf(msg, sizeof msg, "no expert %s on this node", uid);
            reply_error(s, c, m->id, DMOE_ENOEXPERT, msg);
            return;
        }
        wire_reply_begin(o, m->id);
        expert_pack_info(e, pk);
    } else {
        wire_reply_begin(o, m->id);
        msgpack_pack_map(pk, 2);
        wire_pack_str(pk, "experts");
        msgpack_pack_array(pk, (size_t)s->n_experts);
        for (int i = 0; i < s->n_experts; i++) expert_pack_info(s->experts[i], pk);
        wire_pack_str(pk, "node");
        msgpack_pack_map(pk, 4);
        wire_pack_str(pk, "version");
        wire_pack_str(pk, "dmoe " DMOE_VERSION);
        wire_pack_str(pk, "num_workers");
        msgpack_pack_int(pk, s->cfg.num_workers);
        wire_pack_str(pk, "max_frame");
        msgpack_pack_uint64(pk, s->cfg.limits.max_frame);
        wire_pack_str(pk, "connections");
        msgpack_pack_int(pk, s->n_conns);
    }
    conn_send(c, o);
}

/* ---- forward and backward: route, check (req_check.c), hand over ---- */

static void check_job(rt_job *j) { req_check_run((req_check *)j); }

/* The checks are done (loop thread): answer the error, or take the cached activations and hand the
 * request to its expert. Frees k. */
static void checked(req_check *k)
{
    ex_req *r = k->r;
    expert *e = k->e;
    if (k->rc != 0) {
        ex_reply_error(r, k->rc, k->err);
        free(k);
        return;
    }
    const kern_model *km = expert_model(e);
    const msgpack_object *h = r->dir == EX_BWD && k->hash ? wire_map_get(&r->wm->root, "handle") : NULL;
    if (h && h->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        r->cached = actcache_take(expert_cfg_get(e)->cache, h->via.u64, km, r->rows, r->in_hash);
    free(k);
    expert_submit(e, r);
}

/* A check dropped undelivered (the server stopped, or the pool shut down): the request goes too. */
static void check_drop(rt_msg *msg)
{
    req_check *k = (req_check *)msg;
    ex_reply_error(k->r, DMOE_ESHUTDOWN, "the node is stopping");
    free(k);
}

static void route_compute(server *s, conn *c, wire_msg *m, size_t charge, int dir)
{
    char err[384];
    int rc;
    char uid[256];
    const msgpack_object *uo = wire_map_get(&m->root, "uid");
    if (!uo || wire_get_str(uo, uid, sizeof uid) != 0) {
        rc = DMOE_EINVAL;
        snprintf(err, sizeof err, "%s: uid must be a string of at most 255 bytes", m->method);
        goto fail;
    }
    expert *e = server_find(s, uid);
    if (!e) {
        rc = DMOE_ENOEXPERT;
        snprintf(err, sizeof err, "no expert %s on this node", uid);
        goto fail;
    }
    if (s->shutting || (s->no_forwards && dir == EX_FWD)) {
        rc = DMOE_ESHUTDOWN;
        snprintf(err, sizeof err, "the node is stopping");
        goto fail;
    }
    s->last_accepted_ms = rt_loop_now_ms(s->loop);
    /* a forward's "save": false says no backward will bring its handle: nothing is kept for it */
    int save = dir == EX_FWD;
    const msgpack_object *so = dir == EX_FWD ? wire_map_get(&m->root, "save") : NULL;
    if (so && so->type != MSGPACK_OBJECT_BOOLEAN) {
        rc = DMOE_EINVAL;
        snprintf(err, sizeof err, "forward: save must be true or false");
        goto fail;
    }
    if (so) save = so->via.boolean;
    const kern_model *km = expert_model(e);
    const expert_cfg *ec = expert_cfg_get(e);
    size_t max_objects = SERVER_REQ_OBJECTS(km->n_in + (dir == EX_BWD ? km->n_out : 0));
    if (m->objects > max_objects) {
        rc = DMOE_ETOOBIG;
        snprintf(err, sizeof err, "%s request of %zu msgpack objects: this expert's schema allows at most %zu",
                 m->method, m->objects, max_objects);
        goto fail;
    }
    ex_req *r = calloc(1, sizeof *r);
    req_check *k = calloc(1, sizeof *k);
    if (!r || !k) {
        free(r);
        free(k);
        rc = DMOE_ENOMEM;
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    /* from here on the request owns the frame, the charge and a hold on the connection */
    r->c = c;
    conn_ref(c);
    conn_hold(c);
    r->id = m->id;
    r->dir = dir;
    r->wm = m;
    r->charge = charge;
    r->met = s->cfg.met;
    r->t_arrive_us = rt_clock_us();
    k->r = r;
    k->e = e;
    k->uid = expert_uid(e);
    k->n_in = km->n_in;
    k->n_out = km->n_out;
    memcpy(k->in, km->in, sizeof k->in);
    memcpy(k->out, km->out, sizeof k->out);
    k->max_batch_size = ec->max_batch_size;
    r->save = save;
    k->hash = ec->cache && km->cls->forward_save && (dir == EX_BWD || save);
    size_t bytes = req_payload_bytes(m, "inputs") + (dir == EX_BWD ? req_payload_bytes(m, "grad_outputs") : 0);
    if (bytes > SERVER_INLINE_CHECK_BYTES && ec->pool) {
        k->job.run = check_job;
        k->job.owner = &s->actor;
        k->job.msg.type = SRV_CHECKED;
        k->job.msg.drop = check_drop;
        if (rt_pool_submit(ec->pool, &k->job) == 0) return;
        k->rc = DMOE_ESHUTDOWN;   /* only when the pool is stopping */
        snprintf(k->err, sizeof k->err, "the node is stopping");
    } else {
        req_check_run(k);
    }
    checked(k);
    return;
fail:
    reply_error(s, c, m->id, rc, err);
    wire_msg_free(m);
    free(m);
    conn_uncharge(c, charge);
}

static void sweep(server *s)
{
    uint64_t now = rt_loop_now_ms(s->loop);
    srv_conn *sc = s->conns;
    while (sc) {
        srv_conn *next = sc->next;
        conn_tick(sc->c, now);   /* on_close may free sc */
        sc = next;
    }
}

static void server_handle(rt_actor *self, rt_msg *msg)
{
    if (msg->type == SRV_CHECKED) checked((req_check *)msg);
    else if (msg->type == SRV_SWEEP) { sweep((server *)self); rt_msg_drop(msg); }
    else rt_msg_drop(msg);
}

static void server_destroy(rt_actor *self)
{
    server *s = (server *)self;
    rt_timer_deinit(&s->sweep);
    free(s);
}

static void on_msg(conn *c, wire_msg *m, size_t charge, void *arg)
{
    srv_conn *sc = arg;
    server *s = sc->s;
    if (m->kind == WIRE_REQUEST) {
        if (strcmp(m->method, "forward") == 0) { route_compute(s, c, m, charge, EX_FWD); return; }
        if (strcmp(m->method, "backward") == 0) { route_compute(s, c, m, charge, EX_BWD); return; }
        for (int i = 0; i < s->n_handlers; i++)
            if (strncmp(m->method, s->handlers[i].prefix, strlen(s->handlers[i].prefix)) == 0) {
                conn_uncharge(c, charge);
                s->handlers[i].fn(s->handlers[i].arg, c, m);
                return;
            }
        if (strcmp(m->method, "ping") == 0) { reply_ping(c, m->id); count_request(s, "ping"); }
        else if (strcmp(m->method, "info") == 0) { reply_info(s, c, m); count_request(s, "info"); }
        else {
            char err[96];
            snprintf(err, sizeof err, "unknown method %.40s", m->method);
            reply_error(s, c, m->id, DMOE_ENOMETHOD, err);
        }
    } else {
        reply_error(s, c, m->id, DMOE_EINVAL, "a node takes requests, not replies");
    }
    wire_msg_free(m);
    free(m);
    conn_uncharge(c, charge);
}

/* The bytes a request will make the node allocate beyond its frame and tree (req_check_cost). */
static size_t request_cost(const server *s, const wire_msg *m)
{
    int dir = strcmp(m->method, "forward") == 0 ? EX_FWD : strcmp(m->method, "backward") == 0 ? EX_BWD : -1;
    char uid[256];
    const msgpack_object *uo = wire_map_get(&m->root, "uid");
    if (dir < 0 || !uo || wire_get_str(uo, uid, sizeof uid) != 0) return 0;
    expert *e = server_find(s, uid);
    if (!e) return 0;
    return req_check_cost(m, dir, expert_cfg_get(e)->max_batch_size);
}

static size_t on_cost(conn *c, const wire_msg *m, void *arg)
{
    srv_conn *sc = arg;
    return m->kind == WIRE_REQUEST ? request_cost(sc->s, m) : 0;
}

static void on_bad_frame(conn *c, uint64_t id, int code, const char *msg, void *arg)
{
    srv_conn *sc = arg;
    server *s = sc->s;
    reply_error(s, c, id, code, msg);
}

static void on_close(conn *c, int err, void *arg)
{
    srv_conn *sc = arg;
    server *s = sc->s;
    if (sc->prev) sc->prev->next = sc->next;
    else s->conns = sc->next;
    if (sc->next) sc->next->prev = sc->prev;
    s->n_conns--;
    s->closed_in += conn_bytes_in(c);
    s->closed_out += conn_bytes_out(c);
    LOG_DEBUG("connection from %s closed (%s)", conn_peer(c), err ? dmoe_strerror(err) : "ok");
    free(sc);
}

static const conn_ops server_ops = {on_msg, on_close, on_bad_frame, on_cost};

/* Make room for one more connection: close the one that has been quiet the longest (rather than
 * refuse the newcomer, so that idle or stalled connections cannot lock honest clients out). */
static void evict_one(server *s)
{
    srv_conn *oldest = NULL;
    for (srv_conn *sc = s->conns; sc; sc = sc->next)
        if (!oldest || conn_last_active_ms(sc->c) < conn_last_active_ms(oldest->c)) oldest = sc;
    if (!oldest) return;
    LOG_DEBUG("%d connections: closing the quietest, from %s", s->n_conns, conn_peer(oldest->c));
    conn_close(oldest->c, 0);   /* on_close frees oldest */
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int socklen, void *arg)
{
    server *s = arg;
    if (s->shutting) { evutil_closesocket(fd); return; }
    if (s->cfg.max_connections > 0)
        while (s->n_conns >= s->cfg.max_connections && s->conns) evict_one(s);
    srv_conn *sc = calloc(1, sizeof *sc);
    struct bufferevent *bev = bufferevent_socket_new(rt_loop_base(s->loop), fd, BEV_OPT_CLOSE_ON_FREE);
    if (!sc || !bev) {
        free(sc);
        if (bev) bufferevent_free(bev);
        else evutil_closesocket(fd);
        LOG_WARN("out of memory accepting a connection");
        return;
    }
    sc->s = s;
    sc->c = conn_new(s->loop, bev, &server_ops, sc, &s->cfg.limits);
    if (!sc->c) { free(sc); return; }
    sc->next = s->conns;
    if (s->conns) s->conns->prev = sc;
    s->conns = sc;
    s->n_conns++;
}

static void reenable_listener(evutil_socket_t fd, short what, void *arg) { evconnlistener_enable(arg); }

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    server *s = arg;
    int e = EVUTIL_SOCKET_ERROR();
    if (e != EMFILE && e != ENFILE) {
        LOG_WARN("accept failed: %s", evutil_socket_error_to_string(e));
        return;
    }
    /* Out of descriptors: the pending connections would wake the listener again at once. Spend the
     * spare descriptor to accept each and close it (the peer sees a clean close, not a hang), as
     * libuv and Redis do; without a spare, pause accepting briefly instead of spinning. */
    int dropped = 0;
    if (s->reserve_fd >= 0) {
        close(s->reserve_fd);
        s->reserve_fd = -1;
        for (int i = 0; i < 64; i++) {
            int fd = accept(evconnlistener_get_fd(lev), NULL, NULL);
            if (fd < 0) break;
            close(fd);
            dropped++;
        }
        s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    LOG_WARN("out of file descriptors: %d connection%s closed at accept", dropped, dropped == 1 ? "" : "s");
    if (s->reserve_fd < 0) {
        evconnlistener_disable(lev);
        struct timeval tv = {0, 100000};
        event_base_once(evconnlistener_get_base(lev), -1, EV_TIMEOUT, reenable_listener, lev, &tv);
    }
}

server *server_new(rt_loop *l, const server_cfg *cfg)
{
    server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    rt_actor_init(&s->actor, l, "server", server_handle, server_destroy);
    s->loop = l;
    s->cfg = *cfg;
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (rt_timer_init(&s->sweep, &s->actor, SRV_SWEEP) != 0) {
        if (s->reserve_fd >= 0) close(s->reserve_fd);
        free(s);
        return NULL;
    }
    if (cfg->limits.min_rate || cfg->limits.idle_timeout_s) rt_timer_start(&s->sweep, SERVER_SWEEP_MS, 1);
    return s;
}

int server_set_experts(server *s, expert **experts, int n)
{
    expert **copy = calloc((size_t)(n > 0 ? n : 1), sizeof *copy);
    if (!copy) return DMOE_ENOMEM;
    if (n > 0) memcpy(copy, experts, (size_t)n * sizeof *experts);
    qsort(copy, (size_t)n, sizeof *copy, cmp_expert);
    free(s->experts);
    s->experts = copy;
    s->n_experts = n;
    return 0;
}

int server_add_handler(server *s, const char *prefix, server_method_fn fn, void *arg)
{
    if (s->n_handlers == SERVER_MAX_HANDLERS || strlen(prefix) >= sizeof s->handlers[0].prefix) return DMOE_ETOOBIG;
    snprintf(s->handlers[s->n_handlers].prefix, sizeof s->handlers[0].prefix, "%s", prefix);
    s->handlers[s->n_handlers].fn = fn;
    s->handlers[s->n_handlers].arg = arg;
    s->n_handlers++;
    return 0;
}

int server_listen(server *s, const wire_maddr *addr, wire_maddr *bound, char *err, size_t errlen)
{
    if (s->n_listeners == SERVER_MAX_LISTENERS) {
        snprintf(err, errlen, "at most %d listening addresses", SERVER_MAX_LISTENERS);
        return DMOE_EINVAL;
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    if (wire_maddr_sockaddr(addr, &ss, &sl) != 0) {
        snprintf(err, errlen, "cannot listen on %s: not an IP address", addr->host);
        return DMOE_EINVAL;
    }
    struct evconnlistener *lev = evconnlistener_new_bind(rt_loop_base(s->loop), on_accept, s,
                                                         LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 511,
                                                         (struct sockaddr *)&ss, (int)sl);
    if (!lev) {
        snprintf(err, errlen, "cannot listen on %s:%u: %s", addr->host, (unsigned)addr->port,
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        return DMOE_EIO;
    }
    evconnlistener_set_error_cb(lev, on_accept_error);
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    getsockname(evconnlistener_get_fd(lev), (struct sockaddr *)&got, &gl);
    *bound = *addr;
    bound->port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                  : ((struct sockaddr_in *)&got)->sin_port);
    s->listeners[s->n_listeners++] = lev;
    return 0;
}

void server_shutdown(server *s)
{
    s->shutting = 1;
    for (int i = 0; i < s->n_listeners; i++) evconnlistener_disable(s->listeners[i]);
}

void server_refuse_forwards(server *s)
{
    s->no_forwards = 1;
}

uint64_t server_last_accepted_ms(const server *s) { return s->last_accepted_ms; }

void server_close_all(server *s)
{
    srv_conn *sc = s->conns;
    while (sc) {
        srv_conn *next = sc->next;
        conn_close(sc->c, 1);   /* on_close may free sc */
        sc = next;
    }
}

int server_connections(const server *s) { return s->n_conns; }

void server_bytes(const server *s, uint64_t *in, uint64_t *out)
{
    *in = s->closed_in;
    *out = s->closed_out;
    for (const srv_conn *sc = s->conns; sc; sc = sc->next) {
        *in += conn_bytes_in(sc->c);
        *out += conn_bytes_out(sc->c);
    }
}

void server_free(server *s)
{
    if (!s) return;
    for (int i = 0; i < s->n_listeners; i++) evconnlistener_free(s->listeners[i]);
    while (s->conns) conn_close(s->conns->c, 0);
    rt_timer_cancel(&s->sweep);
    if (s->reserve_fd >= 0) close(s->reserve_fd);
    s->reserve_fd = -1;
    free(s->experts);
    s->experts = NULL;
    s->n_experts = 0;
    rt_actor_stop(&s->actor);   /* reaped once no check of it is on the pool */
}
