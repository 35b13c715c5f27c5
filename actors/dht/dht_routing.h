/* dht_routing.h -- the Kademlia routing table and the peer blacklist, as values (no I/O, no actor).
 *
 * The table sorts known peers into k-buckets by their ids, as hivemind's RoutingTable: one bucket
 * covering the whole id space at first; a full bucket splits in two when it covers our own id or when
 * its depth is not a multiple of depth_modulo (Kademlia section 4.2's relaxed rule); otherwise the
 * newcomer waits in the bucket's replacement cache and the bucket's least-recently-seen node is offered
 * for a ping. A peer that fails is removed, and the freshest replacement takes its place.
 *
 * Call order: dht_routing_new; then, from the DHT actor, dht_routing_add_or_update for every message
 * heard from a peer, dht_routing_remove for every peer that timed out, dht_routing_nearest for lookups,
 * dht_routing_stale every refresh period; dht_routing_free. Time is the caller's `now` in seconds.
 * The blacklist (dht_blacklist_*) bans an address for base * rate^failures seconds, capped.
 * Neither object is thread-safe: one owner.
 */
#ifndef DMOE_DHT_ROUTING_H
#define DMOE_DHT_ROUTING_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_id.h"

/* Kademlia's k: nodes per bucket and the default number of nearest peers a lookup returns. */
#define DHT_BUCKET_SIZE 20
/* Kademlia's b: a full bucket not covering our id still splits while depth % b != 0 (hivemind: 5). */
#define DHT_DEPTH_MODULO 5
/* Blacklist defaults as hivemind's Blacklist: 5 s first ban, doubled per failure; we cap it. */
#define DHT_BAN_BASE 5.0
#define DHT_BAN_RATE 2.0
#define DHT_BAN_MAX 600.0
/* Addresses remembered by the blacklist; the one whose ban ends first is forgotten beyond this. */
#define DHT_BLACKLIST_MAX 4096
/* Table entries (bucket and replacements together) one IP address may hold: ids are free to grind, so
 * without this one host could fill the k slots nearest to any key (issue 10). Two, not one, so that a
 * host running a node and its restart (or two nodes behind one NAT) both fit. Loopback is exempt
 * unless asked (dht_routing_set_host_limit): tests run many nodes on 127.0.0.1. */
#define DHT_MAX_PER_HOST 2

#define DHT_HOST_MAX 64

/* A peer's address: host name or IP text (v6 without brackets) and port. */
typedef struct {
    char host[DHT_HOST_MAX];
    uint16_t port;
} dht_addr;

/* One known peer. ping_pending: offered for a ping by dht_routing_add_or_update and not heard from
 * since. */
typedef struct {
    dht_id id;
    dht_addr addr;
    double last_seen;
    int ping_pending;
} dht_node;

/* A read-only view of one bucket: ids sharing the first depth bits of prefix (the rest of prefix is 0).
 * nodes[] run from least to most recently seen; repl[] likewise. Valid until the table next changes. */
typedef struct {
    dht_id prefix;
    int depth;
    const dht_node *nodes;
    size_t n;
    const dht_node *repl;
    size_t nrepl;
    double last_updated;
} dht_bucket_view;

/* Outcomes of dht_routing_add_or_update. */
enum {
    DHT_RT_ADDED = 1,   /* a new node in its bucket */
    DHT_RT_UPDATED = 2, /* already known: moved to most recently seen, address refreshed */
    DHT_RT_CACHED = 3,  /* bucket full: kept as a replacement; a ping is already pending for it */
    DHT_RT_PING = 4,    /* bucket full: kept as a replacement; ping *to_ping, remove it if it fails */
    DHT_RT_REFUSED = 5  /* its IP address holds max_per_host entries already: nothing recorded */
};

typedef struct dht_routing dht_routing;

/* dht_addr_parse reads "host:port" or "[v6]:port" into *out. Returns 0 or DMOE_EINVAL (no port, port
 * out of 1..65535, host empty or over DHT_HOST_MAX - 1 bytes); *out is written only on success. */
int dht_addr_parse(dht_addr *out, const char *text);

/* dht_addr_format writes "host:port" ("[host]:port" when host has a ':') into buf[cap], truncating.
 * Returns buf. */
char *dht_addr_format(const dht_addr *a, char *buf, size_t cap);

/* dht_addr_eq returns 1 if a and b have the same host text and port. */
int dht_addr_eq(const dht_addr *a, const dht_addr *b);

/* dht_addr_same_host returns 1 if a and b have the same host text (any ports). */
int dht_addr_same_host(const dht_addr *a, const dht_addr *b);

/* dht_addr_host_limited returns 1 if the per-host limit applies to a's host: always when
 * limit_loopback, else for every host but a loopback one (127.0.0.0/8, ::1, "localhost"). The routing
 * table and the lookups' candidate lists both ask it. */
int dht_addr_host_limited(const dht_addr *a, int limit_loopback);

/* dht_routing_new creates an empty table for a node with id self. bucket_size 0 means DHT_BUCKET_SIZE,
 * depth_modulo 0 means DHT_DEPTH_MODULO; seed drives the refresh ids; now stamps the first bucket.
 * Returns 0 and *out, DMOE_EINVAL or DMOE_ENOMEM. Free with dht_routing_free. */
int dht_routing_new(dht_routing **out, const dht_id *self, size_t bucket_size, int depth_modulo, uint64_t seed,
                    double now);

/* dht_routing_set_host_limit sets how many entries one IP address may hold (0: DHT_MAX_PER_HOST;
 * SIZE_MAX: no limit) and whether loopback addresses count (limit_loopback 1) or are exempt (0, the
 * default). Entries already held stay; the limit applies to the next additions and address changes. */
void dht_routing_set_host_limit(dht_routing *t, size_t max_per_host, int limit_loopback);

/* dht_routing_admits returns 1 if dht_routing_add_or_update(t, id, addr) would record the peer, 0 if it
 * would answer DHT_RT_REFUSED (addr's host holds the limit already, id itself not counted). */
int dht_routing_admits(const dht_routing *t, const dht_id *id, const dht_addr *addr);

/* dht_routing_host_count returns the entries (bucket and replacements) held at host's address. */
size_t dht_routing_host_count(const dht_routing *t, const char *host);

/* dht_routing_free frees the table; NULL is a no-op. */
void dht_routing_free(dht_routing *t);

/* dht_routing_self returns the table's own id. */
const dht_id *dht_routing_self(const dht_routing *t);

/* dht_routing_add_or_update records that peer id answered or wrote from addr at time now. Returns
 * DHT_RT_ADDED, DHT_RT_UPDATED, DHT_RT_CACHED or DHT_RT_PING (then *to_ping, which may be NULL, gets the
 * bucket's least-recently-seen node not already offered, now marked ping_pending); DHT_RT_REFUSED when
 * addr's host holds its limit of entries already (a known id keeps its old address); DMOE_EINVAL for
 * our own id; DMOE_ENOMEM (table unchanged). */
int dht_routing_add_or_update(dht_routing *t, const dht_id *id, const dht_addr *addr, double now, dht_node *to_ping);

/* dht_routing_remove forgets id (a failed peer), in the bucket or its replacement cache. If it was in
 * the bucket, the most recently seen replacement takes its place. Returns 0 or DMOE_ENOTFOUND. */
int dht_routing_remove(dht_routing *t, const dht_id *id);

/* dht_routing_remove_at forgets id as dht_routing_remove does, but only when the table holds it (in the
 * bucket or its replacement cache) at addr: a failure at another address says nothing about the peer.
 * Returns 0 or DMOE_ENOTFOUND. */
int dht_routing_remove_at(dht_routing *t, const dht_id *id, const dht_addr *addr);
/* dht_routing_knows returns 1 when the table holds id at addr, in the bucket or its replacement cache. */
int dht_routing_knows(const dht_routing *t, const dht_id *id, const dht_addr *addr);
/* dht_routing_get copies the bucket entry (not replacements) for id into *out. 0 or DMOE_ENOTFOUND. */
int dht_routing_get(const dht_routing *t, const dht_id *id, dht_node *out);

/* dht_routing_nearest writes up to k bucket nodes nearest to target by XOR distance into out[],
 * nearest first, skipping exclude if it is not NULL. Returns the number written (fewer than k when the
 * table is small). O(n log k) over the n nodes. */
size_t dht_routing_nearest(const dht_routing *t, const dht_id *target, size_t k, const dht_id *exclude,
                           dht_node *out);

/* dht_routing_stale writes, for each bucket not updated since now - period (at most cap of them), a
 * random id inside that bucket into out[]: look each up to refresh it. Returns the number written. */
size_t dht_routing_stale(dht_routing *t, double now, double period, dht_id *out, size_t cap);

/* dht_routing_touch marks the bucket covering id as updated at now (after a refresh lookup). */
void dht_routing_touch(dht_routing *t, const dht_id *id, double now);

/* dht_routing_size returns the number of nodes in buckets (replacements not counted). */
size_t dht_routing_size(const dht_routing *t);

/* dht_routing_num_buckets returns the number of buckets (1 .. ). */
size_t dht_routing_num_buckets(const dht_routing *t);

/* dht_routing_bucket_of returns the index of the bucket covering id. */
size_t dht_routing_bucket_of(const dht_routing *t, const dht_id *id);

/* dht_routing_bucket fills *out with a view of bucket i (buckets are in id order). 0 or DMOE_EINVAL. */
int dht_routing_bucket(const dht_routing *t, size_t i, dht_bucket_view *out);

typedef struct dht_blacklist dht_blacklist;

/* dht_blacklist_new creates an empty blacklist: the n-th consecutive failure (n from 0) bans an address
 * for min(base * rate^n, max_ban) seconds. Zero arguments take DHT_BAN_BASE, DHT_BAN_RATE, DHT_BAN_MAX.
 * Returns 0 and *out, or DMOE_ENOMEM. */
int dht_blacklist_new(dht_blacklist **out, double base, double rate, double max_ban);

/* dht_blacklist_free frees bl; NULL is a no-op. */
void dht_blacklist_free(dht_blacklist *bl);

/* dht_blacklist_fail records a failed call to addr at now and bans it, unless it is banned already (as
 * hivemind, failures during a ban do not lengthen it). Returns the ban's length in seconds (0.0 when
 * already banned). */
double dht_blacklist_fail(dht_blacklist *bl, const dht_addr *addr, double now);

/* dht_blacklist_ok records a successful call: lifts any ban and resets the failure count. */
void dht_blacklist_ok(dht_blacklist *bl, const dht_addr *addr);

/* dht_blacklist_banned returns 1 if addr is banned at now, else 0. */
int dht_blacklist_banned(const dht_blacklist *bl, const dht_addr *addr, double now);

/* dht_blacklist_size returns the number of addresses remembered (banned or with failures). */
size_t dht_blacklist_size(const dht_blacklist *bl);

#endif
