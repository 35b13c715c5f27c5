/* node_lag.c -- a real node's loop lag, from its metrics endpoint (see node_lag.h). */
#include "test/integration/dht/node_lag.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

double th_node_loop_lag_ms(const th_node *n)
{
    static const char intro[] = "Serving metrics on http://127.0.0.1:";
    char *log = th_node_log(n);
    const char *p = strstr(log, intro);
    cr_assert_not_null(p, "the node serves metrics: %s", log);
    int port = atoi(p + strlen(intro));
    free(log);
    usleep(1200000);   /* the gauges refresh every second */
    char *body = th_http_get(port, "/metrics");
    cr_assert_not_null(body, "the metrics endpoint answers");
    const char *g = strstr(body, "\ndmoe_loop_lag_max_seconds ");
    cr_assert_not_null(g, "the node reports its loop lag: %s", body);
    double s = atof(g + strlen("\ndmoe_loop_lag_max_seconds "));
    free(body);
    return s * 1000.0;
}
