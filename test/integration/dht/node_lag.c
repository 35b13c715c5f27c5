/* node_lag.c -- a real node's loop lag, from its metrics endpoint (see node_lag.h). */
#include "test/integration/dht/node_lag.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char *http_get(int port, const char *path)
{
    int fd = th_connect(port);
    cr_assert_geq(fd, 0);
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    cr_assert_eq(th_send_all(fd, req, strlen(req)), 0);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    cr_assert(buf);
    for (;;) {
        ssize_t r = recv(fd, buf + len, cap - 1 - len, 0);
        if (r <= 0) break;
        len += (size_t)r;
        if (len + 1 >= cap) break;
    }
    buf[len] = '\0';
    close(fd);
    return buf;
}

double th_node_loop_lag_ms(const th_node *n)
{
    static const char intro[] = "Serving metrics on http://127.0.0.1:";
    char *log = th_node_log(n);
    const char *p = strstr(log, intro);
    cr_assert_not_null(p, "the node serves metrics: %s", log);
    int port = atoi(p + strlen(intro));
    free(log);
    usleep(1200000);   /* the gauges refresh every second */
    char *body = http_get(port, "/metrics");
    const char *g = strstr(body, "\ndmoe_loop_lag_max_seconds ");
    cr_assert_not_null(g, "the node reports its loop lag: %s", body);
    double s = atof(g + strlen("\ndmoe_loop_lag_max_seconds "));
    free(body);
    return s * 1000.0;
}
