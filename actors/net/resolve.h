/* resolve.h -- the addresses users type, turned into the multiaddrs the DHT and the client dial.
 *
 * Every place that takes a peer address (--initial_peers, dmoe-call's --peer, dmoe-train, a node's join)
 * accepts a multiaddr (/ip4, /ip6, /dns, /dns4, /dns6 .../tcp/PORT[/p2p/ID]) or the tools' HOST:PORT and
 * [IPV6]:PORT (wire_maddr.h). The DHT and the connections dial IP literals only, so names are resolved
 * here first, into "/ip4|ip6/ADDR/tcp/PORT[/p2p/ID]" texts (the first address the resolver gives; /dns4
 * and /dns6 ask for that family only). IP addresses in either spelling are only rewritten.
 *
 * Two ways, one result:
 *   resolve_now    blocking getaddrinfo, for programs before their loop runs (the command line);
 *   resolve_start  on the loop, with libevent's evdns (evdns_getaddrinfo): nothing blocks the loop.
 *                  cb runs once, later (never inside resolve_start), unless resolve_cancel comes first.
 * The resolver's actor frees itself after its last answer. Loop thread only (resolve_start/_cancel).
 */
#ifndef DMOE_RESOLVE_H
#define DMOE_RESOLVE_H

#include <stddef.h>

#include "runtime/rt_actor.h"
#include "wire/wire_maddr.h"

typedef struct resolve resolve;

/* Called once: err 0 with maddrs (n NULL-terminated multiaddr texts, in the order given, now the
 * callee's: free with resolve_list_free), or DMOE_ENOTFOUND / DMOE_ENOMEM with msg naming the address
 * that did not resolve and maddrs NULL. */
typedef void (*resolve_cb)(void *arg, int err, const char *msg, char **maddrs);

/* resolve_needed returns 1 if one of texts[0..n) is a well-formed address that is not already a dialable
 * multiaddr: a host name, or the HOST:PORT spelling (the DHT takes /ip4 and /ip6 multiaddrs only). */
int resolve_needed(const char *const *texts, size_t n);
/* resolve_now resolves texts[0..n) with blocking getaddrinfo into *out (NULL-terminated, malloc'd; free
 * with resolve_list_free). Returns 0, DMOE_EINVAL (a malformed address), DMOE_ENOTFOUND or DMOE_ENOMEM,
 * with err naming the address. *out is written only on success. */
int resolve_now(const char *const *texts, size_t n, char ***out, char *err, size_t errlen);
/* resolve_one_now is resolve_now for one address, parsed into *out (an IP address). Returns as
 * resolve_now does; *out is written only on success. */
int resolve_one_now(const char *text, wire_maddr *out, char *err, size_t errlen);
/* resolve_start starts resolving texts[0..n) on loop l (the texts are copied). Returns the resolver, or
 * NULL with err filled for a malformed address or no memory (cb is then never called). */
resolve *resolve_start(rt_loop *l, const char *const *texts, size_t n, resolve_cb cb, void *arg, char *err,
                       size_t errlen);
/* resolve_cancel makes sure cb is not called; the resolver frees itself once evdns has reported its
 * lookups cancelled, on a later turn of the loop (a program that stops running its loop first leaves
 * that memory to its exit). NULL is a no-op; not after cb ran. */
void resolve_cancel(resolve *r);
/* resolve_list_free frees a list from resolve_now or a resolve_cb. NULL is a no-op. */
void resolve_list_free(char **maddrs);

#endif
