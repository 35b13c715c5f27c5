/* test_wan.c -- the programs over emulated wide-area links (wan_link.h, run as build/test/wan-link).
 *
 * Each "machine" is a loopback address of its own: a node listens on 127.0.0.(2+i) and sits behind a
 * link on 127.0.0.(12+i), which it announces (--announce_maddrs), so every peer -- nodes, the DHT, the
 * trainer -- reaches it through the link. First the link itself, in front of one node: a round trip
 * costs at least twice the delay, a transfer at least its size over the rate, a held partition answers
 * nothing until it heals, a dropping one refuses at once. Then the tutorial's MoE training by a trainer
 * on a third machine, over two expert nodes at 50 ms RTT and 1 MiB/s: the loss falls, and a 20 s
 * partition of one expert node costs at most the step in flight (dmoe-train's "failed" count) while the
 * steps go on. Timings are asserted only as lower bounds the emulator guarantees. The wildcard-address
 * case (a node reachable at what it announces) is test_deploy.c's.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "actors/node/node_banner.h"
#include "runtime/rt_err.h"
#include "test/integration/harness.h"

typedef struct {
    pid_t node, link;
    char node_log[96], link_log[96];
    char addr[64];            /* the link's HOST:PORT, which the node announces */
    node_banner b;
} machine;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* free_port returns a port free on ip now (bound and released), or -1 when ip cannot be bound. */
static int free_port(const char *ip)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    socklen_t len = sizeof sa;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

/* start_machine starts machine i: a link on 127.0.0.(12+i) with delay_ms each way and rate (KiB/s)
 * relaying to a node on 127.0.0.(2+i) run with node_args (NULL-terminated, at most 40). */
static void start_machine(machine *m, int i, const char *delay_ms, const char *rate, const char *partition,
                          const char *const *node_args)
{
    char host[32], link_host[32], target[64], listen[64];
    snprintf(host, sizeof host, "127.0.0.%d", 2 + i);
    snprintf(link_host, sizeof link_host, "127.0.0.%d", 12 + i);
    int port = free_port(host);
    if (port < 0 || free_port(link_host) < 0) cr_skip_test("this machine cannot bind %s and %s", host, link_host);
    snprintf(target, sizeof target, "%s:%d", host, port);
    snprintf(listen, sizeof listen, "%s:0", link_host);
    snprintf(m->link_log, sizeof m->link_log, "/tmp/dmoe-wan-link-%d-%d.log", (int)getpid(), i);
    const char *largs[] = {"--listen", listen, "--target", target, "--delay_ms", delay_ms, "--jitter_ms", "1",
                           "--rate_kib_s", rate, "--partition", partition, NULL};
    m->link = th_spawn("test/wan-link", largs, m->link_log);
    cr_assert_gt(m->link, 0);
    char *log = NULL;
    const char *at = NULL;
    for (int t = 0; t < 100 && !at; t++) {   /* <= 10 s */
        free(log);
        log = th_file(m->link_log);
        at = strstr(log, "listening on ");
        if (!at) usleep(100 * 1000);
    }
    cr_assert(at, "wan-link did not start:\n%s", log);
    sscanf(at + strlen("listening on "), "%63s", m->addr);
    free(log);
    char hostm[96], announce[96];
    snprintf(hostm, sizeof hostm, "/ip4/%s/tcp/%d", host, port);
    snprintf(announce, sizeof announce, "/ip4/%s/tcp/%s", link_host, strchr(m->addr, ':') + 1);
    const char *args[48] = {"--host_maddrs", hostm, "--announce_maddrs", announce};
    int k = 4;
    for (int j = 0; node_args[j] && k < 47; j++) args[k++] = node_args[j];
    args[k] = NULL;
    snprintf(m->node_log, sizeof m->node_log, "/tmp/dmoe-wan-node-%d-%d.log", (int)getpid(), i);
    m->node = th_spawn("dmoe-node", args, m->node_log);
    cr_assert_gt(m->node, 0);
    int rc = node_banner_wait(m->node_log, m->node, 20, &m->b);
    if (rc != 0) {
        log = th_file(m->node_log);
        cr_assert_fail("dmoe-node did not start (%s):\n%s", dmoe_strerror(rc), log);
    }
}

static void stop_machine(machine *m)
{
    kill(m->node, SIGTERM);
    cr_assert_eq(th_wait(m->node, 30), 0);
    kill(m->link, SIGTERM);
    cr_assert_eq(th_wait(m->link, 10), 0);
    unlink(m->node_log);
    unlink(m->link_log);
}

/* ping_ms pings addr through dmoe-call (timeout_s); returns the round trip it printed, or -1 on failure. */
static double ping_ms(const char *addr, const char *timeout_s)
{
    char out[4096];
    const char *args[] = {"--peer", addr, "--timeout", timeout_s, "ping", NULL};
    if (th_run("dmoe-call", args, out, sizeof out, 30) != 0) return -1;
    const char *in = strstr(out, " in ");
    return in ? atof(in + 4) : -1;
}

Test(wan, link_delays_caps_and_partitions, .timeout = 90)
{
    const char *node_args[] = {"--hidden_dim", "32", "--num_experts", "1", "--expert_pattern", "expert.[0:1]",
                               "--num_workers", "1", NULL};
    machine m;
    start_machine(&m, 0, "25", "1000", "hold", node_args);
    double rtt = ping_ms(m.addr, "10");
    cr_assert_geq(rtt, 50.0, "a round trip over a 25 ms link took %g ms", rtt);

    /* 2000 x 32 floats (256,000 bytes) each way at 1,000 KiB/s: at least 0.25 s each way */
    char out[8192];
    const char *fwd[] = {"--peer", m.addr, "forward", "expert.0", "--random", "2000x32", NULL};
    double t0 = now_s();
    cr_assert_eq(th_run("dmoe-call", fwd, out, sizeof out, 60), 0, "%s", out);
    double took = now_s() - t0;
    cr_assert_geq(took, 0.5, "256 kB each way over 1 MiB/s took %g s", took);

    /* held: nothing answers until it heals; then the link carries again */
    kill(m.link, SIGUSR1);
    usleep(100 * 1000);
    cr_assert_lt(ping_ms(m.addr, "1"), 0, "a ping crossed a held partition");
    kill(m.link, SIGUSR2);
    usleep(100 * 1000);
    cr_assert_geq(ping_ms(m.addr, "10"), 50.0);
    cr_log_info("ping %.1f ms at 50 ms RTT; 2000x32 forward at 1 MiB/s %.2f s", rtt, took);
    stop_machine(&m);

    /* dropped: refused at once, not after the timeout */
    start_machine(&m, 0, "25", "0", "drop", node_args);
    kill(m.link, SIGUSR1);
    usleep(100 * 1000);
    t0 = now_s();
    cr_assert_lt(ping_ms(m.addr, "20"), 0, "a ping crossed a dropping partition");
    cr_assert_lt(now_s() - t0, 15, "a dropping partition must refuse, not hold");
    kill(m.link, SIGUSR2);
    usleep(100 * 1000);
    cr_assert_geq(ping_ms(m.addr, "10"), 50.0);
    stop_machine(&m);
}

/* last_step returns the last "step N  loss" of a dmoe-train log, or 0. */
static long last_step(const char *log)
{
    long last = 0;
    for (const char *p = strstr(log, "step "); p; p = strstr(p + 1, "step ")) {
        long s;
        char word[8];
        if (sscanf(p, "step %ld %7s", &s, word) == 2 && strcmp(word, "loss") == 0) last = s;
    }
    return last;
}

Test(wan, three_machines_train_through_a_partition, .timeout = 240)
{
    machine a, b;
    const char *args_a[] = {"--hidden_dim", "32", "--num_experts", "8", "--expert_pattern", "expert.[0:8]",
                            "--num_workers", "1", "--update_period", "2", NULL};
    start_machine(&a, 0, "25", "1000", "hold", args_a);
    const char *args_b[] = {"--hidden_dim", "32", "--num_experts", "8", "--expert_pattern", "expert.[8:16]",
                            "--num_workers", "1", "--update_period", "2", "--initial_peers", a.b.dht_maddr, NULL};
    start_machine(&b, 1, "25", "1000", "hold", args_b);
    cr_assert(strstr(b.b.dht_maddr, "/ip4/127.0.0.13/") != NULL, "the node must announce its link: %s", b.b.dht_maddr);

    /* the third machine: the trainer, reaching both nodes through their links */
    char out[128];
    snprintf(out, sizeof out, "/tmp/dmoe-wan-train-%d.log", (int)getpid());
    const char *train[] = {"--task", "moe", "--initial_peers", a.b.dht_maddr, "--hidden_dim", "32", "--in_dim", "16",
                           "--num_classes", "8", "--grid_size", "16", "--k_best", "2", "--k_min", "1",
                           "--timeout_after_k_min", "0.2", "--forward_timeout", "5", "--backward_timeout", "5",
                           "--steps", "260", "--batch_size", "32", "--log_every", "10", "--lr", "3e-3", "--seed", "2",
                           NULL};
    pid_t pid = th_spawn("dmoe-train", train, out);
    cr_assert_gt(pid, 0);
    char *log = NULL;
    double deadline = now_s() + 90;
    while (now_s() < deadline) {   /* both nodes' experts in use, the loss on its way down */
        free(log);
        log = th_file(out);
        if (last_step(log) >= 60) break;
        usleep(100 * 1000);
    }
    long before = last_step(log);
    cr_assert_geq(before, 60, "dmoe-train made no progress over the links:\n%s", log);
    free(log);

    kill(b.link, SIGUSR1);   /* machine B is cut off for 20 s */
    usleep(20 * 1000 * 1000);
    log = th_file(out);
    long during = last_step(log) - before;
    free(log);
    kill(b.link, SIGUSR2);

    int rc = th_wait(pid, 120);
    log = th_file(out);
    cr_assert_eq(rc, 0, "dmoe-train: %d\n%s", rc, log);
    const char *sum = strstr(log, "summary:");
    cr_assert(sum, "%s", log);
    double l0, l1;
    long failed = -1;
    cr_assert_eq(sscanf(strstr(sum, "loss ") + 5, "%lf -> %lf", &l0, &l1), 2, "%s", sum);
    const char *f = strstr(sum, "failed ");
    if (f) failed = atol(f + 7);
    cr_log_info("%ld steps before the partition, %ld during its 20 s; %s", before, during, sum);
    cr_assert_lt(l1, l0, "the loss did not fall over the links: %s", sum);
    cr_assert_geq(during, 10, "training stalled during the partition (%ld steps in 20 s)", during);
    cr_assert(failed >= 0 && failed <= 1, "a 20 s partition cost %ld steps (at most the one in flight):\n%s", failed, log);
    free(log);
    unlink(out);
    stop_machine(&b);
    stop_machine(&a);
}
