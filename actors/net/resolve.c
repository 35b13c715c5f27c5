/* resolve.c -- user addresses into dialable multiaddrs, blocking or on the loop (see resolve.h).
 *
 * Design notes. Each text is parsed once (wire_maddr_parse); IP literals are formatted back at once, names
 * are looked up -- with getaddrinfo in resolve_now, with evdns_getaddrinfo in resolve_start. When a name
 * has addresses of both families and the text did not ask for one (/dns4, /dns6), the first IPv4 one is
 * taken: nodes listen on IPv4 by default, and "localhost" often lists ::1 first.
 *
 * The asynchronous resolver is an actor with a signal: evdns may answer inside evdns_getaddrinfo (names
 * in /etc/hosts) or later from the loop; either way the last answer raises the signal, and the handler
 * calls cb and stops the actor, so cb never runs inside resolve_start and the evdns base is freed in
 * destroy, outside evdns's own callbacks.
 */
#include "actors/net/resolve.h"

#include <event2/dns.h>
#include <event2/util.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"

/* The longest name list one call takes: a config lists a handful of peers. */
#define RESOLVE_MAX 64

enum { MSG_DONE = 1 };

typedef struct item {
    struct resolve *r;
    wire_maddr a;
    int family;                              /* AF_UNSPEC, or what /dns4 and /dns6 asked for */
    struct evdns_getaddrinfo_request *req;   /* while the lookup runs */
    char *out;                               /* the result text */
} item;

struct resolve {
    rt_actor actor;
    rt_signal done;
    struct evdns_base *dns;
    item *items;
    size_t n, pending;
    int err;
    char msg[256];
    resolve_cb cb;
    void *arg;
};

void resolve_list_free(char **maddrs)
{
    if (!maddrs) return;
    for (size_t i = 0; maddrs[i]; i++) free(maddrs[i]);
    free(maddrs);
}

/* parse_one reads text into *it (a, the family asked for). */
static int parse_one(const char *text, item *it, char *err, size_t errlen)
{
    char e[160];
    if (wire_maddr_parse(text, &it->a, e, sizeof e) != 0) {
        snprintf(err, errlen, "bad address '%.120s': %s", text, e);
        return DMOE_EINVAL;
    }
    it->family = strncmp(text, "/dns4/", 6) == 0 ? AF_INET : strncmp(text, "/dns6/", 6) == 0 ? AF_INET6 : AF_UNSPEC;
    return 0;
}

/* pick chooses the address to use from a resolver's list (see the design notes). */
static const struct evutil_addrinfo *pick(const struct evutil_addrinfo *res)
{
    for (const struct evutil_addrinfo *p = res; p; p = p->ai_next)
        if (p->ai_family == AF_INET) return p;
    for (const struct evutil_addrinfo *p = res; p; p = p->ai_next)
        if (p->ai_family == AF_INET6) return p;
    return NULL;
}

/* format_one writes it's result text (it->a, with the host replaced by sa when given). */
static int format_one(item *it, const struct sockaddr *sa)
{
    wire_maddr m = it->a;
    if (sa) {
        wire_maddr ip;
        if (wire_maddr_from_sockaddr(sa, &ip) != 0) return DMOE_ENOTFOUND;
        memcpy(m.host, ip.host, sizeof m.host);
        m.family = ip.family;
    }
    char text[WIRE_MADDR_TEXT];
    wire_maddr_format(&m, text, sizeof text);
    it->out = strdup(text);
    return it->out ? 0 : DMOE_ENOMEM;
}

static int is_name(const item *it) { return it->a.family == AF_UNSPEC; }

int resolve_needed(const char *const *texts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        item it;
        char err[8];
        if (parse_one(texts[i], &it, err, sizeof err) == 0 && (is_name(&it) || texts[i][0] != '/')) return 1;
    }
    return 0;
}

/* take_list moves the items' texts into a NULL-terminated list. */
static char **take_list(item *items, size_t n)
{
    char **list = calloc(n + 1, sizeof *list);
    if (!list) return NULL;
    for (size_t i = 0; i < n; i++) {
        list[i] = items[i].out;
        items[i].out = NULL;
    }
    return list;
}

static void free_items(item *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++) free(items[i].out);
    free(items);
}

int resolve_now(const char *const *texts, size_t n, char ***out, char *err, size_t errlen)
{
    if (n > RESOLVE_MAX) { snprintf(err, errlen, "%zu addresses, at most %d", n, RESOLVE_MAX); return DMOE_EINVAL; }
    item *items = calloc(n ? n : 1, sizeof *items);
    if (!items) return DMOE_ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        item *it = &items[i];
        if ((rc = parse_one(texts[i], it, err, errlen)) != 0) break;
        if (!is_name(it)) { rc = format_one(it, NULL); continue; }
        struct addrinfo hints = {.ai_family = it->family, .ai_socktype = SOCK_STREAM}, *res = NULL;
        int g = getaddrinfo(it->a.host, NULL, &hints, &res);
        const struct evutil_addrinfo *p = g == 0 ? pick((const struct evutil_addrinfo *)res) : NULL;
        if (!p) {
            snprintf(err, errlen, "cannot resolve '%.120s': %s", texts[i], g ? gai_strerror(g) : "no IP address");
            rc = DMOE_ENOTFOUND;
        } else {
            rc = format_one(it, p->ai_addr);
        }
        if (res) freeaddrinfo(res);
    }
    char **list = rc == 0 ? take_list(items, n) : NULL;
    if (rc == 0 && !list) rc = DMOE_ENOMEM;
    if (rc == DMOE_ENOMEM) snprintf(err, errlen, "out of memory");
    free_items(items, n);
    if (rc == 0) *out = list;
    return rc;
}

int resolve_one_now(const char *text, wire_maddr *out, char *err, size_t errlen)
{
    char **one = NULL;
    int rc = resolve_now(&text, 1, &one, err, errlen);
    if (rc) return rc;
    wire_maddr a;
    rc = wire_maddr_parse(one[0], &a, err, errlen);
    resolve_list_free(one);
    if (rc == 0) *out = a;
    return rc;
}

/* ---- on the loop ---- */

static void answered(int result, struct evutil_addrinfo *res, void *arg)
{
    item *it = arg;
    resolve *r = it->r;
    it->req = NULL;
    const struct evutil_addrinfo *p = result == 0 ? pick(res) : NULL;
    int rc = p ? format_one(it, p->ai_addr) : DMOE_ENOTFOUND;
    if (rc && !r->err) {
        r->err = rc;
        char text[WIRE_MADDR_TEXT];
        wire_maddr_format(&it->a, text, sizeof text);
        snprintf(r->msg, sizeof r->msg, "cannot resolve '%s': %s", text,
                 result ? evutil_gai_strerror(result) : rc == DMOE_ENOMEM ? "out of memory" : "no IP address");
    }
    if (res) evutil_freeaddrinfo(res);
    if (--r->pending == 0) rt_signal_raise(&r->done);
}

static void handle(rt_actor *self, rt_msg *m)
{
    resolve *r = (resolve *)self;
    rt_msg_drop(m);
    if (r->pending > 0) return;
    if (r->cb) {
        char **list = r->err ? NULL : take_list(r->items, r->n);
        if (!r->err && !list) { r->err = DMOE_ENOMEM; snprintf(r->msg, sizeof r->msg, "out of memory"); }
        r->cb(r->arg, r->err, r->msg, list);
        r->cb = NULL;
    }
    rt_actor_stop(&r->actor);
}

static void destroy(rt_actor *self)
{
    resolve *r = (resolve *)self;
    if (r->dns) evdns_base_free(r->dns, 0);
    free_items(r->items, r->n);
    free(r);
}

resolve *resolve_start(rt_loop *l, const char *const *texts, size_t n, resolve_cb cb, void *arg, char *err,
                       size_t errlen)
{
    if (n > RESOLVE_MAX) { snprintf(err, errlen, "%zu addresses, at most %d", n, RESOLVE_MAX); return NULL; }
    resolve *r = calloc(1, sizeof *r);
    item *items = calloc(n ? n : 1, sizeof *items);
    if (!r || !items) { free(r); free(items); snprintf(err, errlen, "out of memory"); return NULL; }
    int names = 0;
    for (size_t i = 0; i < n; i++) {
        items[i].r = r;
        int rc = parse_one(texts[i], &items[i], err, errlen);
        if (rc == 0 && !is_name(&items[i])) rc = format_one(&items[i], NULL);
        if (rc == DMOE_ENOMEM) snprintf(err, errlen, "out of memory");
        if (rc) { free_items(items, n); free(r); return NULL; }
        names += is_name(&items[i]);
    }
    if (names && !(r->dns = evdns_base_new(rt_loop_base(l), EVDNS_BASE_INITIALIZE_NAMESERVERS))) {
        snprintf(err, errlen, "cannot start the DNS resolver");
        free_items(items, n);
        free(r);
        return NULL;
    }
    rt_actor_init(&r->actor, l, "resolve", handle, destroy);
    rt_signal_init(&r->done, &r->actor, MSG_DONE);
    r->items = items;
    r->n = n;
    r->cb = cb;
    r->arg = arg;
    r->pending = 1;   /* held while starting: answers given at once must not finish early */
    for (size_t i = 0; i < n; i++) {
        item *it = &items[i];
        if (!is_name(it)) continue;
        struct evutil_addrinfo hints = {.ai_family = it->family, .ai_socktype = SOCK_STREAM};
        r->pending++;
        it->req = evdns_getaddrinfo(r->dns, it->a.host, NULL, &hints, answered, it);
    }
    if (--r->pending == 0) rt_signal_raise(&r->done);
    return r;
}

void resolve_cancel(resolve *r)
{
    if (!r) return;
    r->cb = NULL;
    for (size_t i = 0; i < r->n; i++)
        if (r->items[i].req) evdns_getaddrinfo_cancel(r->items[i].req);
}
