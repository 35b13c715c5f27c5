/* netq.c -- a node's network quotas (see netq.h). */
#include "actors/net/netq.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* The shares of the pending budget: one connection may hold a quarter of it, one address half. */
#define NETQ_CONN_SHARE_DIV 4
#define NETQ_ADDR_SHARE_DIV 2

void netq_init(netq *q, size_t max_pending, size_t max_out)
{
    memset(q, 0, sizeof *q);
    rt_budget_init(&q->pending, max_pending);
    q->conn_share = max_pending / NETQ_CONN_SHARE_DIV;
    q->addr_share = max_pending / NETQ_ADDR_SHARE_DIV;
    q->out_max = max_out;
}

void netq_deinit(netq *q)
{
    rt_map_iter it = RT_MAP_ITER_INIT;
    netq_addr *a;
    while ((a = rt_map_next(&q->addrs, &it, NULL, NULL))) free(a);
    rt_map_clear(&q->addrs);
}

netq_addr *netq_addr_get(netq *q, const struct sockaddr *sa)
{
    const void *key;
    size_t len;
    if (sa->sa_family == AF_INET) {
        key = &((const struct sockaddr_in *)sa)->sin_addr;
        len = 4;
    } else if (sa->sa_family == AF_INET6) {
        key = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        len = 16;
    } else {
        return NULL;
    }
    netq_addr *a = rt_map_get(&q->addrs, key, len);
    if (!a) {
        a = calloc(1, sizeof *a);
        if (!a) return NULL;
        memcpy(a->key, key, len);
        a->keylen = len;
        if (rt_map_put(&q->addrs, a->key, len, a) != 0) { free(a); return NULL; }
    }
    a->conns++;
    return a;
}

void netq_addr_put(netq *q, netq_addr *a)
{
    if (!a || --a->conns > 0) return;
    rt_map_del(&q->addrs, a->key, a->keylen);
    free(a);
}

int netq_try(netq *q, size_t *conn_charged, netq_addr *a, size_t n, int lift_shares)
{
    rt_budget *b = &q->pending;
    if (b->max) {
        if (n > b->max || b->used > b->max - n) return 0;
        int alone = b->used == *conn_charged;   /* nothing pending but this connection's own bytes */
        int shares = *conn_charged + n <= q->conn_share && (!a || a->charged + n <= q->addr_share);
        if (!shares && !alone && !lift_shares) return 0;
    }
    b->used += n;
    if (b->used > b->peak) b->peak = b->used;
    *conn_charged += n;
    if (a) a->charged += n;
    return 1;
}

void netq_release(netq *q, size_t *conn_charged, netq_addr *a, size_t n)
{
    *conn_charged -= n;
    if (a) a->charged -= n;
    rt_budget_release(&q->pending, n);
}

void netq_out_add(netq *q, size_t n)
{
    q->out_bytes += n;
    if (q->out_bytes > q->out_peak) q->out_peak = q->out_bytes;
}

void netq_out_sub(netq *q, size_t n) { q->out_bytes = n > q->out_bytes ? 0 : q->out_bytes - n; }
