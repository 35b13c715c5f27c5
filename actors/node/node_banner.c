/* node_banner.c -- reading a node's start-up lines back out of its log (see node_banner.h). The lines
 * are written by node.c with the NODE_BANNER_* prefixes; this is their one parser. */
#include "actors/node/node_banner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/rt_err.h"
#include "runtime/proc/rt_spawn.h"

#define BANNER_POLL_MS 20   /* between reads of the log: the node starts in tens of milliseconds */

/* read_addr reads the address after the first line starting with prefix into b's addr and text;
 * returns 1 when it parses. */
static int read_addr(const char *log, const char *prefix, node_banner *b)
{
    const char *p = strstr(log, prefix);
    if (!p) return 0;
    p += strlen(prefix);
    size_t n = strcspn(p, " \r\n");
    if (n >= sizeof b->addr_text) return 0;
    memcpy(b->addr_text, p, n);
    b->addr_text[n] = '\0';
    char err[128];
    return wire_maddr_parse_listen(b->addr_text, &b->addr, err, sizeof err) == 0 && b->addr.port != 0;
}

int node_banner_parse(const char *log, node_banner *b)
{
    memset(b, 0, sizeof *b);
    b->listening = read_addr(log, NODE_BANNER_LISTENING, b);
    if (b->listening && wire_maddr_is_wildcard(&b->addr)) {
        node_banner wild = *b;
        if (!read_addr(log, NODE_BANNER_ANNOUNCING, b)) *b = wild;
    }
    const char *p;
    if ((p = strstr(log, NODE_BANNER_DHT)) != NULL) {
        p += strlen(NODE_BANNER_DHT);
        size_t n = strcspn(p, "'\r\n");
        if (p[n] == '\'' && n < sizeof b->dht_maddr) {
            memcpy(b->dht_maddr, p, n);
            b->dht_maddr[n] = '\0';
        }
    }
    b->started = strstr(log, NODE_BANNER_STARTED) != NULL;
    return b->listening && b->started;
}

/* The whole file at path, malloc'd and NUL-terminated; "" (malloc'd) when it cannot be read; NULL
 * only when out of memory. */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return calloc(1, 1);
    size_t cap = 4096, len = 0;
    char *s = malloc(cap);
    while (s) {
        len += fread(s + len, 1, cap - 1 - len, f);
        if (len < cap - 1) break;
        char *ns = realloc(s, cap * 2);
        if (!ns) { free(s); s = NULL; break; }
        s = ns;
        cap *= 2;
    }
    fclose(f);
    if (s) s[len] = '\0';
    return s;
}

int node_banner_wait(const char *log_path, pid_t pid, double timeout_s, node_banner *b)
{
    memset(b, 0, sizeof *b);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double deadline = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + timeout_s;
    for (;;) {
        char *log = read_text(log_path);
        if (!log) return DMOE_ENOMEM;
        int ready = node_banner_parse(log, b);
        free(log);
        if (ready) return 0;
        if (!rt_spawn_alive(pid)) return DMOE_EIO;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if ((double)ts.tv_sec + (double)ts.tv_nsec / 1e9 >= deadline) return DMOE_ETIMEDOUT;
        struct timespec nap = {0, BANNER_POLL_MS * 1000000L};
        nanosleep(&nap, NULL);
    }
}
