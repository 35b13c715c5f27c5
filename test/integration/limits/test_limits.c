/* test_limits.c -- a node's memory and connections stay inside its flags whatever clients send
 * (issue 11): each attack runs against a real dmoe-node started with --max_pending_mb 64 and small
 * reply limits, while an honest client -- from another loopback address, 127.0.0.2, so that the
 * per-address share does not lump it with the attackers -- opens a fresh connection every 100 ms and
 * must get its ping and a small forward answered within a second. Throughout, the node's peak RSS
 * (VmHWM in /proc/PID/status) must stay under the bound README states:
 *
 *     max_pending_mb + max_replies_mb + what the node's flags hold + LIM_CONST_MB
 *
 * where, for this nop expert (no parameters, no activation cache), what the flags hold is the batches
 * being computed: --num_workers of them, each up to --max_batch_size rows in and as many out.
 *
 * and the node must survive and exit 0 (under SAN=1: with no ASan report). The attacks: slow-loris
 * frames announced big and trickled, a frame of msgpack nils, clients that send big requests and never
 * read the replies, compressed tensors whose header claims more rows than the node takes, many idle
 * connections, and all of them at once.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "runtime/rt_err.h"
#include "test/integration/harness.h"

/* What a node holds beyond its two budgets: code, libraries, the worker threads' stacks, the DHT,
 * allocator slack; measured at ~25 MiB idle on the dev box. Under ASan (shadow memory, quarantine,
 * redzones) the same node needs far more. */
#define LIM_CONST_MB 48
#define LIM_CONST_SAN_MB 400
#define LIM_PENDING_MB 64
#define LIM_REPLIES_MB 32
#define LIM_H 1024               /* the nop expert's width: a 1024-row request is 4 MiB */
#define LIM_WORKERS 2
#define LIM_MAX_BATCH 1024
/* the batches being computed: LIM_WORKERS batches of LIM_MAX_BATCH rows, inputs and outputs (16 MiB) */
#define LIM_BATCHES_MB (LIM_WORKERS * LIM_MAX_BATCH * LIM_H * 4.0 * 2 / (1 << 20))
#define LIM_SECONDS 5            /* each attack runs this long */

static th_node node;

static void start_node(void)
{
    const char *args[] = {"--expert_cls", "nop", "--hidden_dim", "1024", "--expert_uids", "expert.0",   /* LIM_H */
                          "--max_batch_size", "1024", "--num_workers", "2",   /* LIM_MAX_BATCH, LIM_WORKERS */
                          "--activation_cache_mb", "0",
                          "--max_pending_mb", "64", "--max_replies_mb", "32", "--reply_soft_mb", "4",
                          "--reply_hard_mb", "8", "--min_rate_kbps", "4", "--min_rate_grace_s", "1",
                          "--idle_timeout_s", "3", "--max_connections", "64", NULL};
    cr_assert_eq(th_node_start(&node, args), 0);
}

static void stop_node(void)
{
    if (getenv("LIM_DUMP_LOG")) {
        char *log = th_node_log(&node);
        fprintf(stderr, "%s\n", log);
        free(log);
    }
    cr_expect(th_node_alive(&node), "the node died");
    int rc = th_node_stop(&node, SIGTERM);
    cr_expect_eq(rc, 0, "dmoe-node exited with %d", rc);
}

TestSuite(limits, .init = start_node, .fini = stop_node, .timeout = 60);

/* ---- measuring ---- */

static long status_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') kb = strtol(line + n + 1, NULL, 10);
    fclose(f);
    return kb;
}

/* The honest client's longest wait: a second, as issue 11 asks; the sanitizer build runs the node
 * several times slower, so there it gets four. */
static long answer_ms(void) { return getenv("ASAN_OPTIONS") ? 4000 : 1000; }

static double bound_mb(void)
{
    int san = getenv("ASAN_OPTIONS") != NULL;
    return LIM_PENDING_MB + LIM_REPLIES_MB + LIM_BATCHES_MB + (san ? LIM_CONST_SAN_MB : LIM_CONST_MB);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A connection to the node from src (an address of the loopback net); blocking with timeouts of
 * timeout_ms, or non-blocking when timeout_ms is 0. -1 on error. */
static int connect_from(const char *src, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) { close(fd); return -1; }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)node.port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0) { close(fd); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (timeout_ms > 0) {
        struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    } else {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    return fd;
}

/* The honest client: a fresh connection from 127.0.0.2, a ping and a 4-row forward. Returns the
 * milliseconds both took, or -1 when either failed or a step took over 5 s. */
static long honest_call(void)
{
    uint64_t t0 = now_ms();
    int fd = connect_from("127.0.0.2", 5000);
    if (fd < 0) return -1;
    long ms = -1;
    wire_out *o = wire_out_new();
    wire_request_begin(o, 1, "ping", 2);
    wire_msg m;
    if (th_send_out(fd, o) == 0 && th_recv_msg(fd, &m) == 0) {
        int ok = m.kind == WIRE_REPLY_OK && m.id == 1;
        wire_msg_free(&m);
        float x[4 * LIM_H];
        th_fill_normal(x, 4 * LIM_H, 7);
        if (ok && th_send_out(fd, th_request(2, "expert.0", x, 4, LIM_H, NULL)) == 0 && th_recv_msg(fd, &m) == 0) {
            float y[4 * LIM_H];
            if (th_result_f32(&m, "outputs", 4, LIM_H, y) == 0 && m.id == 2) ms = (long)(now_ms() - t0);
            wire_msg_free(&m);
        }
    }
    close(fd);
    return ms;
}

/* ---- attackers: non-blocking sockets pushed a little on every turn of the test's loop ---- */

typedef struct {
    int fd;
    uint8_t *buf;        /* what is left to send (not owned when shared) */
    size_t len, off;
    int trickle_ms;      /* > 0: one byte per trickle_ms after the first trickle_after bytes */
    size_t trickle_after;
    uint64_t next_ms;
    int repeat;          /* send buf this many more times */
    int closed;          /* the node closed it */
} attacker;

#define MAX_ATT 256
static attacker att[MAX_ATT];
static int n_att;

static attacker *add_attacker(const uint8_t *buf, size_t len, int repeat)
{
    cr_assert_lt(n_att, MAX_ATT);
    attacker *a = &att[n_att];
    memset(a, 0, sizeof *a);
    a->fd = connect_from("127.0.0.1", 0);
    cr_assert_geq(a->fd, 0, "attacker %d cannot connect: %s", n_att, strerror(errno));
    a->buf = (uint8_t *)buf;
    a->len = len;
    a->repeat = repeat;
    n_att++;
    return a;
}

static void pump(void)
{
    uint64_t now = now_ms();
    for (int i = 0; i < n_att; i++) {
        attacker *a = &att[i];
        if (a->closed) continue;
        /* the node closed it (replies are never read, so a FIN may wait behind them: POLLRDHUP) */
        struct pollfd pf = {.fd = a->fd, .events = POLLRDHUP};
        if (poll(&pf, 1, 0) == 1 && (pf.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            a->closed = 1;
            continue;
        }
        while (a->off < a->len) {
            size_t chunk = a->len - a->off;
            if (a->trickle_ms > 0 && a->off >= a->trickle_after) {
                if (now < a->next_ms) break;
                chunk = 1;
                a->next_ms = now + (uint64_t)a->trickle_ms;
            }
            ssize_t w = send(a->fd, a->buf + a->off, chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK) a->closed = 1;
                break;
            }
            a->off += (size_t)w;
            if (a->trickle_ms > 0) break;
        }
        if (a->off == a->len && a->repeat > 0) { a->repeat--; a->off = 0; }
    }
}

static int attackers_closed(void)
{
    int n = 0;
    for (int i = 0; i < n_att; i++) n += att[i].closed;
    return n;
}

/* Keep the attack going (no honest calls) until at least want attackers were closed or max_ms passed
 * (a loaded machine may need longer than the measured run); returns how many were closed. */
static int pump_until_closed(int want, int max_ms)
{
    uint64_t end = now_ms() + (uint64_t)max_ms;
    while (attackers_closed() < want && now_ms() < end) {
        pump();
        usleep(2000);
    }
    double hwm = status_kb(node.pid, "VmHWM") / 1024.0;
    cr_assert_lt(hwm, bound_mb(), "the node's peak RSS reached %.0f MiB, over the bound %.0f MiB", hwm, bound_mb());
    return attackers_closed();
}

static void close_attackers(void)
{
    for (int i = 0; i < n_att; i++) close(att[i].fd);
    n_att = 0;
}

/* Run the attack for LIM_SECONDS: pump it, call the honest client every 100 ms, check every answer
 * came within 1 s and the node's peak RSS stays under the bound. Returns the peak in MiB. */
static double run_attack(const char *name)
{
    uint64_t end = now_ms() + LIM_SECONDS * 1000;
    long worst = 0;
    int calls = 0;
    uint64_t next_honest = 0;
    while (now_ms() < end) {
        pump();
        if (now_ms() >= next_honest) {
            long ms = honest_call();
            cr_assert_geq(ms, 0, "%s: the honest client got no answer (call %d)", name, calls);
            cr_assert_leq(ms, answer_ms(), "%s: the honest client waited %ld ms (call %d)", name, ms, calls);
            if (ms > worst) worst = ms;
            calls++;
            next_honest = now_ms() + 100;
            pump();
        }
        usleep(2000);
        double hwm = status_kb(node.pid, "VmHWM") / 1024.0;
        cr_assert_lt(hwm, bound_mb(), "%s: the node's peak RSS reached %.0f MiB, over the bound %.0f MiB", name, hwm,
                     bound_mb());
    }
    double peak = status_kb(node.pid, "VmHWM") / 1024.0;
    cr_log_info("%s: peak RSS %.1f MiB (bound %.0f), %d honest calls, slowest %ld ms, %d of %d attackers closed",
                name, peak, bound_mb(), calls, worst, attackers_closed(), n_att);
    cr_assert(th_node_alive(&node), "%s: the node died", name);
    return peak;
}

/* ---- the attacks' bytes ---- */

/* A frame header announcing len bytes, then what is given of the body. */
static uint8_t *frame_of(const uint8_t *body, size_t body_len, uint32_t announced, size_t *total)
{
    uint8_t *f = malloc(4 + body_len);
    cr_assert_not_null(f);
    f[0] = (uint8_t)(announced >> 24);
    f[1] = (uint8_t)(announced >> 16);
    f[2] = (uint8_t)(announced >> 8);
    f[3] = (uint8_t)announced;
    if (body_len) memcpy(f + 4, body, body_len);
    *total = 4 + body_len;
    return f;
}

/* o (consumed) as header + body. */
static uint8_t *flat_frame(wire_out *o, size_t *total)
{
    uint8_t *body;
    size_t blen;
    cr_assert_eq(wire_out_flatten(o, &body, &blen), 0);
    uint8_t *f = frame_of(body, blen, (uint32_t)blen, total);
    free(body);
    return f;
}

/* {"id": 1, "method": "ping", "x": [nil * n]} as one frame. */
static uint8_t *nils_frame(size_t n, size_t *total)
{
    wire_out *o = wire_out_new();
    wire_request_begin(o, 1, "ping", 3);
    msgpack_packer *pk = wire_out_pk(o);
    wire_pack_str(pk, "x");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) msgpack_pack_nil(pk);
    return flat_frame(o, total);
}

/* A forward of rows x LIM_H floats (repeated requests share one buffer). */
static uint8_t *forward_frame(int64_t rows, size_t *total)
{
    float *x = calloc((size_t)rows * LIM_H, sizeof *x);
    cr_assert_not_null(x);
    wire_out *o = th_request(3, "expert.0", x, rows, LIM_H, NULL);   /* references x */
    uint8_t *f = flat_frame(o, total);
    free(x);
    return f;
}

/* A forward whose one tensor is UNIFORM_8BIT-compressed with shape [rows, LIM_H] and data_len bytes:
 * for data_len = 8 + 4*256 + rows*LIM_H it is a well-formed tensor of more rows than max_batch_size. */
static uint8_t *compressed_frame(int64_t rows, size_t data_len, size_t *total)
{
    uint8_t *data = calloc(data_len ? data_len : 1, 1);
    cr_assert_not_null(data);
    if (data_len >= 8) data[0] = 1;   /* codebook of one entry, 0.0 */
    wire_out *o = wire_out_new();
    wire_request_begin(o, 4, "forward", 4);
    msgpack_packer *pk = wire_out_pk(o);
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, "expert.0");
    wire_pack_str(pk, "inputs");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 4);
    wire_pack_str(pk, "compression");
    wire_pack_str(pk, "UNIFORM_8BIT");
    wire_pack_str(pk, "dtype");
    wire_pack_str(pk, "float32");
    wire_pack_str(pk, "shape");
    msgpack_pack_array(pk, 2);
    msgpack_pack_int64(pk, rows);
    msgpack_pack_int64(pk, LIM_H);
    wire_pack_str(pk, "data");
    msgpack_pack_bin(pk, data_len);
    msgpack_pack_bin_body(pk, data, data_len);
    uint8_t *f = flat_frame(o, total);
    free(data);
    return f;
}

/* ---- the attacks ---- */

/* n connections announcing 1 GiB (over the node's frame limit) or 60 MiB, each sending 2 KiB and
 * then trickling a byte per 200 ms: the node holds what arrived, not what was announced, and drops
 * the frames that do not keep the minimum rate. The buffers go to bufs[0..n). */
static void add_slowloris(int n, uint8_t **bufs)
{
    static uint8_t body[(2 << 10) + 64];
    for (int i = 0; i < n; i++) {
        size_t total;
        bufs[i] = frame_of(body, sizeof body, i % 2 ? 60u << 20 : 1u << 30, &total);
        attacker *a = add_attacker(bufs[i], total, 0);
        a->trickle_ms = 200;
        a->trickle_after = 4 + (2 << 10);
    }
}

Test(limits, slowloris_announcements_trickled)
{
    uint8_t *bufs[16];
    add_slowloris(16, bufs);
    run_attack("slow-loris");
    cr_assert_eq(pump_until_closed(n_att, 5000), n_att, "every trickling frame is dropped (over the limit, or under the rate)");
    close_attackers();
    for (int i = 0; i < 16; i++) free(bufs[i]);
}

Test(limits, frame_of_msgpack_nils)
{
    size_t total;
    uint8_t *f = nils_frame((size_t)32 << 20, &total);   /* 32 Mi nils: 768 MiB once decoded */
    for (int i = 0; i < 3; i++) add_attacker(f, total, 0);
    run_attack("msgpack nils");
    cr_assert_eq(pump_until_closed(n_att, 10000), n_att, "a frame of 32 Mi objects is refused and its connection closed");
    close_attackers();
    free(f);
}

Test(limits, big_requests_replies_never_read)
{
    size_t total;
    uint8_t *f = forward_frame(256, &total);   /* 1 MiB in, 1 MiB out, again and again */
    for (int i = 0; i < 12; i++) add_attacker(f, total, 64);
    run_attack("replies never read");
    cr_assert_gt(pump_until_closed(1, 15000), 0, "slow readers are closed");
    close_attackers();
    free(f);
}

Test(limits, compressed_rows_over_max_batch)
{
    size_t total, tiny_total;
    /* 15 MiB of UNIFORM_8BIT indices: [15360, 1024] decompresses to 60 MiB; and a header claiming
     * [2^27, 1024] rows over 1 KiB of data */
    int64_t rows = 15 * 1024;
    uint8_t *f = compressed_frame(rows, 8 + 4 + (size_t)rows * LIM_H, &total);
    uint8_t *tiny = compressed_frame((int64_t)1 << 27, 1024, &tiny_total);
    for (int i = 0; i < 4; i++) add_attacker(f, total, 8);
    for (int i = 0; i < 4; i++) add_attacker(tiny, tiny_total, 64);
    run_attack("compressed rows");
    close_attackers();
    free(f);
    free(tiny);
}

Test(limits, many_idle_connections)
{
    /* more than the node's --max_connections, and (against a node that keeps the inherited soft limit)
     * more than its 1024 descriptors */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    int n = 1100;
    int *fds = malloc((size_t)n * sizeof *fds);
    cr_assert_not_null(fds);
    int opened = 0;
    for (int i = 0; i < n; i++) {
        fds[i] = connect_from("127.0.0.1", 0);
        if (fds[i] >= 0) opened++;
    }
    cr_assert_geq(opened, 1000, "only %d connections opened", opened);
    run_attack("idle connections");
    /* the idle timeout closes what eviction left */
    usleep(3500 * 1000);
    int closed = 0;
    for (int i = 0; i < n; i++) {
        if (fds[i] < 0) continue;
        char c;
        ssize_t r = recv(fds[i], &c, 1, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) closed++;
        close(fds[i]);
    }
    free(fds);
    cr_assert_eq(closed, opened, "%d of %d idle connections closed", closed, opened);
}

Test(limits, all_attacks_at_once)
{
    size_t nil_total, fwd_total, comp_total;
    uint8_t *nils = nils_frame((size_t)16 << 20, &nil_total);
    uint8_t *fwd = forward_frame(1024, &fwd_total);
    int64_t rows = 8 * 1024;
    uint8_t *comp = compressed_frame(rows, 8 + 4 + (size_t)rows * LIM_H, &comp_total);
    uint8_t *loris[8];
    add_slowloris(8, loris);
    for (int i = 0; i < 2; i++) add_attacker(nils, nil_total, 0);
    for (int i = 0; i < 12; i++) add_attacker(fwd, fwd_total, 8);
    for (int i = 0; i < 4; i++) add_attacker(comp, comp_total, 4);
    pump();   /* the attackers start before the idle connections come (which stay under --max_connections) */
    for (int i = 0; i < 30; i++) {
        int fd = connect_from("127.0.0.1", 0);
        cr_assert_geq(fd, 0);
        cr_assert_lt(n_att, MAX_ATT);
        memset(&att[n_att], 0, sizeof att[n_att]);
        att[n_att++].fd = fd;   /* idle: nothing to send */
    }
    run_attack("all at once");
    close_attackers();
    free(nils);
    free(fwd);
    free(comp);
    for (int i = 0; i < 8; i++) free(loris[i]);
}
