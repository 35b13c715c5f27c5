/* test_server_options.c -- dmoe-node's options end to end: wire compression in every mode, the
 * learning-rate schedule step by step, the Prometheus endpoint scraped with a plain HTTP client, the
 * stats report, multi-input experts through dmoe-call, and --help. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/kern_sched.h"
#include "test/integration/harness.h"

static void write_npy(const char *path, const float *x, int64_t rows, int64_t cols)
{
    cr_assert_eq(th_write_npy(path, x, rows, cols), 0);
}

/* n floats of rows of 64: the nodes of this file run hidden 64 */
static float *read_npy(const char *path, size_t n)
{
    float *data = th_read_npy(path, (int64_t)n / 64, 64);
    cr_assert_not_null(data);
    return data;
}

/* forward and backward of x through a node started with --compression scheme; outputs to y/gx */
static void run_with(const char *scheme, const char *xp, const char *gp, float **y, float **gx, size_t n)
{
    th_node node;
    const char *args[] = {"--hidden_dim", "64", "--expert_uids", "expert.0", "--optimizer", "none", "--seed", "5",
                          "--compression", scheme, NULL};
    cr_assert_eq(th_node_start(&node, args), 0);
    char yp[64], gxp[64], out[4096];
    snprintf(yp, sizeof yp, "/tmp/dmoe-c-%d-y.npy", getpid());
    snprintf(gxp, sizeof gxp, "/tmp/dmoe-c-%d-gx.npy", getpid());
    const char *fwd[] = {"--peer", node.maddr, "forward", "expert.0", "--input", xp, "--output", yp, NULL};
    cr_assert_eq(th_run("dmoe-call", fwd, out, sizeof out, 30), 0, "%s: %s", scheme, out);
    const char *bwd[] = {"--peer", node.maddr, "backward", "expert.0", "--input", xp, "--grad_output", gp, "--output", gxp, NULL};
    cr_assert_eq(th_run("dmoe-call", bwd, out, sizeof out, 30), 0, "%s: %s", scheme, out);
    *y = read_npy(yp, n);
    *gx = read_npy(gxp, n);
    unlink(yp);
    unlink(gxp);
    cr_assert_eq(th_node_stop(&node, SIGTERM), 0);
}

static double mse(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)(a[i] - b[i]) * (a[i] - b[i]);
    return s / (double)n;
}

Test(server_options, every_compression_mode_through_the_node, .timeout = 120)
{
    enum { B = 16, H = 64 };
    float x[B * H], gy[B * H];
    th_fill_normal(x, B * H, 1);
    th_fill_normal(gy, B * H, 2);
    char xp[64], gp[64];
    snprintf(xp, sizeof xp, "/tmp/dmoe-c-%d-x.npy", getpid());
    snprintf(gp, sizeof gp, "/tmp/dmoe-c-%d-g.npy", getpid());
    write_npy(xp, x, B, H);
    write_npy(gp, gy, B, H);
    float *y0, *g0;
    run_with("NONE", xp, gp, &y0, &g0, B * H);
    /* the output error comes from the compressed input (and, backward, input and gradient both ways) */
    const struct { const char *name; double bound; } modes[] = {
        {"FLOAT16", 1e-5}, {"MEANSTD_16BIT", 1e-5}, {"UNIFORM_8BIT", 5e-2}, {"BLOCKWISE_8BIT", 5e-2},
    };
    for (size_t k = 0; k < sizeof modes / sizeof modes[0]; k++) {
        float *y, *g;
        run_with(modes[k].name, xp, gp, &y, &g, B * H);
        double ey = mse(y, y0, B * H), eg = mse(g, g0, B * H);
        cr_log_info("%s: output mse %.3g, input-gradient mse %.3g", modes[k].name, ey, eg);
        cr_assert_lt(ey, modes[k].bound, "%s output mse %g", modes[k].name, ey);
        cr_assert_lt(eg, modes[k].bound, "%s gradient mse %g", modes[k].name, eg);
        cr_assert_gt(ey + eg, 0, "%s changed nothing: was it applied?", modes[k].name);
        free(y);
        free(g);
    }
    free(y0);
    free(g0);
    unlink(xp);
    unlink(gp);
}

static double info_number(const char *json, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *p = strstr(json, k);
    cr_assert_not_null(p, "no %s in %s", key, json);
    return atof(p + strlen(k));
}

Test(server_options, linear_schedule_step_by_step, .timeout = 60)
{
    th_node node;
    const char *args[] = {"--hidden_dim", "16", "--expert_uids", "expert.0", "--optimizer", "sgd", "--lr", "0.5",
                          "--scheduler", "linear", "--num_warmup_steps", "2", "--num_training_steps", "6",
                          "--clip_grad_norm", "1.0", NULL};
    cr_assert_eq(th_node_start(&node, args), 0);
    kern_sched_cfg sc = {.kind = KERN_SCHED_LINEAR, .num_warmup_steps = 2, .num_total_steps = 6};
    float x[2 * 16], gy[2 * 16];
    th_fill_normal(x, 32, 3);
    th_fill_normal(gy, 32, 4);
    char out[8192];
    const char *info[] = {"--peer", node.maddr, "info", "expert.0", "--json", NULL};
    for (int step = 0; step <= 7; step++) {
        cr_assert_eq(th_run("dmoe-call", info, out, sizeof out, 30), 0);
        double lr = info_number(out, "lr"), want = kern_sched_lr(&sc, 0.5f, step);
        cr_assert_float_eq(lr, want, 1e-6, "step %d: lr %g, the formula says %g", step, lr, want);
        cr_assert_eq((int)info_number(out, "steps"), step);
        int fd = th_connect(node.port);
        cr_assert_eq(th_send_out(fd, th_request(1, "expert.0", x, 2, 16, gy)), 0);
        wire_msg m;
        cr_assert_eq(th_recv_msg(fd, &m), 0);
        cr_assert_eq(m.kind, WIRE_REPLY_OK);
        wire_msg_free(&m);
        close(fd);
    }
    cr_assert_eq(th_node_stop(&node, SIGTERM), 0);
}

Test(server_options, metrics_scraped_and_stats_reported, .timeout = 60)
{
    th_node node;
    const char *args[] = {"--hidden_dim", "16", "--expert_uids", "expert.0", "expert.1", "--metrics_port", "0",
                          "--stats_report_interval", "0.2", NULL};
    cr_assert_eq(th_node_start(&node, args), 0);
    char *log = th_node_log(&node);
    const char *p = strstr(log, "Serving metrics on http://127.0.0.1:");
    cr_assert_not_null(p, "%s", log);
    int mport = atoi(p + strlen("Serving metrics on http://127.0.0.1:"));
    free(log);
    float x[3 * 16];
    th_fill_normal(x, 48, 5);
    int fd = th_connect(node.port);
    for (int i = 0; i < 3; i++) {
        th_send_out(fd, th_request((uint64_t)i + 1, "expert.1", x, 3, 16, NULL));
        wire_msg m;
        cr_assert_eq(th_recv_msg(fd, &m), 0);
        wire_msg_free(&m);
    }
    th_send_out(fd, th_request(9, "expert.7", x, 3, 16, NULL));
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    wire_msg_free(&m);
    close(fd);
    usleep(1300000);   /* gauges refresh every second, stats every 0.2 s */
    char *body = th_http_get(mport, "/metrics");
    cr_assert_not_null(body);
    cr_assert(strstr(body, "HTTP/1.0 200") || strstr(body, "HTTP/1.1 200"), "%s", body);
    cr_assert(strstr(body, "dmoe_requests_total{method=\"forward\",expert=\"expert.1\"} 3"), "%s", body);
    cr_assert(strstr(body, "dmoe_errors_total{kind=\"unknown expert\"} 1"), "%s", body);
    cr_assert(strstr(body, "dmoe_batch_size_count 3"), "%s", body);
    cr_assert(strstr(body, "dmoe_request_latency_seconds_count{method=\"forward\"} 3"), "%s", body);
    cr_assert(strstr(body, "dmoe_bytes_in_total "), "%s", body);
    free(body);
    body = th_http_get(mport, "/nothing");
    cr_assert_not_null(body);
    cr_assert(strstr(body, " 404 "), "%s", body);
    free(body);
    log = th_node_log(&node);
    /* one line for the expert that worked, none for the idle one, and a total line */
    cr_assert(strstr(log, "expert.1: 3 requests (3 forward, 0 backward), 9 rows in 3 batches (mean batch 3.0), mean latency"),
              "%s", log);
    cr_assert(strstr(log, "total: 1 of 2 experts active, 3 requests, 9 rows in 3 batches"), "%s", log);
    cr_assert(strstr(log, "total: 0 of 2 experts active, 0 requests"), "idle intervals print the total alone: %s", log);
    for (const char *l = log; (l = strstr(l, "expert.0: ")); l++)
        cr_assert(!strncmp(l, "expert.0: FeedforwardBlock", 26), "an idle expert got a stats line: %s", log);
    free(log);
    cr_assert_eq(th_node_stop(&node, SIGTERM), 0);
}

/* The value of an unlabelled sample "name value" in a /metrics body (-1 when absent). */
static double metric_value(const char *body, const char *name)
{
    char key[96];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(body, key);
    return p ? strtod(p + strlen(key), NULL) : -1;
}

/* dmoe_bytes_in_total / dmoe_bytes_out_total count every byte of the calls, at once (no refresh wait). */
Test(server_options, metrics_count_the_bytes_of_calls, .timeout = 60)
{
    th_node node;
    const char *args[] = {"--hidden_dim", "64", "--expert_uids", "expert.0", "--metrics_port", "0", NULL};
    cr_assert_eq(th_node_start(&node, args), 0);
    char *log = th_node_log(&node);
    const char *p = strstr(log, "Serving metrics on http://127.0.0.1:");
    cr_assert_not_null(p, "%s", log);
    int mport = atoi(p + strlen("Serving metrics on http://127.0.0.1:"));
    free(log);
    char *body = th_http_get(mport, "/metrics");
    cr_assert_not_null(body);
    double in0 = metric_value(body, "dmoe_bytes_in_total"), out0 = metric_value(body, "dmoe_bytes_out_total");
    free(body);
    cr_assert(in0 >= 0 && out0 >= 0);
    enum { B = 32, W = 64, CALLS = 5 };
    static float x[B * W];
    th_fill_normal(x, B * W, 8);
    int fd = th_connect(node.port);
    for (int i = 0; i < CALLS; i++) {
        th_send_out(fd, th_request((uint64_t)i + 1, "expert.0", x, B, W, NULL));
        wire_msg m;
        cr_assert_eq(th_recv_msg(fd, &m), 0);
        cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
        wire_msg_free(&m);
    }
    body = th_http_get(mport, "/metrics");   /* the connection is still open: its bytes count already */
    cr_assert_not_null(body);
    double in1 = metric_value(body, "dmoe_bytes_in_total"), out1 = metric_value(body, "dmoe_bytes_out_total");
    double payload = (double)CALLS * B * W * sizeof(float);
    cr_assert_geq(in1 - in0, payload, "bytes in grew by %.0f for %.0f bytes of inputs:\n%s", in1 - in0, payload, body);
    cr_assert_geq(out1 - out0, payload, "bytes out grew by %.0f for %.0f bytes of outputs:\n%s", out1 - out0, payload,
                  body);
    free(body);
    close(fd);
    cr_assert_eq(th_node_stop(&node, SIGTERM), 0);
}

Test(server_options, two_input_expert_through_dmoe_call, .timeout = 60)
{
    th_node node;
    const char *args[] = {"--expert_cls", "det_dropout", "--hidden_dim", "8", "--expert_uids", "drop.0", NULL};
    cr_assert_eq(th_node_start(&node, args), 0);
    float x[2 * 8], mask[2 * 8];
    th_fill_normal(x, 16, 6);
    for (int i = 0; i < 16; i++) mask[i] = (float)(i % 3 != 0);
    char xp[64], mp[64], out[4096];
    snprintf(xp, sizeof xp, "/tmp/dmoe-d-%d-x.npy", getpid());
    snprintf(mp, sizeof mp, "/tmp/dmoe-d-%d-m.npy", getpid());
    write_npy(xp, x, 2, 8);
    write_npy(mp, mask, 2, 8);
    const char *fwd[] = {"--peer", node.maddr, "forward", "drop.0", "--input", xp, "--input", mp, NULL};
    cr_assert_eq(th_run("dmoe-call", fwd, out, sizeof out, 30), 0, "%s", out);
    cr_assert(strstr(out, "shape [2, 8]"), "%s", out);
    const char *one[] = {"--peer", node.maddr, "forward", "drop.0", "--input", xp, NULL};
    cr_assert_eq(th_run("dmoe-call", one, out, sizeof out, 30), 2, "a missing mask is caught before sending: %s", out);
    cr_assert(strstr(out, "takes 2 input tensors"), "%s", out);
    const char *rnd[] = {"--peer", node.maddr, "backward", "drop.0", "--random", "4x8", NULL};
    cr_assert_eq(th_run("dmoe-call", rnd, out, sizeof out, 30), 0, "%s", out);
    cr_assert(strstr(out, "grad_inputs[1]: shape [4, 8]  mean 0  std 0"), "the mask's gradient is zero: %s", out);
    unlink(xp);
    unlink(mp);
    cr_assert_eq(th_node_stop(&node, SIGTERM), 0);
}

Test(server_options, help_lists_every_group, .timeout = 30)
{
    char out[16384];
    const char *args[] = {"--help", NULL};
    cr_assert_eq(th_run("dmoe-node", args, out, sizeof out, 10), 0);
    const char *want[] = {"Experts:", "Batching:", "Training:", "Network:", "Limits:", "DHT:", "Checkpoints:", "Logging:",
                          "--expert_cls", "--compression", "--checkpoint_dir", "--scheduler", "--initial_peers",
                          "--metrics_port", "--stats_report_interval", "--keep_checkpoints", "--max_connections",
                          "--min_rate_kbps", "--max_replies_mb"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) cr_assert(strstr(out, want[i]), "no %s in:\n%s", want[i], out);
}

/* wait_log polls n's log for needle (at most 10 s); returns the log (free it) or NULL. */
static char *wait_log(const th_node *n, const char *needle)
{
    for (int tries = 0; tries < 100; tries++) {
        char *log = th_node_log(n);
        if (strstr(log, needle)) return log;
        free(log);
        usleep(100 * 1000);
    }
    return NULL;
}

/* A second node given --expert_uids that someone already serves says so (and serves them too). */
Test(server_options, a_uid_served_elsewhere_is_warned_about, .timeout = 60)
{
    th_node a, b;
    const char *aa[] = {"--hidden_dim", "16", "--expert_uids", "expert.0", "--log_level", "DEBUG", NULL};
    cr_assert_eq(th_node_start(&a, aa), 0);
    char *log = wait_log(&a, "declared 1 experts in the DHT");
    cr_assert_not_null(log, "the first node never declared its expert");
    free(log);
    const char *ba[] = {"--hidden_dim", "16", "--expert_uids", "expert.0", "expert.5", "--initial_peers", a.maddr,
                        "--log_level", "DEBUG", NULL};
    cr_assert_eq(th_node_start(&b, ba), 0);
    /* its own declaration done too: a node stopped while one is out leaks it (actors/grid, not this test's) */
    log = wait_log(&b, "declared 2 experts in the DHT");
    cr_assert_not_null(log, "the second node did not start and declare its experts");
    cr_assert(strstr(log, "Server started with 2 experts"), "%s", log);
    char want[160];
    snprintf(want, sizeof want, "expert.0 is already served by /ip4/127.0.0.1/tcp/%d", a.port);
    cr_assert(strstr(log, want) && strstr(log, "; both will answer"), "%s", log);
    cr_assert(strstr(log, "[WARN]"), "%s", log);
    cr_assert_null(strstr(log, "expert.5 is already served"), "%s", log);
    free(log);
    int rb = th_node_stop(&b, SIGTERM), ra = th_node_stop(&a, SIGTERM);
    cr_assert_eq(rb, 0, "the second node exited with %d", rb);
    cr_assert_eq(ra, 0, "the first node exited with %d", ra);
}
