/* conn.c -- the connection actor (see conn.h).
 *
 * Design notes. Input: the bufferevent read callback walks the input evbuffer's chunks with
 * evbuffer_peek and feeds them to the frame reader, draining what it consumed; each whole frame is
 * counted, decoded and handed to ops->on_msg. With a quota, every allocation the peer causes is charged
 * first (conn.h): the frame's buffer before it grows (the header alone allocates nothing), the decoded
 * tree before msgpack-c builds it, the owner's cost before on_msg. A charge that does not fit parks
 * the frame or message in the connection (pk_*), stops reading (the bytes stay in the kernel's socket
 * buffer and TCP slows the peer) and waits on the budget; too many requests open or too much output
 * waiting stop reading too. A pause ends by mail (CONN_RESUME), never by re-entering the reader from
 * inside another actor's call.
 *
 * Output: CONN_SEND mail carries a wire_out. When nothing is queued on the bufferevent's output, the
 * frame is written to the socket at once (wire_out_send_fd) and only what the socket did not take is
 * queued: a small reply costs one system call, and libevent's write event is never armed for it (that
 * is two epoll_ctl and one more turn of the loop). Otherwise wire_out_send queues it behind the rest,
 * by reference. The write callback fires when output drains below the low watermark and resumes reading.
 * An evbuffer callback on the output keeps the quota's node-wide count of unwritten reply bytes exact.
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
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "wire/wire_frame.h"

enum { CONN_SEND = 1, CONN_RESUME = 2 };

/* A body with at least this much left is read straight into its frame (read_direct); smaller ones
 * come through libevent's buffer, where they cost one call or two anyway. */
#define CONN_DIRECT_MIN ((size_t)16 << 10)
/* The most one connection reads straight into frames, or writes, per callback: 4 MiB is a few ms of
 * copying, so other connections wait no longer than that. */
#define CONN_DIRECT_MAX ((size_t)4 << 20)

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
    int paused_budget;    /* waiting on the quota's budget */
    netq_addr *addr;      /* the peer address's account (NULL: none) */
    size_t charged;       /* bytes charged to this connection: frame, parked, handed to the owner */
    size_t frame_charge;  /* of which: the buffer of the frame being received */
    uint8_t *pk_frame;    /* a whole frame waiting for room to decode (pk_len bytes) */
    size_t pk_len;
    wire_msg *pk_msg;     /* a decoded message waiting for room for its owner's cost */
    size_t pk_charge;     /* bytes charged for the parked frame or message */
    int pk_tree;          /* pk_charge includes the decoded tree */
    size_t stuck;         /* frame_charge + pk_charge counted in the quota's stuck sum while waiting */
    int lift;             /* the shares do not apply to this frame (wait_for_room lifted them) */
    uint64_t rate_t0_ms, rate_bytes;   /* the current frame's rate window */
    uint64_t last_active_ms;
    struct evbuffer_cb_entry *out_cb;
    rt_budget_waiter waiter;
    rt_signal resume;
    uint64_t bytes_in, bytes_out;
    uint8_t first[CONN_FIRST_BYTES];   /* the first bytes the peer sent (what it is, when it is no dmoe peer) */
    size_t n_first;
    int outgoing;                      /* made by conn_connect: the owner (a client) reports failures itself */
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

static uint64_t now_ms(conn *c) { return rt_loop_now_ms(c->actor.loop); }

static void schedule_resume(conn *c)
{
    if (c->open) rt_signal_raise(&c->resume);
}

/* ---- the quota ---- */

static void unstick(conn *c)
{
    if (c->lim.quota) c->lim.quota->stuck -= c->stuck;
    c->stuck = 0;
}

static void budget_wake(rt_budget_waiter *w)
{
    conn *c = (conn *)((char *)w - offsetof(conn, waiter));
    c->paused_budget = 0;
    unstick(c);
    schedule_resume(c);
}

static int charge(conn *c, size_t n)
{
    return !c->lim.quota || netq_try(c->lim.quota, &c->charged, c->addr, n, c->lift);
}

static void uncharge(conn *c, size_t n)
{
    if (c->lim.quota && n) netq_release(c->lim.quota, &c->charged, c->addr, n);
}

static void finish_close(conn *c, int err);

/* Wait for room. When every pending byte of the node belongs to connections waiting like this one,
 * none can go on by itself: the oldest waiter gets its shares lifted for its current frame (the
 * budget alone then limits it); when it already had them, the one holding most is closed (possibly
 * this one). Each round lifts a new connection or closes one, so the waiting always ends. Returns 0
 * (waiting) or -1 when this connection was the one closed. */
static int wait_for_room(conn *c)
{
    netq *q = c->lim.quota;
    c->paused_budget = 1;
    c->stuck = c->frame_charge + c->pk_charge;
    q->stuck += c->stuck;
    rt_budget_wait(&q->pending, &c->waiter);
    if (q->pending.used != q->stuck) return 0;
    conn *oldest = (conn *)((char *)q->pending.head - offsetof(conn, waiter));
    if (!oldest->lift) {
        oldest->lift = 1;
        rt_budget_cancel(&q->pending, &oldest->waiter);
        budget_wake(&oldest->waiter);
        return 0;
    }
    conn *worst = NULL;
    for (rt_budget_waiter *w = q->pending.head; w; w = w->next) {
        conn *o = (conn *)((char *)w - offsetof(conn, waiter));
        if (!worst || o->stuck > worst->stuck) worst = o;
    }
    LOG_WARN("closing connection from %s: its %zu pending bytes cannot grow within the node's budget "
             "(every pending byte waits for room)", worst->peer, worst->stuck);
    int self = worst == c;
    finish_close(worst, DMOE_ETOOBIG);   /* at once: its bytes go back to the budget */
    return self ? -1 : 0;
}

static void drop_parked(conn *c)
{
    if (c->pk_msg) {
        wire_msg_free(c->pk_msg);
        free(c->pk_msg);
        c->pk_msg = NULL;
    }
    free(c->pk_frame);
    c->pk_frame = NULL;
    uncharge(c, c->pk_charge);
    c->pk_charge = 0;
    c->pk_tree = 0;
}

void conn_default_limits(conn_limits *lim)
{
    memset(lim, 0, sizeof *lim);
    lim->max_frame = WIRE_MAX_FRAME_DEFAULT;
    lim->max_inflight = 256;
    lim->max_outbuf = (size_t)64 << 20;
    lim->frame_timeout_s = 60;
    lim->rate_grace_ms = 5000;
}

static void out_changed(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    conn *c = arg;
    if (info->n_added) netq_out_add(c->lim.quota, info->n_added);
    if (info->n_deleted) netq_out_sub(c->lim.quota, info->n_deleted);
}

static void finish_close(conn *c, int err)
{
    if (!c->open) return;
    c->open = 0;
    if (c->lim.quota) {
        rt_budget_cancel(&c->lim.quota->pending, &c->waiter);
        unstick(c);
    }
    c->paused_budget = 0;
    uncharge(c, c->frame_charge);
    c->frame_charge = 0;
    drop_parked(c);
    wire_frame_reader_free(&c->reader);
    if (c->addr) {   /* the address's share comes back now; requests still held release the rest */
        c->addr->charged -= c->charged;
        netq_addr_put(c->lim.quota, c->addr);
        c->addr = NULL;
    }
    if (c->bev) {
        struct evbuffer *out = bufferevent_get_output(c->bev);
        c->bytes_out -= evbuffer_get_length(out);   /* queued but never written */
        if (c->out_cb) {
            netq_out_sub(c->lim.quota, evbuffer_get_length(out));
            evbuffer_remove_cb_entry(out, c->out_cb);
            c->out_cb = NULL;
        }
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
    if (on) {
        bufferevent_enable(c->bev, EV_READ);
        c->rate_t0_ms = now_ms(c);   /* a pause of ours does not count against the peer's rate */
        c->rate_bytes = 0;
    } else {
        bufferevent_disable(c->bev, EV_READ);
    }
}

static void bad_frame(conn *c, uint64_t id, int code, const char *msg)
{
    if (c->outgoing) LOG_DEBUG("closing connection to %s: %s (%s)", c->peer, msg, dmoe_strerror(code));
    else LOG_WARN("closing connection from %s: %s (%s)", c->peer, msg, dmoe_strerror(code));
    if (c->ops.on_bad_frame) c->ops.on_bad_frame(c, id, code, msg, c->arg);
    conn_close(c, 1);
}

/* Move the parked frame or message on: count and decode the frame, charge its tree and its owner's
 * cost, hand it to on_msg. Returns 1 when it is gone (delivered or answered), 0 when waiting for
 * room, -1 when the connection closes. */
static int advance_parked(conn *c)
{
    char err[160];
    if (c->pk_frame) {
        size_t objects = 0, max = c->lim.max_objects ? c->lim.max_objects : WIRE_MAX_OBJECTS;
        int rc = wire_msg_count(c->pk_frame, c->pk_len, &objects, err, sizeof err);
        if (rc == 0 && objects > max) {
            snprintf(err, sizeof err, "message of %zu msgpack objects, at most %zu accepted", objects, max);
            rc = DMOE_ETOOBIG;
        }
        if (rc < 0) {
            drop_parked(c);
            bad_frame(c, 0, rc, err);
            return -1;
        }
        if (!c->pk_tree) {
            size_t tree = wire_msg_decode_cost(objects);
            if (!charge(c, tree)) return wait_for_room(c);
            if (c->lim.quota) c->pk_charge += tree;
            c->pk_tree = 1;
        }
        wire_msg m;
        uint8_t *frame = c->pk_frame;
        c->pk_frame = NULL;
        rc = wire_msg_decode_max(frame, c->pk_len, max, &m, err, sizeof err);
        if (rc < 0) {
            drop_parked(c);
            if (rc == DMOE_EINVAL) {   /* valid msgpack, bad fields: answer and keep the connection */
                if (c->ops.on_bad_frame) c->ops.on_bad_frame(c, m.id, rc, err, c->arg);
                return 1;
            }
            bad_frame(c, m.id, rc, err);
            return -1;
        }
        c->pk_msg = malloc(sizeof *c->pk_msg);
        if (!c->pk_msg) {
            wire_msg_free(&m);
            drop_parked(c);
            bad_frame(c, 0, DMOE_ENOMEM, "out of memory");
            return -1;
        }
        *c->pk_msg = m;
    }
    if (c->ops.cost && c->lim.quota) {
        size_t extra = c->ops.cost(c, c->pk_msg, c->arg);
        if (extra) {
            if (!charge(c, extra)) return wait_for_room(c);
            c->pk_charge += extra;
        }
    }
    wire_msg *m = c->pk_msg;
    size_t total = c->pk_charge;
    c->pk_msg = NULL;
    c->pk_charge = 0;
    c->pk_tree = 0;
    c->lift = 0;
    c->ops.on_msg(c, m, total, c->arg);
    return 1;
}

/* The largest capacity the frame's buffer may have now: what is charged, grown when the quota lets
 * it take avail more bytes. SIZE_MAX without a quota. */
static size_t frame_allowance(conn *c, size_t avail)
{
    if (!c->lim.quota) return SIZE_MAX;
    if (!wire_frame_in_body(&c->reader)) return 0;   /* the header alone: nothing to allocate yet */
    size_t want = wire_frame_want(&c->reader, avail);
    if (want > c->frame_charge && charge(c, want - c->frame_charge)) c->frame_charge = want;
    return c->frame_charge;
}

/* park_frame parks a whole frame for advance_parked, with the charge of its buffer. */
static void park_frame(conn *c, uint8_t *frame, size_t len)
{
    c->pk_frame = frame;
    c->pk_len = len;
    c->pk_charge = c->frame_charge;
    c->frame_charge = 0;
}

/* read_direct reads the rest of a big frame's body from the socket straight into the frame's buffer:
 * libevent 2.1 reads 4 KiB per call into its input buffer, which for a tensor of MiB costs a system
 * call pair and a copy per 4 KiB (make bench: most of the loop thread's time per MiB). It reads only
 * what the socket holds (FIONREAD), so the buffer still grows only as bytes arrive and is charged to
 * the quota first, exactly as a feed from the input buffer. At most *left bytes per process_input call
 * (CONN_DIRECT_MAX), so one fast sender cannot hold the loop. Returns 1 (bytes read: go on), 0
 * (nothing to read this way: wait for the socket), -1 (stop: waiting for budget room, or closed). */
static int read_direct(conn *c, size_t *left)
{
    wire_frame_reader *r = &c->reader;
    size_t body_left = wire_frame_left(r);
    if (body_left < CONN_DIRECT_MIN || *left == 0 || c->bytes_in < CONN_FIRST_BYTES) return 0;
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    int queued = 0;
    if (fd < 0 || ioctl(fd, FIONREAD, &queued) != 0 || queued <= 0) return 0;
    size_t avail = (size_t)queued;
    if (avail > body_left) avail = body_left;
    if (avail > *left) avail = *left;
    size_t cap = frame_allowance(c, avail);
    if (cap <= wire_frame_held(r) && wire_frame_room(r) == 0) {
        if (wait_for_room(c) == 0) set_reading(c, 0);
        return -1;
    }
    if (wire_frame_reserve(r, avail, cap) != 0) {
        uncharge(c, c->frame_charge);
        c->frame_charge = 0;
        bad_frame(c, 0, DMOE_ENOMEM, "out of memory for a frame");
        return -1;
    }
    size_t room = wire_frame_room(r);
    if (room > avail) room = avail;
    ssize_t n = recv(fd, wire_frame_tail(r), room, MSG_DONTWAIT);
    if (n <= 0) return 0;   /* EAGAIN, EINTR, or the end or an error, which libevent's read reports */
    *left -= (size_t)n;
    c->bytes_in += (uint64_t)n;
    c->rate_bytes += (uint64_t)n;
    c->last_active_ms = now_ms(c);
    uint8_t *frame = NULL;
    size_t len = 0;
    if (wire_frame_commit(r, (size_t)n, &frame, &len) == 1) park_frame(c, frame, len);
    return 1;
}

static void process_input(conn *c)
{
    size_t direct_left = CONN_DIRECT_MAX;
    conn_ref(c);
    while (c->open && !c->closing && c->bev) {
        if (over_limits(c) || c->paused_budget) { set_reading(c, 0); break; }
        if (c->pk_frame || c->pk_msg) {
            int rc = advance_parked(c);
            if (rc < 0) break;
            if (rc == 0) { set_reading(c, 0); break; }
            continue;
        }
        struct evbuffer *in = bufferevent_get_input(c->bev);
        if (evbuffer_get_length(in) == 0) {
            int rc = read_direct(c, &direct_left);
            if (rc > 0) continue;
            if (rc == 0) set_reading(c, 1);
            break;
        }
        struct evbuffer_iovec vec;
        if (evbuffer_peek(in, -1, NULL, &vec, 1) < 1) break;
        size_t cap = frame_allowance(c, vec.iov_len);
        if (wire_frame_in_body(&c->reader) && cap <= wire_frame_held(&c->reader) && wire_frame_room(&c->reader) == 0) {
            if (wait_for_room(c) == 0) set_reading(c, 0);
            break;
        }
        if (!wire_frame_pending(&c->reader)) {   /* a new frame: its rate window starts */
            c->rate_t0_ms = now_ms(c);
            c->rate_bytes = 0;
        }
        if (c->n_first < CONN_FIRST_BYTES && c->bytes_in <= c->n_first) {   /* vec starts at byte bytes_in */
            size_t off = (size_t)(c->n_first - c->bytes_in);
            if (off < vec.iov_len) {
                size_t take = vec.iov_len - off < CONN_FIRST_BYTES - c->n_first ? vec.iov_len - off : CONN_FIRST_BYTES - c->n_first;
                memcpy(c->first + c->n_first, (const uint8_t *)vec.iov_base + off, take);
                c->n_first += take;
            }
        }
        size_t used = 0, len = 0;
        uint8_t *frame = NULL;
        int rc = wire_frame_feed_upto(&c->reader, vec.iov_base, vec.iov_len, cap, &used, &frame, &len);
        evbuffer_drain(in, used);
        c->bytes_in += used;
        c->rate_bytes += used;
        if (used) c->last_active_ms = now_ms(c);
        if (rc < 0) {
            uncharge(c, c->frame_charge);
            c->frame_charge = 0;
            bad_frame(c, 0, rc, rc == DMOE_ETOOBIG ? "frame longer than the limit" : "bad frame header");
            break;
        }
        if (rc == 0) continue;
        park_frame(c, frame, len);
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
    c->last_active_ms = now_ms(c);
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

/* Whether a reply of n more bytes may be queued: a peer that leaves more than out_hard unread, or
 * whose unread replies would take the node past its reply bound, is a slow reader and is closed. One
 * reply on an empty output always goes (it may be larger than any limit). */
static int output_fits(conn *c, size_t n)
{
    size_t queued = evbuffer_get_length(bufferevent_get_output(c->bev));
    if (queued == 0) return 1;
    if (c->lim.out_hard && queued + n > c->lim.out_hard) return 0;
    netq *q = c->lim.quota;
    if (q && q->out_max && q->out_bytes + n > q->out_max) return 0;
    return 1;
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
        if (!output_fits(c, n)) {
            LOG_WARN("closing connection from %s: it leaves %zu bytes of replies unread", c->peer,
                     evbuffer_get_length(bufferevent_get_output(c->bev)));
            finish_close(c, DMOE_EOVERLOAD);
            rt_msg_drop(m);
            return;
        }
        struct evbuffer *out = bufferevent_get_output(c->bev);
        size_t wrote = 0;
        int rc;
        if (!c->connecting && !c->closing && evbuffer_get_length(out) == 0)
            rc = wire_out_send_fd(s->out, bufferevent_getfd(c->bev), CONN_DIRECT_MAX, out, &wrote);
        else   /* behind queued bytes, or before the connect, or while a close waits for the output */
            rc = wire_out_send(s->out, out);
        s->out = NULL;
        if (wrote) c->last_active_ms = now_ms(c);
        if (rc == 0) {
            c->bytes_out += n;
            if (over_limits(c)) set_reading(c, 0);
        } else {   /* a reply lost in silence would leave the peer waiting: it sees the connection close */
            LOG_WARN("cannot queue %zu bytes to %s: %s: closing", n, c->peer, dmoe_strerror(rc));
            conn_close(c, wrote == 0);   /* part of the frame went out: nothing may follow it */
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
    c->last_active_ms = rt_loop_now_ms(l);
    rt_signal_init(&c->resume, &c->actor, CONN_RESUME);
    return c;
}

static void setup_bev(conn *c, struct bufferevent *bev)
{
    c->bev = bev;
    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    /* libevent 2.1 reads at most 4 KiB a call whatever this says (read_direct takes big bodies); its
     * writes stop at max_single_write, 16 KiB by default: a reply of MiB in few system calls */
    bufferevent_set_max_single_read(bev, (size_t)1 << 20);
    bufferevent_set_max_single_write(bev, CONN_DIRECT_MAX);
    /* on_write runs when output drains to a quarter of the pause threshold */
    bufferevent_setwatermark(bev, EV_WRITE, c->lim.max_outbuf / 4, 0);
    if (c->lim.quota) c->out_cb = evbuffer_add_cb(bufferevent_get_output(bev), out_changed, c);
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
        if (c->lim.quota) c->addr = netq_addr_get(c->lim.quota, (struct sockaddr *)&ss);
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
    c->outgoing = 1;
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

void conn_uncharge(conn *c, size_t n) { uncharge(c, n); }

int conn_tick(conn *c, uint64_t now)
{
    if (!c->open || c->closing || !c->bev) return 0;
    if (c->lim.min_rate && c->reading && !c->paused_budget && wire_frame_pending(&c->reader) &&
        now > c->rate_t0_ms + (uint64_t)c->lim.rate_grace_ms &&
        c->rate_bytes * 1000 < c->lim.min_rate * (now - c->rate_t0_ms)) {
        LOG_WARN("closing connection from %s: its frame arrives at %llu bytes/s, under the minimum %zu", c->peer,
                 (unsigned long long)(c->rate_bytes * 1000 / (now - c->rate_t0_ms)), c->lim.min_rate);
        finish_close(c, DMOE_ETIMEDOUT);
        return 1;
    }
    if (c->lim.idle_timeout_s && c->inflight == 0 && !wire_frame_pending(&c->reader) && !c->pk_frame &&
        !c->pk_msg && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0 &&
        now >= c->last_active_ms + (uint64_t)c->lim.idle_timeout_s * 1000) {
        LOG_DEBUG("closing connection from %s: idle for %d s", c->peer, c->lim.idle_timeout_s);
        finish_close(c, 0);
        return 1;
    }
    return 0;
}

uint64_t conn_last_active_ms(const conn *c) { return c->last_active_ms; }

void conn_hold(conn *c) { c->inflight++; }

void conn_release(conn *c)
{
    c->inflight--;
    if (c->open && !c->closing && !c->reading && !c->paused_budget && !over_limits(c)) schedule_resume(c);
}

int conn_is_open(const conn *c) { return c->open && !c->closing; }
const char *conn_peer(const conn *c) { return c->peer; }
size_t conn_first_bytes(const conn *c, const uint8_t **p)
{
    *p = c->first;
    return c->n_first;
}
uint64_t conn_bytes_in(const conn *c) { return c->bytes_in; }
uint64_t conn_bytes_out(const conn *c) { return c->bytes_out; }
