/* metrics.h -- the node's Prometheus metrics: a registry of counters, gauges and histograms with labels,
 * and an HTTP endpoint (libevent's evhttp) that serves them as GET /metrics.
 *
 * Order: metrics_new -> register families (metrics_counter / metrics_gauge / metrics_histogram, or
 * metrics_std_init for dmoe's standard set) -> metrics_series to get one labelled series (keep the
 * pointer: series live as long as the registry) -> metrics_inc / metrics_set / metrics_observe as
 * things happen -> optionally metrics_listen to serve them -> metrics_free.
 *
 * Exposition: the Prometheus text format, version 0.0.4. Per family, in registration order:
 * "# HELP name text" (backslash and newline escaped), "# TYPE name counter|gauge|histogram", then one
 * line per series in creation order, "name{label="value",...} number" (label values escape backslash,
 * double quote and newline); a histogram writes name_bucket{...,le="bound"} with cumulative counts for
 * each bound and le="+Inf" (equal to the count), then name_sum and name_count. Numbers print in the
 * shortest form that reads back exactly; +Inf, -Inf and NaN as Prometheus spells them.
 * GET (or HEAD) /metrics answers 200 with Content-Type "text/plain; version=0.0.4; charset=utf-8";
 * any other path answers 404; other methods get evhttp's 501 Not Implemented.
 *
 * Loop thread only: the registry is not locked, so workers report through the loop (their completions)
 * rather than touching it. Bounded: a family holds at most MET_MAX_SERIES series; past that
 * metrics_series returns NULL, and the update functions accept NULL and do nothing.
 */
#ifndef DMOE_METRICS_H
#define DMOE_METRICS_H

#include <stddef.h>

struct event_base;

#define MET_MAX_LABELS 4        /* label names per family */
#define MET_MAX_BUCKETS 64      /* histogram bounds per family */
#define MET_MAX_SERIES 10000    /* label combinations per family: a misbehaving caller cannot eat memory */

typedef struct metrics metrics;
typedef struct met_family met_family;
typedef struct met_series met_series;

/* metrics_new returns an empty registry (free with metrics_free) or NULL when out of memory. */
metrics *metrics_new(void);
/* metrics_free closes the endpoint if open and frees the registry with all families and series;
 * metrics_free(NULL) does nothing. */
void metrics_free(metrics *m);

/* metrics_counter registers a counter family called name ([a-zA-Z_:][a-zA-Z0-9_:]*) with help text and
 * nlabels label names ([a-zA-Z_][a-zA-Z0-9_]*, not starting with "__"); all strings are copied.
 * Returns the family, owned by m, or NULL (bad or duplicate name, too many labels, no memory).
 * A family without labels has its single series created at once, so it is exported as 0. */
met_family *metrics_counter(metrics *m, const char *name, const char *help, int nlabels,
                            const char *const *label_names);
/* metrics_gauge is metrics_counter for a gauge (a value that goes up and down). */
met_family *metrics_gauge(metrics *m, const char *name, const char *help, int nlabels,
                          const char *const *label_names);
/* metrics_histogram registers a histogram with nbounds (1..MET_MAX_BUCKETS) finite, strictly
 * increasing bucket upper bounds (copied; the +Inf bucket is implicit). Label names may not include
 * "le". Returns the family or NULL as metrics_counter. */
met_family *metrics_histogram(metrics *m, const char *name, const char *help, int nlabels,
                              const char *const *label_names, const double *bounds, int nbounds);

/* metrics_series returns the series of f with the given label values (one per label name, copied;
 * NULL for a family without labels), creating it at 0 if new. The pointer stays valid until
 * metrics_free. Returns NULL when f is NULL, a value is NULL, the family is full or memory runs out. */
met_series *metrics_series(met_family *f, const char *const *label_values);
/* metrics_inc adds v (>= 0; negative or NaN v is ignored, since counters only go up) to a counter, or
 * to a gauge. NULL s does nothing. */
void metrics_inc(met_series *s, double v);
/* metrics_set sets a gauge to v. NULL s or a series of another kind: nothing. */
void metrics_set(met_series *s, double v);
/* metrics_set_total sets a counter whose running total is kept elsewhere (bytes a connection counts) to
 * total; a total below the counter's value is ignored, since counters never go down. NULL s or a series
 * of another kind: nothing. */
void metrics_set_total(met_series *s, double total);
/* metrics_observe records v in a histogram: the first bucket with v <= bound, the count and the sum.
 * NaN is ignored. NULL s or a series of another kind: nothing. */
void metrics_observe(met_series *s, double v);
/* metrics_value returns a counter's or gauge's value, a histogram's count; 0 for NULL. */
double metrics_value(const met_series *s);

/* metrics_on_scrape registers fn(arg), called on the loop before each GET /metrics renders, so that
 * values kept elsewhere can be copied in first (one hook; NULL fn removes it). */
void metrics_on_scrape(metrics *m, void (*fn)(void *arg), void *arg);

/* metrics_render returns the whole exposition text (malloc'd, NUL-terminated, the caller frees it) and
 * sets *len (may be NULL) to its length without the NUL; NULL when out of memory. */
char *metrics_render(const metrics *m, size_t *len);

/* metrics_listen serves GET /metrics on host (NULL: "127.0.0.1") and port (0: the OS picks) from the
 * loop base. Sets *bound_port (may be NULL) to the port bound. Returns 0, DMOE_EINVAL (already
 * listening, bad arguments) or DMOE_EIO (cannot bind; err gets the message). The endpoint closes at
 * metrics_free (which must then run before the base is freed). */
int metrics_listen(metrics *m, struct event_base *base, const char *host, int port, int *bound_port,
                   char *err, size_t errlen);

/* dmoe's standard metrics, registered by metrics_std_init; the unlabelled ones come as their series. */
typedef struct met_std_s {
    met_family *requests;        /* dmoe_requests_total{method, expert}: requests answered */
    met_family *errors;          /* dmoe_errors_total{kind}: error replies, kind = dmoe_strerror text */
    met_family *latency;         /* dmoe_request_latency_seconds{method}: arrival to reply */
    met_series *batch_size;      /* dmoe_batch_size: rows per batch, buckets 1, 2, 4, ..., 16384 */
    met_series *queue_depth;     /* dmoe_queue_depth: requests waiting in batch queues */
    met_series *routing_table;   /* dmoe_dht_routing_table_size: peers in the DHT routing table */
    met_series *bytes_in;        /* dmoe_bytes_in_total: bytes the node read on its TCP connections */
    met_series *bytes_out;       /* dmoe_bytes_out_total: bytes the node wrote on its TCP connections */
} met_std;

/* metrics_std_init registers the families above in m and fills s. Returns 0 or DMOE_ENOMEM (or
 * DMOE_EINVAL when one of the names is already registered). */
int metrics_std_init(metrics *m, met_std *s);
/* metrics_std_error counts one error reply of code under its kind; s may be NULL. */
void metrics_std_error(met_std *s, int code);

#endif
