/* conn.c -- the connection actor (see conn.h).
 *
 * Design notes. Input: the bufferevent read callback walks the input evbuffer's chunks with
 * evbuffer_peek and feeds them to the frame reader, draining what it consumed; each whole frame is
 * decoded and handed to ops->on_msg. Before a new frame starts, its 4-byte length is peeked and charged
 * to the node's budget; if it does not fit, or if too many requests are open, or too much output waits,
 * reading pauses (the bytes stay in the kernel's socket buffer and TCP slows the peer). A pause ends
 * by mail (CONN_RESUME), never by re-entering the reader from inside another actor's call.
 *
 * Output: CONN_SEND mail carries a wire_out; wire_out_send moves it onto the bufferevent's output by
 * reference. The write callback fires when output drains below the low watermark and resumes reading.
 */
#include "actors/net/conn.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "wire/wire_frame.h"

enum { CONN_SEND = 1, CONN_RESUME = 2 };

struct conn {
    rt_actor actor;
    struct bufferevent *bev;
    wire_frame_reader reader;
    conn_ops ops;
    void *arg;
    conn_limits lim;
    int refs;             /* the open socket counts as one */
    int inflight;
    int open, closing, reading, connecting;
    int paused_budget;
    size_t frame_charge;  /* budget bytes charged for the frame being received */
    rt_budget_waiter waiter;
    rt_signal resume;
    uint64_t bytes_in, bytes_out;
    char peer[64];
};

typedef struct {
    rt_msg msg;
    wire_out *out;
} send_msg;

static void send_msg_drop(rt_msg *m)
{
    send_msg *s = (send_msg *)m;
    wire_out_free(s->out);
    free(s);
}

static void schedule_resume(conn *c)
{
    if (c->open) rt_signal_raise(&c->resume);
}

static void budget_wake(rt_budget_waiter *w)
{
    conn *c = (conn *)((char *)w - offsetof(conn, waiter));
    c->paused_budget = 0;
    schedule_resume(c);
}

void conn_default_limits(conn_limits *lim)
{
    memset(lim, 0, sizeof *lim);
    lim->max_frame = WIRE_MAX_FRAME_DEFAULT;
    lim->max_inflight = 256;
    lim->max_outbuf = (size_t)64 << 20;
    lim->frame_timeout_s = 60;
}

static void finish_close(conn *c, int err)
{
    if (!c->open) return;
    c->open = 0;
    if (c->lim.budget) {
        rt_budget_cancel(c->lim.budget, &c->waiter);
        if (c->frame_charge) rt_budget_release(c->lim.budget, c->frame_charge);
    }
    c->frame_charge = 0;
    wire_frame_reader_free(&c->reader);
    if (c->bev) {
        struct evbuffer *out = bufferevent_get_output(c->bev);
        c->bytes_out -= evbuffer_get_length(out);   /* queued but never written */
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (c->ops.on_close) c->ops.on_close(c, err, c->arg);
    conn_unref(c);
}

static int over_limits(conn *c)
{
    if (c->inflight >= c->lim.max_inflight) return 1;
    if (c->bev && evbuffer_get_length(bufferevent_get_output(c->bev)) > c->lim.max_outbuf) return 1;
    return 0;
}

static void set_reading(conn *c, int on)
{
    if (!c->bev || c->reading == on) return;
    c->reading = on;
    if (on) bufferevent_enable(c->bev, EV_READ);
    else bufferevent_disable(c->bev, EV_READ);
}

static void bad_frame(conn *c, uint64_t id, int code, const char *msg)
{
    LOG_WARN("closing connection from %s: %s (%s)", c->peer, msg, dmoe_strerror(code));
    if (c->ops.on_bad_frame) c->ops.on_bad_frame(c, id, code, msg, c->arg);
    conn_close(c, 1);
}

/* Charge the next frame's length before the reader allocates it. Returns 1 to go on, 0 to pause. */
static int charge_next_frame(conn *c, struct evbuffer *in)
{
    if (!c->lim.budget || c->frame_charge || wire_frame_pending(&c->reader)) return 1;
    uint8_t hdr[WIRE_FRAME_HDR];
    if (evbuffer_copyout(in, hdr, sizeof hdr) < (ev_ssize_t)sizeof hdr) return 1;
    size_t len = ((size_t)hdr[0] << 24) | ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
    if (len > c->lim.max_frame || len == 0) return 1;   /* the reader reports it */
    if (!rt_budget_try(c->lim.budget, len)) {
        c->paused_budget = 1;
        rt_budget_wait(c->lim.budget, &c->waiter);
        return 0;
    }
    c->frame_charge = len;
    return 1;
}

static void process_input(conn *c)
{
    conn_ref(c);
    while (c->open && !c->closing && c->bev) {
        if (over_limits(c) || c->paused_budget) { set_reading(c, 0); break; }
        struct evbuffer *in = bufferevent_get_input(c->bev);
        if (evbuffer_get_length(in) == 0) { set_reading(c, 1); break; }
        if (!charge_next_frame(c, in)) { set_reading(c, 0); break; }
        struct evbuffer_iovec vec;
        if (evbuffer_peek(in, -1, NULL, &vec, 1) < 1) break;
        size_t used = 0, len = 0;
        uint8_t *frame = NULL;
        int rc = wire_frame_feed(&c->reader, vec.iov_base, vec.iov_len, &used, &frame, &len);
        evbuffer_drain(in, used);
        c->bytes_in += used;
        if (rc < 0) {
            bad_frame(c, 0, rc, rc == DMOE_ETOOBIG ? "frame longer than the limit" : "bad frame header");
            break;
        }
        if (rc == 0) continue;
        size_t charge = c->frame_charge;
        c->frame_charge = 0;
        wire_msg m;
        char err[160];
        rc = wire_msg_decode(frame, len, &m, err, sizeof err);
        if (rc < 0) {
            if (c->lim.budget && charge) rt_budget_release(c->lim.budget, charge);
            if (rc == DMOE_EINVAL) {   /* valid msgpack, bad fields: answer and keep the connection */
                if (c->ops.on_bad_frame) c->ops.on_bad_frame(c, m.id, rc, err, c->arg);
                continue;
            }
            bad_frame(c, m.id, rc, err);
            break;
        }
        wire_msg *heap = malloc(sizeof *heap);
        if (!heap) {
            wire_msg_free(&m);
            if (c->lim.budget && charge) rt_budget_release(c->lim.budget, charge);
            bad_frame(c, 0, DMOE_ENOMEM, "out of memory");
            break;
        }
        *heap = m;
        c->ops.on_msg(c, heap, charge, c->arg);
    }
    if (c->open && c->bev && c->lim.frame_timeout_s) {
        /* a half-received frame must complete in time; an idle connection may stay */
        struct timeval tv = {c->lim.frame_timeout_s, 0};
        bufferevent_set_timeouts(c->bev, wire_frame_pending(&c->reader) ? &tv : NULL, NULL);
    }
    conn_unref(c);
}

static void on_read(struct bufferevent *bev, void *arg) { process_input(arg); }

static void on_write(struct bufferevent *bev, void *arg)
{
    conn *c = arg;
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        finish_close(c, 0);
        return;
    }
    if (!c->closing && !c->reading && !c->paused_budget) schedule_resume(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        c->connecting = 0;
        evutil_socket_t fd = bufferevent_getfd(bev);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        set_reading(c, 1);
        return;
    }
    int err = DMOE_ECONN;
    if (what & BEV_EVENT_EOF) err = 0;
    if (what & BEV_EVENT_TIMEOUT) err = DMOE_ETIMEDOUT;
    if (c->connecting && err == 0) err = DMOE_ECONN;
    finish_close(c, c->closing ? 0 : err);
}

static void conn_handle(rt_actor *self, rt_msg *m)
{
    conn *c = (conn *)self;
    if (m->type == CONN_RESUME) {
        rt_msg_drop(m);
        if (c->open && !c->closing) process_input(c);
        return;
    }
    send_msg *s = (send_msg *)m;
    if (c->open && c->bev) {
        size_t n = wire_out_len(s->out) + WIRE_FRAME_HDR;
        int rc = wire_out_send(s->out, bufferevent_get_output(c->bev));
        s->out = NULL;
        if (rc == 0) {
            c->bytes_out += n;
            if (over_limits(c)) set_reading(c, 0);
        } else {   /* a reply lost in silence would leave the peer waiting: it sees the connection close */
            LOG_WARN("cannot queue %zu bytes to %s: %s: closing", n, c->peer, dmoe_strerror(rc));
            conn_close(c, 1);
        }
    }
    rt_msg_drop(m);
}

static void conn_destroy(rt_actor *self)
{
    conn *c = (conn *)self;
    wire_frame_reader_free(&c->reader);
    free(c);
}

static conn *conn_alloc(rt_loop *l, const conn_ops *ops, void *arg, const conn_limits *lim)
{
    conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    rt_actor_init(&c->actor, l, "conn", conn_handle, conn_destroy);
    c->ops = *ops;
    c->arg = arg;
    if (lim) c->lim = *lim;
    else conn_default_limits(&c->lim);
    if (c->lim.max_inflight < 1) c->lim.max_inflight = 1;
    wire_frame_reader_init(&c->reader, c->lim.max_frame);
    c->refs = 1;
    c->open = 1;
    c->waiter.wake = budget_wake;
    rt_signal_init(&c->resume, &c->actor, CONN_RESUME);
    return c;
}

static void setup_bev(conn *c, struct bufferevent *bev)
{
    c->bev = bev;
    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    bufferevent_set_max_single_read(bev, (size_t)1 << 20);   /* big tensors in fewer callbacks */
    /* on_write runs when output drains to a quarter of the pause threshold */
    bufferevent_setwatermark(bev, EV_WRITE, c->lim.max_outbuf / 4, 0);
}

conn *conn_new(rt_loop *l, struct bufferevent *bev, const conn_ops *ops, void *arg, const conn_limits *lim)
{
    conn *c = conn_alloc(l, ops, arg, lim);
    if (!c) { bufferevent_free(bev); return NULL; }
    setup_bev(c, bev);
    evutil_socket_t fd = bufferevent_getfd(bev);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    snprintf(c->peer, sizeof c->peer, "?");
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        char host[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
            port = ntohs(s4->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
            port = ntohs(s6->sin6_port);
        }
        snprintf(c->peer, sizeof c->peer, "%s:%d", host, port);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_reading(c, 1);
    return c;
}

conn *conn_connect(rt_loop *l, const char *host, uint16_t port, const conn_ops *ops, void *arg,
                   const conn_limits *lim, int connect_timeout_ms)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t sl;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        sl = sizeof *s4;
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        sl = sizeof *s6;
    } else {
        return NULL;
    }
    struct bufferevent *bev = bufferevent_socket_new(rt_loop_base(l), -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) return NULL;
    conn *c = conn_alloc(l, ops, arg, lim);
    if (!c) { bufferevent_free(bev); return NULL; }
    setup_bev(c, bev);
    snprintf(c->peer, sizeof c->peer, "%s:%u", host, (unsigned)port);
    c->connecting = 1;
    if (connect_timeout_ms > 0) {
        struct timeval tv = {connect_timeout_ms / 1000, (connect_timeout_ms % 1000) * 1000};
        bufferevent_set_timeouts(bev, NULL, &tv);   /* a connect counts as a write */
    }
    if (bufferevent_socket_connect(bev, (struct sockaddr *)&ss, (int)sl) != 0) {
        c->bev = NULL;
        bufferevent_free(bev);
        c->open = 0;
        rt_actor_stop(&c->actor);
        return NULL;
    }
    return c;
}

int conn_send(conn *c, wire_out *o)
{
    if (!c->open || c->closing) { wire_out_free(o); return DMOE_ECONN; }
    send_msg *s = malloc(sizeof *s);
    if (!s) {   /* as in conn_handle: no silent loss, the peer sees the connection close */
        wire_out_free(o);
        LOG_WARN("out of memory sending to %s: closing", c->peer);
        conn_close(c, 1);
        return DMOE_ENOMEM;
    }
    s->msg.type = CONN_SEND;
    s->msg.drop = send_msg_drop;
    s->out = o;
    if (rt_send(&c->actor, &s->msg) != 0) { send_msg_drop(&s->msg); return DMOE_ECONN; }
    return 0;
}

void conn_close(conn *c, int after_flush)
{
    if (!c->open) return;
    if (!after_flush || !c->bev) { finish_close(c, 0); return; }
    if (c->closing) return;
    c->closing = 1;
    set_reading(c, 0);
    /* Let mail already queued (replies) reach the socket first, then close when it has drained. */
    struct timeval tv = {5, 0};
    bufferevent_set_timeouts(c->bev, NULL, &tv);
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0 && c->actor.depth == 0) finish_close(c, 0);
    else bufferevent_enable(c->bev, EV_WRITE);
}

void conn_ref(conn *c) { c->refs++; }

void conn_unref(conn *c)
{
    if (--c->refs == 0) rt_actor_stop(&c->actor);
}

void conn_hold(conn *c) { c->inflight++; }

void conn_release(conn *c)
{
    c->inflight--;
    if (c->open && !c->closing && !c->reading && !c->paused_budget && !over_limits(c)) schedule_resume(c);
}

int conn_is_open(const conn *c) { return c->open && !c->closing; }
const char *conn_peer(const conn *c) { return c->peer; }
uint64_t conn_bytes_in(const conn *c) { return c->bytes_in; }
uint64_t conn_bytes_out(const conn *c) { return c->bytes_out; }
