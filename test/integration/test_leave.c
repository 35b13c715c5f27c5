/* test_leave.c -- leaving a swarm: a node stopped gracefully withdraws its declarations from the DHT,
 * so a client's next lookup no longer finds its experts although they would live for minutes more; a
 * node killed with SIGKILL cannot, and its experts stay findable until they expire (the contrast that
 * shows the withdrawal is what hides them). Then dmoe-train over two expert nodes loses no step when one
 * of them stops gracefully, and at most one when one is killed (test_train_faults.c has the long run).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test/integration/harness.h"

/* found runs `dmoe-call --initial_peers peer find uid` and returns whether uid was found. */
static int found(const char *peer, const char *uid)
{
    char out[8192], want[128];
    const char *args[] = {"--initial_peers", peer, "find", uid, NULL};
    int rc = th_run("dmoe-call", args, out, sizeof out, 30);   /* 1 when not found */
    snprintf(want, sizeof want, "%s: ", uid);
    cr_assert(strstr(out, want) != NULL, "find %s: %d\n%s", uid, rc, out);
    snprintf(want, sizeof want, "%s: /", uid);
    return strstr(out, want) != NULL;
}

/* wait_found waits (<= 10 s) until uid is found through peer. */
static void wait_found(const char *peer, const char *uid)
{
    for (int i = 0; i < 50; i++) {
        if (found(peer, uid)) return;
        usleep(200 * 1000);
    }
    cr_assert_fail("%s was never found through %s", uid, peer);
}

/* a node hosting pattern with declarations living 300 s, joined to peer (NULL: the first) */
static void start(th_node *n, const char *pattern, const char *peer)
{
    const char *args[] = {"--hidden_dim", "32", "--num_experts", "4", "--expert_pattern", pattern, "--num_workers", "1",
                          "--update_period", "100", "--expiration", "300", peer ? "--initial_peers" : NULL, peer, NULL};
    cr_assert_eq(th_node_start(n, args), 0);
}

Test(leave, graceful_stop_withdraws_the_declarations, .timeout = 120)
{
    th_node a, b, c;
    start(&a, "expert.[0:4]", NULL);
    start(&b, "expert.[4:8]", a.dht_maddr);
    start(&c, "expert.[8:12]", a.dht_maddr);
    wait_found(a.dht_maddr, "expert.5");
    wait_found(a.dht_maddr, "expert.9");

    /* signal, and read the log before th_node_stop removes it */
    cr_assert_eq(kill(b.pid, SIGTERM), 0);
    char *log = NULL;
    for (int i = 0; i < 200; i++) {   /* <= 20 s */
        free(log);
        log = th_node_log(&b);
        if (strstr(log, "Server stopped")) break;
        usleep(100 * 1000);
    }
    cr_assert(strstr(log, "Withdrew 4 experts from the DHT") != NULL, "%s", log);
    free(log);
    cr_assert_eq(th_node_stop(&b, SIGTERM), 0);
    for (int u = 4; u < 8; u++) {
        char uid[32];
        snprintf(uid, sizeof uid, "expert.%d", u);
        cr_assert(!found(a.dht_maddr, uid), "%s is still found after its node stopped gracefully", uid);
    }
    cr_assert(found(a.dht_maddr, "expert.1"), "the other nodes' experts must stay");

    cr_assert_eq(th_node_stop(&c, SIGKILL), 128 + SIGKILL);
    cr_assert(found(a.dht_maddr, "expert.9"), "a killed node cannot withdraw: its declarations live on");
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);
}

/* The summary's "failed F" of a dmoe-train log, or -1. */
static long failed_of(const char *log)
{
    const char *sum = strstr(log, "summary:");
    const char *f = sum ? strstr(sum, "failed ") : NULL;
    return f ? atol(f + strlen("failed ")) : -1;
}

/* train_through_a_stop runs dmoe-train over two expert nodes and stops one with sig at step 40 of 400 (the trainer runs on well past the stop);
 * returns the summary's failed steps. */
static long train_through_a_stop(int sig)
{
    th_node a, b;
    const char *args_a[] = {"--hidden_dim", "32", "--num_experts", "4", "--expert_pattern", "expert.[0:4]",
                            "--update_period", "1", "--expiration", "10", "--num_workers", "1", NULL};
    cr_assert_eq(th_node_start(&a, args_a), 0);
    const char *args_b[] = {"--hidden_dim", "32", "--num_experts", "4", "--expert_pattern", "expert.[4:8]",
                            "--initial_peers", a.dht_maddr, "--update_period", "1", "--expiration", "10",
                            "--num_workers", "1", NULL};
    cr_assert_eq(th_node_start(&b, args_b), 0);
    wait_found(a.dht_maddr, "expert.5");

    char out[128];
    snprintf(out, sizeof out, "/tmp/dmoe-leave-%d-%d.log", getpid(), sig);
    const char *train[] = {"--task", "moe", "--initial_peers", a.dht_maddr, "--hidden_dim", "32", "--in_dim", "16",
                           "--num_classes", "8", "--grid_size", "8", "--k_best", "2", "--k_min", "1",
                           "--timeout_after_k_min", "0.2", "--forward_timeout", "5", "--backward_timeout", "5",
                           "--steps", "400", "--batch_size", "32", "--log_every", "10", "--seed", "3", NULL};
    pid_t pid = th_spawn("dmoe-train", train, out);
    cr_assert_gt(pid, 0);
    char *log = NULL;
    for (int i = 0; i < 600; i++) {   /* <= 60 s */
        free(log);
        log = th_file(out);
        if (strstr(log, "step 40  loss")) break;
        usleep(100 * 1000);
    }
    cr_assert(strstr(log, "step 40  loss"), "dmoe-train made no progress:\n%s", log);
    free(log);
    int rc = th_node_stop(&b, sig);
    cr_assert_eq(rc, sig == SIGKILL ? 128 + SIGKILL : 0);
    rc = th_wait(pid, 90);
    log = th_file(out);
    cr_assert_eq(rc, 0, "dmoe-train: %d\n%s", rc, log);
    long failed = failed_of(log);
    cr_assert_geq(failed, 0, "no failed count in the summary:\n%s", log);
    const char *why = strstr(log, "failed (");
    cr_log_info("%s of one of two expert nodes at step 40: %.120s%s%.160s", sig == SIGKILL ? "SIGKILL" : "SIGTERM",
                strstr(log, "summary:"), why ? "; step " : "", why ? why : "");
    cr_expect(sig == SIGKILL || failed == 0, "a graceful stop cost %ld steps:\n%s", failed, log);
    free(log);
    unlink(out);
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);
    return failed;
}

Test(leave, graceful_stop_costs_a_trainer_no_step, .timeout = 180)
{
    long failed = train_through_a_stop(SIGTERM);
    cr_assert_eq(failed, 0, "a graceful stop cost %ld steps", failed);
}

Test(leave, sigkill_costs_a_trainer_at_most_one_step, .timeout = 180)
{
    long failed = train_through_a_stop(SIGKILL);
    cr_assert_leq(failed, 1, "a SIGKILL cost %ld steps", failed);
}
