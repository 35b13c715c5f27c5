/* test_dht_handover.c -- what a stranger can make a DHT node send, and how long it can keep its loop
 * (issue 10 item 4): the hand-over of stored keys to new peers is bounded and paced, and goes only to
 * the address a proof came from; a request naming a third address makes the node send nothing there.
 *
 * The first test runs in-process (the swarm kit, dht_swarm.h, in virtual time): a node holding 100,000
 * keys hears from one new id, then from 63 at once; each new peer gets at most DHT_HANDOVER_MAX_KEYS
 * keys, at most DHT_HANDOVER_PEERS are handed over to at a time (the rest skipped), and no handler of
 * any node keeps the loop longer than DHT_SWARM_MAX_STALL_US (thread CPU time, rt_lag.h). The second runs a real
 * dmoe-node on loopback and a listening socket on 127.0.0.2 (Linux routes all of 127/8 to loopback)
 * that counts the connections and bytes it receives while requests from 127.0.0.1 name it. The third
 * asks a real dmoe-node that holds a 32 KiB value for it from an address no round trip has proven: the
 * reply is at most DHT_REPLY_FACTOR times the request, cut and carrying a token; sent again with the
 * token, the request gets the value (an honest requester is slowed by one round trip, not refused). */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "actors/dht/dht_node.h"
#include "actors/dht/io/dht_proto.h"
#include "runtime/rt_err.h"
#include "test/integration/dht/dht_swarm.h"
#include "test/integration/dht/node_lag.h"
#include "test/integration/harness.h"

#define BIG_KEYS 100000
#define NEW_IDS 64

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void on_ping(void *arg, int err, const char *msg, const dht_peer_info *who)
{
    dht_swarm *s = arg;
    cr_expect_eq(err, 0, "a newcomer's ping: %s", msg ? msg : "");
    s->pending--;
}

static int never(dht_swarm *s, void *arg) { return 0; }

static int handover_idle(dht_swarm *s, void *arg)
{
    dht_handover_stats st = dht_node_handover_stats(arg);
    return s->pending <= 0 && st.started + st.skipped >= s->n - 1 && st.active == 0;
}

Test(dht_handover, a_node_with_100k_keys_hands_over_within_bounds_and_never_stalls, .timeout = 120)
{
    dht_swarm s;
    dht_swarm_init(&s, 0, 1000);
    dht *holder = dht_swarm_add(&s, 777, -1, NULL);
    double exp = dht_node_now(holder) + 600;
    uint64_t rng = 42;
    for (uint32_t i = 0; i < BIG_KEYS; i++) {
        dht_store_item it = { .value = (const uint8_t *)"\xcc\x07", .vlen = 2, .expiration = exp };
        uint64_t a = splitmix(&rng), b = splitmix(&rng);
        memcpy(it.key.b, &a, 8);
        memcpy(it.key.b + 8, &b, 8);
        cr_assert_eq(dht_node_store_local(holder, &it, 0), 1);
    }
    cr_assert_eq(dht_node_stored_keys(holder), BIG_KEYS);

    /* First one new id, a real node that pings the holder: the holder challenges it (a probe) and
     * learns it from its proof. Knowing no other node, the holder is responsible for every key, and the
     * newcomer is entitled to all 100,000: it gets the bound's worth. */
    dht_node h = { .id = *dht_node_id(holder), .addr = dht_node_self(holder)->addr };
    dht *nc[NEW_IDS];
    for (int j = 0; j < NEW_IDS; j++) {
        nc[j] = dht_swarm_add(&s, 5000 + (uint64_t)j, -1, NULL);
        s.pending++;
        cr_assert_eq(dht_node_ping(nc[j], &h, 1, on_ping, &s), 0);
        if (j == 0) {
            cr_assert(dht_swarm_run_cond(&s, handover_idle, holder, 60000), "the first hand-over ends");
            dht_swarm_run_cond(&s, never, NULL, 2000);   /* its last store RPCs land */
            cr_expect_eq(dht_node_stored_keys(nc[0]), DHT_HANDOVER_MAX_KEYS, "the first newcomer gets the bound's worth");
        }
    }
    /* Then 63 more at once: a flood of new ids. */
    cr_assert(dht_swarm_run_cond(&s, handover_idle, holder, 60000), "the hand-overs end");
    dht_swarm_run_cond(&s, never, NULL, 2000);   /* the last store RPCs land */

    dht_handover_stats st = dht_node_handover_stats(holder);
    size_t total = 0, most = 0;
    for (int j = 0; j < NEW_IDS; j++) {
        size_t k = dht_node_stored_keys(nc[j]);
        total += k;
        if (k > most) most = k;
    }
    printf("dht_handover: %d new ids: %lu handed over to, %lu skipped; %zu keys sent in all, at most %zu to one\n",
           NEW_IDS, (unsigned long)st.started, (unsigned long)st.skipped, total, most);
    cr_expect_eq(st.started + st.skipped, NEW_IDS, "every new id was proven and met the hand-over");
    cr_expect(st.skipped > 0, "a flood of new ids is cut: not all %d are handed over to", NEW_IDS);
    cr_expect(most <= DHT_HANDOVER_MAX_KEYS, "one new peer got %zu keys, over the bound %d", most,
              DHT_HANDOVER_MAX_KEYS);
    cr_expect(total <= (size_t)st.started * DHT_HANDOVER_MAX_KEYS, "no more than the bound per peer handed over to");
    cr_expect_eq(st.keys_sent, total);
    dht_swarm_expect_no_stall(&s, "dht_handover: 100k keys, 64 new ids");
    dht_swarm_down(&s);
}

/* ---- reflection over TCP ---- */

/* listen_on binds a listening socket to host:0; writes its port. */
static int listen_on(const char *host, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    cr_assert_eq(inet_pton(AF_INET, host, &sa.sin_addr), 1);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind %s: %s", host, strerror(errno));
    cr_assert_eq(listen(fd, 64), 0);
    socklen_t sl = sizeof sa;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* drain accepts every connection waiting on lfd and reads what they sent, for ms; adds to *conns and
 * *bytes. */
static void drain(int lfd, int ms, int *conns, size_t *bytes)
{
    int open_fds[64], nopen = 0;
    for (int t = 0; t < ms; t += 20) {
        int c;
        while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
            (*conns)++;
            if (nopen < 64) open_fds[nopen++] = c;
            else close(c);
        }
        for (int i = 0; i < nopen; i++) {
            char buf[4096];
            ssize_t r;
            while ((r = read(open_fds[i], buf, sizeof buf)) > 0) *bytes += (size_t)r;
        }
        usleep(20000);
    }
    for (int i = 0; i < nopen; i++) close(open_fds[i]);
}

Test(dht_handover, a_request_naming_a_third_address_sends_nothing_there, .timeout = 60)
{
    th_node a;
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "1", "--metrics_port", "0", NULL};
    cr_assert_eq(th_node_start(&a, args), 0);
    int third_port;
    int lfd = listen_on("127.0.0.2", &third_port);
    int fd = th_connect(a.port);
    cr_assert(fd >= 0);

    /* From 127.0.0.1, requests whose senders claim new ids at the third address. */
    dht_peer_info claim = { .present = 1 };
    snprintf(claim.addr.host, sizeof claim.addr.host, "127.0.0.2");
    claim.addr.port = (uint16_t)third_port;
    uint64_t rng = 7;
    dht_store_item it = { .value = (const uint8_t *)"\xcc\x05", .vlen = 2, .expiration = 0 };
    for (int i = 0; i < 6; i++) {
        uint64_t x = splitmix(&rng), y = splitmix(&rng);
        memcpy(claim.id.b, &x, 8);
        memcpy(claim.id.b + 8, &y, 8);
        memcpy(it.key.b, &y, 8);
        memcpy(it.key.b + 8, &x, 8);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        it.expiration = (double)ts.tv_sec + 600;
        wire_out *o = i % 3 == 0 ? dht_proto_ping_req((uint64_t)i + 1, &claim, NULL)
                    : i % 3 == 1 ? dht_proto_store_req((uint64_t)i + 1, &claim, &it, 1, 0, NULL)
                                 : dht_proto_find_req((uint64_t)i + 1, &claim, &it.key, 1, NULL);
        cr_assert_eq(th_send_out(fd, o), 0);
        wire_msg m;
        cr_assert_eq(th_recv_msg(fd, &m), 0, "request %d is answered", i);
        cr_expect(m.result != NULL, "request %d succeeds", i);
        wire_msg_free(&m);
    }
    int conns = 0;
    size_t bytes = 0;
    drain(lfd, 2500, &conns, &bytes);
    cr_expect_eq(conns, 0, "the node connected %d times to the address the requests only named", conns);
    cr_expect_eq(bytes, 0, "the node sent %zu bytes to the address the requests only named", bytes);
    close(fd);
    close(lfd);
    double lag = th_node_loop_lag_ms(&a);
    printf("dht_handover: requests naming a third address: the node's loop was at most %.1f ms late\n", lag);
    cr_expect(lag <= NODE_LAG_MAX_MS, "the node's loop ran %.1f ms late", lag);
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);
}

/* ---- reply sizes ---- */

/* recv_frame reads one frame from fd: its body (malloc'd) and length. */
static uint8_t *recv_frame(int fd, size_t *len)
{
    uint8_t h[4];
    cr_assert_eq(recv(fd, h, 4, MSG_WAITALL), 4);
    *len = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
    uint8_t *b = malloc(*len);
    cr_assert(b);
    cr_assert_eq(recv(fd, b, *len, MSG_WAITALL), (ssize_t)*len);
    return b;
}

/* find_raw sends o (a dht_find of one key) on fd and decodes the reply into *rep; returns the reply's
 * bytes. */
static size_t find_raw(int fd, wire_out *o, dht_find_rep *rep)
{
    cr_assert_eq(th_send_out(fd, o), 0);
    size_t len;
    uint8_t *body = recv_frame(fd, &len);
    wire_msg m;
    char err[256];
    cr_assert_eq(wire_msg_decode(body, len, &m, err, sizeof err), 0, "%s", err);
    cr_assert(m.result, "the find succeeds: %s", m.err_msg);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    cr_assert_eq(dht_proto_find_rep_decode(m.result, 1, (double)ts.tv_sec, rep, err, sizeof err), 0, "%s", err);
    rep->results[0].value = NULL;   /* it pointed into m */
    wire_msg_free(&m);
    return len;
}

Test(dht_handover, an_unproven_requester_gets_at_most_4x_its_request, .timeout = 60)
{
    th_node a;
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "1", "--metrics_port", "0", NULL};
    cr_assert_eq(th_node_start(&a, args), 0);
    int fd = th_connect(a.port);
    cr_assert(fd >= 0);

    /* A 32 KiB value stored (a big request, a small reply). */
    static uint8_t big[32768];
    memset(big, 0xab, sizeof big);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    dht_store_item it = { .value = big, .vlen = sizeof big, .expiration = (double)ts.tv_sec + 600 };
    cr_assert_eq(dht_id_from_str(&it.key, "amplified", 9), 0);
    wire_out *o = dht_proto_store_req(1, NULL, &it, 1, 0, NULL);
    cr_assert_eq(th_send_out(fd, o), 0);
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert(m.result, "stored: %s", m.err_msg);
    wire_msg_free(&m);

    /* A ping and a find from this (unproven) address: no reply over 4x its request. */
    o = dht_proto_ping_req(2, NULL, NULL);
    size_t ping_req = wire_out_len(o);
    cr_assert_eq(th_send_out(fd, o), 0);
    size_t ping_rep;
    free(recv_frame(fd, &ping_rep));
    cr_expect(ping_rep <= DHT_REPLY_FACTOR * ping_req, "ping: %zu bytes answered with %zu", ping_req, ping_rep);
    uint8_t chal[DHT_CHALLENGE_BYTES] = { 1, 2, 3 };
    o = dht_proto_ping_req(6, NULL, chal);
    ping_req = wire_out_len(o);
    cr_assert_eq(th_send_out(fd, o), 0);
    free(recv_frame(fd, &ping_rep));
    cr_expect(ping_rep <= DHT_REPLY_FACTOR * ping_req, "challenge ping: %zu bytes answered with %zu", ping_req,
              ping_rep);
    o = dht_proto_find_req(3, NULL, &it.key, 1, NULL);
    size_t find_req = wire_out_len(o);
    dht_find_rep rep;
    size_t find_rep = find_raw(fd, o, &rep);
    printf("dht_handover: an unproven find of %zu bytes answered with %zu (a 32 KiB value held)\n", find_req, find_rep);
    cr_expect(find_rep <= DHT_REPLY_FACTOR * find_req, "find: %zu bytes answered with %zu, over %dx", find_req,
              find_rep, DHT_REPLY_FACTOR);
    cr_expect(rep.truncated, "the reply says it was cut");
    cr_expect_eq(rep.results[0].type, DHT_FOUND_NONE, "without the value");
    uint8_t token[DHT_TOKEN_BYTES];
    memcpy(token, rep.token, sizeof token);
    dht_proto_find_rep_free(&rep);

    /* The honest requester sends it again with the token: its address is proven, it gets the value. */
    find_rep = find_raw(fd, dht_proto_find_req_token(4, NULL, &it.key, 1, NULL, token), &rep);
    cr_expect(!rep.truncated && rep.results[0].type == DHT_FOUND_VALUE && rep.results[0].vlen == sizeof big,
              "with the token, the whole value (%zu bytes)", find_rep);
    dht_proto_find_rep_free(&rep);
    find_raw(fd, dht_proto_find_req(5, NULL, &it.key, 1, NULL), &rep);
    cr_expect(!rep.truncated && rep.results[0].type == DHT_FOUND_VALUE, "and from then on without one");
    dht_proto_find_rep_free(&rep);
    close(fd);
    double lag = th_node_loop_lag_ms(&a);
    printf("dht_handover: reply caps: the node's loop was at most %.1f ms late\n", lag);
    cr_expect(lag <= NODE_LAG_MAX_MS, "the node's loop ran %.1f ms late", lag);
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);
}
