/* metrics.c -- the Prometheus registry and its /metrics endpoint (see metrics.h).
 *
 * A registry is a list of families in registration order; a family is a name, help text, kind, label
 * names, for histograms the bucket bounds, and a list of series in creation order. Series are allocated
 * one by one and never moved, so callers may keep pointers to them. A histogram series stores the count
 * of each bucket alone (not cumulative); rendering accumulates, which keeps metrics_observe O(log b).
 *
 * The endpoint is an evhttp server on the caller's event base: each GET /metrics renders the registry
 * into one string and hands it to the reply. Everything runs on the loop thread; nothing is locked.
 */
#include "actors/node/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "runtime/rt_err.h"
#include "runtime/text/rt_strbuf.h"

#define MET_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"   /* the text format's media type */

typedef enum { MET_COUNTER, MET_GAUGE, MET_HISTOGRAM } met_kind;

struct met_series {
    met_series *next;
    met_family *family;
    char *values[MET_MAX_LABELS];
    double value;                   /* counter, gauge; a histogram's sum */
    unsigned long long count;       /* histogram: observations */
    unsigned long long *buckets;    /* histogram: per bucket, not cumulative (nbounds entries) */
};

struct met_family {
    met_family *next;
    met_kind kind;
    char *name, *help;
    int nlabels;
    char *labels[MET_MAX_LABELS];
    double *bounds;
    int nbounds;
    met_series *head, *tail;
    size_t nseries;
};

struct metrics {
    met_family *head, *tail;
    struct evhttp *http;
    void (*on_scrape)(void *arg);   /* metrics_on_scrape */
    void *scrape_arg;
};

void metrics_on_scrape(metrics *m, void (*fn)(void *arg), void *arg)
{
    m->on_scrape = fn;
    m->scrape_arg = arg;
}

metrics *metrics_new(void)
{
    return calloc(1, sizeof(metrics));
}

static void met_series_free(met_series *s, int nlabels)
{
    for (int i = 0; i < nlabels; i++) free(s->values[i]);
    free(s->buckets);
    free(s);
}

static void met_family_free(met_family *f)
{
    for (met_series *s = f->head, *n; s; s = n) {
        n = s->next;
        met_series_free(s, f->nlabels);
    }
    for (int i = 0; i < f->nlabels; i++) free(f->labels[i]);
    free(f->name);
    free(f->help);
    free(f->bounds);
    free(f);
}

void metrics_free(metrics *m)
{
    if (!m) return;
    if (m->http) evhttp_free(m->http);
    for (met_family *f = m->head, *n; f; f = n) {
        n = f->next;
        met_family_free(f);
    }
    free(m);
}

/* ---- registration ------------------------------------------------------------------------------ */

static bool met_name_ok(const char *s, bool colon)
{
    if (!s || !*s) return false;
    for (const char *c = s; *c; c++) {
        bool alpha = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' || (colon && *c == ':');
        bool digit = *c >= '0' && *c <= '9';
        if (!alpha && !(digit && c != s)) return false;
    }
    return true;
}

static met_family *met_register(metrics *m, met_kind kind, const char *name, const char *help, int nlabels,
                                const char *const *label_names, const double *bounds, int nbounds)
{
    if (!m || !met_name_ok(name, true) || nlabels < 0 || nlabels > MET_MAX_LABELS || (nlabels && !label_names))
        return NULL;
    for (met_family *f = m->head; f; f = f->next)
        if (strcmp(f->name, name) == 0) return NULL;
    for (int i = 0; i < nlabels; i++) {
        if (!met_name_ok(label_names[i], false) || strncmp(label_names[i], "__", 2) == 0) return NULL;
        if (kind == MET_HISTOGRAM && strcmp(label_names[i], "le") == 0) return NULL;
        for (int j = 0; j < i; j++)
            if (strcmp(label_names[i], label_names[j]) == 0) return NULL;
    }
    if (kind == MET_HISTOGRAM) {
        if (!bounds || nbounds < 1 || nbounds > MET_MAX_BUCKETS) return NULL;
        for (int i = 0; i < nbounds; i++)
            if (!isfinite(bounds[i]) || (i && !(bounds[i] > bounds[i - 1]))) return NULL;
    }
    met_family *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->kind = kind;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->nlabels = nlabels;
    bool ok = f->name && f->help;
    for (int i = 0; i < nlabels; i++) ok = ok && (f->labels[i] = strdup(label_names[i])) != NULL;
    if (ok && kind == MET_HISTOGRAM) {
        f->bounds = malloc((size_t)nbounds * sizeof *f->bounds);
        ok = f->bounds != NULL;
        if (ok) memcpy(f->bounds, bounds, (size_t)nbounds * sizeof *f->bounds);
        f->nbounds = nbounds;
    }
    if (ok && nlabels == 0) ok = metrics_series(f, NULL) != NULL;
    if (!ok) {
        met_family_free(f);
        return NULL;
    }
    if (m->tail) m->tail->next = f;
    else m->head = f;
    m->tail = f;
    return f;
}

met_family *metrics_counter(metrics *m, const char *name, const char *help, int nlabels,
                            const char *const *label_names)
{
    return met_register(m, MET_COUNTER, name, help, nlabels, label_names, NULL, 0);
}

met_family *metrics_gauge(metrics *m, const char *name, const char *help, int nlabels,
                          const char *const *label_names)
{
    return met_register(m, MET_GAUGE, name, help, nlabels, label_names, NULL, 0);
}

met_family *metrics_histogram(metrics *m, const char *name, const char *help, int nlabels,
                              const char *const *label_names, const double *bounds, int nbounds)
{
    return met_register(m, MET_HISTOGRAM, name, help, nlabels, label_names, bounds, nbounds);
}

met_series *metrics_series(met_family *f, const char *const *label_values)
{
    if (!f || (f->nlabels && !label_values)) return NULL;
    for (int i = 0; i < f->nlabels; i++)
        if (!label_values[i]) return NULL;
    for (met_series *s = f->head; s; s = s->next) {
        int i = 0;
        while (i < f->nlabels && strcmp(s->values[i], label_values[i]) == 0) i++;
        if (i == f->nlabels) return s;
    }
    if (f->nseries >= MET_MAX_SERIES) return NULL;
    met_series *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->family = f;
    bool ok = true;
    for (int i = 0; i < f->nlabels; i++) ok = ok && (s->values[i] = strdup(label_values[i])) != NULL;
    if (ok && f->kind == MET_HISTOGRAM) ok = (s->buckets = calloc((size_t)f->nbounds, sizeof *s->buckets)) != NULL;
    if (!ok) {
        met_series_free(s, f->nlabels);
        return NULL;
    }
    if (f->tail) f->tail->next = s;
    else f->head = s;
    f->tail = s;
    f->nseries++;
    return s;
}

/* ---- updates ----------------------------------------------------------------------------------- */

void metrics_inc(met_series *s, double v)
{
    if (!s || s->family->kind == MET_HISTOGRAM || !(v >= 0)) return;
    s->value += v;
}

void metrics_set(met_series *s, double v)
{
    if (!s || s->family->kind != MET_GAUGE) return;
    s->value = v;
}

void metrics_set_total(met_series *s, double total)
{
    if (!s || s->family->kind != MET_COUNTER || !(total >= s->value)) return;
    s->value = total;
}

void metrics_observe(met_series *s, double v)
{
    if (!s || s->family->kind != MET_HISTOGRAM || isnan(v)) return;
    const met_family *f = s->family;
    int lo = 0, hi = f->nbounds;          /* the first bound >= v, or nbounds for the +Inf bucket */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (f->bounds[mid] >= v) hi = mid;
        else lo = mid + 1;
    }
    if (lo < f->nbounds) s->buckets[lo]++;
    s->count++;
    s->value += v;
}

double metrics_value(const met_series *s)
{
    if (!s) return 0;
    return s->family->kind == MET_HISTOGRAM ? (double)s->count : s->value;
}

/* ---- rendering --------------------------------------------------------------------------------- */

/* mb_escaped writes s escaping backslash and newline, and double quotes when quote is set. */
static void mb_escaped(rt_strbuf *b, const char *s, bool quote)
{
    for (const char *c = s; *c; c++) {
        if (*c == '\\') rt_strbuf_put(b, "\\\\", 2);
        else if (*c == '\n') rt_strbuf_put(b, "\\n", 2);
        else if (quote && *c == '"') rt_strbuf_put(b, "\\\"", 2);
        else rt_strbuf_put(b, c, 1);
    }
}

/* mb_num writes v as plain digits when it is a whole number below 1e15, else in the shortest %g form
 * that reads back exactly; +Inf, -Inf, NaN as Prometheus spells them. */
static void mb_num(rt_strbuf *b, double v)
{
    char t[40];
    if (isnan(v)) {
        rt_strbuf_str(b, "NaN");
        return;
    }
    if (isinf(v)) {
        rt_strbuf_str(b, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) {          /* counts and sizes: plain digits, never 2e+01 */
        snprintf(t, sizeof t, "%.0f", v);
        rt_strbuf_str(b, t);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, v);
        if (strtod(t, NULL) == v) break;
    }
    rt_strbuf_str(b, t);
}

/* mb_labels writes {a="x",b="y"[,le="bound"]} or nothing when there are no labels at all. */
static void mb_labels(rt_strbuf *b, const met_series *s, const char *le)
{
    const met_family *f = s->family;
    if (f->nlabels == 0 && !le) return;
    rt_strbuf_put(b, "{", 1);
    for (int i = 0; i < f->nlabels; i++) {
        if (i) rt_strbuf_put(b, ",", 1);
        rt_strbuf_str(b, f->labels[i]);
        rt_strbuf_put(b, "=\"", 2);
        mb_escaped(b, s->values[i], true);
        rt_strbuf_put(b, "\"", 1);
    }
    if (le) {
        if (f->nlabels) rt_strbuf_put(b, ",", 1);
        rt_strbuf_str(b, "le=\"");
        rt_strbuf_str(b, le);
        rt_strbuf_put(b, "\"", 1);
    }
    rt_strbuf_put(b, "}", 1);
}

static void mb_sample(rt_strbuf *b, const met_series *s, const char *suffix, const char *le, double v)
{
    rt_strbuf_str(b, s->family->name);
    rt_strbuf_str(b, suffix);
    mb_labels(b, s, le);
    rt_strbuf_put(b, " ", 1);
    mb_num(b, v);
    rt_strbuf_put(b, "\n", 1);
}

char *metrics_render(const metrics *m, size_t *len)
{
    static const char *const kinds[] = {"counter", "gauge", "histogram"};
    rt_strbuf b = {0};
    rt_strbuf_put(&b, "", 0);   /* an empty registry still renders "" */
    for (const met_family *f = m ? m->head : NULL; f; f = f->next) {
        rt_strbuf_str(&b, "# HELP ");
        rt_strbuf_str(&b, f->name);
        rt_strbuf_put(&b, " ", 1);
        mb_escaped(&b, f->help, false);
        rt_strbuf_str(&b, "\n# TYPE ");
        rt_strbuf_str(&b, f->name);
        rt_strbuf_put(&b, " ", 1);
        rt_strbuf_str(&b, kinds[f->kind]);
        rt_strbuf_put(&b, "\n", 1);
        for (const met_series *s = f->head; s; s = s->next) {
            if (f->kind != MET_HISTOGRAM) {
                mb_sample(&b, s, "", NULL, s->value);
                continue;
            }
            unsigned long long cum = 0;
            for (int i = 0; i < f->nbounds; i++) {
                rt_strbuf le = {0};
                mb_num(&le, f->bounds[i]);
                cum += s->buckets[i];
                mb_sample(&b, s, "_bucket", le.failed ? "" : le.p, (double)cum);
                b.failed = b.failed || le.failed;
                free(le.p);
            }
            mb_sample(&b, s, "_bucket", "+Inf", (double)s->count);
            mb_sample(&b, s, "_sum", NULL, s->value);
            mb_sample(&b, s, "_count", NULL, (double)s->count);
        }
    }
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    if (len) *len = b.len;
    return b.p;
}

/* ---- the endpoint ------------------------------------------------------------------------------ */

static void met_http_cb(struct evhttp_request *req, void *arg)
{
    metrics *m = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path) {
        evhttp_send_error(req, HTTP_BADREQUEST, NULL);
        return;
    }
    if (strcmp(path, "/metrics") != 0) {
        evhttp_send_error(req, HTTP_NOTFOUND, NULL);
        return;
    }
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {   /* evhttp would send a body anyway */
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", MET_CONTENT_TYPE);
        evhttp_send_reply(req, HTTP_OK, "OK", NULL);
        return;
    }
    if (m->on_scrape) m->on_scrape(m->scrape_arg);
    size_t len = 0;
    char *text = metrics_render(m, &len);
    struct evbuffer *body = evbuffer_new();
    if (!text || !body || evbuffer_add(body, text, len) != 0) {
        free(text);
        if (body) evbuffer_free(body);
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    free(text);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", MET_CONTENT_TYPE);
    evhttp_send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

int metrics_listen(metrics *m, struct event_base *base, const char *host, int port, int *bound_port,
                   char *err, size_t errlen)
{
    if (!m || !base || m->http || port < 0 || port > 65535) {
        if (err && errlen) snprintf(err, errlen, "metrics: bad arguments or already listening");
        return DMOE_EINVAL;
    }
    struct evhttp *http = evhttp_new(base);
    if (!http) {
        if (err && errlen) snprintf(err, errlen, "metrics: evhttp_new failed");
        return DMOE_ENOMEM;
    }
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_gencb(http, met_http_cb, m);
    const char *h = host ? host : "127.0.0.1";
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, h, (ev_uint16_t)port);
    if (!bs) {
        if (err && errlen) snprintf(err, errlen, "metrics: cannot listen on %s:%d: %s", h, port, strerror(errno));
        evhttp_free(http);
        return DMOE_EIO;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int bound = port;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6) bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    m->http = http;
    if (bound_port) *bound_port = bound;
    return 0;
}

/* ---- dmoe's standard set ----------------------------------------------------------------------- */

int metrics_std_init(metrics *m, met_std *s)
{
    static const char *const method_expert[] = {"method", "expert"}, *const kind[] = {"kind"},
                             *const method[] = {"method"};
    double batch[15], lat[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    for (int i = 0; i < 15; i++) batch[i] = (double)(1 << i);   /* 1, 2, 4, ..., 16384 */
    static const char *const names[] = {"dmoe_requests_total", "dmoe_errors_total", "dmoe_request_latency_seconds",
                                        "dmoe_batch_size", "dmoe_queue_depth", "dmoe_dht_routing_table_size",
                                        "dmoe_bytes_in_total", "dmoe_bytes_out_total"};
    if (!m || !s) return DMOE_EINVAL;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        for (met_family *f = m->head; f; f = f->next)
            if (strcmp(f->name, names[i]) == 0) return DMOE_EINVAL;
    met_std r;
    memset(&r, 0, sizeof r);
    r.requests = metrics_counter(m, "dmoe_requests_total", "Requests answered, by method and expert.", 2,
                                 method_expert);
    r.errors = metrics_counter(m, "dmoe_errors_total", "Error replies sent, by kind.", 1, kind);
    r.latency = metrics_histogram(m, "dmoe_request_latency_seconds",
                                  "Time from a request's arrival to its reply, by method.", 1, method, lat,
                                  (int)(sizeof lat / sizeof lat[0]));
    met_family *bs = metrics_histogram(m, "dmoe_batch_size", "Rows in each batch an expert ran.", 0, NULL,
                                       batch, 15);
    met_family *qd = metrics_gauge(m, "dmoe_queue_depth", "Requests waiting in the batch queues.", 0, NULL);
    met_family *rt = metrics_gauge(m, "dmoe_dht_routing_table_size", "Peers in the DHT routing table.", 0, NULL);
    met_family *bi = metrics_counter(m, "dmoe_bytes_in_total",
                                     "Bytes read on the node's TCP connections: expert and DHT RPCs it serves, DHT RPCs it sends.",
                                     0, NULL);
    met_family *bo = metrics_counter(m, "dmoe_bytes_out_total",
                                     "Bytes written on the node's TCP connections: expert and DHT RPCs it serves, DHT RPCs it sends.",
                                     0, NULL);
    if (!r.requests || !r.errors || !r.latency || !bs || !qd || !rt || !bi || !bo) return DMOE_ENOMEM;
    r.batch_size = bs->head;
    r.queue_depth = qd->head;
    r.routing_table = rt->head;
    r.bytes_in = bi->head;
    r.bytes_out = bo->head;
    *s = r;
    return 0;
}

void metrics_std_error(met_std *s, int code)
{
    if (!s) return;
    const char *kind = dmoe_strerror(code);
    metrics_inc(metrics_series(s->errors, &kind), 1);
}
