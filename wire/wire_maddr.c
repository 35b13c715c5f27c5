/* wire_maddr.c -- parsing and formatting node addresses (wire_maddr.h).
 *
 * Owns nothing. Strings come in from the command line, the DHT and peers' replies; wire_maddr values go
 * out to the connection code, which turns them into sockaddrs (wire_maddr_sockaddr) or resolves names.
 *
 * A multiaddr is split on '/' into (protocol, value) pairs; the accepted grammar is
 *     HOSTPART "/tcp/" PORT [ ("/p2p/" | "/ipfs/") ID ]
 *     HOSTPART = "/ip4/" IPV4 | "/ip6/" IPV6 | ("/dns/" | "/dns4/" | "/dns6/") NAME
 * Anything else (other protocols, empty components, a trailing '/') is refused with a message naming
 * the offending part. IP addresses are validated and normalised with inet_pton/inet_ntop; names with a
 * conservative RFC 1123 check. All output is written only after the whole input was accepted.
 */
#include "wire/wire_maddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "runtime/rt_err.h"

/* parse_port reads s[n] as a decimal port; allow_zero for listening addresses. */
static int parse_port(const char *s, size_t n, int allow_zero, uint16_t *out, char *err, size_t errlen)
{
    unsigned v = 0;
    if (n == 0 || n > 5) goto bad;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') goto bad;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535) goto bad;
    if (v == 0 && !allow_zero) {
        dmoe_set_err(err, errlen, "port 0 is only valid for a listening address");
        return DMOE_EINVAL;
    }
    *out = (uint16_t)v;
    return 0;
bad:
    dmoe_set_err(err, errlen, "invalid port \"%.*s\" (expected 0..65535)", (int)(n > 16 ? 16 : n), s);
    return DMOE_EINVAL;
}

/* parse_ip validates s[n] as an address of family af and stores its canonical text in a->host. */
static int parse_ip(const char *s, size_t n, int af, wire_maddr *a, char *err, size_t errlen)
{
    char tmp[WIRE_MADDR_HOST];
    unsigned char bin[sizeof(struct in6_addr)];
    if (n == 0 || n >= sizeof tmp) goto bad;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    if (inet_pton(af, tmp, bin) != 1) goto bad;
    if (!inet_ntop(af, bin, a->host, sizeof a->host)) goto bad;
    a->family = af;
    return 0;
bad:
    dmoe_set_err(err, errlen, "invalid %s address \"%.*s\"", af == AF_INET ? "IPv4" : "IPv6",
            (int)(n > 48 ? 48 : n), s);
    return DMOE_EINVAL;
}

/* parse_name validates s[n] as a DNS host name (labels of letters, digits and inner hyphens). */
static int parse_name(const char *s, size_t n, wire_maddr *a, char *err, size_t errlen)
{
    int all_numeric = 1;
    size_t label = 0;
    if (n == 0 || n >= sizeof a->host) goto bad;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0 || s[i - 1] == '-') goto bad;
            label = 0;
            continue;
        }
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        int digit = c >= '0' && c <= '9';
        if (!alpha && !digit && c != '-') goto bad;
        if (c == '-' && label == 0) goto bad;
        if (!digit) all_numeric = 0;
        if (++label > 63) goto bad;
    }
    if (label == 0 || s[n - 1] == '-' || all_numeric) goto bad; /* "1.2.3" is a broken IPv4, not a name */
    memcpy(a->host, s, n);
    a->host[n] = 0;
    a->family = AF_UNSPEC;
    return 0;
bad:
    dmoe_set_err(err, errlen, "invalid host name \"%.*s\"", (int)(n > 64 ? 64 : n), s);
    return DMOE_EINVAL;
}

/* parse_peer validates s[n] as a hex node id and stores it in lower case. */
static int parse_peer(const char *s, size_t n, wire_maddr *a, char *err, size_t errlen)
{
    if (n == 0 || n >= sizeof a->peer_id) goto bad;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'F') c = (char)(c - 'A' + 'a');
        else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) goto bad;
        a->peer_id[i] = c;
    }
    a->peer_id[n] = 0;
    return 0;
bad:
    dmoe_set_err(err, errlen, "invalid node id \"%.*s\" (expected 1..64 hex digits)", (int)(n > 80 ? 80 : n), s);
    return DMOE_EINVAL;
}

/* next_comp returns the component starting after the '/' at *pos: its start in *c and length in *n.
 * Returns 0 at the end of the string, 1 when a component was read, -1 for an empty component. */
static int next_comp(const char *s, size_t *pos, const char **c, size_t *n)
{
    if (s[*pos] == 0) return 0;
    if (s[*pos] != '/') return -1;
    size_t start = *pos + 1, end = start;
    while (s[end] && s[end] != '/') end++;
    *c = s + start;
    *n = end - start;
    *pos = end;
    return *n ? 1 : -1;
}

static int comp_is(const char *c, size_t n, const char *word)
{
    return strlen(word) == n && memcmp(c, word, n) == 0;
}

/* parse_multiaddr reads the '/'-separated form into *a. */
static int parse_multiaddr(const char *s, int allow_zero, wire_maddr *a, char *err, size_t errlen)
{
    size_t pos = 0;
    const char *proto, *val;
    size_t np, nv;
    int rc;

    if (next_comp(s, &pos, &proto, &np) != 1 || next_comp(s, &pos, &val, &nv) != 1) goto malformed;
    if (comp_is(proto, np, "ip4")) rc = parse_ip(val, nv, AF_INET, a, err, errlen);
    else if (comp_is(proto, np, "ip6")) rc = parse_ip(val, nv, AF_INET6, a, err, errlen);
    else if (comp_is(proto, np, "dns") || comp_is(proto, np, "dns4") || comp_is(proto, np, "dns6"))
        rc = parse_name(val, nv, a, err, errlen);
    else {
        dmoe_set_err(err, errlen, "unsupported multiaddr protocol \"/%.*s\" (expected ip4, ip6 or dns)",
                (int)(np > 16 ? 16 : np), proto);
        return DMOE_EINVAL;
    }
    if (rc) return rc;

    if (next_comp(s, &pos, &proto, &np) != 1 || !comp_is(proto, np, "tcp")) {
        dmoe_set_err(err, errlen, "multiaddr \"%.80s\" lacks /tcp/PORT after the host", s);
        return DMOE_EINVAL;
    }
    if (next_comp(s, &pos, &val, &nv) != 1) goto malformed;
    if ((rc = parse_port(val, nv, allow_zero, &a->port, err, errlen)) != 0) return rc;

    int more = next_comp(s, &pos, &proto, &np);
    if (more == 0) return 0;
    if (more < 0) goto malformed;
    if (!comp_is(proto, np, "p2p") && !comp_is(proto, np, "ipfs")) {
        dmoe_set_err(err, errlen, "unsupported multiaddr part \"/%.*s\" (only /p2p/ID may follow /tcp)",
                (int)(np > 16 ? 16 : np), proto);
        return DMOE_EINVAL;
    }
    if (next_comp(s, &pos, &val, &nv) != 1) goto malformed;
    if ((rc = parse_peer(val, nv, a, err, errlen)) != 0) return rc;
    if (s[pos] != 0) {
        dmoe_set_err(err, errlen, "multiaddr \"%.80s\" has parts after the node id", s);
        return DMOE_EINVAL;
    }
    return 0;
malformed:
    dmoe_set_err(err, errlen, "malformed multiaddr \"%.80s\" (expected /ip4/A.B.C.D/tcp/PORT[/p2p/ID])", s);
    return DMOE_EINVAL;
}

/* parse_hostport reads HOST:PORT or [IPV6]:PORT into *a. */
static int parse_hostport(const char *s, int allow_zero, wire_maddr *a, char *err, size_t errlen)
{
    const char *colon;
    int rc;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') {
            dmoe_set_err(err, errlen, "malformed address \"%.80s\" (expected [IPV6]:PORT)", s);
            return DMOE_EINVAL;
        }
        rc = parse_ip(s + 1, (size_t)(close - s - 1), AF_INET6, a, err, errlen);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) {
            dmoe_set_err(err, errlen, "address \"%.80s\" is neither a multiaddr nor HOST:PORT", s);
            return DMOE_EINVAL;
        }
        if (memchr(s, ':', (size_t)(colon - s))) {
            dmoe_set_err(err, errlen, "IPv6 address \"%.80s\" needs brackets: [ADDR]:PORT", s);
            return DMOE_EINVAL;
        }
        size_t n = (size_t)(colon - s);
        char tmp[WIRE_MADDR_HOST];
        unsigned char bin[4];
        if (n > 0 && n < sizeof tmp) {
            memcpy(tmp, s, n);
            tmp[n] = 0;
        }
        if (n > 0 && n < sizeof tmp && inet_pton(AF_INET, tmp, bin) == 1)
            rc = parse_ip(s, n, AF_INET, a, err, errlen);
        else
            rc = parse_name(s, n, a, err, errlen);
    }
    if (rc) return rc;
    return parse_port(colon + 1, strlen(colon + 1), allow_zero, &a->port, err, errlen);
}

/* maddr_parse dispatches on the form. */
static int maddr_parse(const char *s, int allow_zero, wire_maddr *out, char *err, size_t errlen)
{
    wire_maddr a;
    memset(&a, 0, sizeof a);
    if (!s || !*s) {
        dmoe_set_err(err, errlen, "empty address");
        return DMOE_EINVAL;
    }
    if (strlen(s) > 512) {
        dmoe_set_err(err, errlen, "address too long");
        return DMOE_EINVAL;
    }
    int rc = s[0] == '/' ? parse_multiaddr(s, allow_zero, &a, err, errlen)
                         : parse_hostport(s, allow_zero, &a, err, errlen);
    if (rc) return rc;
    *out = a;
    return 0;
}

int wire_maddr_parse(const char *s, wire_maddr *out, char *err, size_t errlen)
{
    return maddr_parse(s, 0, out, err, errlen);
}

int wire_maddr_parse_listen(const char *s, wire_maddr *out, char *err, size_t errlen)
{
    return maddr_parse(s, 1, out, err, errlen);
}

void wire_maddr_format(const wire_maddr *a, char *buf, size_t cap)
{
    if (cap == 0) return;
    const char *proto = a->family == AF_INET ? "ip4" : a->family == AF_INET6 ? "ip6" : "dns";
    if (a->peer_id[0])
        snprintf(buf, cap, "/%s/%s/tcp/%u/p2p/%s", proto, a->host, (unsigned)a->port, a->peer_id);
    else
        snprintf(buf, cap, "/%s/%s/tcp/%u", proto, a->host, (unsigned)a->port);
}

int wire_maddr_sockaddr(const wire_maddr *a, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (a->family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, a->host, &sin->sin_addr) != 1) return DMOE_EINVAL;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(a->port);
        *len = sizeof *sin;
        return 0;
    }
    if (a->family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, a->host, &sin6->sin6_addr) != 1) return DMOE_EINVAL;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(a->port);
        *len = sizeof *sin6;
        return 0;
    }
    return DMOE_EINVAL;
}

int wire_maddr_from_sockaddr(const struct sockaddr *sa, wire_maddr *out)
{
    wire_maddr a;
    memset(&a, 0, sizeof a);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        if (!inet_ntop(AF_INET, &sin->sin_addr, a.host, sizeof a.host)) return DMOE_EINVAL;
        a.port = ntohs(sin->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        if (!inet_ntop(AF_INET6, &sin6->sin6_addr, a.host, sizeof a.host)) return DMOE_EINVAL;
        a.port = ntohs(sin6->sin6_port);
    } else {
        return DMOE_EINVAL;
    }
    a.family = sa->sa_family;
    *out = a;
    return 0;
}

int wire_maddr_is_wildcard(const wire_maddr *a)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (wire_maddr_sockaddr(a, &ss, &len) != 0) return 0;
    if (a->family == AF_INET) return ((const struct sockaddr_in *)&ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)&ss)->sin6_addr);
}

int wire_maddr_is_loopback(const wire_maddr *a)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (wire_maddr_sockaddr(a, &ss, &len) != 0) return 0;
    if (a->family == AF_INET) return (ntohl(((const struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    const struct in6_addr *v6 = &((const struct sockaddr_in6 *)&ss)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(v6) || (IN6_IS_ADDR_V4MAPPED(v6) && v6->s6_addr[12] == 127);
}
