/* fake_node.c -- a lying node in a thread of the test process (see fake_node.h).
 *
 * One thread polls the listening socket, a wake-up pipe and the accepted connections. Clients send
 * whole frames, so a readable connection is read one frame at a time with the harness's blocking
 * th_recv_msg (bounded by a receive timeout); each request gets its reply before the next one is
 * read. fake_node_stop writes the pipe, joins the thread and closes what it opened.
 */
#include "test/integration/trust/fake_node.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "runtime/rt_err.h"
#include "test/integration/harness.h"
#include "wire/wire_msg.h"
#include "wire/wire_out.h"

#define FAKE_MAX_EXPERTS 16
#define FAKE_MAX_CONNS 32

struct fake_node {
    int lfd, port, wake[2];
    int hidden;
    int n;
    fake_expert ex[FAKE_MAX_EXPERTS];
    char uids[FAKE_MAX_EXPERTS][64];
    int calls[FAKE_MAX_EXPERTS];
    pthread_t thread;
};

static const fake_expert *find(fake_node *f, const char *uid, int *idx)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->ex[i].uid, uid) == 0) { *idx = i; return &f->ex[i]; }
    return NULL;
}

static void pack_io(msgpack_packer *pk, const char *name, int hidden)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 3);
    wire_pack_str(pk, "name");
    wire_pack_str(pk, name);
    wire_pack_str(pk, "dtype");
    wire_pack_str(pk, "float32");
    wire_pack_str(pk, "shape");
    msgpack_pack_array(pk, 2);
    msgpack_pack_int(pk, -1);
    msgpack_pack_int(pk, hidden);
}

static wire_out *info_reply(fake_node *f, uint64_t id, const char *uid)
{
    wire_out *o = wire_out_new();
    if (!o) return NULL;
    msgpack_packer *pk = wire_out_pk(o);
    wire_reply_begin(o, id);
    msgpack_pack_map(pk, 8);
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, uid);
    wire_pack_str(pk, "expert_cls");
    wire_pack_str(pk, "ffn");
    wire_pack_str(pk, "module");
    wire_pack_str(pk, "fake");
    wire_pack_str(pk, "hidden_dim");
    msgpack_pack_int(pk, f->hidden);
    wire_pack_str(pk, "n_params");
    msgpack_pack_int(pk, 0);
    wire_pack_str(pk, "max_batch_size");
    msgpack_pack_int(pk, 4096);
    wire_pack_str(pk, "inputs");
    pack_io(pk, "x", f->hidden);
    wire_pack_str(pk, "outputs");
    pack_io(pk, "y", f->hidden);
    return o;
}

static void free_data(const void *data, size_t len, void *arg) { free(arg); }

/* compute_reply answers a forward (x) or backward (grad_output g) of B rows as mode says. */
static wire_out *compute_reply(fake_node *f, uint64_t id, const fake_expert *e, int backward, const wire_tensor *t)
{
    int64_t B = t->shape[0], D = f->hidden;
    if (e->mode == FAKE_ERR0) {
        wire_out *o = wire_out_new();
        if (!o) return NULL;
        msgpack_packer *pk = wire_out_pk(o);
        msgpack_pack_map(pk, 2);
        wire_pack_str(pk, "id");
        msgpack_pack_uint64(pk, id);
        wire_pack_str(pk, "error");
        msgpack_pack_map(pk, 2);
        wire_pack_str(pk, "code");
        msgpack_pack_int(pk, 0);
        wire_pack_str(pk, "message");
        wire_pack_str(pk, "an error that is not one");
        return o;
    }
    int64_t rows = e->mode == FAKE_ROWS ? B + 1 : B, cols = e->mode == FAKE_WIDE ? D + 1 : D;
    wire_tensor r = {.dtype = e->mode == FAKE_F16 ? WIRE_DT_F16 : WIRE_DT_F32, .ndim = 2, .shape = {rows, cols}};
    r.numel = (size_t)(rows * cols);
    r.nbytes = r.numel * wire_dtype_size(r.dtype);
    uint8_t *data = calloc(1, r.nbytes + 4);
    if (!data) return NULL;
    if (r.dtype == WIRE_DT_F32) {
        float *y = (float *)data;
        for (int64_t b = 0; b < B && b < rows; b++)
            for (int64_t d = 0; d < D && d < cols; d++) {
                float v;
                memcpy(&v, t->data + (size_t)(b * D + d) * 4, 4);
                y[b * cols + d] = e->scale * v;
            }
        if (e->mode == FAKE_NAN) y[r.numel / 2] = NAN;
        if (e->mode == FAKE_INF) y[r.numel - 1] = INFINITY;
    } else {
        for (size_t i = 0; i < r.numel; i++) data[2 * i + 1] = 0x3c;   /* 1.0 as IEEE half */
    }
    r.data = data;
    wire_out *o = wire_out_new();
    if (!o) { free(data); return NULL; }
    msgpack_packer *pk = wire_out_pk(o);
    wire_reply_begin(o, id);
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, backward ? "grad_inputs" : "outputs");
    msgpack_pack_array(pk, 1);
    if (wire_tensor_pack(o, &r, free_data, data) != 0) { wire_out_free(o); return NULL; }
    return o;
}

/* answer builds the reply to one request (an error reply for what the fake does not serve). */
static wire_out *answer(fake_node *f, const wire_msg *m)
{
    char uid[64] = "";
    wire_get_str(wire_map_get(&m->root, "uid"), uid, sizeof uid);
    if (strcmp(m->method, "ping") == 0) {
        wire_out *o = wire_out_new();
        if (!o) return NULL;
        wire_reply_begin(o, m->id);
        msgpack_pack_map(wire_out_pk(o), 1);
        wire_pack_str(wire_out_pk(o), "time");
        msgpack_pack_double(wire_out_pk(o), 0.0);
        return o;
    }
    int idx = -1;
    const fake_expert *e = find(f, uid, &idx);
    if (!e) return wire_error_reply(m->id, DMOE_ENOEXPERT, "no such expert");
    if (strcmp(m->method, "info") == 0) return info_reply(f, m->id, uid);
    int backward = strcmp(m->method, "backward") == 0;
    if (!backward && strcmp(m->method, "forward") != 0) return wire_error_reply(m->id, DMOE_ENOMETHOD, "no such method");
    f->calls[idx]++;
    const msgpack_object *arr = wire_map_get(&m->root, backward ? "grad_outputs" : "inputs");
    wire_tensor t;
    char err[128];
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY || arr->via.array.size < 1 ||
        wire_tensor_decode(&arr->via.array.ptr[0], &t, err, sizeof err) != 0 || t.dtype != WIRE_DT_F32 ||
        t.compression != WIRE_COMP_NONE || t.ndim != 2 || t.shape[1] != f->hidden)
        return wire_error_reply(m->id, DMOE_ESHAPE, "the fake takes one uncompressed float32 [B, hidden]");
    return compute_reply(f, m->id, e, backward, &t);
}

/* serve_one reads one frame from fd (th_recv_msg) and answers it. Returns 0, or -1 when the connection
 * is done. */
static int serve_one(fake_node *f, int fd)
{
    wire_msg m;
    if (th_recv_msg(fd, &m) != 0) return -1;
    wire_out *o = m.kind == WIRE_REQUEST ? answer(f, &m) : NULL;
    wire_msg_free(&m);
    return o && th_send_out(fd, o) == 0 ? 0 : -1;
}

static void *run(void *arg)
{
    fake_node *f = arg;
    struct pollfd p[2 + FAKE_MAX_CONNS];
    int nconn = 0;
    p[0] = (struct pollfd){f->lfd, POLLIN, 0};
    p[1] = (struct pollfd){f->wake[0], POLLIN, 0};
    for (;;) {
        if (poll(p, (nfds_t)(2 + nconn), 1000) < 0 && errno != EINTR) break;
        if (p[1].revents) break;
        if ((p[0].revents & POLLIN) && nconn < FAKE_MAX_CONNS) {
            int c = accept(f->lfd, NULL, NULL);
            if (c >= 0) {
                struct timeval tv = {5, 0};
                setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
                p[2 + nconn++] = (struct pollfd){c, POLLIN, 0};
            }
        }
        for (int i = 0; i < nconn; i++) {
            if (!p[2 + i].revents) continue;
            p[2 + i].revents = 0;
            if (serve_one(f, p[2 + i].fd) == 0) continue;
            close(p[2 + i].fd);
            p[2 + i] = p[2 + --nconn];   /* the moved one is looked at next round */
        }
    }
    for (int i = 0; i < nconn; i++) close(p[2 + i].fd);
    return NULL;
}

fake_node *fake_node_start(const fake_expert *ex, int n, int hidden)
{
    if (n < 0 || n > FAKE_MAX_EXPERTS) return NULL;
    fake_node *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->n = n;
    f->hidden = hidden;
    for (int i = 0; i < n; i++) {
        f->ex[i] = ex[i];
        snprintf(f->uids[i], sizeof f->uids[i], "%s", ex[i].uid);
        f->ex[i].uid = f->uids[i];
    }
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(f->lfd, 16) != 0 ||
        getsockname(f->lfd, (struct sockaddr *)&a, &al) != 0 || pipe(f->wake) != 0) {
        if (f->lfd >= 0) close(f->lfd);
        free(f);
        return NULL;
    }
    f->port = ntohs(a.sin_port);
    if (pthread_create(&f->thread, NULL, run, f) != 0) {
        close(f->lfd);
        close(f->wake[0]);
        close(f->wake[1]);
        free(f);
        return NULL;
    }
    return f;
}

int fake_node_port(const fake_node *f) { return f->port; }

int fake_node_stop(fake_node *f, const char *uid)
{
    if (!f) return 0;
    ssize_t w = write(f->wake[1], "x", 1);
    (void)w;
    pthread_join(f->thread, NULL);
    close(f->lfd);
    close(f->wake[0]);
    close(f->wake[1]);
    int calls = 0, idx;
    if (uid && find(f, uid, &idx)) calls = f->calls[idx];
    free(f);
    return calls;
}
