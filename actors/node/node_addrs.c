/* node_addrs.c -- the addresses a node announces (see node_addrs.h). */
#include "actors/node/node_addrs.h"

#include <ifaddrs.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* add appends a to out unless it is there already; returns the new count. */
static int add(wire_maddr *out, int n, int max, const wire_maddr *a)
{
    for (int i = 0; i < n; i++)
        if (out[i].family == a->family && out[i].port == a->port && strcmp(out[i].host, a->host) == 0) return n;
    if (n < max) out[n++] = *a;
    return n;
}

/* link_local says whether a is an IPv6 fe80::/10 address (it needs a zone index nobody else knows). */
static int link_local(const wire_maddr *a)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (a->family != AF_INET6 || wire_maddr_sockaddr(a, &ss, &len) != 0) return 0;
    return IN6_IS_ADDR_LINKLOCAL(&((const struct sockaddr_in6 *)&ss)->sin6_addr);
}

/* expand appends the addresses announced for the wildcard w. */
static int expand(const wire_maddr *w, const wire_maddr *ifs, int n_ifs, wire_maddr *out, int n, int max)
{
    int before = n;
    for (int pass = 0; pass < 2 && n == before; pass++)   /* pass 0: routable ones; pass 1: loopback */
        for (int i = 0; i < n_ifs; i++) {
            if (ifs[i].family != w->family || link_local(&ifs[i]) || wire_maddr_is_wildcard(&ifs[i])) continue;
            if (wire_maddr_is_loopback(&ifs[i]) != pass) continue;
            wire_maddr a = ifs[i];
            a.port = w->port;
            memcpy(a.peer_id, w->peer_id, sizeof a.peer_id);
            n = add(out, n, max, &a);
        }
    if (n == before) {   /* not even a loopback interface listed: the loopback address still works */
        wire_maddr a = *w;
        strcpy(a.host, w->family == AF_INET6 ? "::1" : "127.0.0.1");
        n = add(out, n, max, &a);
    }
    return n;
}

int node_addrs_choose(const wire_maddr *bound, int n_bound, const wire_maddr *ifs, int n_ifs, wire_maddr *out,
                      int max)
{
    int n = 0;
    for (int i = 0; i < n_bound; i++)
        n = wire_maddr_is_wildcard(&bound[i]) ? expand(&bound[i], ifs, n_ifs, out, n, max) : add(out, n, max, &bound[i]);
    return n;
}

int node_addrs_interfaces(wire_maddr *out, int max)
{
    struct ifaddrs *all = NULL;
    if (getifaddrs(&all) != 0) return 0;
    int n = 0;
    for (struct ifaddrs *p = all; p && n < max; p = p->ifa_next) {
        wire_maddr a;
        if (p->ifa_addr && wire_maddr_from_sockaddr(p->ifa_addr, &a) == 0) n = add(out, n, max, &a);
    }
    freeifaddrs(all);
    return n;
}
