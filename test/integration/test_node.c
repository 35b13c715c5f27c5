/* test_node.c -- dmoe-node and dmoe-call end to end over loopback TCP: results equal the local kernels,
 * backward applies exactly one optimizer step, concurrent clients get their own rows back from merged
 * batches, and SIGTERM stops the node cleanly. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/node/node.h"
#include "kernels/kern_classes.h"
#include "kernels/kern_optim.h"
#include "runtime/rt_err.h"
#include "test/integration/harness.h"

#define H 64
#define SEED "7"

/* The expert as the node holds it at start: same class, same seed derivation. */
typedef struct {
    kern_model m;
    float *params, *grads, *ws;
} local_expert;

static void local_init(local_expert *e, const char *uid, uint64_t seed)
{
    const kern_class *cls = kern_expert_find("ffn");
    kern_config cfg = {.hidden_dim = H};
    memset(e, 0, sizeof *e);
    cr_assert_eq(cls->setup(&e->m, &cfg), 0);
    e->m.cls = cls;
    e->params = calloc(e->m.n_floats, sizeof(float));
    e->grads = calloc(e->m.n_floats, sizeof(float));
    e->ws = calloc(cls->backward_ws(&e->m, 64) + cls->forward_ws(&e->m, 64) + 64, sizeof(float));
    cls->init(&e->m, e->params, node_expert_seed(seed, uid));
}

static void local_free(local_expert *e)
{
    free(e->params);
    free(e->grads);
    free(e->ws);
}

static void local_forward(local_expert *e, const float *x, int64_t B, float *y)
{
    const void *in[1] = {x};
    float *out[1] = {y};
    cr_assert_eq(e->m.cls->forward(&e->m, e->params, B, in, out, e->ws, 0), 0);
}

static void local_backward(local_expert *e, const float *x, const float *gy, int64_t B, float *gx)
{
    const void *in[1] = {x};
    const float *go[1] = {gy};
    float *gi[1] = {gx};
    cr_assert_eq(e->m.cls->backward(&e->m, e->params, B, in, go, gi, e->grads, e->ws, 0), 0);
}

static void write_npy(const char *path, const float *x, int64_t B) { cr_assert_eq(th_write_npy(path, x, B, H), 0); }

static void read_npy(const char *path, float *out, int64_t B)
{
    float *data = th_read_npy(path, B, H);
    cr_assert_not_null(data);
    memcpy(out, data, (size_t)(B * H) * sizeof(float));
    free(data);
}

/* forward/backward through a raw connection; returns the reply's tensor in out */
static void remote(int fd, uint64_t id, const char *uid, const float *x, int64_t B, const float *gy, float *out)
{
    cr_assert_eq(th_send_out(fd, th_request(id, uid, x, B, H, gy)), 0);
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert_eq(m.id, id);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "error reply: %s", m.err_msg);
    cr_assert_eq(th_result_f32(&m, gy ? "grad_inputs" : "outputs", B, H, out), 0);
    wire_msg_free(&m);
}

Test(node, cli_forward_backward_match_local_kernels, .timeout = 60)
{
    th_node n;
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "64", "--expert_uids", "expert.0", "expert.1",
                          "--seed", SEED, "--optimizer", "sgd", "--lr", "0.05", NULL};
    cr_assert_eq(th_node_start(&n, args), 0);
    enum { B = 5 };
    float x[B * H], gy[B * H], y[B * H], want[B * H], gx[B * H], want_gx[B * H];
    th_fill_normal(x, B * H, 1);
    th_fill_normal(gy, B * H, 2);
    char xp[64], gp[64], yp[64], gxp[64];
    snprintf(xp, sizeof xp, "/tmp/dmoe-t-%d-x.npy", getpid());
    snprintf(gp, sizeof gp, "/tmp/dmoe-t-%d-gy.npy", getpid());
    snprintf(yp, sizeof yp, "/tmp/dmoe-t-%d-y.npy", getpid());
    snprintf(gxp, sizeof gxp, "/tmp/dmoe-t-%d-gx.npy", getpid());
    write_npy(xp, x, B);
    write_npy(gp, gy, B);

    local_expert e;
    local_init(&e, "expert.1", 7);
    char out[8192];
    const char *fwd[] = {"--peer", n.maddr, "forward", "expert.1", "--input", xp, "--output", yp, NULL};
    cr_assert_eq(th_run("dmoe-call", fwd, out, sizeof out, 30), 0, "%s", out);
    cr_assert(strstr(out, "shape [5, 64]"), "%s", out);
    read_npy(yp, y, B);
    local_forward(&e, x, B, want);
    cr_assert_lt(th_max_abs_diff(y, want, B * H), 1e-5f);

    const char *bwd[] = {"--peer", n.maddr, "backward", "expert.1", "--input", xp, "--grad_output", gp,
                         "--output", gxp, "--json", NULL};
    cr_assert_eq(th_run("dmoe-call", bwd, out, sizeof out, 30), 0, "%s", out);
    cr_assert(strstr(out, "\"ok\": true"), "%s", out);
    read_npy(gxp, gx, B);
    local_backward(&e, x, gy, B, want_gx);
    cr_assert_lt(th_max_abs_diff(gx, want_gx, B * H), 1e-5f);

    /* exactly one SGD step: p -= lr * grad, then the forward sees the new weights */
    for (size_t i = 0; i < e.m.n_floats; i++) e.params[i] -= 0.05f * e.grads[i];
    int fd = th_connect(n.port);
    cr_assert_geq(fd, 0);
    remote(fd, 7, "expert.1", x, B, NULL, y);
    local_forward(&e, x, B, want);
    cr_assert_lt(th_max_abs_diff(y, want, B * H), 2e-5f);

    /* the other expert did not move */
    local_expert e0;
    local_init(&e0, "expert.0", 7);
    remote(fd, 8, "expert.0", x, B, NULL, y);
    local_forward(&e0, x, B, want);
    cr_assert_lt(th_max_abs_diff(y, want, B * H), 1e-5f);
    close(fd);

    const char *info[] = {"--peer", n.maddr, "info", "expert.1", "--json", NULL};
    cr_assert_eq(th_run("dmoe-call", info, out, sizeof out, 30), 0);
    cr_assert(strstr(out, "\"steps\": 1"), "%s", out);
    cr_assert(strstr(out, "\"n_params\": 33216"), "%s", out);

    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
    unlink(xp); unlink(gp); unlink(yp); unlink(gxp);
    local_free(&e);
    local_free(&e0);
}

Test(node, backward_applies_one_adam_step, .timeout = 60)
{
    th_node n;
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "64", "--expert_uids", "ffn.3.4",
                          "--seed", "11", NULL};   /* adam is the default, lr 1e-3 */
    cr_assert_eq(th_node_start(&n, args), 0);
    enum { B = 3 };
    float x[B * H], gy[B * H], y[B * H], want[B * H], gx[B * H];
    th_fill_normal(x, B * H, 3);
    th_fill_normal(gy, B * H, 4);
    local_expert e;
    local_init(&e, "ffn.3.4", 11);
    int fd = th_connect(n.port);
    remote(fd, 1, "ffn.3.4", x, B, gy, gx);
    local_backward(&e, x, gy, B, want);
    cr_assert_lt(th_max_abs_diff(gx, want, B * H), 1e-5f);
    kern_optim_cfg oc;
    kern_optim_parse("adam", &oc);
    kern_optim o;
    kern_optim_init(&o, &oc, e.m.n_floats);
    kern_optim_step(&o, &e.m, e.params, e.grads, oc.lr);
    remote(fd, 2, "ffn.3.4", x, B, NULL, y);
    local_forward(&e, x, B, want);
    cr_assert_lt(th_max_abs_diff(y, want, B * H), 2e-5f);
    close(fd);
    kern_optim_free(&o);
    local_free(&e);
    cr_assert_eq(th_node_stop(&n, SIGINT), 0);
}

/* ---- 32 concurrent clients, 50 mixed calls each ---- */

typedef struct {
    int port, idx, ok, failed;
    local_expert *e;
    char why[160];
} worker_arg;

static void *client_worker(void *p)
{
    worker_arg *w = p;
    int fd = th_connect(w->port);
    if (fd < 0) { snprintf(w->why, sizeof w->why, "connect failed"); w->failed = 50; return NULL; }
    enum { MAXB = 4 };
    float x[MAXB * H], gy[MAXB * H], got[MAXB * H], want[MAXB * H];
    for (int k = 0; k < 50; k++) {
        int64_t B = 1 + (w->idx + k) % MAXB;
        int bwd = (w->idx + k) % 3 == 0;
        th_fill_normal(x, (size_t)(B * H), (uint64_t)(w->idx * 1000 + k));
        th_fill_normal(gy, (size_t)(B * H), (uint64_t)(w->idx * 1000 + k + 500000));
        uint64_t id = (uint64_t)w->idx * 100 + (uint64_t)k + 1;
        wire_msg m;
        if (th_send_out(fd, th_request(id, "expert.0", x, B, H, bwd ? gy : NULL)) != 0 || th_recv_msg(fd, &m) != 0) {
            snprintf(w->why, sizeof w->why, "call %d: no reply", k);
            w->failed++;
            break;
        }
        int good = m.id == id && th_result_f32(&m, bwd ? "grad_inputs" : "outputs", B, H, got) == 0;
        wire_msg_free(&m);
        if (!good) { snprintf(w->why, sizeof w->why, "call %d: wrong id or shape", k); w->failed++; continue; }
        /* the kernel itself is deterministic; recompute locally on this thread's own workspace */
        local_expert mine = *w->e;
        mine.ws = malloc((mine.m.cls->backward_ws(&mine.m, MAXB) + 64) * sizeof(float));
        mine.grads = malloc(mine.m.n_floats * sizeof(float));
        const void *in[1] = {x};
        float *out[1] = {want};
        const float *go[1] = {gy};
        if (bwd) mine.m.cls->backward(&mine.m, mine.params, B, in, go, out, mine.grads, mine.ws, 0);
        else mine.m.cls->forward(&mine.m, mine.params, B, in, out, mine.ws, 0);
        free(mine.ws);
        free(mine.grads);
        if (th_max_abs_diff(got, want, (size_t)(B * H)) < 1e-4f) w->ok++;
        else { snprintf(w->why, sizeof w->why, "call %d: rows of another request", k); w->failed++; }
    }
    close(fd);
    return NULL;
}

Test(node, concurrent_clients_get_their_own_rows, .timeout = 120)
{
    th_node n;
    /* optimizer none: the weights stay put, so every reply has one right answer */
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "64", "--expert_uids", "expert.0",
                          "--seed", SEED, "--optimizer", "none", NULL};
    cr_assert_eq(th_node_start(&n, args), 0);
    local_expert e;
    local_init(&e, "expert.0", 7);
    enum { NCLIENTS = 32 };
    pthread_t th[NCLIENTS];
    worker_arg wa[NCLIENTS];
    for (int i = 0; i < NCLIENTS; i++) {
        wa[i] = (worker_arg){.port = n.port, .idx = i, .e = &e};
        pthread_create(&th[i], NULL, client_worker, &wa[i]);
    }
    int ok = 0;
    for (int i = 0; i < NCLIENTS; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(wa[i].failed, 0, "client %d: %s", i, wa[i].why);
        ok += wa[i].ok;
    }
    cr_assert_eq(ok, NCLIENTS * 50);

    char out[16384];
    const char *info[] = {"--peer", n.maddr, "info", "expert.0", "--json", NULL};
    cr_assert_eq(th_run("dmoe-call", info, out, sizeof out, 30), 0);
    long fc = 0, bc = 0, fb = 0, bb = 0;
    const char *p;
    if ((p = strstr(out, "\"forward_calls\": "))) fc = atol(p + 17);
    if ((p = strstr(out, "\"backward_calls\": "))) bc = atol(p + 18);
    if ((p = strstr(out, "\"forward_batches\": "))) fb = atol(p + 19);
    if ((p = strstr(out, "\"backward_batches\": "))) bb = atol(p + 20);
    cr_assert_eq(fc + bc, NCLIENTS * 50, "%s", out);
    cr_assert_lt(fb + bb, fc + bc, "batching merged nothing: %ld batches for %ld calls", fb + bb, fc + bc);
    cr_log_info("%ld calls in %ld batches", fc + bc, fb + bb);
    local_free(&e);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
}

Test(node, sigterm_while_computing_exits_cleanly, .timeout = 60)
{
    /* nop_delay holds each batch for 400 ms on a timer: the signal surely lands while they are in flight */
    th_node n;
    const char *args[] = {"--expert_cls", "nop_delay", "--delay_ms", "400", "--hidden_dim", "64",
                          "--expert_uids", "expert.0", NULL};
    cr_assert_eq(th_node_start(&n, args), 0);
    enum { B = 8 };
    float x[B * H], y[B * H];
    th_fill_normal(x, B * H, 5);
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = th_connect(n.port);
        cr_assert_eq(th_send_out(fds[i], th_request((uint64_t)i + 1, "expert.0", x, B, H, i % 2 ? x : NULL)), 0);
    }
    usleep(100000);
    kill(n.pid, SIGTERM);
    /* every request gets an answer: its result, or "shutting down" for what had not started */
    for (int i = 0; i < 4; i++) {
        wire_msg m;
        int rc = th_recv_msg(fds[i], &m);
        cr_assert_eq(rc, 0, "request %d got no answer", i);
        cr_assert_eq(m.id, (uint64_t)i + 1);
        cr_assert(m.kind == WIRE_REPLY_OK || m.err_code == -12, "kind %d code %d", m.kind, m.err_code);
        if (m.kind == WIRE_REPLY_OK) {
            cr_assert_eq(th_result_f32(&m, i % 2 ? "grad_inputs" : "outputs", B, H, y), 0);
            cr_assert_eq(memcmp(x, y, sizeof y), 0, "nop_delay is the identity");
        }
        wire_msg_free(&m);
        close(fds[i]);
    }
    int rc = th_node_stop(&n, SIGTERM);
    cr_assert_eq(rc, 0, "dmoe-node exited with %d", rc);
}

/* ---- the activation cache ---- */

static uint64_t forward_handle(int fd, uint64_t id, const char *uid, const float *x, int64_t B)
{
    cr_assert_eq(th_send_out(fd, th_request(id, uid, x, B, H, NULL)), 0);
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    const msgpack_object *h = wire_map_get(m.result, "handle");
    uint64_t handle = h && h->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? h->via.u64 : 0;
    wire_msg_free(&m);
    return handle;
}

static void backward_handle(int fd, uint64_t id, const char *uid, const float *x, const float *gy, int64_t B,
                            uint64_t handle, float *gx)
{
    wire_out *o = wire_out_new();
    msgpack_packer *pk = wire_out_pk(o);
    wire_request_begin(o, id, "backward", 6);
    wire_pack_str(pk, "handle");
    msgpack_pack_uint64(pk, handle);
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, uid);
    wire_tensor t = {.dtype = WIRE_DT_F32, .ndim = 2, .shape = {B, H}, .numel = (size_t)(B * H), .nbytes = (size_t)(B * H * 4)};
    wire_pack_str(pk, "inputs");
    msgpack_pack_array(pk, 1);
    t.data = (const uint8_t *)x;
    wire_tensor_pack(o, &t, NULL, NULL);
    wire_pack_str(pk, "grad_outputs");
    msgpack_pack_array(pk, 1);
    t.data = (const uint8_t *)gy;
    wire_tensor_pack(o, &t, NULL, NULL);
    cr_assert_eq(th_send_out(fd, o), 0);
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    cr_assert_eq(th_result_f32(&m, "grad_inputs", B, H, gx), 0);
    wire_msg_free(&m);
}

static long cached_backwards(th_node *n)
{
    long v = th_expert_stat(n, "expert.0", "backward_cached");
    cr_assert_geq(v, 0, "no backward_cached in the node's info");
    return v;
}

Test(node, backward_with_its_forward_handle_skips_the_recompute, .timeout = 60)
{
    th_node n;
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "64", "--expert_uids", "expert.0", "--seed", SEED,
                          "--optimizer", "none", NULL};
    cr_assert_eq(th_node_start(&n, args), 0);
    enum { B = 6 };
    float x[B * H], x2[B * H], gy[B * H], gx[B * H], want[B * H];
    th_fill_normal(x, B * H, 21);
    th_fill_normal(x2, B * H, 22);
    th_fill_normal(gy, B * H, 23);
    local_expert e;
    local_init(&e, "expert.0", 7);
    local_backward(&e, x, gy, B, want);
    int fd = th_connect(n.port);

    uint64_t h = forward_handle(fd, 1, "expert.0", x, B);
    cr_assert_neq(h, 0, "the forward reply carries a handle");
    backward_handle(fd, 2, "expert.0", x, gy, B, h, gx);
    cr_assert_lt(th_max_abs_diff(gx, want, B * H), 1e-5f);
    cr_assert_eq(cached_backwards(&n), 1);

    /* a handle is good once: the second backward recomputes, with the same result */
    backward_handle(fd, 3, "expert.0", x, gy, B, h, gx);
    cr_assert_lt(th_max_abs_diff(gx, want, B * H), 1e-5f);
    cr_assert_eq(cached_backwards(&n), 1);

    /* a handle with other inputs is not used: the gradient is that of the inputs sent */
    h = forward_handle(fd, 4, "expert.0", x, B);
    backward_handle(fd, 5, "expert.0", x2, gy, B, h, gx);
    local_backward(&e, x2, gy, B, want);
    cr_assert_lt(th_max_abs_diff(gx, want, B * H), 1e-5f);
    cr_assert_eq(cached_backwards(&n), 1);

    /* "save": false: no handle, nothing kept; the backward recomputes, with the same result. A save that is
     * not a boolean is refused with a message, and the connection goes on. */
    for (int variant = 0; variant < 2; variant++) {
        wire_out *o = wire_out_new();
        msgpack_packer *pk = wire_out_pk(o);
        wire_request_begin(o, 6 + (uint64_t)variant, "forward", 5);
        wire_pack_str(pk, "save");
        if (variant == 0) msgpack_pack_false(pk);
        else msgpack_pack_int(pk, 0);
        wire_pack_str(pk, "uid");
        wire_pack_str(pk, "expert.0");
        wire_tensor t = {.dtype = WIRE_DT_F32, .ndim = 2, .shape = {B, H}, .numel = (size_t)(B * H), .nbytes = (size_t)(B * H * 4),
                         .data = (const uint8_t *)x};
        wire_pack_str(pk, "inputs");
        msgpack_pack_array(pk, 1);
        wire_tensor_pack(o, &t, NULL, NULL);
        cr_assert_eq(th_send_out(fd, o), 0);
        wire_msg m;
        cr_assert_eq(th_recv_msg(fd, &m), 0);
        if (variant == 0) {
            cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
            cr_assert_null(wire_map_get(m.result, "handle"), "a forward with save false got a handle");
            float y[B * H], ywant[B * H];
            cr_assert_eq(th_result_f32(&m, "outputs", B, H, y), 0);
            local_forward(&e, x, B, ywant);
            cr_assert_lt(th_max_abs_diff(y, ywant, B * H), 1e-5f);
        } else {
            cr_assert_eq(m.kind, WIRE_REPLY_ERR);
            cr_assert_eq(m.err_code, DMOE_EINVAL);
            cr_assert(strstr(m.err_msg, "save"), "%s", m.err_msg);
        }
        wire_msg_free(&m);
    }
    h = forward_handle(fd, 8, "expert.0", x, B);
    cr_assert_neq(h, 0, "the connection serves on after the refused request");
    close(fd);
    local_free(&e);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
}

/* A batch big enough to be split across the workers still gives one step with the whole batch's
 * gradient: the chunks' gradients are summed before the step. */
Test(node, split_backward_is_one_step_of_the_whole_batch, .timeout = 60)
{
    th_node n;
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "64", "--expert_uids", "expert.0", "--seed", SEED,
                          "--optimizer", "sgd", "--lr", "0.1", "--num_workers", "2", NULL};
    cr_assert_eq(th_node_start(&n, args), 0);
    enum { B = 100 };
    float *x = malloc(B * H * 4), *gy = malloc(B * H * 4), *gx = malloc(B * H * 4), *want = malloc(B * H * 4);
    float *y = malloc(B * H * 4);
    th_fill_normal(x, B * H, 31);
    th_fill_normal(gy, B * H, 32);
    local_expert e;
    local_init(&e, "expert.0", 7);
    free(e.ws);
    e.ws = calloc(e.m.cls->backward_ws(&e.m, B) + 64, 4);
    int fd = th_connect(n.port);
    remote(fd, 1, "expert.0", x, B, gy, gx);
    local_backward(&e, x, gy, B, want);
    cr_assert_lt(th_max_abs_diff(gx, want, B * H), 1e-5f);
    for (size_t i = 0; i < e.m.n_floats; i++) e.params[i] -= 0.1f * e.grads[i];
    remote(fd, 2, "expert.0", x, B, NULL, y);
    local_forward(&e, x, B, want);
    cr_assert_lt(th_max_abs_diff(y, want, B * H), 5e-5f);
    close(fd);
    local_free(&e);
    free(x); free(gy); free(gx); free(want); free(y);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
}
