/* test_train_faults.c -- dmoe-train as a user runs it, with a node killed under it: training over two
 * nodes goes on with the survivor after a SIGKILL (k_min 1) and its loss keeps falling. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test/integration/harness.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void dht_maddr(const th_node *n, char *out, size_t cap)
{
    cr_assert(n->dht_maddr[0], "the node printed no DHT address");
    snprintf(out, cap, "%s", n->dht_maddr);
}

/* The loss printed on the progress line of step, or -1 when there is none yet. */
static double loss_at(const char *log, int step)
{
    char key[32];
    snprintf(key, sizeof key, "step %d  loss ", step);
    const char *p = strstr(log, key);
    return p ? atof(p + strlen(key)) : -1;
}

Test(train_faults, sigkill_of_one_node_during_dmoe_train, .timeout = 180)
{
    th_node a, b;
    const char *args_a[] = {"--hidden_dim", "64", "--num_experts", "4", "--expert_pattern", "expert.[0:4]",
                            "--update_period", "1", "--expiration", "3", "--num_workers", "1", NULL};
    cr_assert_eq(th_node_start(&a, args_a), 0);
    char ma[160];
    dht_maddr(&a, ma, sizeof ma);
    const char *args_b[] = {"--hidden_dim", "64", "--num_experts", "4", "--expert_pattern", "expert.[4:8]",
                            "--initial_peers", ma, "--update_period", "1", "--expiration", "3", "--num_workers", "1",
                            NULL};
    cr_assert_eq(th_node_start(&b, args_b), 0);
    usleep(500000);   /* both declarations land */

    char out[128];
    snprintf(out, sizeof out, "/tmp/dmoe-train-%d.log", getpid());
    const char *train[] = {"--task", "moe", "--initial_peers", ma, "--hidden_dim", "64", "--in_dim", "16",
                           "--num_classes", "8", "--grid_size", "8", "--k_best", "2", "--k_min", "1",
                           "--timeout_after_k_min", "0.2", "--forward_timeout", "5", "--backward_timeout", "5",
                           "--steps", "300", "--batch_size", "32", "--log_every", "10", "--lr", "3e-3", "--seed", "2",
                           NULL};
    pid_t pid = th_spawn("dmoe-train", train, out);
    cr_assert_gt(pid, 0);

    /* let it learn on both nodes, then kill one without warning */
    double deadline = now_s() + 60, before = -1;
    while (now_s() < deadline && before < 0) {
        char *log = th_file(out);
        before = loss_at(log, 60);
        free(log);
        if (before < 0) usleep(50000);
    }
    cr_assert_geq(before, 0, "dmoe-train made no progress before the kill");
    cr_assert_eq(th_node_stop(&b, SIGKILL), 128 + SIGKILL);

    int rc = th_wait(pid, 150);
    char *log = th_file(out);
    cr_assert_eq(rc, 0, "dmoe-train stopped with %d after the kill:\n%s", rc, log);
    /* the summary's end loss: a step lost to the kill is not counted, so the last step number varies */
    const char *sum = strstr(log, "summary:");
    cr_assert_not_null(sum, "%s", log);
    double first = loss_at(log, 10), start = 0, end = 0;
    cr_assert_eq(sscanf(strstr(sum, "loss ") + 5, "%lf -> %lf", &start, &end), 2, "%s", sum);
    cr_assert_geq(strstr(log, "step 290  loss") != NULL, 1, "training did not go on after the kill:\n%s", log);
    cr_assert_lt(end, before, "the loss did not keep falling after the kill (%g at step 60, %g at the end):\n%s",
                 before, end, log);
    cr_assert_lt(end, first / 2, "the loss did not halve (%g -> %g)", first, end);
    cr_log_info("loss %g at step 10, %g at the kill (step 60), %g at step 300", first, before, end);
    free(log);
    unlink(out);

    /* the layer sends each backward with its forward's handle: the survivor skipped recomputing */
    char info[65536];
    const char *ask[] = {"--peer", a.maddr, "info", "--all", "--json", NULL};
    cr_assert_eq(th_run("dmoe-call", ask, info, sizeof info, 30), 0);
    long cached = 0;
    for (const char *p = strstr(info, "\"backward_cached\": "); p; p = strstr(p + 1, "\"backward_cached\": "))
        cached += atol(p + strlen("\"backward_cached\": "));
    cr_assert_gt(cached, 0, "no backward used its forward's activations:\n%s", info);
    cr_log_info("%ld backward batches on the survivor ran from saved activations", cached);
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);
}
