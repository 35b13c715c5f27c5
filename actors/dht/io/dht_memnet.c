/* dht_memnet.c -- the in-memory DHT transport and the lookup measurement (see dht_memnet.h).
 *
 * Design notes. Every call is an mcall with a reference count: one reference for its timeout event,
 * one for its request on the way (which becomes the responder context at the destination, then the
 * reply event). The first of reply, timeout or shutdown marks it done and runs the callback; later
 * ones just drop their reference. Events sit in one binary min-heap ordered by (due time, sequence), so
 * messages with equal latency keep their order; the memnet's single timer is armed at the earliest
 * event. Bytes cross the network encoded, so the DHT under test runs exactly the decoders a socket
 * would feed. The timer and every due time are on the memnet's clock (dht_clock.h): on a virtual clock
 * the swarm runs with no sleep, as fast as the machine computes it, in the same order on every run.
 *
 * The measurement runs its own loop on a virtual clock: the latencies it reports are network time
 * (the hops times the link latency), not the machine's speed; run_s is the real time it took.
 */
#include "actors/dht/io/dht_memnet.h"

#include <arpa/inet.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_boot.h"
#include "actors/dht/dht_lookup.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

enum { ME_REQ = 1, ME_REP = 2, ME_TIMEOUT = 3 };
enum { MSG_TICK = 1 };

typedef struct mcall mcall;
struct mcall {
    dht_memnet *net;
    int from, to;
    dht_reply_fn cb;
    void *arg;
    int done, refs;
    mcall *prev, *next;         /* in its caller endpoint's list of calls not yet done */
};

typedef struct {
    uint64_t due, seq;
    int type;
    mcall *c;
    uint8_t *bytes;
    size_t len;
} event;

typedef struct {
    dht_memnet *net;
    dht *d;
    int index, down, bound;
    int host_of;                /* -1; else the endpoint whose IP this one shares (at port 7000 + k) */
    uint16_t port;
    int closed;                 /* dht_memnet_close_endpoint: its node's calls are refused */
    dht_memnet_traffic traffic;
    mcall *calls;               /* calls not yet done, newest first */
} endpoint;

struct dht_memnet {
    rt_actor actor;
    dht_clock *clock;
    dht_timer timer;
    uint32_t latency_ms;
    dht_memnet_latency_fn latency_fn;
    void *latency_arg;
    dht_memnet_filter_fn filter_fn;
    void *filter_arg;
    dht_memnet_intercept_fn intercept_fn;
    void *intercept_arg;
    endpoint **eps;             /* each malloc'd: its address is the transport's impl */
    size_t colocated;           /* endpoints added by dht_memnet_add_colocated */
    size_t n, cap;
    event *heap;
    size_t nh, caph;
    uint64_t seq, next_id, messages;
    uint64_t armed_at;
    int closed, holders;
};

/* ---- the event heap ---- */

static int ev_less(const event *a, const event *b) { return a->due < b->due || (a->due == b->due && a->seq < b->seq); }

/* arm sets the timer to wake the memnet at due (microseconds on its clock). On a virtual clock that
 * cannot grow, the memnet is woken by the next call instead (armed_at stays 0). */
static void arm(dht_memnet *net, uint64_t due)
{
    uint64_t now = dht_clock_us(net->clock);
    net->armed_at = due > now ? due : now;
    if (dht_timer_start(&net->timer, due > now ? (due - now + 999) / 1000 : 0, 0) != 0) net->armed_at = 0;
}

/* link_us returns the one-way delay from endpoint from to endpoint to, in microseconds. */
static uint64_t link_us(const dht_memnet *net, int from, int to)
{
    uint32_t ms = net->latency_fn && from >= 0 && to >= 0 ? net->latency_fn(net->latency_arg, from, to)
                                                             : net->latency_ms;
    return (uint64_t)ms * 1000;
}

/* dropped asks the filter whether the message from -> to (reply: the way back) is lost. */
static int dropped(const dht_memnet *net, int from, int to, int reply)
{
    return net->filter_fn && net->filter_fn(net->filter_arg, from, to, reply);
}

/* count_sent charges a message of len bytes to endpoint i's sent traffic. */
static void count_sent(dht_memnet *net, int i, size_t len)
{
    if (i < 0) return;
    net->eps[i]->traffic.sent_msgs++;
    net->eps[i]->traffic.sent_bytes += len;
}

/* count_recv charges a message of len bytes to endpoint i's received traffic. */
static void count_recv(dht_memnet *net, int i, size_t len)
{
    if (i < 0) return;
    net->eps[i]->traffic.recv_msgs++;
    net->eps[i]->traffic.recv_bytes += len;
}

static int push(dht_memnet *net, int type, uint64_t due, mcall *c, uint8_t *bytes, size_t len)
{
    if (net->nh == net->caph) {
        size_t cap = net->caph ? net->caph * 2 : 256;
        event *h = realloc(net->heap, cap * sizeof *h);
        if (!h) return DMOE_ENOMEM;
        net->heap = h;
        net->caph = cap;
    }
    size_t i = net->nh++;
    event e = { due, net->seq++, type, c, bytes, len };
    while (i > 0 && ev_less(&e, &net->heap[(i - 1) / 2])) {
        net->heap[i] = net->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    net->heap[i] = e;
    if (net->armed_at == 0 || due < net->armed_at) arm(net, due);
    return 0;
}

static event pop(dht_memnet *net)
{
    event top = net->heap[0], last = net->heap[--net->nh];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const event *best = &last;
        if (l < net->nh && ev_less(&net->heap[l], best)) { m = l; best = &net->heap[l]; }
        if (r < net->nh && ev_less(&net->heap[r], best)) { m = r; best = &net->heap[r]; }
        if (m == i) break;
        net->heap[i] = net->heap[m];
        i = m;
    }
    if (net->nh) net->heap[i] = last;
    return top;
}

/* ---- calls ---- */

static void net_maybe_free(dht_memnet *net);

static void unref(mcall *c)
{
    if (--c->refs == 0) free(c);
}

static void complete(mcall *c, int err, const char *msg, const wire_msg *reply)
{
    if (c->done) return;
    c->done = 1;
    if (c->from >= 0) {
        endpoint *ep = c->net->eps[c->from];
        if (c->prev) c->prev->next = c->next;
        else ep->calls = c->next;
        if (c->next) c->next->prev = c->prev;
    }
    c->cb(c->arg, err, msg, reply);
}

static uint64_t mem_next_id(void *impl)
{
    endpoint *ep = impl;
    return ++ep->net->next_id;
}

static int addr_index(const dht_memnet *net, const wire_maddr *to)
{
    struct in_addr a;
    if (to->family != AF_INET || inet_pton(AF_INET, to->host, &a) != 1) return -1;
    uint32_t ip = ntohl(a.s_addr);
    if ((ip >> 24) != 10) return -1;
    long i = (long)(ip & 0xFFFFFF) - 1;
    if (i < 0 || (size_t)i >= net->n) return -1;
    if (to->port == 7000) return net->eps[i]->host_of < 0 ? (int)i : -1;
    for (size_t j = 0; j < net->n && net->colocated; j++)   /* a test's colocated endpoints: few */
        if (net->eps[j]->host_of == i && net->eps[j]->port == to->port) return (int)j;
    return -1;
}

static int mem_call(void *impl, const wire_maddr *to, uint64_t id, wire_out *req, uint64_t timeout_ms, dht_reply_fn cb,
                    void *arg)
{
    endpoint *self = impl;
    dht_memnet *net = self->net;
    uint8_t *bytes;
    size_t len;
    if (net->closed || self->closed) {
        wire_out_free(req);
        return DMOE_ESHUTDOWN;
    }
    if (wire_out_flatten(req, &bytes, &len) != 0) return DMOE_ENOMEM;
    mcall *c = calloc(1, sizeof *c);
    if (!c) {
        free(bytes);
        return DMOE_ENOMEM;
    }
    *c = (mcall){ net, self->index, addr_index(net, to), cb, arg, 0, 2, NULL, NULL };
    uint64_t now = dht_clock_us(net->clock);
    if (push(net, ME_TIMEOUT, now + timeout_ms * 1000, c, NULL, 0) != 0) {
        free(bytes);
        free(c);
        return DMOE_ENOMEM;
    }
    c->next = self->calls;
    if (self->calls) self->calls->prev = c;
    self->calls = c;
    count_sent(net, c->from, len);
    if (dropped(net, c->from, c->to, 0)) {   /* lost on the way: the timeout event completes the call */
        free(bytes);
        c->refs--;
    } else if (push(net, ME_REQ, now + link_us(net, c->from, c->to), c, bytes, len) != 0) {
        free(bytes);
        c->refs--;   /* the timeout event stays and completes the call */
    }
    return 0;
}

/* The responder context of a delivered request. */
typedef struct {
    dht_memnet *net;
    mcall *c;
} responder;

static void respond(void *ctx, wire_out *reply)
{
    responder *r = ctx;
    dht_memnet *net = r->net;
    mcall *c = r->c;
    free(r);
    net->holders--;
    uint8_t *bytes = NULL;
    size_t len = 0;
    int sent = 0;
    if (reply && !net->closed && !c->done && c->to >= 0 && !net->eps[c->to]->down &&
        wire_out_flatten(reply, &bytes, &len) == 0) {
        reply = NULL;
        count_sent(net, c->to, len);
        if (dropped(net, c->to, c->from, 1)) free(bytes);
        else if (push(net, ME_REP, dht_clock_us(net->clock) + link_us(net, c->to, c->from), c, bytes, len) == 0) sent = 1;
        else free(bytes);
    }
    wire_out_free(reply);
    if (!sent) unref(c);
    net_maybe_free(net);
}

static void deliver_request(dht_memnet *net, event *e)
{
    mcall *c = e->c;
    endpoint *ep = c->to >= 0 ? net->eps[c->to] : NULL;
    if ((ep && ep->down) || c->done) {   /* a crashed host: the request vanishes, the caller times out */
        free(e->bytes);
        unref(c);
        return;
    }
    if (!ep || !ep->bound) {
        free(e->bytes);
        complete(c, DMOE_ECONN, "connection refused (no DHT node at that address)", NULL);
        unref(c);
        return;
    }
    count_recv(net, c->to, e->len);
    wire_msg *m = calloc(1, sizeof *m);
    responder *r = malloc(sizeof *r);
    char err[128] = "";
    if (!m || !r || wire_msg_decode(e->bytes, e->len, m, err, sizeof err) != 0) {
        if (!m || !r) free(e->bytes);
        free(m);
        free(r);
        unref(c);
        return;
    }
    net->messages++;
    *r = (responder){ net, c };
    net->holders++;
    char from[DHT_HOST_MAX] = "?";
    if (c->from >= 0) {
        const endpoint *src = net->eps[c->from];
        uint32_t ip = (10u << 24) | (uint32_t)((src->host_of < 0 ? src->index : src->host_of) + 1);
        snprintf(from, sizeof from, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
    }
    if (net->intercept_fn) net->intercept_fn(net->intercept_arg, c->to, ep->d, m, from, respond, r);
    else dht_node_deliver(ep->d, m, from, respond, r);
}

static void deliver_reply(dht_memnet *net, event *e)
{
    mcall *c = e->c;
    wire_msg m;
    char err[128] = "";
    if (c->done) {
        free(e->bytes);
    } else if (count_recv(net, c->from, e->len), wire_msg_decode(e->bytes, e->len, &m, err, sizeof err) != 0) {
        complete(c, DMOE_EPROTO, err, NULL);
    } else {
        if (m.kind == WIRE_REPLY_OK) complete(c, 0, "", &m);
        else if (m.kind == WIRE_REPLY_ERR) complete(c, m.err_code, m.err_msg, &m);
        else complete(c, DMOE_EPROTO, "the peer answered with a request", NULL);
        wire_msg_free(&m);
    }
    unref(c);
}

static void run_event(dht_memnet *net, event *e)
{
    if (e->type == ME_REQ) deliver_request(net, e);
    else if (e->type == ME_REP) deliver_reply(net, e);
    else {
        complete(e->c, DMOE_ETIMEDOUT, "no reply within the timeout", NULL);
        unref(e->c);
    }
}

static void handle(rt_actor *self, rt_msg *msg)
{
    dht_memnet *net = (dht_memnet *)self;
    net->armed_at = 0;
    uint64_t now = dht_clock_us(net->clock);
    for (int i = 0; i < DHT_MEMNET_BATCH && net->nh && net->heap[0].due <= now; i++) {
        event e = pop(net);
        run_event(net, &e);
    }
    if (net->nh && net->armed_at == 0) arm(net, net->heap[0].due);
    rt_msg_drop(msg);
}

static void destroy(rt_actor *self)
{
    dht_memnet *net = (dht_memnet *)self;
    dht_timer_deinit(&net->timer);
    for (size_t i = 0; i < net->n; i++) free(net->eps[i]);
    free(net->eps);
    free(net->heap);
    free(net);
}

static void net_maybe_free(dht_memnet *net)
{
    if (net->closed == 1 && net->holders == 0) {
        net->closed = 2;
        rt_actor_stop(&net->actor);
    }
}

int dht_memnet_new(rt_loop *l, dht_clock *c, uint32_t latency_ms, dht_memnet **out)
{
    dht_memnet *net = calloc(1, sizeof *net);
    if (!net) return DMOE_ENOMEM;
    rt_actor_init(&net->actor, l, "dht_memnet", handle, destroy);
    net->clock = c ? c : dht_clock_real();
    if (dht_timer_init(&net->timer, net->clock, &net->actor, MSG_TICK) != 0) {
        dht_timer_deinit(&net->timer);
        free(net);
        return DMOE_ENOMEM;
    }
    net->latency_ms = latency_ms;
    *out = net;
    return 0;
}

/* add_endpoint appends an endpoint at IP 10.x.y.z of endpoint host_of (-1: its own) and port. */
static int add_endpoint(dht_memnet *net, int host_of, uint16_t port, dht_addr *addr, dht_transport *t)
{
    if (net->n >= DHT_MEMNET_MAX_NODES - 1) return DMOE_ETOOBIG;
    if (net->n == net->cap) {
        size_t cap = net->cap ? net->cap * 2 : 64;
        endpoint **e = realloc(net->eps, cap * sizeof *e);
        if (!e) return DMOE_ENOMEM;
        net->eps = e;
        net->cap = cap;
    }
    endpoint *ep = calloc(1, sizeof *ep);
    if (!ep) return DMOE_ENOMEM;
    ep->net = net;
    int i = (int)net->n++;
    ep->index = i;
    ep->host_of = host_of;
    ep->port = port;
    net->eps[i] = ep;
    uint32_t ip = (10u << 24) | (uint32_t)((host_of < 0 ? i : host_of) + 1);
    memset(addr, 0, sizeof *addr);
    snprintf(addr->host, sizeof addr->host, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
    addr->port = port;
    t->impl = ep;
    t->next_id = mem_next_id;
    t->call = mem_call;
    return i;
}

int dht_memnet_add(dht_memnet *net, dht_addr *addr, dht_transport *t)
{
    return add_endpoint(net, -1, 7000, addr, t);
}

int dht_memnet_add_colocated(dht_memnet *net, int with, dht_addr *addr, dht_transport *t)
{
    if (with < 0 || (size_t)with >= net->n || net->eps[with]->host_of >= 0) return DMOE_EINVAL;
    if (net->colocated >= 65535 - 7000) return DMOE_ETOOBIG;
    int rc = add_endpoint(net, with, (uint16_t)(7001 + net->colocated), addr, t);
    if (rc >= 0) net->colocated++;
    return rc;
}

void dht_memnet_bind(dht_memnet *net, int i, dht *d)
{
    if (i < 0 || (size_t)i >= net->n) return;
    net->eps[i]->d = d;
    net->eps[i]->bound = d != NULL;
    if (d) net->eps[i]->closed = 0;
}

void dht_memnet_set_down(dht_memnet *net, int i, int down)
{
    if (i >= 0 && (size_t)i < net->n) net->eps[i]->down = down;
}

void dht_memnet_close_endpoint(dht_memnet *net, int i)
{
    if (i < 0 || (size_t)i >= net->n) return;
    endpoint *ep = net->eps[i];
    ep->bound = 0;
    ep->d = NULL;
    ep->closed = 1;
    while (ep->calls) complete(ep->calls, DMOE_ESHUTDOWN, "the endpoint left the network", NULL);
}

void dht_memnet_set_filter(dht_memnet *net, dht_memnet_filter_fn fn, void *arg)
{
    net->filter_fn = fn;
    net->filter_arg = arg;
}

void dht_memnet_set_intercept(dht_memnet *net, dht_memnet_intercept_fn fn, void *arg)
{
    net->intercept_fn = fn;
    net->intercept_arg = arg;
}

dht_memnet_traffic dht_memnet_traffic_of(const dht_memnet *net, int i)
{
    dht_memnet_traffic z = { 0, 0, 0, 0 };
    return i >= 0 && (size_t)i < net->n ? net->eps[i]->traffic : z;
}

size_t dht_memnet_pending(const dht_memnet *net) { return net->nh; }

void dht_memnet_set_latency(dht_memnet *net, dht_memnet_latency_fn fn, void *arg)
{
    net->latency_fn = fn;
    net->latency_arg = arg;
}

uint64_t dht_memnet_messages(const dht_memnet *net) { return net->messages; }

void dht_memnet_free(dht_memnet *net)
{
    if (!net || net->closed) return;
    net->closed = 1;
    dht_timer_cancel(&net->timer);
    /* Fail every call first (callbacks may start nothing new: mem_call refuses once closed), then drop
     * the events and their references. */
    for (size_t i = 0; i < net->nh; i++) complete(net->heap[i].c, DMOE_ESHUTDOWN, "the network is shut down", NULL);
    while (net->nh) {
        event e = pop(net);
        free(e.bytes);
        unref(e.c);
    }
    for (size_t i = 0; i < net->n; i++) net->eps[i]->bound = 0;
    net_maybe_free(net);
}

/* ---- measurement: hops and latency of gets on a memnet ---- */

/* Operations in flight while measuring: enough to keep the loop busy, few enough not to queue. */
#define MEASURE_CONCURRENCY 16
/* Virtual seconds a measurement may take: far beyond what 1,024 nodes need, a bound in case of a bug. */
#define MEASURE_LIMIT_S 300

typedef struct measure measure;

typedef struct {
    measure *ms;
    size_t i;
    uint64_t t0;
} op_ctx;

struct measure {
    rt_loop *l;
    dht_clock *clock;
    dht_memnet *net;
    dht **nodes;
    size_t n, nkeys;
    uint64_t rng;
    dht_id *keys;
    op_ctx *ops;
    int *hops;
    double *lat_ms;
    size_t *rpcs;
    size_t next, done, found;
    int phase, finished;
};

static uint64_t ms_rand(measure *ms)
{
    uint64_t z = (ms->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void ms_pump(measure *ms);

static void ms_booted(void *arg, int err, const char *msg)
{
    measure *ms = arg;
    if (err) LOG_WARN("measure: a node failed to bootstrap: %s", msg);
    ms->done++;
    ms_pump(ms);
}

static void ms_stored(void *arg, int err, const char *msg, size_t n_stored)
{
    measure *ms = arg;
    ms->done++;
    ms_pump(ms);
}

static void ms_got(void *arg, int err, const char *msg, const dht_get_result *r)
{
    op_ctx *o = arg;
    measure *ms = o->ms;
    ms->lat_ms[o->i] = (double)(dht_clock_us(ms->clock) - o->t0) / 1000.0;
    ms->hops[o->i] = r->found ? r->hops : -1;
    ms->rpcs[o->i] = r->rpcs;
    ms->found += r->found;
    ms->done++;
    ms_pump(ms);
}

static void ms_start_one(measure *ms, size_t i)
{
    if (ms->phase == 0) {
        char text[WIRE_MADDR_TEXT];
        dht_node_maddr(ms->nodes[ms_rand(ms) % i], text, sizeof text);
        const char *peers[1] = { text };
        char err[256];
        if (dht_node_bootstrap(ms->nodes[i], peers, 1, ms_booted, ms, err, sizeof err) != 0) ms->done++;
    } else if (ms->phase == 1) {
        uint8_t v[9] = { 0xcf };
        for (int b = 0; b < 8; b++) v[1 + b] = (uint8_t)(i >> (56 - 8 * b));
        double exp = dht_node_now(ms->nodes[0]) + 600;
        if (dht_store(ms->nodes[ms_rand(ms) % ms->n], &ms->keys[i], NULL, 0, v, sizeof v, exp, ms_stored, ms) != 0)
            ms->done++;
    } else {
        op_ctx *o = &ms->ops[i];
        *o = (op_ctx){ ms, i, dht_clock_us(ms->clock) };
        if (dht_get(ms->nodes[ms_rand(ms) % ms->n], &ms->keys[i], 0, ms_got, o) != 0) {
            ms->hops[i] = -1;
            ms->done++;
        }
    }
}

/* ms_pump keeps MEASURE_CONCURRENCY operations of the current phase in flight, then moves on. */
static void ms_pump(measure *ms)
{
    size_t total = ms->phase == 0 ? ms->n : ms->nkeys;
    if (ms->done == total) {
        if (ms->phase == 2) {
            ms->finished = 1;
            return;
        }
        ms->phase++;
        ms->next = ms->done = 0;
        if (ms->phase == 2) ms->rng ^= 0x1234;
        total = ms->nkeys;
    }
    if (ms->phase == 0 && ms->next == 0) {   /* node 0 starts the network */
        ms->next = 1;
        ms->done = 1;
    }
    while (ms->next < total && ms->next - ms->done < MEASURE_CONCURRENCY) ms_start_one(ms, ms->next++);
    if (ms->done == total) ms_pump(ms);
}

static int ms_finished(void *arg) { return ((measure *)arg)->finished; }

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static void ms_stats(measure *ms, dht_memnet_stats *out)
{
    size_t nf = 0, rpcs = 0;
    double hsum = 0;
    int *h = malloc((ms->nkeys + 1) * sizeof *h);
    double *lat = malloc((ms->nkeys + 1) * sizeof *lat);
    for (size_t i = 0; h && lat && i < ms->nkeys; i++) {
        rpcs += ms->rpcs[i];
        if (ms->hops[i] < 0) continue;
        h[nf] = ms->hops[i];
        lat[nf] = ms->lat_ms[i];
        hsum += h[nf];
        nf++;
    }
    memset(out, 0, sizeof *out);
    out->nodes = ms->n;
    out->lookups = ms->nkeys;
    out->found = ms->found;
    if (nf && h && lat) {
        qsort(h, nf, sizeof *h, cmp_int);
        qsort(lat, nf, sizeof *lat, cmp_double);
        out->hops_mean = hsum / (double)nf;
        out->hops_p50 = h[nf / 2];
        out->hops_p99 = h[(nf * 99) / 100 < nf ? (nf * 99) / 100 : nf - 1];
        out->hops_max = h[nf - 1];
        out->lat_p50_ms = lat[nf / 2];
        out->lat_p99_ms = lat[(nf * 99) / 100 < nf ? (nf * 99) / 100 : nf - 1];
    }
    out->rpcs_per_lookup = ms->nkeys ? (double)rpcs / (double)ms->nkeys : 0;
    free(h);
    free(lat);
}

int dht_memnet_measure(size_t n_nodes, size_t n_lookups, uint32_t latency_ms, uint64_t seed, dht_memnet_stats *out)
{
    if (n_nodes < 2 || n_lookups == 0) return DMOE_EINVAL;
    measure ms;
    memset(&ms, 0, sizeof ms);
    ms.n = n_nodes;
    ms.nkeys = n_lookups;
    ms.rng = seed;
    ms.l = rt_loop_new();
    ms.nodes = calloc(n_nodes, sizeof *ms.nodes);
    ms.keys = calloc(n_lookups, sizeof *ms.keys);
    ms.ops = calloc(n_lookups, sizeof *ms.ops);
    ms.hops = calloc(n_lookups, sizeof *ms.hops);
    ms.lat_ms = calloc(n_lookups, sizeof *ms.lat_ms);
    ms.rpcs = calloc(n_lookups, sizeof *ms.rpcs);
    int rc = DMOE_ENOMEM;
    if (!ms.l || !ms.nodes || !ms.keys || !ms.ops || !ms.hops || !ms.lat_ms || !ms.rpcs ||
        dht_vclock_new(ms.l, &ms.clock) != 0 || dht_memnet_new(ms.l, ms.clock, latency_ms, &ms.net) != 0)
        goto out;
    for (size_t i = 0; i < n_nodes; i++) {
        dht_cfg c;
        dht_transport t;
        dht_cfg_default(&c);
        dht_ident key;
        c.seed = seed * 1000003u + i;
        if (dht_ident_for_test(&key, c.seed) != 0) goto out;
        c.ident = &key;
        c.refresh_period_s = -1;
        c.no_cache = 1;
        c.rpc_timeout_ms = 2000;
        c.clock = ms.clock;
        int ep = dht_memnet_add(ms.net, &c.addr, &t);
        if (ep < 0 || dht_node_new(ms.l, &c, &t, &ms.nodes[i]) != 0) goto out;
        dht_memnet_bind(ms.net, ep, ms.nodes[i]);
    }
    for (size_t i = 0; i < n_lookups; i++) {
        char name[32];
        int len = snprintf(name, sizeof name, "measure.%zu", i);
        dht_id_from_str(&ms.keys[i], name, (size_t)len);
    }
    uint64_t t0 = rt_clock_us();
    ms_pump(&ms);
    rc = dht_vclock_run(ms.clock, ms_finished, &ms, (uint64_t)MEASURE_LIMIT_S * 1000) ? 0 : DMOE_ETIMEDOUT;
    if (rc == 0) {
        ms_stats(&ms, out);
        out->run_s = (double)(rt_clock_us() - t0) / 1e6;
    }
out:
    for (size_t i = 0; ms.nodes && i < n_nodes; i++)
        if (ms.nodes[i]) dht_node_stop(ms.nodes[i]);
    dht_memnet_free(ms.net);
    for (size_t i = 0; ms.nodes && i < n_nodes; i++) dht_node_free(ms.nodes[i]);
    if (ms.l) rt_loop_free(ms.l);
    dht_vclock_free(ms.clock);
    free(ms.nodes);
    free(ms.keys);
    free(ms.ops);
    free(ms.hops);
    free(ms.lat_ms);
    free(ms.rpcs);
    return rc;
}
