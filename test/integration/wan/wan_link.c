/* wan_link.c -- the link emulator (see wan_link.h).
 *
 * Design notes. Each accepted connection is a pair of bufferevents (0: the client's side, 1: the
 * target's) and two directions: d[0] reads side 0 and writes side 1 (up), d[1] the reverse (down). A
 * read cuts what arrived into chunks of at most WAN_LINK_CHUNK bytes and stamps each with its delivery
 * time: the link's per-direction clock free_at advances by len / rate (the time the chunk occupies the
 * wire, shared by all pairs), then the one-way delay and the jitter are added, never earlier than the
 * chunk before it. A timer per direction writes the chunks that are due. Back-pressure: a direction with
 * WAN_LINK_MAX_QUEUE bytes queued, or its output side holding as much unsent, stops reading its input
 * side until it drains (the bytes left in the input buffer are taken when reading resumes). A closed
 * side closes the pair once what it sent has been delivered. A hold partition stops every read and
 * every delivery (timers fire and do nothing); healing resumes them, so what was held is delivered at
 * once, in order. A drop partition resets everything (SO_LINGER 0, then close) and new connections.
 */
#include "test/integration/wan/wan_link.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct chunk {
    struct chunk *next;
    uint64_t at_us;
    size_t len;
    unsigned char data[];
} chunk;

typedef struct pair pair;

typedef struct {
    pair *p;
    int up;                   /* 1: client -> target */
    int in, out;              /* indices of the sides it reads and writes */
    chunk *head, *tail;
    size_t queued;
    uint64_t last_at;
    struct event *timer;
    int eof;                  /* its input side closed: close the pair once the queue is delivered */
} dir;

struct pair {
    wan_link *w;
    struct bufferevent *bev[2];
    dir d[2];
    pair *prev, *next;
};

struct wan_link {
    struct event_base *base;
    struct evconnlistener *lev;
    struct sockaddr_storage target;
    socklen_t tlen;
    wan_link_cfg cfg;
    int mode;
    uint64_t free_at[2];      /* per direction (index: up) */
    pair *pairs;
    int n;
    uint64_t rng;
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* uniform in [0, 1): xorshift64*, seeded once per link */
static double uniform(wan_link *w)
{
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return (double)((w->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static void pair_free(pair *p)
{
    wan_link *w = p->w;
    for (int i = 0; i < 2; i++) {
        dir *d = &p->d[i];
        while (d->head) {
            chunk *c = d->head;
            d->head = c->next;
            free(c);
        }
        if (d->timer) event_free(d->timer);
        if (p->bev[i]) bufferevent_free(p->bev[i]);
    }
    if (p->prev) p->prev->next = p->next;
    else w->pairs = p->next;
    if (p->next) p->next->prev = p->prev;
    w->n--;
    free(p);
}

/* rst_close resets fd's connection (an RST instead of a FIN) and closes it. */
static void rst_close(evutil_socket_t fd)
{
    struct linger lg = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    evutil_closesocket(fd);
}

static void pair_reset(pair *p)
{
    for (int i = 0; i < 2; i++) {
        evutil_socket_t fd = bufferevent_getfd(p->bev[i]);
        if (fd >= 0) {
            struct linger lg = { 1, 0 };
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
    }
    pair_free(p);
}

static size_t unsent(const pair *p, int side) { return evbuffer_get_length(bufferevent_get_output(p->bev[side])); }

static void schedule(dir *d)
{
    if (!d->head) return;
    uint64_t now = now_us();
    uint64_t wait = d->head->at_us > now ? d->head->at_us - now : 0;
    struct timeval tv = { (time_t)(wait / 1000000u), (suseconds_t)(wait % 1000000u) };
    evtimer_add(d->timer, &tv);
}

/* closed_and_done: a closed side's data is all delivered and flushed: the pair goes. Returns 1 if freed. */
static int closed_and_done(pair *p)
{
    for (int i = 0; i < 2; i++) {
        dir *d = &p->d[i];
        if (d->eof && !d->head && unsent(p, d->out) == 0) {
            pair_free(p);
            return 1;
        }
    }
    return 0;
}

static void take(dir *d);

/* deliver writes the chunks of d that are due, as far as its output side has room. Returns 1 when that
 * finished a closed pair (freed). */
static int deliver(dir *d)
{
    pair *p = d->p;
    wan_link *w = p->w;
    if (w->mode != WAN_OPEN) return 0;
    uint64_t now = now_us();
    while (d->head && d->head->at_us <= now + 200 && unsent(p, d->out) < WAN_LINK_MAX_QUEUE) {
        chunk *c = d->head;
        bufferevent_write(p->bev[d->out], c->data, c->len);
        d->head = c->next;
        if (!d->head) d->tail = NULL;
        d->queued -= c->len;
        free(c);
    }
    if (closed_and_done(p)) return 1;
    if (!d->eof && d->queued < WAN_LINK_MAX_QUEUE / 2) {
        bufferevent_enable(p->bev[d->in], EV_READ);
        take(d);
    }
    schedule(d);
    return 0;
}

/* take queues what side d->in has buffered, stamped with its delivery times. */
static void take(dir *d)
{
    pair *p = d->p;
    wan_link *w = p->w;
    struct evbuffer *in = bufferevent_get_input(p->bev[d->in]);
    size_t n;
    while ((n = evbuffer_get_length(in)) > 0 && d->queued < WAN_LINK_MAX_QUEUE) {
        size_t len = n < WAN_LINK_CHUNK ? n : WAN_LINK_CHUNK;
        chunk *c = malloc(sizeof *c + len);
        if (!c) break;
        evbuffer_remove(in, c->data, len);
        c->len = len;
        c->next = NULL;
        uint64_t now = now_us(), start = w->free_at[d->up] > now ? w->free_at[d->up] : now;
        w->free_at[d->up] = start + (w->cfg.rate_kib_s > 0 ? (uint64_t)((double)len * 1e6 / (w->cfg.rate_kib_s * 1024)) : 0);
        uint64_t at = w->free_at[d->up] + (uint64_t)((w->cfg.delay_ms + w->cfg.jitter_ms * uniform(w)) * 1000);
        if (at < d->last_at) at = d->last_at;   /* in order, as TCP delivers */
        d->last_at = c->at_us = at;
        if (d->tail) d->tail->next = c;
        else d->head = c;
        d->tail = c;
        d->queued += len;
    }
    if (d->queued >= WAN_LINK_MAX_QUEUE) bufferevent_disable(p->bev[d->in], EV_READ);
    schedule(d);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) { (void)deliver(arg); }

static void on_read(struct bufferevent *bev, void *arg)
{
    pair *p = arg;
    dir *d = &p->d[bev == p->bev[1]];
    if (p->w->mode != WAN_OPEN) { bufferevent_disable(bev, EV_READ); return; }
    take(d);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    pair *p = arg;
    (void)deliver(&p->d[bev == p->bev[0]]);   /* the direction that writes this side */
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    pair *p = arg;
    int side = bev == p->bev[1];
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        return;
    }
    if (what & BEV_EVENT_ERROR) {   /* refused or reset: the other side is reset too */
        pair_reset(p);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        dir *d = &p->d[side];
        take(d);   /* the last bytes before the FIN */
        d->eof = 1;
        bufferevent_disable(bev, EV_READ);
        closed_and_done(p);
    }
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *addr, int len, void *arg)
{
    wan_link *w = arg;
    if (w->mode == WAN_DROP) { rst_close(fd); return; }
    pair *p = calloc(1, sizeof *p);
    if (!p) { evutil_closesocket(fd); return; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    p->w = w;
    p->bev[0] = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    p->bev[1] = bufferevent_socket_new(w->base, -1, BEV_OPT_CLOSE_ON_FREE);
    p->next = w->pairs;
    if (w->pairs) w->pairs->prev = p;
    w->pairs = p;
    w->n++;
    if (!p->bev[0] || !p->bev[1]) {
        if (!p->bev[0]) evutil_closesocket(fd);
        pair_free(p);
        return;
    }
    for (int i = 0; i < 2; i++) {
        p->d[i] = (dir){ .p = p, .up = i == 0, .in = i, .out = 1 - i };
        p->d[i].timer = evtimer_new(w->base, on_timer, &p->d[i]);
        if (!p->d[i].timer) { pair_free(p); return; }
        bufferevent_setcb(p->bev[i], on_read, on_write, on_event, p);
    }
    if (bufferevent_socket_connect(p->bev[1], (struct sockaddr *)&w->target, (int)w->tlen) != 0) {
        pair_reset(p);
        return;
    }
    if (w->mode == WAN_OPEN)
        for (int i = 0; i < 2; i++) bufferevent_enable(p->bev[i], EV_READ);
}

wan_link *wan_link_new(struct event_base *base, const struct sockaddr *listen_addr, socklen_t listen_len,
                       const struct sockaddr *target, socklen_t target_len, const wan_link_cfg *cfg, char *err,
                       size_t errlen)
{
    wan_link *w = calloc(1, sizeof *w);
    if (!w || target_len > sizeof w->target) {
        snprintf(err, errlen, "out of memory");
        free(w);
        return NULL;
    }
    w->base = base;
    memcpy(&w->target, target, target_len);
    w->tlen = target_len;
    w->cfg = *cfg;
    w->rng = 0x9e3779b97f4a7c15ull ^ now_us() ^ ((uint64_t)getpid() << 32);
    w->lev = evconnlistener_new_bind(base, on_accept, w, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE, 128, listen_addr,
                                     (int)listen_len);
    if (!w->lev) {
        snprintf(err, errlen, "cannot listen: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        free(w);
        return NULL;
    }
    return w;
}

int wan_link_port(const wan_link *w)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(evconnlistener_get_fd(w->lev), (struct sockaddr *)&ss, &len) != 0) return -1;
    return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
}

void wan_link_set(wan_link *w, const wan_link_cfg *cfg) { w->cfg = *cfg; }

void wan_link_partition(wan_link *w, int mode)
{
    w->mode = mode;
    if (mode == WAN_DROP) {
        wan_link_reset(w);
        return;
    }
    for (pair *p = w->pairs, *next; p; p = next) {
        next = p->next;
        for (int i = 0; i < 2; i++) {
            if (mode == WAN_HOLD) bufferevent_disable(p->bev[i], EV_READ);
            else if (!p->d[i].eof) bufferevent_enable(p->bev[i], EV_READ);
        }
    }
    if (mode != WAN_OPEN) return;
    w->free_at[0] = w->free_at[1] = 0;
    for (pair *p = w->pairs, *next; p; p = next) {   /* what was held flows on, in order */
        next = p->next;
        take(&p->d[0]);
        take(&p->d[1]);
        if (deliver(&p->d[0])) continue;
        (void)deliver(&p->d[1]);
    }
}

void wan_link_reset(wan_link *w)
{
    while (w->pairs) pair_reset(w->pairs);
}

int wan_link_connections(const wan_link *w) { return w->n; }

void wan_link_free(wan_link *w)
{
    if (!w) return;
    while (w->pairs) pair_free(w->pairs);
    evconnlistener_free(w->lev);
    free(w);
}
