/* client.c -- call actors and pooled peer connections (see client.h).
 *
 * Design notes. A peer holds one connection and an rt_map of its calls in flight, keyed by request id. Every way a call can end (reply, error reply, timeout, connection failure, client freed) goes
 * through complete(): the first one wins, detaches the call from its peer and raises the call's
 * "done" signal; the call actor's handler then runs the user's callback and stops the actor. A reply
 * that arrives for an id no longer in the map (it timed out) is dropped; one that does not decode ends
 * its call at once (DMOE_EPROTO) when its id can be read. A peer whose very first frame cannot be dmoe
 * framing (a length past the limit, say "HTTP" read as one, or bytes that are no msgpack) is no dmoe
 * node: every call on it ends at once with "ADDR is not a dmoe node (it answered "HTTP/1.1 400 ...")",
 * quoting what it sent, instead of a bare closed connection.
 */
#include "actors/net/client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/rt_map.h"

#define CLIENT_CONNECT_TIMEOUT_MS 5000

enum { CALL_DONE = 1, CALL_TIMEOUT = 2 };

typedef struct peer peer;

typedef struct call {
    rt_actor actor;
    rt_timer timer;
    rt_signal done_sig;
    client *cl;
    peer *p;
    uint64_t id;
    client_cb cb;
    void *arg;
    int done;
    int err;
    char msg[256];
    wire_msg *reply;
    struct call *prev_live, *next_live; /* client's list of pending calls */
} call;

struct peer {
    client *cl;
    char key[WIRE_MADDR_HOST + 8];
    conn *c;
    rt_map calls;                       /* request id -> call in flight */
    int spoke;                          /* a message decoded: the peer speaks the protocol */
    peer *next;
};

struct client {
    rt_loop *loop;
    conn_limits lim;
    uint64_t next_id;
    peer *peers;
    call *live;
    int n_live;
    uint64_t closed_in, closed_out;     /* bytes of connections already closed */
};

/* ---- completing calls ---- */

static void complete(call *k, int err, const char *msg, wire_msg *reply)
{
    if (k->done) {
        if (reply) { wire_msg_free(reply); free(reply); }
        return;
    }
    k->done = 1;
    k->err = err;
    k->reply = reply;
    if (msg) snprintf(k->msg, sizeof k->msg, "%s", msg);
    if (k->p) {
        if (rt_map_get_u64(&k->p->calls, k->id) == k) rt_map_del_u64(&k->p->calls, k->id);
        k->p = NULL;
    }
    rt_timer_cancel(&k->timer);
    rt_signal_raise(&k->done_sig);
}

static void unlink_live(call *k)
{
    client *cl = k->cl;
    if (!cl) return;
    if (k->prev_live) k->prev_live->next_live = k->next_live;
    else cl->live = k->next_live;
    if (k->next_live) k->next_live->prev_live = k->prev_live;
    cl->n_live--;
    k->cl = NULL;
}

static void run_callback(call *k)
{
    unlink_live(k);
    int kept = k->cb(k->arg, k->err, k->msg[0] ? k->msg : NULL, k->reply);
    if (!kept && k->reply) { wire_msg_free(k->reply); free(k->reply); }
    k->reply = NULL;
}

static void call_handle(rt_actor *self, rt_msg *m)
{
    call *k = (call *)self;
    int type = m->type;
    rt_msg_drop(m);
    if (type == CALL_TIMEOUT) {
        char msg[96];
        snprintf(msg, sizeof msg, "no reply from %s in time", k->p ? k->p->key : "the peer");
        complete(k, DMOE_ETIMEDOUT, msg, NULL);
        return;   /* the done signal brings us back */
    }
    if (type == CALL_DONE && k->done) {
        run_callback(k);
        rt_actor_stop(self);
    }
}

static void call_destroy(rt_actor *self)
{
    call *k = (call *)self;
    if (k->reply) { wire_msg_free(k->reply); free(k->reply); }
    rt_timer_deinit(&k->timer);
    free(k);
}

/* ---- peer connections ---- */

static void peer_on_msg(conn *c, wire_msg *m, size_t charge, void *arg)
{
    peer *p = arg;
    p->spoke = 1;
    call *k = rt_map_del_u64(&p->calls, m->id);
    if (!k) {   /* late reply for a call that timed out, or garbage: drop */
        LOG_DEBUG("dropping a reply with unknown id %llu from %s", (unsigned long long)m->id, p->key);
        wire_msg_free(m);
        free(m);
        return;
    }
    k->p = NULL;
    if (m->kind == WIRE_REPLY_ERR) complete(k, m->err_code < 0 ? m->err_code : DMOE_EINTERNAL, m->err_msg, m);
    else if (m->kind == WIRE_REPLY_OK) complete(k, 0, NULL, m);
    else {
        wire_msg_free(m);
        free(m);
        complete(k, DMOE_EPROTO, "the peer sent a request where a reply was expected", NULL);
    }
}

static void peer_free(peer *p)
{
    client *cl = p->cl;
    for (peer **pp = &cl->peers; *pp; pp = &(*pp)->next)
        if (*pp == p) { *pp = p->next; break; }
    rt_map_clear(&p->calls);
    free(p);
}

static void peer_on_close(conn *c, int err, void *arg)
{
    peer *p = arg;
    char msg[160];
    snprintf(msg, sizeof msg, "connection to %s %s", p->key,
             err == 0 ? "closed by the peer" : err == DMOE_ETIMEDOUT ? "timed out" : "failed (refused or reset)");
    rt_map_iter it = RT_MAP_ITER_INIT;
    call *k;
    while ((k = rt_map_next(&p->calls, &it, NULL, NULL))) {
        rt_map_del_at(&p->calls, &it);
        k->p = NULL;   /* detached: complete() leaves the map alone */
        complete(k, DMOE_ECONN, msg, NULL);
    }
    p->c = NULL;
    p->cl->closed_in += conn_bytes_in(c);
    p->cl->closed_out += conn_bytes_out(c);
    conn_unref(c);   /* the peer's reference */
    peer_free(p);
}

/* A reply that does not decode (an error reply with code 0, a result that is no map...) ends its call
 * at once with DMOE_EPROTO when its id could be read, instead of leaving it to time out; a frame that
 * breaks the connection fails every call through peer_on_close right after. */
/* Quote the first bytes a peer sent: up to the end of its first line, printable ASCII as is, the rest
 * as \xNN, in at most cap bytes. */
static void quote_bytes(const uint8_t *b, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && b[i] != '\r' && b[i] != '\n' && o + 5 < cap; i++) {
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '"' && b[i] != '\\') out[o++] = (char)b[i];
        else o += (size_t)snprintf(out + o, cap - o, "\\x%02x", b[i]);
    }
    out[o] = '\0';
}

static void peer_on_bad_frame(conn *c, uint64_t id, int code, const char *msg, void *arg)
{
    peer *p = arg;
    if (!p->spoke && id == 0) {   /* its first frame is not ours: another protocol on that port */
        const uint8_t *b;
        size_t n = conn_first_bytes(c, &b);
        char q[4 * CONN_FIRST_BYTES + 1], m[sizeof q + 128];
        quote_bytes(b, n, q, sizeof q);
        snprintf(m, sizeof m, "%s is not a dmoe node (it answered \"%s\")", p->key, q);
        rt_map_iter it = RT_MAP_ITER_INIT;
        call *k;
        while ((k = rt_map_next(&p->calls, &it, NULL, NULL))) {
            rt_map_del_at(&p->calls, &it);
            k->p = NULL;   /* detached: complete() leaves the map alone */
            complete(k, DMOE_EPROTO, m, NULL);
        }
        return;
    }
    call *k = id ? rt_map_get_u64(&p->calls, id) : NULL;
    if (!k) return;
    char m[320];
    snprintf(m, sizeof m, "malformed reply from %s: %s", p->key, msg);
    complete(k, DMOE_EPROTO, m, NULL);   /* detaches k from p->calls */
}

static const conn_ops peer_ops = {peer_on_msg, peer_on_close, peer_on_bad_frame};

static peer *get_peer(client *cl, const wire_maddr *a)
{
    const char *host = a->host;
    if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
    char key[sizeof ((peer *)0)->key];
    snprintf(key, sizeof key, "%s:%u", host, (unsigned)a->port);
    for (peer *p = cl->peers; p; p = p->next)
        if (strcmp(p->key, key) == 0 && p->c && conn_is_open(p->c)) return p;
    peer *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->cl = cl;
    snprintf(p->key, sizeof p->key, "%s", key);
    p->c = conn_connect(cl->loop, host, a->port, &peer_ops, p, &cl->lim, CLIENT_CONNECT_TIMEOUT_MS);
    if (!p->c) { free(p); return NULL; }
    conn_ref(p->c);
    p->next = cl->peers;
    cl->peers = p;
    return p;
}

/* ---- public ---- */

client *client_new(rt_loop *l, const conn_limits *lim)
{
    client *cl = calloc(1, sizeof *cl);
    if (!cl) return NULL;
    cl->loop = l;
    if (lim) cl->lim = *lim;
    else conn_default_limits(&cl->lim);
    cl->lim.quota = NULL;   /* replies we asked for are always read */
    cl->lim.max_inflight = 1 << 30;
    cl->next_id = 1;
    return cl;
}

uint64_t client_next_id(client *cl) { return cl->next_id++; }

int client_call(client *cl, const wire_maddr *peer_addr, uint64_t id, wire_out *req, uint64_t timeout_ms,
                client_cb cb, void *arg)
{
    peer *p = get_peer(cl, peer_addr);
    if (!p || rt_map_get_u64(&p->calls, id)) { wire_out_free(req); return DMOE_EINVAL; }
    call *k = calloc(1, sizeof *k);
    if (!k) { wire_out_free(req); return DMOE_ENOMEM; }
    rt_actor_init(&k->actor, cl->loop, "call", call_handle, call_destroy);
    if (rt_timer_init(&k->timer, &k->actor, CALL_TIMEOUT) != 0) { free(k); wire_out_free(req); return DMOE_ENOMEM; }
    rt_signal_init(&k->done_sig, &k->actor, CALL_DONE);
    k->cl = cl;
    k->id = id;
    k->cb = cb;
    k->arg = arg;
    if (rt_map_put_u64(&p->calls, id, k) != 0) { rt_timer_deinit(&k->timer); free(k); wire_out_free(req); return DMOE_ENOMEM; }
    k->p = p;
    k->next_live = cl->live;
    if (cl->live) cl->live->prev_live = k;
    cl->live = k;
    cl->n_live++;
    if (timeout_ms) rt_timer_start(&k->timer, timeout_ms, 0);
    int rc = conn_send(p->c, req);
    if (rc != 0) complete(k, rc, "cannot send the request", NULL);
    return 0;
}

void client_bytes(const client *cl, uint64_t *in, uint64_t *out)
{
    *in = cl->closed_in;
    *out = cl->closed_out;
    for (const peer *p = cl->peers; p; p = p->next)
        if (p->c) {
            *in += conn_bytes_in(p->c);
            *out += conn_bytes_out(p->c);
        }
}

void client_free(client *cl)
{
    if (!cl) return;
    while (cl->live) {
        call *k = cl->live;
        complete(k, DMOE_ESHUTDOWN, "the client is shutting down", NULL);
        run_callback(k);   /* unlinks k from live */
        rt_actor_stop(&k->actor);
    }
    while (cl->peers) {
        peer *p = cl->peers;
        conn_close(p->c, 0);   /* peer_on_close frees p */
    }
    free(cl);
}
