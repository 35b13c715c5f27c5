/* test_client.c -- outgoing calls, in process against a fake server on a loopback listener (port 0)
 * whose connections are conn actors too: replies are matched to calls by id whatever their order, a
 * silent server times a call out (and its late reply is dropped), a server that drops the connection
 * fails every call in flight on it, and client_free fails what is still pending. The idle timeout
 * (--idle_timeout_s) closes a node's idle inbound connections, never the outgoing ones its client keeps
 * pooled; when a peer's own idle timeout closes a pooled connection, the next call opens a new one. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "actors/net/client.h"
#include "actors/serve/server.h"
#include "runtime/rt_err.h"
#include "test/unit/serve/serve_kit.h"

enum { FS_REVERSE, FS_SILENT, FS_DROP, FS_ECHO };

/* The fake server: one mode, the requests it holds, the connection they came on. */
typedef struct {
    rt_loop *l;
    int mode;
    struct evconnlistener *lev;
    uint16_t port;
    conn *c;
    wire_msg *held[8];
    int n;
    int accepted;
} fake_server;

static void reply_echo(conn *c, uint64_t id)
{
    wire_out *o = wire_out_new();
    wire_reply_begin(o, id);
    msgpack_pack_map(wire_out_pk(o), 1);
    wire_pack_str(wire_out_pk(o), "echo");
    msgpack_pack_uint64(wire_out_pk(o), id);
    conn_send(c, o);
}

static void fs_msg(conn *c, wire_msg *m, size_t charge, void *arg)
{
    fake_server *fs = arg;
    if (fs->mode == FS_DROP) {
        wire_msg_free(m);
        free(m);
        conn_close(c, 0);
        return;
    }
    if (fs->mode == FS_ECHO) {
        reply_echo(c, m->id);
        wire_msg_free(m);
        free(m);
        return;
    }
    fs->held[fs->n++] = m;
    if (fs->mode == FS_REVERSE && fs->n == 3)
        for (int i = 2; i >= 0; i--) reply_echo(c, fs->held[i]->id);
}

static void fs_close(conn *c, int err, void *arg)
{
    fake_server *fs = arg;
    if (fs->c == c) fs->c = NULL;
}

static const conn_ops fs_ops = {fs_msg, fs_close, NULL};

static void fs_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    fake_server *fs = arg;
    struct bufferevent *bev = bufferevent_socket_new(rt_loop_base(fs->l), fd, BEV_OPT_CLOSE_ON_FREE);
    fs->c = conn_new(fs->l, bev, &fs_ops, fs, NULL);
    fs->accepted++;
}

static void fs_start(fake_server *fs, rt_loop *l, int mode)
{
    memset(fs, 0, sizeof *fs);
    fs->l = l;
    fs->mode = mode;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    fs->lev = evconnlistener_new_bind(rt_loop_base(l), fs_accept, fs, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
                                      (struct sockaddr *)&sin, sizeof sin);
    cr_assert_not_null(fs->lev);
    socklen_t sl = sizeof sin;
    getsockname(evconnlistener_get_fd(fs->lev), (struct sockaddr *)&sin, &sl);
    fs->port = ntohs(sin.sin_port);
}

static void fs_stop(fake_server *fs)
{
    for (int i = 0; i < fs->n; i++) {
        wire_msg_free(fs->held[i]);
        free(fs->held[i]);
    }
    if (fs->c) conn_close(fs->c, 0);
    evconnlistener_free(fs->lev);
}

/* One call's outcome. */
typedef struct {
    uint64_t id;
    int calls, err;
    uint64_t echo;
    char msg[160];
} outcome;

static int on_reply(void *arg, int err, const char *msg, wire_msg *reply)
{
    outcome *o = arg;
    o->calls++;
    o->err = err;
    if (msg) snprintf(o->msg, sizeof o->msg, "%s", msg);
    const msgpack_object *e = err == 0 && reply ? wire_map_get(reply->result, "echo") : NULL;
    if (e && e->type == MSGPACK_OBJECT_POSITIVE_INTEGER) o->echo = e->via.u64;
    return 0;
}

static rt_loop *l;
static client *cl;

static void setup(void)
{
    l = rt_loop_new();
    cl = client_new(l, NULL);
    cr_assert(l && cl);
}

static void teardown(void)
{
    client_free(cl);
    sk_spin(l, 5);
    rt_loop_free(l);
}

TestSuite(client, .init = setup, .fini = teardown, .timeout = 20);

static void call(fake_server *fs, outcome *o, uint64_t timeout_ms)
{
    wire_maddr peer = {0};
    snprintf(peer.host, sizeof peer.host, "127.0.0.1");
    peer.port = fs->port;
    o->id = client_next_id(cl);
    wire_out *req = wire_out_new();
    wire_request_begin(req, o->id, "ping", 2);
    cr_assert_eq(client_call(cl, &peer, o->id, req, timeout_ms, on_reply, o), 0);
}

static void wait_for(outcome *os, int n, int max_ms)
{
    for (int waited = 0; waited < max_ms; waited++) {
        int done = 0;
        for (int i = 0; i < n; i++) done += os[i].calls > 0;
        if (done == n) return;
        sk_spin(l, 1);
    }
}

Test(client, replies_are_matched_to_calls_by_id)
{
    fake_server fs;
    fs_start(&fs, l, FS_REVERSE);
    outcome os[3] = {0};
    for (int i = 0; i < 3; i++) call(&fs, &os[i], 5000);
    wait_for(os, 3, 3000);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(os[i].calls, 1);
        cr_assert_eq(os[i].err, 0, "%s", os[i].msg);
        cr_assert_eq(os[i].echo, os[i].id, "call %llu got the reply to %llu", (unsigned long long)os[i].id,
                     (unsigned long long)os[i].echo);
    }
    fs_stop(&fs);
}

Test(client, a_silent_server_times_the_call_out_and_its_late_reply_is_dropped)
{
    fake_server fs;
    fs_start(&fs, l, FS_SILENT);
    outcome o = {0};
    uint64_t t0 = rt_clock_us();
    call(&fs, &o, 60);
    wait_for(&o, 1, 3000);
    cr_assert_eq(o.calls, 1);
    cr_assert_eq(o.err, DMOE_ETIMEDOUT, "%d %s", o.err, o.msg);
    cr_assert_geq(rt_clock_us() - t0, 50000, "timed out early (the loop clock may lag a few ms)");
    cr_assert_eq(fs.n, 1);
    reply_echo(fs.c, fs.held[0]->id);   /* too late */
    sk_spin(l, 30);
    cr_assert_eq(o.calls, 1, "the callback runs once");
    /* the connection is still good for the next call */
    fs.mode = FS_REVERSE;
    fs.n = 1;
    outcome more[2] = {0};
    call(&fs, &more[0], 5000);
    call(&fs, &more[1], 5000);
    wait_for(more, 2, 3000);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(more[i].err, 0, "%s", more[i].msg);
        cr_assert_eq(more[i].echo, more[i].id);
    }
    fs_stop(&fs);
}

Test(client, a_dropped_connection_fails_every_call_on_it)
{
    fake_server fs;
    fs_start(&fs, l, FS_DROP);
    outcome os[3] = {0};
    for (int i = 0; i < 3; i++) call(&fs, &os[i], 5000);
    wait_for(os, 3, 3000);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(os[i].calls, 1);
        cr_assert_eq(os[i].err, DMOE_ECONN, "call %d: %d %s", i, os[i].err, os[i].msg);
    }
    fs_stop(&fs);
}

Test(client, client_free_fails_pending_calls)
{
    fake_server fs;
    fs_start(&fs, l, FS_SILENT);
    outcome o = {0};
    call(&fs, &o, 5000);
    sk_spin(l, 20);
    client_free(cl);
    cl = NULL;
    cr_assert_eq(o.calls, 1);
    cr_assert_eq(o.err, DMOE_ESHUTDOWN);
    fs_stop(&fs);
}

Test(client, a_peer_that_is_not_an_ip_literal_is_refused)
{
    wire_maddr peer = {0};
    snprintf(peer.host, sizeof peer.host, "example.org");
    peer.port = 1;
    outcome o = {0};
    wire_out *req = wire_out_new();
    wire_request_begin(req, 1, "ping", 2);
    cr_assert_eq(client_call(cl, &peer, 1, req, 100, on_reply, &o), DMOE_EINVAL);
    sk_spin(l, 5);
    cr_assert_eq(o.calls, 0);
}

/* spin_until_no_connection runs the loop until the server holds no connection (<= max_ms). */
static void spin_until_no_connection(server *s, int max_ms)
{
    for (int waited = 0; waited < max_ms && server_connections(s) > 0; waited += 10) sk_spin(l, 10);
}

Test(client, the_idle_timeout_closes_inbound_connections_not_the_pool)
{
    /* a node: its server (idle timeout 1 s) and its client share the loop */
    server_cfg sc = {.num_workers = 0};
    conn_default_limits(&sc.limits);
    sc.limits.idle_timeout_s = 1;
    server *srv = server_new(l, &sc);
    cr_assert_not_null(srv);
    wire_maddr listen, bound;
    char err[256];
    cr_assert_eq(wire_maddr_parse_listen("/ip4/127.0.0.1/tcp/0", &listen, err, sizeof err), 0, "%s", err);
    cr_assert_eq(server_listen(srv, &listen, &bound, err, sizeof err), 0, "%s", err);
    /* an idle inbound peer */
    int in = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(bound.port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(in, (struct sockaddr *)&sin, sizeof sin), 0);
    /* and an outgoing pooled connection of the node's client */
    fake_server fs;
    fs_start(&fs, l, FS_ECHO);
    outcome o1 = {0};
    call(&fs, &o1, 5000);
    wait_for(&o1, 1, 3000);
    cr_assert_eq(o1.err, 0, "%s", o1.msg);
    cr_assert_eq(server_connections(srv), 1);

    spin_until_no_connection(srv, 5000);
    cr_assert_eq(server_connections(srv), 0, "the idle inbound connection was closed");
    char b;
    ssize_t got = -1;
    for (int waited = 0; waited < 2000 && (got = recv(in, &b, 1, MSG_DONTWAIT)) < 0; waited += 10) sk_spin(l, 10);
    cr_assert_eq(got, 0, "the inbound peer saw the close");
    cr_assert_not_null(fs.c, "the node's own pooled connection stays open");
    outcome o2 = {0};
    call(&fs, &o2, 5000);
    wait_for(&o2, 1, 3000);
    cr_assert_eq(o2.err, 0, "%s", o2.msg);
    cr_assert_eq(fs.accepted, 1, "the second call went through the pooled connection");

    /* the peer's own idle timeout closes the pooled connection: the next call opens a new one */
    conn_close(fs.c, 0);
    for (int waited = 0; waited < 1000 && fs.c; waited++) sk_spin(l, 1);
    sk_spin(l, 20);
    outcome o3 = {0};
    call(&fs, &o3, 5000);
    wait_for(&o3, 1, 3000);
    cr_assert_eq(o3.err, 0, "%s", o3.msg);
    cr_assert_eq(o3.echo, o3.id);
    cr_assert_eq(fs.accepted, 2);

    close(in);
    fs_stop(&fs);
    server_shutdown(srv);
    server_close_all(srv);
    server_free(srv);
}
