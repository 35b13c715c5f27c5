/* test_swarm.c -- a swarm on one machine (issue 17): SWARM_NODES real dmoe-node processes, one ffn expert
 * each from a one-coordinate pattern of SWARM_GRID uids (80% of it taken once all are up), started one
 * after the other (each start waits for the previous node's "Server started", which paces the joins),
 * each joining a random earlier node. Asserts that every node starts with one expert of the pattern
 * (none dies or runs short while free uids exist: dht_free.h), that every uid the nodes serve is found
 * in the DHT, and that a MoE load over the whole grid (loadgen_run --moe, forwards and backwards) has no
 * error and no lost reply. Then 30% of the nodes are SIGKILLed and the load goes on: the layer must
 * still answer most requests; the only errors allowed are the partial results the layer defines (a
 * chosen expert that no longer answers is masked out; a sample all of whose experts are gone is an
 * error, moe.h), none of any other kind and none lost. Every process is stopped by the test; the
 * survivors must exit 0 on SIGTERM. Under SAN=1 the swarm is 16 nodes on 20 uids, to stay fast. And a
 * pattern with fewer free uids than asked: a WARN and the free ones, or exit 2 with --strict_experts. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/load/loadgen.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "test/integration/dht/dht_swarm.h"   /* DHT_SWARM_SANITIZED */
#include "test/integration/harness.h"

#ifdef DHT_SWARM_SANITIZED
#define SWARM_NODES 16
#define SWARM_GRID 20
#else
#define SWARM_NODES 64
#define SWARM_GRID 80
#endif
#define SWARM_KILL_PCT 30
#define SWARM_FIND_BATCH 32   /* uids per dmoe-call find: its argv holds at most 62 words */
#define SWARM_FIND_TRIES 5    /* lookups of a uid not found yet (its declaration may be on its way) */

static th_node nodes[SWARM_NODES];
static char uids[SWARM_NODES][64];
static int dead[SWARM_NODES];

/* served_uid finds the one "<uid>: FeedforwardBlock" line in node i's log; 0 or -1. The node prints it
 * just after "Server started", which th_node_start waits for: the log is read again for up to 10 s. */
static int served_uid(int i, char *out, size_t cap)
{
    for (int tries = 0; tries < 200; tries++) {
        char *log = th_node_log(&nodes[i]);
        int found = 0;
        for (char *p = strstr(log, ": FeedforwardBlock"); p; p = strstr(p + 1, ": FeedforwardBlock")) {
            char *b = p;
            while (b > log && b[-1] != ' ') b--;
            snprintf(out, cap, "%.*s", (int)(p - b), b);
            found++;
        }
        free(log);
        if (found) return found == 1 ? 0 : -1;
        usleep(50 * 1000);
    }
    return -1;
}

/* load runs a MoE load over the grid through a live node's DHT address and fills *r; the report goes to
 * stderr when ok(r) says the outcome is wrong. */
static void load(loadgen_report *r, int requests, uint64_t seed, int (*ok)(const loadgen_report *))
{
    const char *peers[4];
    int np = 0;
    for (int i = SWARM_NODES - 1; i >= 0 && np < 3; i--)
        if (!dead[i]) peers[np++] = nodes[i].dht_maddr;
    peers[np] = NULL;
    loadgen_cfg c;
    loadgen_default_cfg(&c);
    c.mode = LOADGEN_MOE;
    c.initial_peers = peers;
    c.uid_prefix = "sw.";
    c.ndim = 1;
    c.grid_size[0] = SWARM_GRID;
    c.k_best = 4;
    c.in_features = 16;
    c.clients = 4;
    c.batch_min = c.batch_max = 16;
    c.mix = 0.5;
    c.max_requests = (uint64_t)requests;
    c.duration_s = 60;   /* a fence: the request count ends the run long before */
    c.timeout_ms = 10000;
    c.seed = seed;
    char err[256] = "";
    cr_assert_eq(loadgen_run(&c, r, err, sizeof err), 0, "loadgen_run: %s", err);
    if (!ok(r)) loadgen_print(stderr, &c, r, 0);
}

static int clean(const loadgen_report *r) { return r->errors == 0 && r->lost == 0; }

/* After the kill: most requests are answered, none is lost, and every error is one the layer defines for
 * experts that no longer answer (moe.h): a partial forward (some chosen experts masked out; the load
 * counts it as "other") or a sample none of whose chosen experts answered ("timed out"). */
static uint64_t partial_errors(const loadgen_report *r) { return r->err_by_code[0] + r->err_by_code[-DMOE_ETIMEDOUT]; }
static int partial_only(const loadgen_report *r)
{
    return r->ok > r->errors && r->lost == 0 && r->errors == partial_errors(r);
}

/* stop_clean stops node i with SIGTERM and expects exit status 0 (else its log is shown). */
static void stop_clean(int i)
{
    kill(nodes[i].pid, SIGTERM);
    int rc = th_wait(nodes[i].pid, 20);
    nodes[i].pid = 0;
    char *log = th_node_log(&nodes[i]);
    cr_expect_eq(rc, 0, "node %d exited with %d; its log:\n%s", i, rc, log);
    free(log);
    unlink(nodes[i].log_path);
}

static void stop_all(void)
{
    for (int i = 0; i < SWARM_NODES; i++)
        if (nodes[i].pid > 0) th_node_stop(&nodes[i], SIGKILL);
}

Test(swarm, nodes_fill_the_grid_and_survive_kills, .timeout = 240, .fini = stop_all)
{
    char pattern[32];
    snprintf(pattern, sizeof pattern, "sw.[0:%d]", SWARM_GRID);
    srand(17);
    for (int i = 0; i < SWARM_NODES; i++) {
        const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "16", "--num_workers", "1", "--num_experts", "1",
                              "--expert_pattern", pattern, "--strict_experts", "--initial_peers", NULL, NULL};
        if (i > 0) args[12] = nodes[rand() % i].dht_maddr;   /* a random earlier node */
        else args[11] = NULL;
        cr_assert_eq(th_node_start(&nodes[i], args), 0, "node %d of %d did not start", i, SWARM_NODES);
        cr_assert_eq(served_uid(i, uids[i], sizeof uids[i]), 0, "node %d does not serve exactly one expert", i);
        cr_assert_eq(strncmp(uids[i], "sw.", 3), 0, "node %d serves %s", i, uids[i]);
    }
    for (int i = 0; i < SWARM_NODES; i++) cr_assert(th_node_alive(&nodes[i]), "node %d died", i);

    /* every uid served is found in the DHT (from the last node, so lookups cross the swarm). A node's
     * declaration is sent once it has started, so the last ones may still be on their way: a uid not found
     * is asked again, at most SWARM_FIND_TRIES times a second apart. */
    static int found[SWARM_NODES];
    static char out[16384];
    for (int attempt = 0; attempt < SWARM_FIND_TRIES; attempt++) {
        int missing = 0;
        for (int from = 0; from < SWARM_NODES; from += SWARM_FIND_BATCH) {
            const char *args[SWARM_FIND_BATCH + 4] = {"--initial_peers", nodes[SWARM_NODES - 1].dht_maddr, "find"};
            int k = 3, idx[SWARM_FIND_BATCH];
            for (int i = from; i < SWARM_NODES && i < from + SWARM_FIND_BATCH; i++)
                if (!found[i]) { idx[k - 3] = i; args[k++] = uids[i]; }
            if (k == 3) continue;
            args[k] = NULL;
            int rc = th_run("dmoe-call", args, out, sizeof out, 60);
            cr_assert(rc == 0 || rc == 1, "dmoe-call find exited %d:\n%s", rc, out);
            for (int j = 0; j < k - 3; j++) {
                char line[96];
                snprintf(line, sizeof line, "%s: /ip4/127.0.0.1/", uids[idx[j]]);
                found[idx[j]] = strstr(out, line) != NULL;
                missing += !found[idx[j]];
            }
        }
        if (!missing) break;
        if (attempt + 1 < SWARM_FIND_TRIES) sleep(1);
    }
    for (int i = 0; i < SWARM_NODES; i++) cr_expect(found[i], "%s (node %d) is not found in the DHT", uids[i], i);
    for (int i = 0; i < SWARM_NODES; i++) {   /* every declaration reached its replicas */
        char *log = th_node_log(&nodes[i]);
        cr_expect_null(strstr(log, "declaring experts in the DHT"), "node %d:\n%s", i, log);
        free(log);
    }

    loadgen_report r;
    load(&r, 200, 1, clean);
    cr_expect_eq(r.errors, 0, "errors before the kill: %s", r.first_error);
    cr_expect_eq(r.lost, 0);
    cr_expect_eq(r.ok, 200);
    cr_expect(r.fwd_requests > 0 && r.bwd_requests > 0);
    loadgen_report_free(&r);

    /* SIGKILL 30% of the nodes, never the three the load joins through */
    int to_kill = SWARM_NODES * SWARM_KILL_PCT / 100, killed = 0;
    while (killed < to_kill) {
        int i = rand() % (SWARM_NODES - 3);
        if (dead[i]) continue;
        cr_assert_eq(th_node_stop(&nodes[i], SIGKILL), 128 + SIGKILL);
        dead[i] = 1;
        killed++;
    }

    rt_log_set_level(RT_LOG_WARN);   /* the layer's INFO lines about the peers it finds gone are expected */
    load(&r, 200, 2, partial_only);
    cr_expect_gt(r.ok, r.errors, "the layer no longer answers: %s", r.first_error);
    cr_expect_eq(r.lost, 0);
    cr_expect_eq(r.errors, partial_errors(&r), "errors other than partial results: %s", r.first_error);
    loadgen_report_free(&r);

    for (int i = 0; i < SWARM_NODES; i++) {
        if (dead[i]) continue;
        cr_expect(th_node_alive(&nodes[i]), "node %d died", i);
        stop_clean(i);
    }
}

/* A pattern with fewer free uids than asked: a node starts with the free ones and says so; with
 * --strict_experts it exits with status 2 instead, naming the shortage. */
Test(swarm, a_short_pattern_warns_or_with_strict_experts_exits_2, .timeout = 120, .fini = stop_all)
{
    const char *first[] = {"--expert_cls", "nop", "--hidden_dim", "8", "--num_workers", "1", "--num_experts", "2",
                           "--expert_pattern", "short.[0:3]", NULL};
    cr_assert_eq(th_node_start(&nodes[0], first), 0);
    const char *strict[] = {"--expert_cls", "nop", "--hidden_dim", "8", "--num_workers", "1", "--num_experts", "2",
                            "--expert_pattern", "short.[0:3]", "--strict_experts", "--initial_peers",
                            nodes[0].dht_maddr, NULL};
    static char out[65536];
    int rc = th_run("dmoe-node", strict, out, sizeof out, 60);
    cr_expect_eq(rc, 2, "dmoe-node --strict_experts exited %d:\n%s", rc, out);
    cr_expect(strstr(out, "pattern short.[0:3] has only 1 free uids for 2 experts"), "%s", out);
    cr_expect_null(strstr(out, "Server started"), "%s", out);

    const char *lenient[] = {"--expert_cls", "nop", "--hidden_dim", "8", "--num_workers", "1", "--num_experts", "2",
                             "--expert_pattern", "short.[0:3]", "--initial_peers", nodes[0].dht_maddr, NULL};
    cr_assert_eq(th_node_start(&nodes[1], lenient), 0);
    char *log = th_node_log(&nodes[1]);
    cr_expect(strstr(log, "WARN") && strstr(log, "has only 1 free uids for 2 experts: starting with 1"), "%s", log);
    cr_expect(strstr(log, "Server started with 1 experts"), "%s", log);
    free(log);
    for (int i = 1; i >= 0; i--) stop_clean(i);

    /* the first node of a swarm, on a grid smaller than asked: the same rule */
    const char *tiny[] = {"--expert_cls", "nop", "--hidden_dim", "8", "--num_workers", "1", "--num_experts", "3",
                          "--expert_pattern", "tiny.[0:2]", "--strict_experts", NULL};
    rc = th_run("dmoe-node", tiny, out, sizeof out, 60);
    cr_expect_eq(rc, 2, "dmoe-node --strict_experts exited %d:\n%s", rc, out);
    cr_expect(strstr(out, "pattern tiny.[0:2] has only 2 free uids for 3 experts"), "%s", out);
    tiny[10] = NULL;
    cr_assert_eq(th_node_start(&nodes[2], tiny), 0);
    char *log2 = th_node_log(&nodes[2]);
    cr_expect(strstr(log2, "Server started with 2 experts") && strstr(log2, "starting with 2"), "%s", log2);
    free(log2);
    stop_clean(2);
}
