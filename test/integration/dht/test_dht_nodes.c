/* test_dht_nodes.c -- the seed tutorial's network over real processes: a second dmoe-node joins the
 * first, a client that knows one address finds and calls experts on both, a stopped node's experts
 * vanish after their expiration while the other keeps serving, a bad bootstrap address fails fast. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test/integration/harness.h"

/* The node's DHT multiaddr, from its "Running DHT node on ['...']" line. */
static void dht_maddr(const th_node *n, char *out, size_t cap)
{
    if (!n->dht_maddr[0]) {
        char *log = th_node_log(n);
        cr_assert_fail("no DHT line in the log:\n%s", log);
    }
    snprintf(out, cap, "%s", n->dht_maddr);
}

/* The uids a node logged as "UID: FeedforwardBlock, N parameters". */
static int hosted_uids(const th_node *n, char uids[][64], int max)
{
    char *log = th_node_log(n);
    int k = 0;
    for (char *p = strstr(log, "] expert."); p && k < max; p = strstr(p + 1, "] expert.")) {
        char *colon = strchr(p + 2, ':');
        if (!colon || !strstr(colon, "FeedforwardBlock")) continue;
        snprintf(uids[k++], 64, "%.*s", (int)(colon - (p + 2)), p + 2);
    }
    free(log);
    return k;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

Test(dht_nodes, tutorial_network_find_call_expire, .timeout = 120)
{
    th_node a, b;
    const char *args_a[] = {"--expert_cls", "ffn", "--hidden_dim", "64", "--num_experts", "5", "--expert_pattern",
                            "expert.[0:5]", "--update_period", "1", "--expiration", "3", NULL};
    cr_assert_eq(th_node_start(&a, args_a), 0);
    char ma[160];
    dht_maddr(&a, ma, sizeof ma);
    cr_assert(strstr(ma, "/p2p/"), "%s", ma);
    const char *args_b[] = {"--expert_cls", "ffn", "--hidden_dim", "64", "--num_experts", "10", "--expert_pattern",
                            "expert.[5:250]", "--initial_peers", ma, "--update_period", "1", "--expiration", "3",
                            "--seed", "3", NULL};
    cr_assert_eq(th_node_start(&b, args_b), 0);
    char ub[16][64];
    cr_assert_eq(hosted_uids(&b, ub, 16), 10);

    char out[8192];
    /* the client knows only A, and finds experts on both */
    const char *find[] = {"--initial_peers", ma, "find", "expert.1", "expert.4", ub[0], ub[9], "expert.999", "--json", NULL};
    int rc = th_run("dmoe-call", find, out, sizeof out, 30);
    cr_assert_eq(rc, 1, "find with one missing uid exits 1: %s", out);   /* expert.999 is nowhere */
    char want[256];
    snprintf(want, sizeof want, "\"expert.1\": \"/ip4/127.0.0.1/tcp/%d/p2p/", a.port);
    cr_assert(strstr(out, want), "%s", out);
    snprintf(want, sizeof want, "\"%s\": \"/ip4/127.0.0.1/tcp/%d/p2p/", ub[9], b.port);
    cr_assert(strstr(out, want), "%s", out);
    cr_assert(strstr(out, "\"expert.999\": null"), "%s", out);

    /* and calls an expert of B through the DHT */
    const char *fwd[] = {"--initial_peers", ma, "forward", ub[3], "--random", "3x64", NULL};
    rc = th_run("dmoe-call", fwd, out, sizeof out, 30);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "shape [3, 64]"), "%s", out);

    /* plain DHT values */
    const char *store[] = {"--initial_peers", ma, "dht", "store", "greeting", "hello", "--expiration", "30", NULL};
    cr_assert_eq(th_run("dmoe-call", store, out, sizeof out, 30), 0, "%s", out);
    const char *get[] = {"--initial_peers", ma, "dht", "get", "greeting", "--json", NULL};
    cr_assert_eq(th_run("dmoe-call", get, out, sizeof out, 30), 0, "%s", out);
    cr_assert(strstr(out, "\"value\": \"hello\""), "%s", out);

    /* B stops: its experts fade out after their expiration; A keeps serving */
    cr_assert_eq(th_node_stop(&b, SIGTERM), 0);
    const char *find_b[] = {"--initial_peers", ma, "find", ub[0], "expert.1", "--json", NULL};
    double deadline = now_s() + 15;
    int gone = 0;
    while (!gone && now_s() < deadline) {
        th_run("dmoe-call", find_b, out, sizeof out, 30);
        snprintf(want, sizeof want, "\"%s\": null", ub[0]);
        gone = strstr(out, want) != NULL;
        if (!gone) usleep(250000);
    }
    cr_assert(gone, "the stopped node's expert is still found: %s", out);
    cr_assert(strstr(out, "\"expert.1\": \"/ip4/"), "A's expert vanished too: %s", out);
    const char *fwd_a[] = {"--initial_peers", ma, "forward", "expert.4", "--random", "2x64", NULL};
    cr_assert_eq(th_run("dmoe-call", fwd_a, out, sizeof out, 30), 0, "%s", out);
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);
}

Test(dht_nodes, bad_bootstrap_address_fails_fast, .timeout = 60)
{
    th_node n;
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "16", "--initial_peers", "/ip4/127.0.0.1/tcp/1", NULL};
    double t0 = now_s();
    cr_assert(th_node_start_fails(&n, args), "a node with an unreachable initial peer must not start");
    cr_assert_lt(now_s() - t0, 20);
    char out[4096];
    const char *call[] = {"--initial_peers", "/ip4/127.0.0.1/tcp/1", "find", "expert.1", NULL};
    int rc = th_run("dmoe-call", call, out, sizeof out, 30);
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert(strstr(out, "127.0.0.1") && strstr(out, ":1 "), "the message must name the address: %s", out);
    const char *node_args[] = {"--hidden_dim", "16", "--initial_peers", "/ip4/127.0.0.1/tcp/1", NULL};
    rc = th_run("dmoe-node", node_args, out, sizeof out, 30);
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert(strstr(out, "cannot join the DHT") && strstr(out, "127.0.0.1"), "%s", out);
}
