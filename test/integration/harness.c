/* harness.c -- processes and raw sockets for the integration tests (see harness.h). Processes are
 * started with rt_spawn (they die with the test: PR_SET_PDEATHSIG) and remembered until stopped, so an
 * atexit handler kills what a failed assertion left running; a node's start-up lines are read with
 * node_banner_wait, the one parser of them.
 *
 * Output of a passing run: the programs a test starts write to files (a node's log, th_run's buffer),
 * shown only in the message of an assertion that fails; a node expected not to start says nothing
 * (th_node_start_fails). The library code the tests run in-process logs only errors (quiet_library_logs:
 * the warnings of tests that provoke failures on purpose stay out), unless $DMOE_LOG asks for more. */
#include "test/integration/harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "actors/dht/trust/dht_ident.h"
#include "actors/dht/trust/dht_trust.h"
#include "actors/node/node_banner.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/proc/rt_spawn.h"
#include "wire/wire_frame.h"
#include "wire/codec/wire_npy.h"

/* quiet_library_logs runs before the tests (in the runner and in each test's process): in-process
 * library code logs ERROR lines only, unless $DMOE_LOG sets the level (rt_log.h). */
__attribute__((constructor)) static void quiet_library_logs(void)
{
    if (!getenv("DMOE_LOG")) rt_log_set_level(RT_LOG_ERROR);
}

static const char *build_dir(void)
{
    const char *b = getenv("DMOE_BUILD");
    return b && *b ? b : "build";
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

char *th_node_log(const th_node *n) { return th_file(n->log_path); }

char *th_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return strdup("");
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    char *s = malloc((size_t)len + 1);
    size_t got = fread(s, 1, (size_t)len, f);
    s[got] = '\0';
    fclose(f);
    return s;
}

/* Every node a test starts is remembered, so that a test that fails an assertion half-way (Criterion
 * then ends the test's process) still takes its nodes down with it. */
#define TH_MAX_NODES 128   /* test_swarm starts 64 nodes, and programs beside them */
static pid_t started[TH_MAX_NODES];

static void kill_started(void)
{
    for (int i = 0; i < TH_MAX_NODES; i++)
        if (started[i] > 0) {
            kill(started[i], SIGKILL);
            waitpid(started[i], NULL, 0);
            started[i] = 0;
        }
}

static void remember(pid_t pid, int add)
{
    static int registered;
    if (!registered) { atexit(kill_started); registered = 1; }
    for (int i = 0; i < TH_MAX_NODES; i++)
        if (add ? started[i] == 0 : started[i] == pid) { started[i] = add ? pid : 0; return; }
}

/* start_node is th_node_start; quiet leaves a failed start's log unprinted (the caller expects it). */
static int start_node(th_node *n, const char *const *args, int quiet)
{
    memset(n, 0, sizeof *n);
    snprintf(n->log_path, sizeof n->log_path, "/tmp/dmoe-test-node-XXXXXX");
    int lfd = mkstemp(n->log_path);
    if (lfd < 0) return -1;
    char prog[512];
    snprintf(prog, sizeof prog, "%s/dmoe-node", build_dir());
    const char *argv[64];
    int k = 0;
    argv[k++] = prog;
    argv[k++] = "--host_maddrs";
    argv[k++] = "/ip4/127.0.0.1/tcp/0";
    for (int i = 0; args && args[i] && k < 62; i++) argv[k++] = args[i];
    argv[k] = NULL;
    /* the log is the node's stderr; a test killed by its timeout takes the node along (rt_spawn) */
    pid_t pid = rt_spawn(prog, argv, RT_SPAWN_DEVNULL, RT_SPAWN_DEVNULL, lfd);
    close(lfd);
    if (pid < 0) return -1;
    n->pid = pid;
    remember(pid, 1);
    node_banner b;
    if (node_banner_wait(n->log_path, pid, 20, &b) == 0 && strcmp(b.addr.host, "127.0.0.1") == 0) {
        n->port = b.addr.port;
        snprintf(n->maddr, sizeof n->maddr, "/ip4/127.0.0.1/tcp/%d", n->port);
        snprintf(n->dht_maddr, sizeof n->dht_maddr, "%s", b.dht_maddr);
        return 0;
    }
    if (!quiet) {
        char *log = th_node_log(n);
        fprintf(stderr, "dmoe-node did not start; its log:\n%s\n", log);
        free(log);
    }
    th_node_stop(n, SIGKILL);
    return -1;
}

int th_node_start(th_node *n, const char *const *args) { return start_node(n, args, 0); }

int th_node_start_fails(th_node *n, const char *const *args)
{
    if (start_node(n, args, 1) != 0) return 1;
    fprintf(stderr, "dmoe-node started, though the test expected it not to\n");
    th_node_stop(n, SIGKILL);
    return 0;
}

int th_node_alive(const th_node *n) { return rt_spawn_alive(n->pid); }

/* The exit status as rt_spawn_stop / rt_spawn_wait give it, or -1 for any of their error codes. */
static int status_of(int rc) { return rc >= 0 ? rc : -1; }

int th_node_stop(th_node *n, int sig)
{
    if (n->pid <= 0) return -1;
    int rc = status_of(rt_spawn_stop(n->pid, sig, 20));
    remember(n->pid, 0);
    n->pid = 0;
    unlink(n->log_path);
    return rc;
}

/* prog_argv fills path with prog's path in the build folder and argv[0..63] with it, then args (up to
 * 62 of them), then NULL. */
static void prog_argv(const char *prog, const char *const *args, char *path, size_t pathlen, const char **argv)
{
    snprintf(path, pathlen, "%s/%s", build_dir(), prog);
    int k = 0;
    argv[k++] = path;
    for (int i = 0; args[i] && k < 63; i++) argv[k++] = args[i];
    argv[k] = NULL;
}

pid_t th_spawn(const char *prog, const char *const *args, const char *out_path)
{
    char path[512];
    const char *argv[64];
    prog_argv(prog, args, path, sizeof path, argv);
    int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    pid_t pid = rt_spawn(path, argv, RT_SPAWN_INHERIT, fd, fd);
    close(fd);
    if (pid < 0) return -1;
    remember(pid, 1);
    return pid;
}

int th_wait(pid_t pid, int timeout_s)
{
    int rc = rt_spawn_wait(pid, timeout_s);
    if (rc == DMOE_ETIMEDOUT) rt_spawn_stop(pid, SIGKILL, 5);
    remember(pid, 0);
    return status_of(rc);
}

int th_run(const char *prog, const char *const *args, char *out, size_t cap, int timeout_s)
{
    char path[512];
    const char *argv[64];
    prog_argv(prog, args, path, sizeof path, argv);
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) return -1;   /* the child keeps only its stdout and stderr (dup2'd) */
    pid_t pid = rt_spawn(path, argv, RT_SPAWN_INHERIT, pfd[1], pfd[1]);
    close(pfd[1]);
    if (pid < 0) { close(pfd[0]); return -1; }
    size_t got = 0;
    double deadline = now_s() + timeout_s;
    for (;;) {
        struct pollfd p = {pfd[0], POLLIN, 0};
        int left = (int)((deadline - now_s()) * 1000);
        if (left <= 0) break;
        if (poll(&p, 1, left) <= 0) break;
        char buf[4096];
        ssize_t r = read(pfd[0], buf, sizeof buf);
        if (r <= 0) break;
        if (out && got + 1 < cap) {
            size_t take = (size_t)r < cap - 1 - got ? (size_t)r : cap - 1 - got;
            memcpy(out + got, buf, take);
            got += take;
        }
    }
    if (out && cap) out[got] = '\0';
    close(pfd[0]);
    int rc = rt_spawn_wait(pid, deadline - now_s() > 1 ? deadline - now_s() : 1);
    if (rc == DMOE_ETIMEDOUT) { rt_spawn_stop(pid, SIGKILL, 5); return -1; }
    return status_of(rc);
}

int th_write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    return bad || chmod(path, mode) != 0 ? -1 : 0;
}

int th_key_file(const char *path, uint8_t b, char pk_hex[65])
{
    uint8_t seed[DHT_IDENT_SEED_BYTES];
    memset(seed, b, sizeof seed);
    char line[32 + 2 * sizeof seed] = "dmoe-ed25519 ";
    for (size_t i = 0; i < sizeof seed; i++) snprintf(line + 13 + 2 * i, 3, "%02x", seed[i]);
    strcat(line, "\n");
    dht_ident k;
    if (th_write_file(path, line, 0600) != 0 || dht_ident_from_seed(&k, seed) != 0) return -1;
    dht_trust_hex(k.pk, pk_hex);
    dht_ident_wipe(&k);
    return 0;
}

int th_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { close(fd); return -1; }
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int th_send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int th_send_frame(int fd, const void *body, size_t n)
{
    uint8_t hdr[WIRE_FRAME_HDR];
    wire_frame_put_header(hdr, (uint32_t)n);
    if (th_send_all(fd, hdr, sizeof hdr) != 0) return -1;
    return th_send_all(fd, body, n);
}

int th_send_out(int fd, wire_out *o)
{
    uint8_t *buf;
    size_t len;
    if (wire_out_flatten(o, &buf, &len) != 0) return -1;
    int rc = th_send_frame(fd, buf, len);
    free(buf);
    return rc;
}

static int recv_all(int fd, void *p, size_t n)
{
    char *c = p;
    while (n) {
        ssize_t r = recv(fd, c, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

int th_recv_msg(int fd, wire_msg *m)
{
    uint8_t hdr[4];
    if (recv_all(fd, hdr, 4) != 0) return -1;
    size_t len = ((size_t)hdr[0] << 24) | ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
    if (len == 0 || len > ((size_t)1 << 30)) return -1;
    uint8_t *body = malloc(len);
    if (!body || recv_all(fd, body, len) != 0) { free(body); return -1; }
    char err[128];
    return wire_msg_decode(body, len, m, err, sizeof err);
}

int th_peer_closed(int fd, int timeout_ms)
{
    double deadline = now_s() + timeout_ms / 1000.0;
    char buf[4096];
    while (now_s() < deadline) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r == 0) return 1;
        if (r < 0 && errno != EAGAIN && errno != EINTR) return 1;
    }
    return 0;
}

int th_ping(int port)
{
    int fd = th_connect(port);
    if (fd < 0) return -1;
    wire_out *o = wire_out_new();
    wire_request_begin(o, 99, "ping", 2);
    int rc = th_send_out(fd, o);
    wire_msg m;
    if (rc == 0) rc = th_recv_msg(fd, &m);
    if (rc == 0) {
        rc = m.kind == WIRE_REPLY_OK && m.id == 99 ? 0 : -1;
        wire_msg_free(&m);
    }
    close(fd);
    return rc;
}

static void pack_f32(wire_out *o, const float *x, int64_t B, int64_t H)
{
    wire_tensor t = {.dtype = WIRE_DT_F32, .ndim = 2, .shape = {B, H}, .numel = (size_t)(B * H)};
    t.nbytes = t.numel * 4;
    t.data = (const uint8_t *)x;
    msgpack_pack_array(wire_out_pk(o), 1);
    wire_tensor_pack(o, &t, NULL, NULL);
}

wire_out *th_request(uint64_t id, const char *uid, const float *x, int64_t B, int64_t H, const float *gout)
{
    wire_out *o = wire_out_new();
    msgpack_packer *pk = wire_out_pk(o);
    wire_request_begin(o, id, gout ? "backward" : "forward", gout ? 5 : 4);
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, uid);
    wire_pack_str(pk, "inputs");
    pack_f32(o, x, B, H);
    if (gout) {
        wire_pack_str(pk, "grad_outputs");
        pack_f32(o, gout, B, H);
    }
    return o;
}

int th_result_f32(const wire_msg *m, const char *key, int64_t B, int64_t H, float *out)
{
    if (m->kind != WIRE_REPLY_OK) return -1;
    const msgpack_object *arr = wire_map_get(m->result, key);
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY || arr->via.array.size < 1) return -1;
    wire_tensor t;
    char err[128];
    if (wire_tensor_decode(&arr->via.array.ptr[0], &t, err, sizeof err) != 0) return -1;
    if (t.dtype != WIRE_DT_F32 || t.ndim != 2 || t.shape[0] != B || t.shape[1] != H) return -1;
    memcpy(out, t.data, t.nbytes);
    return 0;
}

void th_fill_normal(float *x, size_t n, uint64_t seed)
{
    kern_rng r;
    kern_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = kern_rng_normal(&r);
}

float th_max_abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) m = d;   /* NaN counts as the largest */
    }
    return m;
}

int th_write_npy(const char *path, const float *x, int64_t rows, int64_t cols)
{
    int64_t shape[2] = {rows, cols};
    char err[160];
    if (wire_npy_write(path, WIRE_DT_F32, 2, shape, x, err, sizeof err) == 0) return 0;
    fprintf(stderr, "%s: %s\n", path, err);
    return -1;
}

float *th_read_npy(const char *path, int64_t rows, int64_t cols)
{
    wire_dtype dt;
    int nd;
    int64_t shape[WIRE_MAX_NDIM];
    void *data;
    size_t nbytes;
    char err[160];
    if (wire_npy_read(path, &dt, &nd, shape, &data, &nbytes, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", path, err);
        return NULL;
    }
    if (dt != WIRE_DT_F32 || nd != 2 || shape[0] != rows || shape[1] != cols) {
        fprintf(stderr, "%s: not a float32 [%lld, %lld] array\n", path, (long long)rows, (long long)cols);
        free(data);
        return NULL;
    }
    return data;
}

char *th_http_get(int port, const char *path)
{
    int fd = th_connect(port);
    if (fd < 0) return NULL;
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    if (!buf || th_send_all(fd, req, strlen(req)) != 0) {
        free(buf);
        close(fd);
        return NULL;
    }
    for (;;) {
        ssize_t r = recv(fd, buf + len, cap - 1 - len, 0);
        if (r <= 0) break;
        len += (size_t)r;
        if (len + 1 >= cap) break;
    }
    buf[len] = '\0';
    close(fd);
    return buf;
}

long th_expert_stat(const th_node *n, const char *uid, const char *key)
{
    char out[8192], pat[96];
    const char *info[] = {"--peer", n->maddr, "info", uid, "--json", NULL};
    if (th_run("dmoe-call", info, out, sizeof out, 30) != 0) return -1;
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(out, pat);
    return p ? atol(p + strlen(pat)) : -1;
}
