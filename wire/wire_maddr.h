/* wire_maddr.h -- node addresses in hivemind's multiaddr form (wire/PROTOCOL.md, "Addresses").
 *
 * Accepted forms (parse), where PORT is a decimal 0..65535 and ID a hex node id of 1..64 digits:
 *   /ip4/A.B.C.D/tcp/PORT[/p2p/ID]
 *   /ip6/ADDR/tcp/PORT[/p2p/ID]          ADDR as inet_pton(AF_INET6) accepts it, no zone index
 *   /dns/NAME/tcp/PORT[/p2p/ID]          also /dns4/ and /dns6/: a host name, resolved by the caller
 *   HOST:PORT  and  [ADDR]:PORT          the convenience form of the command-line tools
 * "/ipfs/ID" is read as "/p2p/ID" (older libp2p spelling). Port 0 ("any free port") is accepted only by
 * wire_maddr_parse_listen. Formatting always produces the multiaddr form, with IPv6 addresses in
 * canonical text and the node id in lower case, so parse(format(a)) == a.
 * Pure string functions: no resolution, no I/O, any thread.
 */
#ifndef DMOE_WIRE_MADDR_H
#define DMOE_WIRE_MADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define WIRE_MADDR_HOST 64       /* bytes of host text, NUL included */
#define WIRE_MADDR_PEER 65       /* bytes of node id text, NUL included */
#define WIRE_MADDR_TEXT 192      /* enough for any formatted address */

typedef struct {
    char host[WIRE_MADDR_HOST];  /* dotted IPv4, canonical IPv6 (no brackets) or a DNS name */
    uint16_t port;
    char peer_id[WIRE_MADDR_PEER]; /* lower-case hex node id, "" when the address names none */
    int family;                  /* AF_INET, AF_INET6, or AF_UNSPEC for a DNS name */
} wire_maddr;

/* wire_maddr_parse reads an address to connect to (port 1..65535) from s into *out. Returns 0 or
 * DMOE_EINVAL with a human message in err (errlen bytes); *out is written only on success. */
int wire_maddr_parse(const char *s, wire_maddr *out, char *err, size_t errlen);
/* wire_maddr_parse_listen is wire_maddr_parse for an address to listen on: port 0 is allowed. */
int wire_maddr_parse_listen(const char *s, wire_maddr *out, char *err, size_t errlen);
/* wire_maddr_format writes a as a multiaddr into buf (cap bytes, always NUL-terminated when cap > 0;
 * WIRE_MADDR_TEXT is always enough). */
void wire_maddr_format(const wire_maddr *a, char *buf, size_t cap);
/* wire_maddr_sockaddr fills *ss and *len for an IPv4 or IPv6 address. Returns 0, or DMOE_EINVAL for a
 * DNS name (resolve a->host yourself, e.g. with evdns or getaddrinfo). */
int wire_maddr_sockaddr(const wire_maddr *a, struct sockaddr_storage *ss, socklen_t *len);
/* wire_maddr_from_sockaddr writes the IPv4 or IPv6 address and port of sa into *out (no node id).
 * Returns 0, or DMOE_EINVAL for another family. */
int wire_maddr_from_sockaddr(const struct sockaddr *sa, wire_maddr *out);
/* wire_maddr_is_wildcard returns 1 for the any-address of its family (0.0.0.0 or ::): good to listen
 * on, never to announce, since no other machine can dial it. */
int wire_maddr_is_wildcard(const wire_maddr *a);
/* wire_maddr_is_loopback returns 1 for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
int wire_maddr_is_loopback(const wire_maddr *a);

#endif
