/* netq.h -- a node's network quotas: the bytes its connections may hold, per node, per connection and
 * per peer address, and the bytes of replies waiting to be written.
 *
 * Pending bytes are what clients made the node hold: frame bodies as they are received (the buffer
 * that grows with them, never the announced length), the decoded msgpack tree, the decompressed
 * tensors of a request. The connection actor (conn.c) charges them before it allocates; the owner of
 * a decoded message releases them when it frees it (conn_uncharge). A charge fits when the node's total
 * stays within max_pending, the connection's within a quarter of it and its address's within half of
 * it -- so a few connections, or many from one address, cannot take the whole budget; the shares
 * do not apply when the budget holds nothing but this connection's own charge (a frame larger than a
 * share still passes alone). Nothing passes the budget itself. A charge that does not fit waits
 * (rt_budget's waiters) for a release.
 *
 * Replies: out_bytes is the sum of every connection's unwritten output, kept exact by an evbuffer
 * callback on each output buffer; the connection closes a slow reader rather than queue past max_out
 * (conn.c).
 *
 * Order: netq_init -> per connection netq_addr_get ... netq_addr_put -> netq_deinit (no address left).
 * Loop thread only.
 */
#ifndef DMOE_NETQ_H
#define DMOE_NETQ_H

#include <stddef.h>

#include "runtime/rt_budget.h"
#include "runtime/rt_map.h"

struct sockaddr;

/* One peer address's account (connections from it and the bytes they hold). */
typedef struct netq_addr {
    unsigned char key[16];      /* the IPv4 or IPv6 address bytes */
    size_t keylen;
    size_t charged;
    int conns;
} netq_addr;

typedef struct netq {
    rt_budget pending;          /* max 0: unlimited (no shares either) */
    size_t conn_share, addr_share;
    rt_map addrs;               /* address bytes -> netq_addr */
    size_t stuck;               /* bytes held by connections waiting for room (conn.c) */
    size_t out_bytes, out_max;  /* replies waiting on all connections; out_max 0: unlimited */
    size_t out_peak;
} netq;

/* netq_init sets the pending budget (0: unlimited) and the node-wide reply bound (0: unlimited). */
void netq_init(netq *q, size_t max_pending, size_t max_out);
/* netq_deinit frees the address table (every address must have been put back). */
void netq_deinit(netq *q);
/* netq_addr_get returns the account of sa's address (created on first use, counted once more), or
 * NULL when out of memory or sa is not IPv4/IPv6 (then the connection has no address share). */
netq_addr *netq_addr_get(netq *q, const struct sockaddr *sa);
/* netq_addr_put drops one count of a (NULL: no-op); the account goes with the last one (its charge
 * must be 0 by then). */
void netq_addr_put(netq *q, netq_addr *a);
/* netq_try charges n bytes to the node, to *conn_charged and to a (may be NULL) when they fit as the
 * header comment says (with lift_shares, the budget alone decides). Returns 1 when charged, 0 when
 * not (nothing changed). */
int netq_try(netq *q, size_t *conn_charged, netq_addr *a, size_t n, int lift_shares);
/* netq_release returns n bytes charged by netq_try (n <= *conn_charged) and wakes the waiters. */
void netq_release(netq *q, size_t *conn_charged, netq_addr *a, size_t n);
/* netq_out_add / netq_out_sub account bytes added to and written from the connections' outputs. */
void netq_out_add(netq *q, size_t n);
void netq_out_sub(netq *q, size_t n);

#endif
