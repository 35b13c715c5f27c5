/* serve_kit.c -- see serve_kit.h. */
#include "test/unit/serve/serve_kit.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <event2/bufferevent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct { rt_actor actor; rt_timer t; } spinner;

static void spin_handle(rt_actor *self, rt_msg *m)
{
    rt_msg_drop(m);
    rt_loop_break(self->loop);
}

void sk_spin(rt_loop *l, int ms)
{
    spinner s;
    memset(&s, 0, sizeof s);
    rt_actor_init(&s.actor, l, "spin", spin_handle, NULL);
    if (rt_timer_init(&s.t, &s.actor, 1) != 0) abort();
    rt_timer_start(&s.t, (uint64_t)(ms < 1 ? 1 : ms), 0);
    rt_loop_run(l);
    rt_timer_deinit(&s.t);
}

conn *sk_conn_pair(rt_loop *l, const conn_ops *ops, void *arg, const conn_limits *lim, int *far)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return NULL;
    evutil_make_socket_nonblocking(sv[0]);
    struct bufferevent *bev = bufferevent_socket_new(rt_loop_base(l), sv[0], BEV_OPT_CLOSE_ON_FREE);
    if (!bev) { close(sv[0]); close(sv[1]); return NULL; }
    *far = sv[1];
    return conn_new(l, bev, ops, arg, lim);
}

int sk_recv_msg(rt_loop *l, int fd, wire_msg *m, int max_ms)
{
    for (int waited = 0; waited <= max_ms; waited++) {
        uint8_t hdr[4];
        ssize_t n = recv(fd, hdr, 4, MSG_PEEK | MSG_DONTWAIT);
        if (n == 4) {
            size_t len = ((size_t)hdr[0] << 24) | ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
            uint8_t *buf = malloc(4 + len);
            if (!buf) return -1;
            n = recv(fd, buf, 4 + len, MSG_PEEK | MSG_DONTWAIT);
            if (n == (ssize_t)(4 + len)) {
                if (recv(fd, buf, 4 + len, MSG_WAITALL) != (ssize_t)(4 + len)) { free(buf); return -1; }
                uint8_t *body = malloc(len ? len : 1);
                if (!body) { free(buf); return -1; }
                memcpy(body, buf + 4, len);
                free(buf);
                char err[128];
                return wire_msg_decode(body, len, m, err, sizeof err) == 0 ? 0 : -1;
            }
            free(buf);
        } else if (n == 0) {
            return -1;   /* closed */
        }
        sk_spin(l, 1);
    }
    return -1;
}

void sk_expect_error(rt_loop *l, int fd, uint64_t id, int code, const char *msg)
{
    wire_msg m;
    cr_assert_eq(sk_recv_msg(l, fd, &m, 2000), 0, "no reply to %llu", (unsigned long long)id);
    cr_assert_eq(m.kind, WIRE_REPLY_ERR, "reply to %llu is not an error", (unsigned long long)id);
    cr_assert_eq(m.id, id);
    cr_assert_eq(m.err_code, code, "code %d, expected %d (%s)", m.err_code, code, m.err_msg);
    if (msg) cr_assert_str_eq(m.err_msg, msg);
    wire_msg_free(&m);
}

int sk_send_out(int fd, wire_out *o)
{
    uint8_t *body;
    size_t len;
    if (wire_out_flatten(o, &body, &len) != 0) return -1;
    uint8_t hdr[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
    int rc = send(fd, hdr, 4, 0) == 4 && send(fd, body, len, 0) == (ssize_t)len ? 0 : -1;
    free(body);
    return rc;
}

int64_t sk_result_f32(const wire_msg *m, const char *key, int idx, float *out, size_t n)
{
    if (m->kind != WIRE_REPLY_OK) return -1;
    const msgpack_object *arr = wire_map_get(m->result, key);
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY || (int)arr->via.array.size <= idx) return -1;
    wire_tensor t;
    char err[128];
    if (wire_tensor_decode(&arr->via.array.ptr[idx], &t, err, sizeof err) != 0) return -1;
    if (t.dtype != WIRE_DT_F32 || t.numel != n) return -1;
    if (wire_tensor_f32(&t, out) != 0) return -1;
    return t.shape[0];
}

ex_req *sk_req(conn *c, uint64_t id, int dir, int64_t rows, const float *x)
{
    ex_req *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->c = c;
    conn_ref(c);
    conn_hold(c);
    r->id = id;
    r->dir = dir;
    r->rows = rows;
    r->in[0] = (const uint8_t *)x;
    if (dir == EX_BWD) r->gout[0] = (const uint8_t *)x;
    r->t_arrive_us = rt_clock_us();
    return r;
}

int sk_probe_setup(kern_model *m, const kern_config *cfg)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->n_in = m->n_out = 1;
    kern_io_set(&m->in[0], "x", KERN_F32, cfg->hidden_dim, 0);
    kern_io_set(&m->out[0], "y", KERN_F32, cfg->hidden_dim, 0);
    return kern_model_add_param(m, "w", 1, 0);
}

void sk_probe_init(const kern_model *m, float *params, uint64_t seed) { params[0] = 1.0f; }
size_t sk_probe_ws(const kern_model *m, int64_t B) { return 0; }

static void noop_msg(conn *c, wire_msg *m, size_t charge, void *arg)
{
    wire_msg_free(m);
    free(m);
}

const conn_ops sk_noop_ops = {noop_msg, NULL, NULL};

expert *sk_probe_expert(rt_loop *l, const char *uid, expert_cfg cfg)
{
    cr_assert_eq(kern_optim_parse("sgd", &cfg.opt), 0);
    cfg.opt.lr = 0.5f;
    cfg.compression = WIRE_COMP_NONE;
    char err[256];
    expert *e = expert_new(l, uid, &cfg, err, sizeof err);
    cr_assert_not_null(e, "%s", err);
    return e;
}
