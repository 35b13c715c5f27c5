/* test_loadtest.c -- hivemind's ffn_small_batch_512clients preset, shrunk to a few seconds: one dmoe-node
 * (one ffn expert, hidden 64) and loadgen_run in-process with 512 connections, each keeping one request
 * of one row in flight, forwards and backwards alternating. Asserts behaviour only: every request gets
 * its reply (zero errors, zero lost), the counts add up, the node keeps serving and exits cleanly.
 * Then the network modes on two nodes joined through the DHT (4 + 8 ffn experts, hidden 32): a few
 * hundred MoE-layer forwards and backwards (--moe), and a few hundred DHT stores and gets (--dht), each
 * with zero errors and zero lost replies. Timings are printed by the report, never asserted. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/load/loadgen.h"
#include "runtime/rt_err.h"
#include "test/integration/harness.h"

#define REQUESTS 4000

static th_node node;

static void start_node(void)
{
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "64", "--expert_uids", "expert.0", "--num_workers", "2",
                          NULL};
    cr_assert_eq(th_node_start(&node, args), 0);
}

static void stop_node(void)
{
    cr_expect(th_node_alive(&node), "the node died under load");
    cr_expect_eq(th_ping(node.port), 0, "the node stopped answering");
    int rc = th_node_stop(&node, SIGTERM);
    cr_expect_eq(rc, 0, "dmoe-node exited with %d", rc);
}

TestSuite(loadtest, .init = start_node, .fini = stop_node, .timeout = 120);

static void base_cfg(loadgen_cfg *c)
{
    char err[128];
    loadgen_default_cfg(c);
    cr_assert_eq(wire_maddr_parse(node.maddr, &c->peer, err, sizeof err), 0, "%s", err);
    c->timeout_ms = 20000;
    c->duration_s = 60;   /* a fence: the request count ends the run long before */
}

Test(loadtest, small_batch_512clients_no_errors_no_lost)
{
    static const char *const uids[] = {"expert.0", NULL};
    loadgen_cfg c;
    base_cfg(&c);
    c.clients = 512;
    c.max_requests = REQUESTS;
    c.batch_min = c.batch_max = 1;
    c.mix = 0.5;
    c.uids = uids;
    c.seed = 3;
    loadgen_report r;
    char err[256] = "";
    int rc = loadgen_run(&c, &r, err, sizeof err);
    cr_assert_eq(rc, 0, "loadgen_run: %s", err);
    if (r.errors || r.lost || r.ok != REQUESTS) loadgen_print(stderr, &c, &r, 0);   /* the summary, for the failure */
    cr_expect_eq(r.errors, 0, "errors: %s", r.first_error);
    cr_expect_eq(r.lost, 0);
    cr_expect_eq(r.sent, REQUESTS);
    cr_expect_eq(r.ok, REQUESTS);
    cr_expect_eq(r.requests, REQUESTS);   /* no warm-up: every reply is in the window */
    cr_expect_eq(r.rows, REQUESTS);       /* one row each */
    cr_expect_eq(r.fwd_requests + r.bwd_requests, REQUESTS);
    cr_expect_eq(r.fwd_requests, r.bwd_requests, "mix 0.5: every forward has its backward: forward %llu, backward %llu",
                 (unsigned long long)r.fwd_requests, (unsigned long long)r.bwd_requests);
    cr_expect_eq(r.n_targets, 1);
    cr_expect_eq(r.row_elems, 64);
    cr_expect(r.bytes_sent > (uint64_t)REQUESTS * 64 * 4 && r.bytes_received > (uint64_t)REQUESTS * 64 * 4);
    cr_expect_eq(r.lat.n, REQUESTS);
    cr_expect(r.lat.p50 <= r.lat.p99 && r.lat.p99 <= r.lat.max);
    loadgen_report_free(&r);
}

/* A request bound never cuts a training pair: with room for 7 requests and mix 0.5, three pairs are
 * sent (the seventh would be a forward without its backward); mix 0.25 pairs every third forward. */
Test(loadtest, request_bound_ends_on_whole_pairs)
{
    static const char *const uids[] = {"expert.0", NULL};
    struct { double mix; uint64_t requests, fwd, bwd; } runs[] = {{0.5, 7, 3, 3}, {0.25, 8, 6, 2}, {0.25, 3, 2, 0}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        loadgen_cfg c;
        base_cfg(&c);
        c.clients = 1;
        c.max_requests = runs[i].requests;
        c.mix = runs[i].mix;
        c.uids = uids;
        loadgen_report r;
        char err[256] = "";
        cr_assert_eq(loadgen_run(&c, &r, err, sizeof err), 0, "loadgen_run: %s", err);
        cr_expect_eq(r.errors + r.lost, 0, "errors: %s", r.first_error);
        cr_expect(r.fwd_requests == runs[i].fwd && r.bwd_requests == runs[i].bwd,
                  "mix %g, %llu requests: forward %llu, backward %llu", runs[i].mix, (unsigned long long)runs[i].requests,
                  (unsigned long long)r.fwd_requests, (unsigned long long)r.bwd_requests);
        loadgen_report_free(&r);
    }
    /* with several clients the pairs still close: forwards and backwards come out even */
    loadgen_cfg c;
    base_cfg(&c);
    c.clients = 5;
    c.max_requests = 101;
    c.mix = 0.5;
    c.uids = uids;
    loadgen_report r;
    char err[256] = "";
    cr_assert_eq(loadgen_run(&c, &r, err, sizeof err), 0, "loadgen_run: %s", err);
    cr_expect(r.sent <= 101 && r.fwd_requests == r.bwd_requests, "sent %llu: forward %llu, backward %llu",
              (unsigned long long)r.sent, (unsigned long long)r.fwd_requests, (unsigned long long)r.bwd_requests);
    loadgen_report_free(&r);
}

/* A mix that cannot be honoured is refused, saying why. */
Test(loadtest, mix_that_cannot_be_honoured_is_refused)
{
    loadgen_cfg c;
    base_cfg(&c);
    c.all = 1;
    char err[256] = "";
    c.mix = 0.75;
    cr_assert_eq(loadgen_check_cfg(&c, err, sizeof err), DMOE_EINVAL);
    cr_expect(strstr(err, "--mix 0.75 cannot be honoured") && strstr(err, "0.5"), "%s", err);
    c.mix = 0.5;
    cr_expect_eq(loadgen_check_cfg(&c, err, sizeof err), 0, "%s", err);
    c.mode = LOADGEN_DHT;
    static const char *const peers[] = {"127.0.0.1:9", NULL};
    c.initial_peers = peers;
    c.mix = 1;
    cr_assert_eq(loadgen_check_cfg(&c, err, sizeof err), DMOE_EINVAL);
    cr_expect(strstr(err, "--dht") && strstr(err, "mix < 1"), "%s", err);
    c.mix = 0.9;
    cr_expect_eq(loadgen_check_cfg(&c, err, sizeof err), 0, "%s", err);
}

Test(loadtest, unknown_expert_is_refused_before_any_load)
{
    static const char *const uids[] = {"expert.0", "expert.9", NULL};
    loadgen_cfg c;
    base_cfg(&c);
    c.clients = 4;
    c.max_requests = 10;
    c.uids = uids;
    loadgen_report r;
    char err[256] = "";
    cr_assert_eq(loadgen_run(&c, &r, err, sizeof err), DMOE_EINVAL);
    cr_expect(strstr(err, "expert.9") != NULL, "message: %s", err);
    cr_expect_eq(r.sent, 0);
}

/* ---- the network modes: two nodes, the second joining the first ---- */

static th_node net1, net2;
static char net_peer[256];   /* the first node's DHT multiaddr, to join */

static void start_net(void)
{
    const char *a1[] = {"--expert_cls", "ffn", "--hidden_dim", "32", "--num_experts", "4", "--expert_pattern",
                        "expert.[0:4]", "--num_workers", "1", NULL};
    cr_assert_eq(th_node_start(&net1, a1), 0);
    cr_assert(net1.dht_maddr[0], "the first node printed no DHT address");
    snprintf(net_peer, sizeof net_peer, "%s", net1.dht_maddr);
    const char *a2[] = {"--expert_cls", "ffn", "--hidden_dim", "32", "--num_experts", "8", "--expert_pattern",
                        "expert.[4:16]", "--num_workers", "1", "--initial_peers", net_peer, NULL};
    cr_assert_eq(th_node_start(&net2, a2), 0);
}

static void stop_net(void)
{
    cr_expect(th_node_alive(&net1) && th_node_alive(&net2), "a node died under load");
    cr_expect_eq(th_node_stop(&net2, SIGTERM), 0);
    cr_expect_eq(th_node_stop(&net1, SIGTERM), 0);
}

TestSuite(loadtest_net, .init = start_net, .fini = stop_net, .timeout = 120);

static void run_net(loadgen_cfg *c, uint64_t requests)
{
    const char *peers[] = {net_peer, NULL};
    c->initial_peers = peers;
    c->timeout_ms = 20000;
    c->duration_s = 60;   /* a fence: the request count ends the run long before */
    c->max_requests = requests;
    c->mix = 0.5;
    c->seed = 5;
    loadgen_report r;
    char err[256] = "";
    int rc = loadgen_run(c, &r, err, sizeof err);
    cr_assert_eq(rc, 0, "loadgen_run: %s", err);
    if (r.errors || r.lost || r.ok != requests) loadgen_print(stderr, c, &r, 0);
    cr_expect_eq(r.errors, 0, "errors: %s", r.first_error);
    cr_expect_eq(r.lost, 0);
    cr_expect_eq(r.sent, requests);
    cr_expect_eq(r.ok, requests);
    cr_expect(r.fwd_requests > 0 && r.bwd_requests > 0, "forward/store %llu, backward/get %llu",
              (unsigned long long)r.fwd_requests, (unsigned long long)r.bwd_requests);
    if (c->mode == LOADGEN_MOE) cr_expect(r.n_targets >= 1, "no expert was chosen");
    loadgen_report_free(&r);
}

Test(loadtest_net, moe_layer_forward_backward_no_errors)
{
    loadgen_cfg c;
    loadgen_default_cfg(&c);
    c.mode = LOADGEN_MOE;
    c.ndim = 1;
    c.grid_size[0] = 16;
    c.k_best = 2;
    c.in_features = 32;
    c.clients = 4;
    c.batch_min = c.batch_max = 8;
    run_net(&c, 300);
}

Test(loadtest_net, dht_stores_and_gets_no_errors)
{
    loadgen_cfg c;
    loadgen_default_cfg(&c);
    c.mode = LOADGEN_DHT;
    c.clients = 8;
    c.batch_min = 16;
    c.batch_max = 64;
    run_net(&c, 400);
}
