/* test_bench.c -- dmoe-bench's node figures run end to end: a short run (--seconds 0.1, no DHT or MoE
 * part) against a real dmoe-node exits 0 and writes every latency it reports, the 1-row backward among
 * them. A load the bench asks for that the load generator refuses (as a --mix above 0.5 once was) would
 * fail the run or leave a latency at 0 here. Behaviour only: no figure is compared with a bound.
 *
 * dmoe-bench starts and stops its own node (its --node program from $DMOE_BUILD) on loopback. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test/integration/harness.h"

/* field_of returns the number of field (quoted, as "\"p50\"") that follows key in json, or -1. */
static double field_of(const char *json, const char *key, const char *field)
{
    const char *k = strstr(json, key);
    if (!k) return -1;
    const char *p = strstr(k, field);
    return p && p[strlen(field)] == ':' ? atof(p + strlen(field) + 1) : -1;
}

static double p50_of(const char *json, const char *key) { return field_of(json, key, "\"p50\""); }

Test(bench, a_short_node_run_measures_every_latency, .timeout = 240)
{
    const char *build = getenv("DMOE_BUILD");
    cr_assert(build, "DMOE_BUILD is not set");
    char node[4096], json[] = "/tmp/dmoe-bench-json-XXXXXX", out[65536];
    snprintf(node, sizeof node, "%s/dmoe-node", build);
    int fd = mkstemp(json);
    cr_assert(fd >= 0);
    close(fd);
    int rc = th_run("dmoe-bench", (const char *const[]){"--node", node, "--out", json, "--seconds", "0.1", "--skip_dht",
                                                        "--skip_moe", NULL}, out, sizeof out, 200);
    cr_assert_eq(rc, 0, "dmoe-bench exited %d:\n%s", rc, out);
    char *j = th_file(json);
    unlink(json);
    cr_assert(j, "no JSON written");
    cr_expect_gt(p50_of(j, "\"latency_fwd_b1_us\""), 0, "%s", j);
    cr_expect_gt(p50_of(j, "\"latency_bwd_b1_us\""), 0, "%s", j);
    cr_expect_gt(p50_of(j, "\"latency_fwd_b1_one_cpu_us\""), 0, "%s", j);
    /* the node's part of the round trip: it held each request, and ran a kernel for it, a while */
    cr_expect_gt(field_of(j, "\"latency_fwd_b1_node_part_us\"", "\"arrival_to_reply\""), 0, "%s", j);
    cr_expect_gt(field_of(j, "\"latency_fwd_b1_node_part_us\"", "\"kernel\""), 0, "%s", j);
    cr_expect(strstr(j, "\"targets\""), "%s", j);
    free(j);
}
