/* test_metrics.c -- actors/metrics.c: the exact exposition text of a small registry (HELP/TYPE lines,
 * label escaping, cumulative buckets), registration refusals, update rules, the series cap, and the
 * endpoint itself: an event loop in the test serves /metrics to a plain HTTP/1.0 client written here
 * (running on a second thread), whose answer is parsed and checked, histogram invariants included. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "actors/node/metrics.h"
#include "runtime/rt_err.h"

/* A metrics_on_scrape hook that counts its calls. */
static void count_scrape(void *arg) { ++*(int *)arg; }

Test(metrics, exact_text, .timeout = 30)
{
    metrics *m = metrics_new();
    const char *ln[] = {"method", "expert"};
    met_family *c = metrics_counter(m, "t_requests_total", "Requests \\ answered\nby method.", 2, ln);
    cr_assert_not_null(c);
    metrics_inc(metrics_series(c, (const char *[]){"forward", "expert.1"}), 3);
    metrics_inc(metrics_series(c, (const char *[]){"backward", "a\"b\\c\nd"}), 1);
    metrics_inc(metrics_series(c, (const char *[]){"forward", "expert.1"}), 2);
    met_family *g = metrics_gauge(m, "t_depth", "Depth.", 0, NULL);
    metrics_set(g ? metrics_series(g, NULL) : NULL, -2.5);
    double b[] = {1, 2.5, 10};
    met_family *h = metrics_histogram(m, "t_size", "Sizes.", 0, NULL, b, 3);
    met_series *hs = metrics_series(h, NULL);
    double obs[] = {0.5, 1, 2, 3, 100};
    for (int i = 0; i < 5; i++) metrics_observe(hs, obs[i]);
    size_t len = 0;
    char *text = metrics_render(m, &len);
    const char *want = "# HELP t_requests_total Requests \\\\ answered\\nby method.\n"
                       "# TYPE t_requests_total counter\n"
                       "t_requests_total{method=\"forward\",expert=\"expert.1\"} 5\n"
                       "t_requests_total{method=\"backward\",expert=\"a\\\"b\\\\c\\nd\"} 1\n"
                       "# HELP t_depth Depth.\n"
                       "# TYPE t_depth gauge\n"
                       "t_depth -2.5\n"
                       "# HELP t_size Sizes.\n"
                       "# TYPE t_size histogram\n"
                       "t_size_bucket{le=\"1\"} 2\n"
                       "t_size_bucket{le=\"2.5\"} 3\n"
                       "t_size_bucket{le=\"10\"} 4\n"
                       "t_size_bucket{le=\"+Inf\"} 5\n"
                       "t_size_sum 106.5\n"
                       "t_size_count 5\n";
    cr_assert_str_eq(text, want);
    cr_assert_eq(len, strlen(want));
    free(text);
    metrics_free(m);
    metrics_free(NULL);
}

Test(metrics, numbers_and_labelled_histograms, .timeout = 30)
{
    metrics *m = metrics_new();
    met_family *g = metrics_gauge(m, "t_g", "", 1, (const char *[]){"k"});
    metrics_set(metrics_series(g, (const char *[]){"third"}), 1.0 / 3.0);
    metrics_set(metrics_series(g, (const char *[]){"inf"}), INFINITY);
    metrics_set(metrics_series(g, (const char *[]){"ninf"}), -INFINITY);
    metrics_set(metrics_series(g, (const char *[]){"nan"}), NAN);
    metrics_set(metrics_series(g, (const char *[]){"big"}), 1e21);
    double b[] = {0.005, 0.1};
    met_family *h = metrics_histogram(m, "t_lat_seconds", "Latency.", 1, (const char *[]){"method"}, b, 2);
    metrics_observe(metrics_series(h, (const char *[]){"forward"}), 0.004);
    char *text = metrics_render(m, NULL);
    cr_assert(strstr(text, "t_g{k=\"third\"} 0.3333333333333333\n"), "%s", text);
    cr_assert(strstr(text, "t_g{k=\"inf\"} +Inf\n"));
    cr_assert(strstr(text, "t_g{k=\"ninf\"} -Inf\n"));
    cr_assert(strstr(text, "t_g{k=\"nan\"} NaN\n"));
    cr_assert(strstr(text, "t_g{k=\"big\"} 1e+21\n"));
    cr_assert(strstr(text, "# HELP t_g \n"), "empty help is allowed");
    cr_assert(strstr(text, "t_lat_seconds_bucket{method=\"forward\",le=\"0.005\"} 1\n"), "%s", text);
    cr_assert(strstr(text, "t_lat_seconds_bucket{method=\"forward\",le=\"+Inf\"} 1\n"));
    cr_assert(strstr(text, "t_lat_seconds_sum{method=\"forward\"} 0.004\n"));
    free(text);
    metrics_free(m);
}

Test(metrics, registration_refusals, .timeout = 30)
{
    metrics *m = metrics_new();
    double ok[] = {1, 2}, unsorted[] = {2, 1}, same[] = {1, 1}, inf[] = {1, INFINITY};
    cr_assert_not_null(metrics_counter(m, "a_total", "x", 0, NULL));
    cr_assert_null(metrics_counter(m, "a_total", "x", 0, NULL), "duplicate name");
    cr_assert_null(metrics_gauge(m, "a_total", "x", 0, NULL), "duplicate across kinds");
    cr_assert_null(metrics_counter(m, "1abc", "x", 0, NULL));
    cr_assert_null(metrics_counter(m, "a-b", "x", 0, NULL));
    cr_assert_null(metrics_counter(m, "", "x", 0, NULL));
    cr_assert_not_null(metrics_counter(m, "ns:sub_total", "colons are allowed in names", 0, NULL));
    cr_assert_null(metrics_counter(m, "b", "x", 1, (const char *[]){"a:b"}), "not in label names");
    cr_assert_null(metrics_counter(m, "b", "x", 1, (const char *[]){"__x"}), "reserved label prefix");
    cr_assert_null(metrics_counter(m, "b", "x", 2, (const char *[]){"k", "k"}), "duplicate label");
    cr_assert_null(metrics_counter(m, "b", "x", MET_MAX_LABELS + 1,
                                   (const char *[]){"a", "b", "c", "d", "e", "f"}));
    cr_assert_null(metrics_histogram(m, "h", "x", 1, (const char *[]){"le"}, ok, 2), "le is the bucket label");
    cr_assert_null(metrics_histogram(m, "h", "x", 0, NULL, unsorted, 2));
    cr_assert_null(metrics_histogram(m, "h", "x", 0, NULL, same, 2));
    cr_assert_null(metrics_histogram(m, "h", "x", 0, NULL, inf, 2), "+Inf is implicit");
    cr_assert_null(metrics_histogram(m, "h", "x", 0, NULL, ok, 0));
    cr_assert_not_null(metrics_histogram(m, "h", "x", 0, NULL, ok, 2));
    met_family *c = metrics_counter(m, "c", "x", 1, (const char *[]){"k"});
    cr_assert_null(metrics_series(c, NULL), "values are required");
    cr_assert_null(metrics_series(c, (const char *[]){NULL}));
    cr_assert_null(metrics_series(NULL, NULL));
    met_std s;
    cr_assert_eq(metrics_std_init(m, &s), 0);
    cr_assert_eq(metrics_std_init(m, &s), DMOE_EINVAL, "registered twice");
    cr_assert_eq(metrics_std_init(NULL, &s), DMOE_EINVAL);
    metrics_free(m);
}

Test(metrics, update_rules_and_cap, .timeout = 60)
{
    metrics *m = metrics_new();
    met_series *c = metrics_series(metrics_counter(m, "c_total", "", 0, NULL), NULL);
    metrics_inc(c, 2);
    metrics_inc(c, -5);
    metrics_inc(c, NAN);
    metrics_set(c, 100);
    cr_assert_eq(metrics_value(c), 2, "counters only go up; set does not apply");
    met_series *g = metrics_series(metrics_gauge(m, "g", "", 0, NULL), NULL);
    metrics_set(g, 7);
    metrics_inc(g, 1);
    metrics_observe(g, 3);
    cr_assert_eq(metrics_value(g), 8);
    double b[] = {1, 2};
    met_series *h = metrics_series(metrics_histogram(m, "h", "", 0, NULL, b, 2), NULL);
    metrics_observe(h, NAN);
    metrics_inc(h, 4);
    metrics_observe(h, 2);
    metrics_observe(h, -1e9);
    cr_assert_eq(metrics_value(h), 2, "NaN and inc are ignored by histograms");
    metrics_inc(NULL, 1);
    metrics_set(NULL, 1);
    metrics_observe(NULL, 1);
    cr_assert_eq(metrics_value(NULL), 0);
    /* the series cap */
    met_family *f = metrics_counter(m, "many_total", "", 1, (const char *[]){"k"});
    char v[16];
    for (int i = 0; i < MET_MAX_SERIES; i++) {
        snprintf(v, sizeof v, "%d", i);
        cr_assert_not_null(metrics_series(f, (const char *[]){v}));
    }
    cr_assert_null(metrics_series(f, (const char *[]){"one more"}), "full");
    cr_assert_not_null(metrics_series(f, (const char *[]){"7"}), "existing series are still found");
    metrics_free(m);
}

/* ---- the endpoint over a real socket ----------------------------------------------------------- */

typedef struct {
    struct event_base *base;
    int port;
    const char *request;
    char resp[1 << 16];
    size_t len;
} mt_client;

/* mt_client_run sends the request, reads until the server closes, then stops the test's loop. */
static void *mt_client_run(void *arg)
{
    mt_client *c = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->len = 0;
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        size_t n = strlen(c->request), off = 0;
        while (off < n) {
            ssize_t w = send(fd, c->request + off, n - off, 0);
            if (w <= 0) break;
            off += (size_t)w;
        }
        for (;;) {
            ssize_t r = recv(fd, c->resp + c->len, sizeof c->resp - 1 - c->len, 0);
            if (r <= 0) break;
            c->len += (size_t)r;
        }
    }
    c->resp[c->len] = 0;
    if (fd >= 0) close(fd);
    event_base_loopbreak(c->base);
    return NULL;
}

/* mt_get runs the loop while a client thread makes one request; returns the raw response (static). */
static mt_client *mt_get(struct event_base *base, int port, const char *request)
{
    static mt_client c;
    memset(&c, 0, sizeof c);
    c.base = base;
    c.port = port;
    c.request = request;
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, mt_client_run, &c), 0);
    event_base_dispatch(base);
    pthread_join(th, NULL);
    return &c;
}

/* mt_sample returns the value on the line "<series> <value>" of body, asserting it exists. */
static double mt_sample(const char *body, const char *series)
{
    size_t sl = strlen(series);
    for (const char *l = body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, series, sl) == 0 && l[sl] == ' ') return strtod(l + sl + 1, NULL);
    cr_assert_fail("no sample %s in:\n%s", series, body);
    return NAN;
}

/* mt_check_histogram checks name's buckets for the label prefix lp (e.g. "method=\"forward\"," or ""):
 * cumulative counts never decrease, the last bucket is +Inf and equals _count. Returns the count. */
static double mt_check_histogram(const char *body, const char *name, const char *lp, const char *sel)
{
    char pre[256];
    snprintf(pre, sizeof pre, "%s_bucket{%sle=\"", name, lp);
    double prev = 0, last = -1;
    int n = 0;
    bool saw_inf = false;
    for (const char *l = body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, pre, strlen(pre)) != 0) continue;
        cr_assert(!saw_inf, "+Inf is the last bucket");
        const char *le = l + strlen(pre);
        saw_inf = strncmp(le, "+Inf\"", 5) == 0;
        const char *sp = strchr(l, ' ');
        double v = strtod(sp + 1, NULL);
        cr_assert_geq(v, prev, "cumulative buckets never decrease (%s)", l);
        prev = last = v;
        n++;
    }
    cr_assert(saw_inf && n >= 2, "%s has buckets ending in +Inf", name);
    char cs[256];
    snprintf(cs, sizeof cs, "%s_count%s", name, sel);
    cr_assert_eq(mt_sample(body, cs), last, "+Inf bucket == _count");
    return last;
}

Test(metrics, http_endpoint, .timeout = 30)
{
    cr_assert_eq(evthread_use_pthreads(), 0);
    struct event_base *base = event_base_new();
    cr_assert_not_null(base);
    metrics *m = metrics_new();
    met_std s;
    cr_assert_eq(metrics_std_init(m, &s), 0);
    metrics_inc(metrics_series(s.requests, (const char *[]){"forward", "expert.1"}), 3);
    metrics_inc(metrics_series(s.requests, (const char *[]){"backward", "expert.1"}), 1);
    metrics_inc(metrics_series(s.errors, (const char *[]){"shape mismatch"}), 2);
    met_series *fwd = metrics_series(s.latency, (const char *[]){"forward"});
    metrics_observe(fwd, 0.003);
    metrics_observe(fwd, 0.2);
    metrics_observe(fwd, 45);
    int sizes[] = {1, 3, 64, 100, 16384, 20000};
    for (int i = 0; i < 6; i++) metrics_observe(s.batch_size, sizes[i]);
    metrics_set(s.queue_depth, 12);
    metrics_set(s.routing_table, 20);
    metrics_inc(s.bytes_in, 1000);
    metrics_set_total(s.bytes_out, 400);
    metrics_set_total(s.bytes_out, 250);   /* below the counter: counters never go down */
    metrics_set_total(s.queue_depth, 99);  /* not a counter: nothing */
    int scrapes = 0;
    metrics_on_scrape(m, count_scrape, &scrapes);
    int port = 0;
    char err[128];
    cr_assert_eq(metrics_listen(m, base, NULL, 0, &port, err, sizeof err), 0, "%s", err);
    cr_assert_gt(port, 0, "the OS picked a port");
    cr_assert_eq(metrics_listen(m, base, NULL, 0, &port, err, sizeof err), DMOE_EINVAL, "listening already");

    mt_client *c = mt_get(base, port, "GET /metrics HTTP/1.0\r\n\r\n");
    cr_assert(strncmp(c->resp, "HTTP/1.0 200", 12) == 0 || strncmp(c->resp, "HTTP/1.1 200", 12) == 0, "%s",
              c->resp);
    char *body = strstr(c->resp, "\r\n\r\n");
    cr_assert_not_null(body);
    *body = 0;
    body += 4;
    cr_assert(strcasestr(c->resp, "\r\nContent-Type: text/plain; version=0.0.4"), "%s", c->resp);
    cr_assert(strstr(body, "# HELP dmoe_requests_total "));
    cr_assert(strstr(body, "# TYPE dmoe_requests_total counter\n"));
    cr_assert(strstr(body, "# TYPE dmoe_batch_size histogram\n"));
    cr_assert(strstr(body, "# TYPE dmoe_queue_depth gauge\n"));
    cr_assert_eq(mt_sample(body, "dmoe_requests_total{method=\"forward\",expert=\"expert.1\"}"), 3);
    cr_assert_eq(mt_sample(body, "dmoe_requests_total{method=\"backward\",expert=\"expert.1\"}"), 1);
    cr_assert_eq(mt_sample(body, "dmoe_errors_total{kind=\"shape mismatch\"}"), 2);
    cr_assert_eq(mt_sample(body, "dmoe_queue_depth"), 12);
    cr_assert_eq(mt_sample(body, "dmoe_dht_routing_table_size"), 20);
    cr_assert_eq(mt_sample(body, "dmoe_bytes_in_total"), 1000);
    cr_assert_eq(mt_sample(body, "dmoe_bytes_out_total"), 400);
    cr_assert_eq(scrapes, 1, "the scrape hook ran before rendering");
    /* batch sizes: 1 | 3 -> le 4 | 64 -> 64 | 100 -> 128 | 16384 -> 16384 | 20000 -> +Inf only */
    cr_assert_eq(mt_check_histogram(body, "dmoe_batch_size", "", ""), 6);
    cr_assert_eq(mt_sample(body, "dmoe_batch_size_bucket{le=\"1\"}"), 1);
    cr_assert_eq(mt_sample(body, "dmoe_batch_size_bucket{le=\"2\"}"), 1);
    cr_assert_eq(mt_sample(body, "dmoe_batch_size_bucket{le=\"4\"}"), 2);
    cr_assert_eq(mt_sample(body, "dmoe_batch_size_bucket{le=\"64\"}"), 3);
    cr_assert_eq(mt_sample(body, "dmoe_batch_size_bucket{le=\"128\"}"), 4);
    cr_assert_eq(mt_sample(body, "dmoe_batch_size_bucket{le=\"16384\"}"), 5);
    cr_assert_eq(mt_sample(body, "dmoe_batch_size_sum"), 1 + 3 + 64 + 100 + 16384 + 20000);
    cr_assert_eq(mt_check_histogram(body, "dmoe_request_latency_seconds", "method=\"forward\",",
                                    "{method=\"forward\"}"), 3);
    cr_assert_eq(mt_sample(body, "dmoe_request_latency_seconds_bucket{method=\"forward\",le=\"0.005\"}"), 1);
    cr_assert_eq(mt_sample(body, "dmoe_request_latency_seconds_bucket{method=\"forward\",le=\"30\"}"), 2);
    cr_assert_float_eq(mt_sample(body, "dmoe_request_latency_seconds_sum{method=\"forward\"}"), 45.203, 1e-9);
    /* every sample line belongs to a family announced by # TYPE before it */
    char fam[128] = "";
    for (char *l = body; *l; l = strchr(l, '\n') + 1) {
        if (strncmp(l, "# TYPE ", 7) == 0) {
            sscanf(l + 7, "%127s", fam);
            continue;
        }
        if (l[0] == '#') continue;
        cr_assert(fam[0] && strncmp(l, fam, strlen(fam)) == 0, "sample outside its family: %.60s", l);
    }

    /* the values move between scrapes */
    metrics_inc(metrics_series(s.requests, (const char *[]){"forward", "expert.1"}), 2);
    metrics_set(s.queue_depth, 0);
    c = mt_get(base, port, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    body = strstr(c->resp, "\r\n\r\n") + 4;
    cr_assert_eq(mt_sample(body, "dmoe_requests_total{method=\"forward\",expert=\"expert.1\"}"), 5);
    cr_assert_eq(mt_sample(body, "dmoe_queue_depth"), 0);

    c = mt_get(base, port, "HEAD /metrics HTTP/1.0\r\n\r\n");
    cr_assert(strncmp(c->resp + 8, " 200", 4) == 0, "%s", c->resp);
    cr_assert_null(strstr(c->resp, "# HELP"), "HEAD has no body: %s", c->resp);
    c = mt_get(base, port, "GET /other HTTP/1.0\r\n\r\n");
    cr_assert(strstr(c->resp, " 404 "), "%s", c->resp);
    c = mt_get(base, port, "GET / HTTP/1.0\r\n\r\n");
    cr_assert(strstr(c->resp, " 404 "), "%s", c->resp);
    c = mt_get(base, port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    cr_assert(strstr(c->resp, " 501 "), "evhttp refuses methods outside GET and HEAD: %s", c->resp);

    metrics_free(m);
    event_base_free(base);
}
