/* test_deploy.c -- several machines, for real (issue 13): the programs started as a user would, on
 * addresses other than the harness's 127.0.0.1 -- a wildcard listen address announces addresses others
 * can dial; HOST:PORT and /dns names work as peers; a DHT-only bootstrap node keeps its id across a
 * restart; --config FILE with command-line overrides; IPv6 end to end; the README's "Several machines"
 * walkthrough on 127.0.0.2/.3/.4. Every process is started with th_spawn and dies with the test. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "actors/node/node_banner.h"
#include "runtime/rt_err.h"
#include "test/integration/harness.h"

typedef struct {
    pid_t pid;
    char log[64];
    node_banner b;
} proc;

/* start runs dmoe-node with args and waits for its start-up lines. */
static void start(proc *p, const char *const *args)
{
    static int seq;
    snprintf(p->log, sizeof p->log, "/tmp/dmoe-deploy-%d-%d.log", (int)getpid(), seq++);
    p->pid = th_spawn("dmoe-node", args, p->log);
    cr_assert(p->pid > 0);
    int rc = node_banner_wait(p->log, p->pid, 20, &p->b);
    if (rc != 0) {
        char *log = th_file(p->log);
        cr_assert_fail("dmoe-node did not start (%s); its log:\n%s", dmoe_strerror(rc), log);
    }
}

/* stop ends p with SIGTERM and returns its exit status. */
static int stop(proc *p)
{
    kill(p->pid, SIGTERM);
    int rc = th_wait(p->pid, 30);
    unlink(p->log);
    return rc;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++) n++;
    return n;
}

/* can_bind says whether this machine can listen on the IP address text of family af. */
static int can_bind(int af, const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (af == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, ip, &s6->sin6_addr) != 1) return 0;
        len = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        if (inet_pton(AF_INET, ip, &s4->sin_addr) != 1) return 0;
        len = sizeof *s4;
    }
    int fd = socket(af, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    int ok = bind(fd, (struct sockaddr *)&ss, len) == 0;
    close(fd);
    return ok;
}

/* find_addr runs `dmoe-call --initial_peers peer find uid` until it finds uid (a node declares its
 * experts just after its start-up lines; <= 10 s) and copies the address printed into addr. */
static void find_addr(const char *peer, const char *uid, char *addr, size_t cap)
{
    char out[8192], want[128];
    const char *args[] = {"--initial_peers", peer, "find", uid, NULL};
    snprintf(want, sizeof want, "%s: /", uid);
    const char *at = NULL;
    int rc = -1;
    for (int i = 0; i < 50 && !at; i++) {
        if (i) usleep(200 * 1000);
        rc = th_run("dmoe-call", args, out, sizeof out, 30);
        at = rc == 0 ? strstr(out, want) : NULL;
    }
    cr_assert(at, "find %s through %s: rc %d\n%s", uid, peer, rc, out);
    at += strlen(uid) + 2;
    size_t n = strcspn(at, " \r\n");
    cr_assert_lt(n, cap);
    memcpy(addr, at, n);
    addr[n] = '\0';
}

/* forward_ok calls uid at addr with a random [2, H] input and checks the call succeeded. */
static void forward_ok(const char *addr, const char *uid, const char *shape)
{
    char out[8192];
    const char *args[] = {"--peer", addr, "forward", uid, "--random", shape, NULL};
    cr_assert_eq(th_run("dmoe-call", args, out, sizeof out, 30), 0, "forward %s at %s:\n%s", uid, addr, out);
}

Test(deploy, wildcard_listen_announces_dialable_addresses, .timeout = 60)
{
    proc n;
    start(&n, (const char *const[]){"--host_maddrs", "/ip4/0.0.0.0/tcp/0", "--hidden_dim", "16", "--num_workers", "1", NULL});
    char *log = th_file(n.log);
    cr_assert(strstr(log, "Listening on /ip4/0.0.0.0/tcp/") != NULL, "%s", log);
    cr_assert(count(log, "Announcing /ip4/") >= 1, "the node says what it announces:\n%s", log);
    cr_assert_null(strstr(log, "Announcing /ip4/0.0.0.0"), "%s", log);
    cr_assert(n.b.dht_maddr[0] && strstr(n.b.dht_maddr, "0.0.0.0") == NULL,
              "the DHT address is dialable, not %s", n.b.dht_maddr);
    cr_assert(!wire_maddr_is_wildcard(&n.b.addr), "the banner's address is the announced one: %s", n.b.addr_text);
    free(log);
    /* reachable at what it announced: through the DHT, then calling the expert there */
    char addr[256];
    find_addr(n.b.dht_maddr, "expert.0", addr, sizeof addr);
    cr_assert_null(strstr(addr, "0.0.0.0"), "%s", addr);
    forward_ok(addr, "expert.0", "2x16");
    cr_assert_eq(stop(&n), 0);
}

Test(deploy, host_port_and_dns_names_as_peers, .timeout = 90)
{
    proc a, b, c;
    start(&a, (const char *const[]){"--hidden_dim", "16", "--num_workers", "1", "--expert_uids", "a.0", NULL});
    char hp[64], dns[96];
    snprintf(hp, sizeof hp, "127.0.0.1:%u", (unsigned)a.b.addr.port);
    snprintf(dns, sizeof dns, "/dns/localhost/tcp/%u", (unsigned)a.b.addr.port);
    /* HOST:PORT in --initial_peers (refused with "needs at least one value" before) */
    start(&b, (const char *const[]){"--hidden_dim", "16", "--num_workers", "1", "--expert_uids", "b.0",
                                    "--initial_peers", hp, NULL});
    /* a /dns name, resolved on the node's loop */
    start(&c, (const char *const[]){"--hidden_dim", "16", "--num_workers", "1", "--expert_uids", "c.0",
                                    "--initial_peers", dns, "--log_level", "DEBUG", NULL});
    char addr[256], localhost[64];
    snprintf(localhost, sizeof localhost, "localhost:%u", (unsigned)a.b.addr.port);
    find_addr(hp, "b.0", addr, sizeof addr);
    cr_assert(strstr(addr, "/ip4/127.0.0.1/tcp/") == addr, "%s", addr);
    find_addr(localhost, "c.0", addr, sizeof addr);
    find_addr(dns, "a.0", addr, sizeof addr);
    /* --peer in either spelling */
    char peer_hp[64];
    snprintf(peer_hp, sizeof peer_hp, "127.0.0.1:%u", (unsigned)c.b.addr.port);
    forward_ok(peer_hp, "c.0", "2x16");
    snprintf(peer_hp, sizeof peer_hp, "localhost:%u", (unsigned)c.b.addr.port);
    forward_ok(peer_hp, "c.0", "2x16");
    /* a name that does not resolve is an error naming it, not a hang */
    char out[4096];
    const char *bad[] = {"--initial_peers", "no-such-host.invalid:7000", "find", "a.0", NULL};
    cr_assert_eq(th_run("dmoe-call", bad, out, sizeof out, 30), 2, "%s", out);
    cr_assert(strstr(out, "no-such-host.invalid") != NULL, "%s", out);
    cr_assert_eq(stop(&c), 0);
    cr_assert_eq(stop(&b), 0);
    cr_assert_eq(stop(&a), 0);
}

/* threads returns the thread count of pid (from /proc), or -1. */
static int threads(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    int n = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1) break;
    if (f) fclose(f);
    return n;
}

Test(deploy, dht_only_bootstrap_keeps_its_address_across_restarts, .timeout = 90)
{
    char id_path[] = "/tmp/dmoe-deploy-id-XXXXXX";
    int fd = mkstemp(id_path);
    cr_assert(fd >= 0);
    close(fd);
    unlink(id_path);   /* the node creates it */
    proc boot, expert;
    /* --num_experts 0 was refused before */
    start(&boot, (const char *const[]){"--num_experts", "0", "--identity_path", id_path, "--num_workers", "4", NULL});
    char *log = th_file(boot.log);
    cr_assert(strstr(log, "Server started with 0 experts") != NULL, "%s", log);
    free(log);
    start(&expert, (const char *const[]){"--hidden_dim", "16", "--num_workers", "4", "--initial_peers", boot.b.dht_maddr,
                                         NULL});
    int t_boot = threads(boot.pid), t_expert = threads(expert.pid);
    cr_assert(t_boot > 0 && t_boot + 4 <= t_expert, "a DHT-only node starts no worker pool: %d threads, an expert node %d",
              t_boot, t_expert);
    char saved[NODE_BANNER_DHT_MAX], port[16], listen[64];
    snprintf(saved, sizeof saved, "%s", boot.b.dht_maddr);
    snprintf(port, sizeof port, "%u", (unsigned)boot.b.addr.port);
    cr_assert_eq(stop(&boot), 0);
    cr_assert_eq(stop(&expert), 0);

    /* the same identity on the same port: the same /p2p/ address, and joining through it works */
    snprintf(listen, sizeof listen, "/ip4/127.0.0.1/tcp/%s", port);
    start(&boot, (const char *const[]){"--num_experts", "0", "--identity_path", id_path, "--host_maddrs", listen, NULL});
    cr_assert_str_eq(boot.b.dht_maddr, saved, "a restarted bootstrap node keeps its address");
    start(&expert, (const char *const[]){"--hidden_dim", "16", "--num_workers", "1", "--expert_uids", "kept.0",
                                         "--initial_peers", saved, NULL});
    char addr[256];
    find_addr(saved, "kept.0", addr, sizeof addr);
    forward_ok(addr, "kept.0", "2x16");
    cr_assert_eq(stop(&expert), 0);
    cr_assert_eq(stop(&boot), 0);
    unlink(id_path);

    /* a DHT-only node in client mode would do nothing: refused */
    char out[2048];
    const char *cm[] = {"--num_experts", "0", "--client_mode", NULL};
    cr_assert_eq(th_run("dmoe-node", cm, out, sizeof out, 20), 2, "bad usage: %s", out);
    cr_assert(strstr(out, "DHT-only") != NULL, "%s", out);
}

Test(deploy, config_file_values_and_command_line_overrides, .timeout = 60)
{
    char path[] = "/tmp/dmoe-deploy-conf-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    const char *conf = "# a node from a config file\n"
                       "expert_cls: ffn\n"
                       "hidden_dim: 16\n"
                       "num_experts: 2\n"
                       "expert_pattern: cfg.[0:20]\n"
                       "num_workers: 1\n"
                       "host_maddrs: [/ip4/127.0.0.1/tcp/0]\n"
                       "update_period: 5\n";
    cr_assert_eq(write(fd, conf, strlen(conf)), (ssize_t)strlen(conf));
    close(fd);
    proc n;
    start(&n, (const char *const[]){"--config", path, "--num_experts", "3", NULL});
    char *log = th_file(n.log);
    cr_assert(strstr(log, "Server started with 3 experts") != NULL, "the command line wins:\n%s", log);
    /* ffn at hidden_dim 16 has 2160 parameters (hidden_dim 1024, the default, would have millions) */
    cr_assert(count(log, ": FeedforwardBlock, 2160 parameters") == 3, "hidden_dim from the file:\n%s", log);
    const char *uid = strstr(log, "] cfg.");
    cr_assert(uid, "uids from the file's pattern:\n%s", log);
    char first[32], addr[256];
    cr_assert_eq(sscanf(uid + 2, "%31[^:]", first), 1);
    free(log);
    find_addr(n.b.dht_maddr, first, addr, sizeof addr);
    cr_assert_eq(stop(&n), 0);

    /* strict: an unknown key stops the program with the file and line named */
    FILE *f = fopen(path, "a");
    fputs("num_expert: 4\n", f);
    fclose(f);
    char out[2048];
    const char *args[] = {"--config", path, NULL};
    cr_assert_eq(th_run("dmoe-node", args, out, sizeof out, 20), 2, "%s", out);
    char want[128];
    snprintf(want, sizeof want, "%s:9: unknown key 'num_expert'", path);
    cr_assert(strstr(out, want) != NULL, "%s", out);
    unlink(path);
}

Test(deploy, ipv6_end_to_end, .timeout = 90)
{
    if (!can_bind(AF_INET6, "::1")) cr_skip_test("this machine has no IPv6 loopback (::1): IPv6 not tested");
    proc a, b;
    start(&a, (const char *const[]){"--host_maddrs", "/ip6/::1/tcp/0", "--hidden_dim", "16", "--num_workers", "1",
                                    "--expert_uids", "six.0", NULL});
    cr_assert_eq(a.b.addr.family, AF_INET6);
    cr_assert(strstr(a.b.dht_maddr, "/ip6/::1/tcp/") == a.b.dht_maddr, "%s", a.b.dht_maddr);
    char hp[64];
    snprintf(hp, sizeof hp, "[::1]:%u", (unsigned)a.b.addr.port);
    start(&b, (const char *const[]){"--host_maddrs", "[::1]:0", "--hidden_dim", "16", "--num_workers", "1",
                                    "--expert_uids", "six.4", "--initial_peers", hp, NULL});
    char addr[256];
    find_addr(hp, "six.4", addr, sizeof addr);
    cr_assert(strstr(addr, "/ip6/::1/tcp/") == addr, "%s", addr);
    forward_ok(addr, "six.4", "2x16");
    find_addr(b.b.dht_maddr, "six.0", addr, sizeof addr);
    forward_ok(addr, "six.0", "2x16");
    cr_assert_eq(stop(&b), 0);
    cr_assert_eq(stop(&a), 0);
}

/* The README's "Several machines" walkthrough, with OS-chosen ports: a DHT-only bootstrap node on
 * 127.0.0.2, expert nodes on 127.0.0.3 and 127.0.0.4, a trainer joining through the bootstrap node. */
Test(deploy, several_machines_walkthrough_on_loopback_addresses, .timeout = 120)
{
    if (!can_bind(AF_INET, "127.0.0.2")) cr_skip_test("this machine cannot bind 127.0.0.2: walkthrough not tested");
    char id_path[] = "/tmp/dmoe-deploy-boot-XXXXXX";
    int fd = mkstemp(id_path);
    cr_assert(fd >= 0);
    close(fd);
    unlink(id_path);
    proc boot, e1, e2;
    start(&boot, (const char *const[]){"--num_experts", "0", "--host_maddrs", "/ip4/127.0.0.2/tcp/0", "--identity_path",
                                       id_path, NULL});
    cr_assert(strstr(boot.b.dht_maddr, "/ip4/127.0.0.2/tcp/") == boot.b.dht_maddr, "%s", boot.b.dht_maddr);
    start(&e1, (const char *const[]){"--host_maddrs", "/ip4/127.0.0.3/tcp/0", "--initial_peers", boot.b.dht_maddr,
                                     "--expert_pattern", "expert.[0:4]", "--num_experts", "4", "--hidden_dim", "32",
                                     "--num_workers", "1", NULL});
    start(&e2, (const char *const[]){"--host_maddrs", "/ip4/127.0.0.4/tcp/0", "--initial_peers", boot.b.dht_maddr,
                                     "--expert_pattern", "expert.[4:8]", "--num_experts", "4", "--hidden_dim", "32",
                                     "--num_workers", "1", NULL});
    char addr[256];
    find_addr(boot.b.dht_maddr, "expert.1", addr, sizeof addr);
    cr_assert(strstr(addr, "/ip4/127.0.0.3/") == addr, "%s", addr);
    find_addr(boot.b.dht_maddr, "expert.6", addr, sizeof addr);
    cr_assert(strstr(addr, "/ip4/127.0.0.4/") == addr, "%s", addr);

    /* the trainer takes its flags from a config file too; --steps on the command line wins */
    char conf[] = "/tmp/dmoe-deploy-train-XXXXXX", out[16384];
    fd = mkstemp(conf);
    cr_assert(fd >= 0);
    const char *text = "task: moe\nhidden_dim: 32\ngrid_size: [8]\nk_best: 2\nsteps: 100000\nbatch_size: 32\n"
                       "log_every: 50\nseed: 3\nlr: 3e-3\n";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    const char *train[] = {"--config", conf, "--initial_peers", boot.b.dht_maddr, "--steps", "200", NULL};
    cr_assert_eq(th_run("dmoe-train", train, out, sizeof out, 90), 0, "%s", out);
    unlink(conf);
    cr_assert(strstr(out, "steps 200") != NULL, "%s", out);
    const char *sum = strstr(out, "summary:");
    double l0, l1;
    cr_assert(sum && sscanf(strstr(sum, "loss ") + 5, "%lf -> %lf", &l0, &l1) == 2, "%s", out);
    cr_assert_lt(l1, l0 * 0.8, "the loss falls: %s", sum);
    cr_assert_eq(stop(&e2), 0);
    cr_assert_eq(stop(&e1), 0);
    cr_assert_eq(stop(&boot), 0);
    unlink(id_path);
}

/* The example config the systemd unit reads (scripts/dmoe-node.conf) starts a node, with the machine-
 * specific values overridden on the command line; SIGTERM, systemd's stop, ends it gracefully: exit 0
 * after the last checkpoints were written. */
Test(deploy, example_config_runs_and_sigterm_stops_gracefully, .timeout = 60)
{
    const char *data = getenv("DMOE_TEST_DATA");
    char conf[512], dir[] = "/tmp/dmoe-deploy-state-XXXXXX", id[600], ckpt[600], cmd[700];
    snprintf(conf, sizeof conf, "%s/../../scripts/dmoe-node.conf", data ? data : "test/data");
    cr_assert(mkdtemp(dir) != NULL);
    snprintf(id, sizeof id, "%s/identity.key", dir);
    snprintf(ckpt, sizeof ckpt, "%s/checkpoints", dir);
    proc n;
    start(&n, (const char *const[]){"--config", conf, "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--identity_path", id,
                                    "--checkpoint_dir", ckpt, "--hidden_dim", "16", "--num_workers", "1", NULL});
    char *log = th_file(n.log);
    cr_assert(strstr(log, "Server started with 4 experts") != NULL, "num_experts from the example:\n%s", log);
    cr_assert(strstr(log, "Created a new identity") != NULL, "%s", log);
    free(log);
    kill(n.pid, SIGTERM);
    cr_assert_eq(th_wait(n.pid, 30), 0, "SIGTERM is a graceful stop, exit 0");
    log = th_file(n.log);
    cr_assert(strstr(log, "Caught SIGTERM, shutting down") != NULL && strstr(log, "Server stopped") != NULL, "%s", log);
    free(log);
    unlink(n.log);
    snprintf(cmd, sizeof cmd, "test $(find %s -name 'step-*.safetensors' | wc -l) -ge 4", ckpt);
    cr_assert_eq(system(cmd), 0, "the graceful stop wrote every expert's checkpoint");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}
